"""The documentation a user reads: every relative link in README.md, docs/ and configs/ points at a file (and a heading)
that exists, and nothing the user can read cites the project's internal notes or a folder outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "configs").rglob("*.md")])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _anchors(md: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped except '-' and '_', spaces to '-'."""
    text = FENCE.sub("", md.read_text())
    heads = re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(md: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", md.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            broken.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{md.relative_to(ROOT)}: broken links: {broken}"


# internal implementation notes are not in the repository: a user cannot follow them
NOTES = r"specs/|\.\./shared|(?:kd_and_frameworks|nextwave)\.md|(?<![\w/])(?:ssl|selfkd)\.md"
INTERNAL = re.compile(NOTES + r"|§\s*[A-Z]?\d")  # and their section marks (§A2, §3.5)
USER_FACING = ("ssl_kd", "docs", "configs", "README.md")


def test_nothing_cites_internal_notes_or_folders_outside_the_repository() -> None:
    hits = []
    for top in USER_FACING:
        base = ROOT / top
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in (".py", ".md", ".yaml")]
        for f in sorted(files):
            for n, line in enumerate(f.read_text().splitlines(), 1):
                if INTERNAL.search(line):
                    hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, (
        "cite the paper and the reference repository@commit (and file) instead of internal notes or ../shared, and "
        "say how a user gets the data (data.download=true, SSL_KD_DATA, data.root):\n" + "\n".join(hits)
    )
