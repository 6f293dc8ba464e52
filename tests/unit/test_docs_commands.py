"""The data commands a user copies from the docs: `SSL_KD_DATA=` names a folder of the user's (not a path relative to
this checkout), and every generated-image folder a command writes (`--out $SSL_KD_DATA/<x>`) is the one a shipped
config reads (`train_source.path`, relative to data.root), and the other way round."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import ROOT, shipped_configs

from ssl_kd.config import load_yaml

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "configs").rglob("*.md")])


def _train_sources() -> set[str]:
    paths = set()
    for p in shipped_configs():
        raw = load_yaml(p)
        for block in [raw.get("data") or {}, *((s or {}).get("data") or {} for s in raw["stages"].values())]:
            src = (block or {}).get("train_source") or {}
            if src.get("path") and not Path(src["path"]).is_absolute():
                paths.add(src["path"])
    return paths


def test_ssl_kd_data_in_commands_is_a_folder_of_the_users():
    relative = [
        f"{md.relative_to(ROOT)}: SSL_KD_DATA={value}"
        for md in DOCS
        for value in re.findall(r"SSL_KD_DATA=(\S+)", md.read_text())
        if not value.startswith(("~", "/", "$", "<"))
    ]
    assert not relative, "say which folder of the user's holds the data (e.g. SSL_KD_DATA=~/datasets)"


def test_generated_image_folders_are_where_the_configs_read_them():
    written = {out for md in DOCS for out in re.findall(r"--out \$SSL_KD_DATA/(\S+)", md.read_text())}
    assert written == _train_sources()
