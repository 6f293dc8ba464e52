"""Evaluate a checkpoint on a test split in one line, without a config and without making a run folder:

    python -m ssl_kd.evaluate CHECKPOINT --data cifar10 [--model NAME] [--data-root DIR] [data.KEY=VALUE ...]

CHECKPOINT is a weight file (a stage's best.pt / last.pt, a run's last.pt, a bare state_dict with --arch and
--num-classes) or a run folder (--stage / --which pick its file, as `ssl_kd.load_model`). Prints top-1 / top-5 /
cross-entropy of the model's `predict` on the full test split, and each further output when the model predicts
several (the exits of a multi-exit model). The data block takes the same keys as a config's `data:` (e.g.
`data.normalize=imagenet` when the model was trained that way; the default is the dataset's own statistics).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

USAGE_EPILOG = """examples:
  python -m ssl_kd.evaluate runs/quickstart/checkpoints/distill/best.pt --data digits
  python -m ssl_kd.evaluate runs/kd_res32x4_res8x4 --model student --data cifar100 --data-root ~/datasets
  python -m ssl_kd.evaluate resnet.pth --arch resnet32x4 --num-classes 100 --data cifar100
"""


class _TestSplit:
    """What the Evaluator reads: the dataset and its test transform."""

    def __init__(self, data_cfg: Any) -> None:
        from ssl_kd.data import build_transform, load_dataset

        self.data = load_dataset(data_cfg)
        self._test = build_transform("test", self.data, data_cfg)

    def transform(self, kind: str):
        return self._test


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(
        prog="python -m ssl_kd.evaluate", description="Top-1 / top-5 of a checkpoint on a test split.",
        epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a weight file, or a run folder")
    p.add_argument("--data", required=True, metavar="DATASET", help="cifar10, cifar100, svhn, stl10, npz, ...")
    p.add_argument("--data-root", metavar="DIR", help="folder of the named datasets (default $SSL_KD_DATA)")
    p.add_argument("--data-path", metavar="PATH", help="the .npz file / image folder (--data npz | image_folder)")
    p.add_argument("--model", metavar="NAME", help="which model of the file (needed when it holds several)")
    p.add_argument("--stage", metavar="STAGE", help="run folder: that stage's weight file")
    p.add_argument("--which", choices=["best", "last"], default="last", help="run folder: best or last weights")
    p.add_argument("--arch", help="build this architecture (a file without a model spec)")
    p.add_argument("--num-classes", type=int, help="with --arch: number of classes (default: the dataset's)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module / .py file that registers the model's architecture")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return p.parse_known_args(argv)


def data_config(args: argparse.Namespace, extra: list[str]):
    """The `data:` block from the flags and `data.KEY=VALUE` items, validated like a config's."""
    from pydantic import ValidationError

    from ssl_kd.config import parse_overrides
    from ssl_kd.config.loader import set_dotted
    from ssl_kd.config.validate import format_validation_error
    from ssl_kd.data import DataConfig
    from ssl_kd.errors import UserError

    raw: dict[str, Any] = {"dataset": args.data, "num_workers": args.num_workers}
    if args.data_root:
        raw["root"] = args.data_root
    if args.data_path:
        raw["path"] = args.data_path
    for key, value in parse_overrides(extra):
        if not key.startswith("data."):
            raise UserError(f"'{key}={value}': only data.KEY=VALUE items are taken here (data.normalize=imagenet).")
        set_dotted(raw, key.removeprefix("data."), value)
    try:
        return DataConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(format_validation_error(e, DataConfig, ("data",))) from None


def evaluate_checkpoint(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from ssl_kd.api import load_model, model_file
    from ssl_kd.engine.scoring import Evaluator, eval_mode
    from ssl_kd.errors import UserError

    data_cfg = data_config(args, extra)
    split = _TestSplit(data_cfg)
    classes = args.num_classes or split.data.num_classes
    path = model_file(args.checkpoint, args.model, args.stage, args.which)
    model = load_model(path, args.model, imports=args.imports, arch=args.arch, num_classes=classes)
    n_out = getattr(model, "num_classes", None)
    if n_out is not None and n_out != split.data.num_classes:
        raise UserError(
            f"{path}: the model predicts {n_out} classes, the {data_cfg.dataset} test split has "
            f"{split.data.num_classes}; give the dataset it was trained on."
        )
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model.to(accelerator.device)
    names: list[str] = []

    def predict(batch):
        out = model.predict(batch)
        if isinstance(out, dict) and not names:
            names.extend(out)
        return out

    with eval_mode(model):
        metrics = Evaluator(split, accelerator, data_cfg.num_workers).evaluate(predict, args.batch_size)
    spec = getattr(model, "spec", {}) or {}
    outputs = {(names[0] if names else "logits"): {k: metrics[k] for k in ("top1", "top5", "loss")}}
    for n in names[1:]:
        outputs[n] = {k: metrics[f"{n}/{k}"] for k in ("top1", "top5", "loss")}
    return {
        "checkpoint": str(path), "model": args.model, "arch": spec.get("arch"), "dataset": data_cfg.dataset,
        "test_images": len(split.data.test), "outputs": outputs,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from ssl_kd.errors import UserError

    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        bad = [a for a in extra if a.startswith("-") or "=" not in a]
        if bad:
            raise UserError(f"unknown argument(s) {bad}; see python -m ssl_kd.evaluate --help.")
        res = evaluate_checkpoint(args, extra)
    except UserError as e:
        print(f"ssl_kd: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res))
        return 0
    who = f"model '{res['model']}' " if res["model"] else ""
    print(f"{res['checkpoint']}: {who}({res['arch']}) on the {res['dataset']} test split ({res['test_images']} images)")
    outs = list(res["outputs"].items())
    for i, (name, m) in enumerate(outs):
        label = "" if len(outs) == 1 else f"{name:<12} " + ("(headline) " if i == 0 else " " * 11)
        print(f"  {label}top-1 {100 * m['top1']:.2f}%  top-5 {100 * m['top5']:.2f}%  CE {m['loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
