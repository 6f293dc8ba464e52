"""CLI: python -m ssl_kd.export RUN_DIR --stage NAME --out model.pt [--model M] [--which last|best]

Builds the physically smaller network of a model a pruning stage left (its pruned filters are zero), checks that
its outputs equal the masked model's (the max abs difference is printed), prints parameters and FLOPs before and
after (torch.utils.flop_counter.FlopCounterMode), and writes an ssl_kd weight file with the model's constructor
spec: `models.<m>.checkpoint=model.pt` or `init: {mode: checkpoint, path: model.pt}` rebuilds the small shape.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = "python -m ssl_kd.export RUN_DIR --stage NAME --out model.pt [--model M] [--which last|best]"


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ssl_kd.export", description=__doc__.split("\n\n")[1], usage=USAGE)
    p.add_argument("run_dir", help="a run folder (runs/<name>)")
    p.add_argument("--stage", required=True, help="the stage whose weights to export (checkpoints/<stage>/)")
    p.add_argument("--out", required=True, help="the file to write (must not exist)")
    p.add_argument("--model", help="which model of the stage (default: its only one)")
    p.add_argument("--which", choices=("last", "best"), default="last", help="the stage's last (default) or best")
    p.add_argument("--input-shape", default="3,32,32", help="one image's shape, for FLOPs and the check")
    return p.parse_args(argv)


def export_run(
    run_dir: str | Path, stage: str, out: str | Path, model: str | None = None, which: str = "last",
    input_shape: tuple[int, ...] = (3, 32, 32),
):  # fmt: skip
    """Export model `model` of `run_dir`'s stage `stage` to `out`; returns the ExportResult."""
    import ssl_kd.models  # noqa: F401
    from ssl_kd.engine.checkpoint_io import FORMAT, extract_state_dict, load_checkpoint, load_weights, save_atomic
    from ssl_kd.engine.run_dir import RunDir
    from ssl_kd.errors import UserError, choices
    from ssl_kd.models import create_model_from_spec, model_spec
    from ssl_kd.prune import export_pruned

    out = Path(out)
    if out.exists():
        raise UserError(f"--out: {out} already exists; nothing is overwritten. Choose another path.")
    rd = RunDir(run_dir)
    if not rd.root.is_dir():
        raise UserError(f"RUN_DIR: {rd.root} is not a folder.")
    path = rd.stage_file(stage, which)
    if not path.is_file():
        have = sorted(p.name for p in rd.checkpoints.iterdir() if p.is_dir()) if rd.checkpoints.is_dir() else []
        raise UserError(
            f"--stage {stage}: {path} does not exist. "
            f"Stages with weight files in {rd.root}: {choices(have) or '(none)'}."
        )
    obj = load_checkpoint(path, f"--stage {stage}")
    specs = obj.get("specs") or {}
    names = list(obj.get("models") or {})
    if model is None:
        if len(names) != 1:
            raise UserError(f"--model: {path} holds {len(names)} models ({choices(names)}); name one.")
        model = names[0]
    if model not in names:
        raise UserError(f"--model: {path} has no model '{model}' (it has: {choices(names)}).")
    if model not in specs:
        raise UserError(f"--model: {path} records no constructor spec for '{model}' (written by an older ssl_kd).")
    net = create_model_from_spec(specs[model])
    load_weights(net, extract_state_dict(obj, model), True, f"{path} (model '{model}')")
    res = export_pruned(net, input_shape=input_shape, where=f"{path} (model '{model}')")
    save_atomic(
        {"format": FORMAT, "stage": stage, "models": {model: res.model.state_dict()},
         "specs": {model: model_spec(res.model)}},
        out,
    )  # fmt: skip
    return res


def main(argv: list[str] | None = None) -> int:
    from ssl_kd.errors import UserError

    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        print(
            f"ssl_kd.export: error: --input-shape must be integers like 3,32,32, got {args.input_shape!r}",
            file=sys.stderr,
        )
        return 2
    try:
        res = export_run(args.run_dir, args.stage, args.out, args.model, args.which, shape)
    except UserError as e:
        print(f"ssl_kd.export: error: {e}", file=sys.stderr)
        return 2
    print(res.describe(f"{args.run_dir} stage '{args.stage}' ({args.which})"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
