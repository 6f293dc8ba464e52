"""One markdown table from the JSON files of `benchmarks/throughput.py --json` (benchmarks/gpu_suite.sh writes
benchmarks/results/gpu_suite.md with it), plus the suite's checks (exit status and the end of each log).

    python benchmarks/gpu_suite_table.py OUT.md w12.json w4.json [--check "augment fidelity=fid.log:0" ...]

Rows: USB, the compute alone, the host pipeline alone, then ssl_kd end to end, by worker count (most first), data
path and compile mode. A run on a CPU is labelled as such at the top: its numbers check the suite, not the speed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KIND_ORDER = {"usb": 0, "compute alone": 1, "host pipeline alone": 2, "ssl_kd": 3}
PIPELINE_ORDER = {None: 0, "host": 1, "device": 2}
COMPILE_ORDER = {None: 0, "no": 1, "default": 2, "reduce-overhead": 3, "max-autotune": 4}
COLUMNS = ["run", "data path", "compile", "workers", "it/s", "images/s", "2^20 it", "GPU busy",
           "host syncs/step (off log steps)", "x USB"]  # fmt: skip


def _key(row: dict) -> tuple:
    workers = row.get("workers")
    return (KIND_ORDER.get(row["kind"], 9), -(workers if workers is not None else 10**6),
            PIPELINE_ORDER.get(row.get("pipeline"), 9), COMPILE_ORDER.get(row.get("compile"), 9))  # fmt: skip


def _num(v: float | None, fmt: str, suffix: str = "") -> str:
    return "-" if v is None else f"{v:{fmt}}{suffix}"


def _syncs(row: dict) -> str:
    if row.get("syncs_per_step") is None:
        return "-"
    off = row.get("syncs_off_log_steps")
    return f"{row['syncs_per_step']:.2g}" + (f" ({off})" if off is not None else "")


def _cells(row: dict) -> list[str]:
    kind = row["kind"]
    name = {"usb": "USB FixMatch (semilearn)" + (", amp" if row.get("amp") else ""), "ssl_kd": "ssl_kd"}.get(kind, kind)
    compile_ = {"no": "eager", None: "-"}.get(row.get("compile"), row.get("compile"))
    head = [name, row.get("pipeline") or "-", compile_, _num(row.get("workers"), "d")]
    if row.get("error"):
        return head + [f"failed: {row['error'].replace('|', '/')}"] + [""] * (len(COLUMNS) - len(head) - 1)
    it_s = row["it_s"]
    return head + [
        _num(it_s, ".2f" if it_s < 10 else ".1f"),
        _num(row.get("images_s"), ",.0f"),
        _num(row.get("hours_2_20"), ".1f", " h"),
        _num(row.get("gpu_busy"), ".0f", " %"),
        _syncs(row),
        _num(row.get("x_usb"), ".1f", "x"),
    ]


def _meta_line(meta: dict) -> str:
    return (f"{meta['device']}, torch {meta['torch']}, {meta['arch']}, {meta['images_per_step']} images/step (batch "
            f"{meta['batch']} + 2 x {meta['batch'] * meta['uratio']}), {meta['data']}, precision {meta['precision']}"
            f"{', channels_last' if meta['channels_last'] else ''}, {meta['warmup']} warm-up + {meta['steps']} timed "
            f"steps, {meta['cpu_count']} cores")  # fmt: skip


def render(docs: list[dict], checks: list[tuple[str, int | None, str]] = (), title: str = "GPU suite") -> str:
    """The markdown text: title, a CPU-run label where a run had no GPU, the settings, the one table, the checks
    (name, exit status or None when skipped, the end of its log)."""
    rows = sorted((r for d in docs for r in d["rows"]), key=_key)
    metas = []
    for d in docs:
        line = _meta_line(d["meta"])
        if line not in metas:
            metas.append(line)
    out = [f"# {title}", ""]
    if any(not d["meta"].get("cuda") for d in docs):
        out += ["**CPU dry run: this checks that the suite runs end to end; its numbers are not speed figures.**", ""]
    out += [f"- {m}" for m in metas]
    out += [f"- measured {', '.join(d['meta']['date'] for d in docs)}", ""] if docs else [""]
    out += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    out += ["", "it/s: steps per second between two synchronised points; images/s: it/s x images per step; 2^20 it: "
            "hours for 2^20 steps at that rate; GPU busy: mean utilisation sampled while timing; host syncs/step: "
            "syncs counted by torch.cuda.set_sync_debug_mode while timing (CUDA, end-to-end rows), in brackets the "
            "number at steps that do not log (experiment.logger.log_every); x USB: it/s over "
            "USB's at the same worker count, measured in the same call."]  # fmt: skip
    notes = sorted({r["note"] for r in rows if r.get("note")})
    out += [f"USB: {n}." for n in notes]
    if checks:
        out += ["", "## Checks", ""]
        for name, rc, tail in checks:
            status = "skipped" if rc is None else ("passed (exit 0)" if rc == 0 else f"FAILED (exit {rc})")
            out += [f"**{name}**: {status}", ""]
            if tail.strip():
                out += ["```", tail.rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _check(spec: str, lines: int) -> tuple[str, int | None, str]:
    """ "NAME=LOG:RC" (RC 'skip' when the check did not run)."""
    name, _, rest = spec.partition("=")
    log, _, rc = rest.rpartition(":")
    code = None if rc == "skip" else int(rc)
    tail = ""
    if log and Path(log).exists():
        tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-lines:])
    return name, code, tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="the markdown file to write")
    ap.add_argument("json", nargs="*", help="throughput.py --json files")
    ap.add_argument("--check", action="append", default=[], help='"NAME=LOG:RC", RC an exit status or skip')
    ap.add_argument("--lines", type=int, default=30, help="log lines shown per check")
    ap.add_argument("--title", default="GPU suite: throughput and the device augmentation's checks")
    args = ap.parse_args()
    docs = []
    for p in args.json:
        if Path(p).exists():
            docs.append(json.loads(Path(p).read_text()))
        else:
            print(f"{p}: missing (that throughput call did not start or wrote no row)", file=sys.stderr)
    text = render(docs, [_check(c, args.lines) for c in args.check], args.title)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
