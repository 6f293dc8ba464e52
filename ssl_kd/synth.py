"""`python -m ssl_kd.synth`: DM-KD's synthetic training set from a class-conditional diffusion model (DiT).

    pip install -e ".[synth]"      # diffusers: an optional extra, imported only here (not by ssl_kd.run)
    python -m ssl_kd.synth --model DIT_DIR --classes 0-999 --per-class 200 --out $SSL_KD_DATA/dmkd_imagenet

As DM-KD's AIGC_generate.py (zhengli97/DM-KD@bbab9ce8): for each class and each seed, seed the generator, draw `--batch`
images (10) of that class at guidance scale 2 ("low fidelity": the better teaching material) with 100 sampling
steps, and save them as `class_<c>_seed_<s>_num_<i>.png`, the names `data.train_source` parses by default; files
that already exist are skipped, so an interrupted run continues. The model is a diffusers DiT pipeline in a local
folder (e.g. facebook/DiT-XL-2-256 downloaded elsewhere): this tool never downloads weights. Differences from the
reference: diffusers' DiTPipeline samples with the scheduler stored with the weights (the reference respaces DDPM
to 100 steps), and its noise comes from a torch.Generator seeded per (class, seed) on the sampling device.

Class ids: `--classes` takes DiT label ids (the ImageNet classes, 0-999), saved under the same index; `--class-map
FILE.json` maps the dataset's class index to a DiT label id ({"0": 948, ...}), e.g. for CIFAR-100, whose classes
are not ImageNet's (how DM-KD chose them for CIFAR is not in its code; the map is yours).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ssl_kd.errors import UserError

DOWNLOAD_HINT = (
    "download a diffusers DiT pipeline on a machine with network access, e.g. "
    "`huggingface-cli download facebook/DiT-XL-2-256 --local-dir DIT_DIR`, copy the folder here and pass "
    "--model DIT_DIR"
)


def parse_classes(spec: str) -> list[int]:
    """'0-9,15,20-21' -> [0, ..., 9, 15, 20, 21]."""
    out: list[int] = []
    try:
        for part in spec.split(","):
            a, _, b = part.strip().partition("-")
            out.extend(range(int(a), int(b) + 1) if b else [int(a)])
    except ValueError:
        raise UserError(f"--classes: cannot read {spec!r}; give ids and ranges like 0-99 or 1,5,9-12.") from None
    return out


def class_plan(classes: str | None, class_map: str | None) -> list[tuple[int, int]]:
    """(class index written in the file name, DiT label id) pairs."""
    if (classes is None) == (class_map is None):
        raise UserError("give the classes to generate as --classes IDS or --class-map FILE.json (one of the two).")
    if classes is not None:
        return [(c, c) for c in parse_classes(classes)]
    path = Path(class_map).expanduser()
    try:
        raw = json.loads(path.read_text())
        return sorted((int(k), int(v)) for k, v in raw.items())
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(
            f"--class-map: cannot read {path} as a JSON object {{class index: DiT label id}} ({e})."
        ) from None


def load_pipeline(model: str, device: str) -> Callable[..., Any]:
    """A diffusers DiT pipeline from a local folder, or a UserError saying what is missing."""
    folder = Path(model).expanduser()
    if not (folder / "model_index.json").is_file():
        raise UserError(f"--model: no diffusers DiT pipeline at {folder} (no model_index.json); {DOWNLOAD_HINT}.")
    try:
        from diffusers import DiTPipeline
    except ImportError:
        raise UserError(
            "python -m ssl_kd.synth needs diffusers, an optional extra: pip install -e '.[synth]'"
        ) from None
    try:
        pipe = DiTPipeline.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # diffusers raises OSError / ValueError / EnvironmentError for incomplete folders
        raise UserError(f"--model: cannot load a DiT pipeline from {folder} ({e}); {DOWNLOAD_HINT}.") from None
    return pipe.to(device)


def generate(
    pipe: Callable[..., Any],
    plan: Sequence[tuple[int, int]],
    out: Path,
    per_class: int,
    batch: int = 10,
    start_seed: int = 0,
    cfg_scale: float = 2.0,
    steps: int = 100,
    size: int | None = None,
    device: str = "cpu",
) -> list[Path]:
    """Write ceil(per_class / batch) seeds x `batch` images per class; returns the files written (not skipped).

    `pipe(class_labels=..., guidance_scale=..., num_inference_steps=..., generator=...)` returns an object whose
    `.images` are PIL images (diffusers' DiTPipeline)."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    seeds = range(start_seed, start_seed + -(-per_class // batch))
    written = []
    for name, label in plan:
        for seed in seeds:
            files = [out / f"class_{name}_seed_{seed}_num_{i}.png" for i in range(batch)]
            if all(f.is_file() for f in files):
                continue
            generator = torch.Generator(device=device).manual_seed(seed)
            images = pipe(
                class_labels=[label] * batch, guidance_scale=cfg_scale, num_inference_steps=steps, generator=generator
            ).images
            for f, image in zip(files, images):
                if size is not None:
                    image = image.resize((size, size), 3)  # bicubic
                image.save(f)
                written.append(f)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ssl_kd.synth", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="local folder of a diffusers DiT pipeline (never downloaded)")
    p.add_argument("--out", required=True, help="output folder (use it as data.train_source.path)")
    p.add_argument("--classes", help="DiT label ids, e.g. 0-999 (file class = the id)")
    p.add_argument("--class-map", help="JSON {dataset class index: DiT label id}")
    p.add_argument("--per-class", type=int, default=200, help="images per class (DM-KD: 200k on ImageNet = 200)")
    p.add_argument("--batch", type=int, default=10, help="images per seed (DM-KD: 10)")
    p.add_argument("--start-seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=2.0, help="guidance scale (DM-KD: 2 = low fidelity, 4 = high)")
    p.add_argument("--steps", type=int, default=100, help="sampling steps (DM-KD: 100; 250 for high fidelity)")
    p.add_argument("--size", type=int, default=None, help="resize the saved images (default: as generated)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = class_plan(args.classes, args.class_map)
        if args.per_class < 1 or args.batch < 1:
            raise UserError("--per-class and --batch must be positive.")
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = load_pipeline(args.model, device)
        out = Path(args.out).expanduser()
        files = generate(
            pipe, plan, out, args.per_class, args.batch, args.start_seed, args.cfg_scale, args.steps, args.size, device
        )
    except UserError as e:
        print(f"ssl_kd.synth: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files)} images to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
