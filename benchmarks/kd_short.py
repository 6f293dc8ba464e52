"""KD vs DKD vs KD+DOT on real CIFAR next to the student alone; CNN -> ViT KD vs CSKD; DM-KD on a stand-in set.

One teacher is trained first; then four single-stage runs train the same student architecture from the same
initial weights, on the same data order, for the same number of steps: alone (CE), KD (tau 4, 0.1 CE + 0.9 KD),
DKD (alpha 1, beta 2 as mdistiller's small-ResNet pairs, CE 1, warm-up 1 epoch), and KD with the DOT optimizer
(momentum 0.9 -/+ 0.075). Prints a table of test top-1 on the full test split. CPU-sized by default (~10 min on
2 cores); on a GPU give bigger models and budgets.

    python benchmarks/kd_short.py                                    # CIFAR-10, resnet20 -> resnet8
    python benchmarks/kd_short.py --dataset cifar100 --teacher resnet32x4 --student resnet8x4 \\
        --limit-train 50000 --teacher-steps 20000 --student-steps 20000 --workers 8     # GPU

`--suites cskd,dmkd` (CIFAR-100) runs the issue-13 comparisons instead, after the same teacher:

* cskd: the CNN teacher -> a small ViT (patch 4 on 32 px: an 8x8 patch grid, the teacher's last map is 8x8 too),
  same init, data order, AdamW budget: KD on the class token (CE + tau^2 KL, tau 1) vs CSKD (the same + the per-patch
  CKF loss, beta linear 0 -> 1 over the run).
* dmkd: the CNN student distilled with CE weight 0 (no labels read), KD only, on the real CIFAR-100 training images
  vs on a STAND-IN for DM-KD's diffusion-generated set: real CIFAR-10 training images (another dataset, none of
  CIFAR-100's classes), written as class_<c>_seed_0_num_<i>.png (c = the CIFAR-10 class, never read) and read by the
  data.train_source filename parser; plus the stand-in with mixup (alpha 0.4). No diffusion model runs here: the
  stand-in measures the pipeline and KD on out-of-distribution images, not DM-KD's generated data.

    nice -n 10 python benchmarks/kd_short.py --dataset cifar100 --suites cskd,dmkd     # ~30 min on 2 CPU cores

`--suites selfsup` (CIFAR-100) runs the issue-11 comparison after the same teacher: the student alone, KD and DKD
beside HSAKD (the teacher's joint-label heads trained first on its frozen backbone, `--teacher-head-steps`; both
networks multi-exit with the plain teacher's / student's weights as their backbones), SSKD (the teacher's projection
head first), PAD (CE + L2, then PAD-L2), and the teacher-free online methods MCL (x2) and HSSAKD online (x2), whose
first peer starts from the same student init (each reported alone and as the peers' ensemble). `--methods hsakd,mcl`
runs a subset; `--teacher-file` reuses a trained teacher.

    nice -n 10 python benchmarks/kd_short.py --dataset cifar100 --suites selfsup
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

os.environ.setdefault("WANDB_MODE", "disabled")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's ssl_kd, not whichever one is installed


def base_config(args: argparse.Namespace) -> dict:
    return {
        "experiment": {"seed": args.seed, "logger": {"progress": False, "log_every": 100}},
        "data": {
            "dataset": args.dataset, "root": args.data_root, "limit_train": args.limit_train,
            "limit_test": args.limit_test,
            "num_workers": args.workers, "augment": {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "constant"}},
        },
    }  # fmt: skip


def stage(kind: str, steps: int, **extra) -> dict:
    """mdistiller's optimizer (SGD 0.9, lr 0.05, wd 5e-4) with a cosine schedule over the short budget."""
    return {
        "type": kind, "iters": steps, "batch_size": 64,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "scheduler": {"name": "cosine", "interval": "step"},
        "eval": {"batch_size": 500}, "checkpoint": {"every": steps, "unit": "steps"}, **extra,
    }  # fmt: skip


def vit_stage(steps: int, **extra) -> dict:
    """A DeiT-like short recipe for the small ViT: AdamW lr 1e-3, wd 0.05, 5 % warm-up then cosine."""
    return {
        "iters": steps, "batch_size": 64, "train": ["student"], "uses": ["teacher"],
        "optimizer": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05},
        "scheduler": {"name": "cosine", "interval": "step", "warmup": max(1, steps // 20)},
        "eval": {"batch_size": 500}, "checkpoint": {"every": steps, "unit": "steps"}, **extra,
    }  # fmt: skip


def run(cfg: dict, folder: Path) -> tuple[float, float]:
    """Run one config; return (final test top-1 of its last stage's model, wall seconds)."""
    from ssl_kd.run import main

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    if main([str(path), f"experiment.output_dir={folder / 'run'}"]) != 0:
        raise SystemExit(f"run failed: {path}")
    seconds = time.perf_counter() - t0
    results = torch.load(folder / "run" / "checkpoints" / "last.pt", weights_only=True)["results"]
    last = list(results.values())[-1]["last"]
    return next(v for k, v in last.items() if k.endswith("/top1")), seconds


def run_methods(args: argparse.Namespace, models: dict, methods: dict, out: Path, who: str) -> list[tuple]:
    """One single-stage run per method (same models, init and data order); rows of (name, top-1, seconds)."""
    rows = []
    for i, (name, st) in enumerate(methods.items()):
        print(f"== {who}, {name}: {st['iters']} steps", flush=True)
        top1, seconds = run({**base_config(args), "models": models, "stages": {"student": st}}, Path(f"{out}_{i}"))
        rows.append((name, top1, seconds))
    return rows


def student_init(
    args: argparse.Namespace, out: Path, arch: str, name: str, seed_offset: int = 0, key: str = "student", **kwargs
) -> Path:
    """One initialisation of a student (saved as model `key`), shared by every method that trains it."""
    from ssl_kd.models import create_model

    torch.manual_seed(args.seed + seed_offset)
    classes = 100 if args.dataset == "cifar100" else 10
    path = out / f"{name}_init.pt"
    torch.save({"models": {key: create_model(arch, classes, **kwargs).state_dict()}}, path)
    return path


def table(rows: list[tuple[str, float, float]], versus: str) -> None:
    width = max(11, *(len(r[0]) for r in rows))
    print(f"| {'method':<{width}} | {'top-1 %':>7} | {versus:>8} | {'time s':>6} |")
    print(f"|{'-' * (width + 2)}|{'-' * 9}|{'-' * 10}|{'-' * 8}|")
    first = rows[0][1]
    for name, top1, seconds in rows:
        print(f"| {name:<{width}} | {100 * top1:7.2f} | {100 * (top1 - first):+8.2f} | {seconds:6.0f} |", flush=True)


def suite_kd(args: argparse.Namespace, out: Path, teacher_file: Path) -> None:
    """Alone vs KD vs DKD vs KD+DOT, CNN student."""
    init_file = student_init(args, out, args.student, "student")
    warmup = max(1, round(args.student_steps * 64 / args.limit_train * 20 / 240))  # mdistiller's 20 of 240 epochs
    kd = {"uses": ["teacher"], "loss": "kd", "temperature": 4.0, "loss_weights": {"ce": 0.1, "kd": 0.9}}
    methods = {
        "alone (CE)": stage("supervised", args.student_steps),
        "KD": stage("kd", args.student_steps, **kd),
        "DKD": stage("kd", args.student_steps, uses=["teacher"], loss="dkd", loss_weights={"ce": 1.0, "kd": 1.0},
                     dkd={"alpha": 1.0, "beta": 2.0, "warmup_epochs": warmup}),
        "KD+DOT": {**stage("kd", args.student_steps, **kd),
                   "optimizer": {"name": "dot", "lr": 0.05, "momentum": 0.9, "delta": 0.075, "weight_decay": 5e-4}},
    }  # fmt: skip
    rows = []
    for i, (name, st) in enumerate(methods.items()):
        models = {"student": {"arch": args.student, "checkpoint": str(init_file)}}
        if "uses" in st:
            models["teacher"] = {"arch": args.teacher, "checkpoint": str(teacher_file)}
        cfg = {**base_config(args), "models": models, "stages": {"student": {**st, "train": ["student"]}}}
        print(f"== student {args.student}, {name}: {args.student_steps} steps", flush=True)
        top1, seconds = run(cfg, out / f"student_{i}")
        rows.append((name, top1, seconds))

    print(f"\nstudent {args.student}: {args.student_steps} steps each (batch 64), same init and data order\n")
    table(rows, "vs alone")


# the row measured in configs/kd/README.md: the stage's options before they followed the authors' code (a plain ViT,
# class-token soft KD, probabilities fused, position mean, separate patch head, beta per step)
CSKD_PAPER_READING = {
    "token": "cls", "token_kd": "soft", "token_reduction": "batch", "patch_kd": "soft_ce", "patch_reduction": "mean",
    "fusion": "probs", "patch_head": "separate", "predict": "model", "beta": {"shape": "linear", "unit": "step"},
}  # fmt: skip


def suite_cskd(args: argparse.Namespace, out: Path, teacher_file: Path) -> None:
    """CNN teacher -> small ViT: KD on the class token vs CSKD, same init, data order and budget."""
    vit = {"depth": args.vit_depth, "dim": args.vit_dim, "heads": args.vit_heads, "patch_size": 4, "image_size": 32}
    init_file = student_init(args, out, "vit", "vit", **vit)
    models = {
        "student": {"arch": "vit", "kwargs": vit, "checkpoint": str(init_file)},
        "teacher": {"arch": args.teacher, "checkpoint": str(teacher_file)},
    }
    steps = args.vit_steps
    methods = {
        "KD (cls token)": vit_stage(steps, type="kd", temperature=1.0, loss_weights={"ce": 1.0, "kd": 1.0}),
        "CSKD": vit_stage(
            steps, type="cskd", temperature=1.0, loss_weights={"ce": 1.0, "kd": 1.0, "patch": 1.0}, **CSKD_PAPER_READING
        ),
    }
    rows = run_methods(args, models, methods, out / "vit", f"ViT student (depth {args.vit_depth}, dim {args.vit_dim})")
    print(f"\nCNN {args.teacher} -> ViT depth {args.vit_depth} dim {args.vit_dim} patch 4: {steps} steps each "
          f"(batch 64, AdamW 1e-3, cosine), same init and data order\n")  # fmt: skip
    table(rows, "vs KD")


def write_standin(args: argparse.Namespace, folder: Path) -> int:
    """Real CIFAR-10 training images (another dataset) as DM-KD-named PNGs: the stand-in for generated images."""
    import numpy as np
    from PIL import Image

    with np.load(Path(args.data_root) / "cifar10.npz") as z:
        x, y = z["x_train"][: args.standin_images], z["y_train"][: args.standin_images]
    folder.mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(x, y)):
        Image.fromarray(image).save(folder / f"class_{int(label)}_seed_0_num_{i}.png")
    return len(x)


def suite_dmkd(args: argparse.Namespace, out: Path, teacher_file: Path) -> None:
    """KD with CE weight 0 on the real training set vs on the stand-in folder (and with mixup), real test set."""
    init_file = student_init(args, out, args.student, "dmkd_student")
    folder = out / "standin_cifar10"
    n = write_standin(args, folder)
    models = {
        "student": {"arch": args.student, "checkpoint": str(init_file)},
        "teacher": {"arch": args.teacher, "checkpoint": str(teacher_file)},
    }
    source = {"data": {"train_source": {"kind": "filenames", "path": str(folder)}}}
    kd = {"train": ["student"], "uses": ["teacher"], "loss": "kd", "temperature": 4.0,
          "loss_weights": {"ce": 0.0, "kd": 1.0}}  # fmt: skip
    steps = args.dmkd_steps
    methods = {
        "KD, real CIFAR-100 images": stage("kd", steps, **kd),
        "DM-KD on stand-in": stage("kd", steps, **kd, **source),
        "DM-KD on stand-in + mixup 0.4": stage("kd", steps, **kd, **source, mix={"kind": "mixup", "alpha": 0.4}),
    }
    rows = run_methods(args, models, methods, out / "dmkd", f"student {args.student}")
    print(
        f"\nstudent {args.student}, CE weight 0 (no label read), tau 4: {steps} steps each (batch 64), same init; "
        f"stand-in = {n} real CIFAR-10 training images (NOT diffusion-generated); test = real CIFAR-100\n"
    )
    table(rows, "vs real")


ROT = {"exits": [1, 2, 3], "exit_label_factor": 4}  # HSAKD's heads: after stages 1..3, over class x rotation labels


def rotation_net(args: argparse.Namespace, out: Path, arch: str, plain_file: Path, name: str, seed: int) -> Path:
    """A multi-exit network with joint-label heads whose backbone is `plain_file`'s weights (the plain network of
    the other methods: the same teacher, the same student init); the heads are freshly initialised from `seed`."""
    from ssl_kd.models import create_model

    torch.manual_seed(seed)
    classes = 100 if args.dataset == "cifar100" else 10
    net = create_model("multi_exit", classes, backbone=arch, **ROT)
    plain = torch.load(plain_file, weights_only=True)["models"]
    net.backbone.load_state_dict(next(iter(plain.values())))
    path = out / f"{name}_rot.pt"
    torch.save({"models": {name: net.state_dict()}}, path)
    return path


def rot_model(arch: str, checkpoint: Path) -> dict:
    return {"arch": "multi_exit", "kwargs": {"backbone": arch, **ROT}, "checkpoint": str(checkpoint)}


def suite_selfsup(args: argparse.Namespace, out: Path, teacher_file: Path) -> None:
    """Issue 11: alone / KD / DKD beside HSAKD, SSKD, PAD (same teacher, same student init and data order) and the
    teacher-free online methods MCL (x2) and HSSAKD (online, x2), whose first peer starts from the same init."""
    init_file = student_init(args, out, args.student, "student")
    other_init = student_init(args, out, args.student, "peer", seed_offset=1, key="peer")
    steps, head_steps = args.student_steps, args.teacher_head_steps
    plain = {"student": {"arch": args.student, "checkpoint": str(init_file)},
             "teacher": {"arch": args.teacher, "checkpoint": str(teacher_file)}}  # fmt: skip
    warmup = max(1, round(steps * 64 / args.limit_train * 20 / 240))
    rows = []

    folders = iter(out / f"selfsup_{i}" for i in itertools.count())

    def add(name: str, models: dict, st: dict, stages: dict | None = None) -> Path:
        """One run (one stage, or `stages` after it), its row; the student's stage is the first, so data orders
        match. Returns the run's folder, for the rows read from the same run (`also`)."""
        print(f"== {name}: {st['iters']} steps", flush=True)
        folder = next(folders)
        top1, seconds = run({**base_config(args), "models": models, "stages": {"student": st, **(stages or {})}},
                            folder)  # fmt: skip
        rows.append((name, top1, seconds))
        return folder

    def also(name: str, folder: Path, key: str, stage_name: str | None = None, at: int | None = None) -> None:
        """Another number of a finished run: evaluated target `key` of its last (or the named) stage."""
        results = torch.load(folder / "run" / "checkpoints" / "last.pt", weights_only=True)["results"]
        last = results[stage_name]["last"] if stage_name else list(results.values())[-1]["last"]
        rows.insert(len(rows) if at is None else at, (name, last[f"{key}/top1"], 0.0))

    chosen = {m.strip().lower() for m in args.methods.split(",") if m.strip()}

    def wanted(name: str) -> bool:
        return not chosen or name in chosen

    def heads_run(name: str, models: dict, st: dict) -> Path:
        """A one-stage run that trains a teacher's heads; returns its weight file."""
        folder = out / f"heads_{name}"
        print(f"== teacher heads for {name}: {st['iters']} steps", flush=True)
        run({**base_config(args), "models": models, "stages": {"heads": st}}, folder)
        return folder / "run" / "checkpoints" / "heads" / "last.pt"

    kd = {"uses": ["teacher"], "loss": "kd", "temperature": 4.0, "loss_weights": {"ce": 0.1, "kd": 0.9}}
    if wanted("alone"):
        add("alone (CE)", {"student": plain["student"]}, stage("supervised", steps, train=["student"]))
    if wanted("kd"):
        add("KD", plain, stage("kd", steps, train=["student"], **kd))
    if wanted("dkd"):
        add("DKD", plain, stage("kd", steps, train=["student"], uses=["teacher"], loss="dkd",
                                loss_weights={"ce": 1.0, "kd": 1.0},
                                dkd={"alpha": 1.0, "beta": 2.0, "warmup_epochs": warmup}))  # fmt: skip
    if wanted("hsakd"):  # the teacher's heads on its frozen backbone, then HSAKD
        t_rot = rotation_net(args, out, args.teacher, teacher_file, "teacher", args.seed + 7)
        s_rot = rotation_net(args, out, args.student, init_file, "student", args.seed + 8)
        heads = heads_run(
            "hsakd",
            {"teacher": rot_model(args.teacher, t_rot)},
            stage("hsakd_teacher", head_steps, train=["teacher"], freeze=["teacher.backbone"]),
        )
        add("HSAKD", {"student": rot_model(args.student, s_rot), "teacher": rot_model(args.teacher, heads)},
            stage("hsakd", steps, train=["student"], uses=["teacher"], temperature=3.0))  # fmt: skip
    if wanted("sskd"):  # the teacher's projection head, then the student
        head = {**stage("sskd_head", head_steps, uses=["teacher"]),  # the reference's x0.1 at 30 / 45 of 60 epochs
                "scheduler": {"name": "multistep", "milestones": [head_steps // 2, 3 * head_steps // 4],
                              "gamma": 0.1, "interval": "step"}}  # fmt: skip
        heads = heads_run("sskd", {"teacher": plain["teacher"]}, head)
        st = stage("sskd", steps, train=["student"], uses=["teacher"])  # 0.1 / 0.9 / 2.7 / 10, tau 4 / 4 / 0.5
        st["init"] = {"mode": "checkpoint", "path": str(heads), "models": [], "modules": ["teacher_head"]}
        add("SSKD", plain, st)
    if wanted("pad"):  # the official chain: CE + L2, then PAD-L2 at a low LR
        pad_steps = max(1, steps // 8)  # 30 of the 240 epochs
        phase2 = {**stage("pad", pad_steps, train=["student"], uses=["teacher"], uncertainty=True),
                  "optimizer": {"name": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 1e-4},
                  "scheduler": {"name": "constant"},
                  "init": {"mode": "stage", "stage": "student", "which": "last", "models": ["student"],
                           "modules": ["connector"]}}  # fmt: skip
        folder = add(
            f"CE+L2, then PAD-L2 (+{pad_steps} steps)",
            plain,
            stage("pad", steps, train=["student"], uses=["teacher"], uncertainty=False),
            stages={"pad": phase2},
        )
        also("CE+L2 (PAD's phase 1)", folder, "student", stage_name="student", at=len(rows) - 1)
    if wanted("mcl"):  # MCL's own sampler (m = 2 per class) and weights
        peers = {"student": {"arch": args.student, "checkpoint": str(init_file)},
                 "peer": {"arch": args.student, "checkpoint": str(other_init)}}  # fmt: skip
        folder = add("MCL (x2), student", peers, stage("mcl", steps, train=["student", "peer"]))
        also("MCL (x2), other peer", folder, "peer")
        also("MCL (x2), ensemble", folder, "ensemble")
    if wanted("hssakd"):
        p1 = rotation_net(args, out, args.student, init_file, "net1", args.seed + 9)
        p2 = rotation_net(args, out, args.student, other_init, "net2", args.seed + 10)
        peers = {"net1": rot_model(args.student, p1), "net2": rot_model(args.student, p2)}
        online = stage("hssakd_online", steps, train=["net1", "net2"], temperature=3.0)
        folder = add("HSSAKD online (x2), net1 (student init)", peers, online)
        also("HSSAKD online (x2), ensemble", folder, "ensemble")

    print(
        f"\nstudent {args.student} (teacher {args.teacher}): {steps} steps each (batch 64 images; the rotation "
        f"methods forward 4 rotated copies of each), same init and data order; teacher heads {head_steps} steps\n"
    )
    table(rows, "vs alone")


SUITES = {"kd": suite_kd, "cskd": suite_cskd, "dmkd": suite_dmkd, "selfsup": suite_selfsup}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=os.environ.get("SSL_KD_DATA", str(ROOT / ".." / "shared" / "data")))
    ap.add_argument("--dataset", default="cifar10", choices=["cifar10", "cifar100"])
    ap.add_argument("--limit-train", type=int, default=20000, help="class-balanced train subset")
    ap.add_argument("--limit-test", type=int, default=None, help="class-balanced test subset (default: all)")
    ap.add_argument("--teacher", default="resnet20")
    ap.add_argument("--student", default="resnet8")
    ap.add_argument("--teacher-steps", type=int, default=2000)
    ap.add_argument("--student-steps", type=int, default=1200)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the run folders here (default: a temp folder)")
    ap.add_argument("--suites", default="kd", help="comma-separated: kd (alone/KD/DKD/DOT), cskd, dmkd")
    ap.add_argument("--vit-steps", type=int, default=1200)
    ap.add_argument("--vit-depth", type=int, default=4)
    ap.add_argument("--vit-dim", type=int, default=96)
    ap.add_argument("--vit-heads", type=int, default=3)
    ap.add_argument("--dmkd-steps", type=int, default=1200)
    ap.add_argument("--standin-images", type=int, default=10000, help="CIFAR-10 images in the DM-KD stand-in")
    ap.add_argument("--teacher-head-steps", type=int, default=400, help="selfsup: HSAKD's / SSKD's teacher heads")
    ap.add_argument(
        "--methods",
        default="",
        help="selfsup: only these, comma-separated: alone, kd, dkd, hsakd, sskd, pad, mcl, hssakd",
    )
    ap.add_argument("--teacher-file", default=None, help="reuse a trained teacher (a stage weight file)")
    args = ap.parse_args()
    if not (Path(args.data_root) / f"{args.dataset}.npz").exists():
        print(f"needs {args.data_root}/{args.dataset}.npz (set --data-root or SSL_KD_DATA)", file=sys.stderr)
        return 2
    suites = [x.strip() for x in args.suites.split(",") if x.strip()]
    for name in suites:
        if name not in SUITES:
            print(f"unknown suite {name!r}; choose from {', '.join(SUITES)}", file=sys.stderr)
            return 2
    torch.set_num_threads(max(1, (os.cpu_count() or 2)))
    out = Path(args.out or tempfile.mkdtemp(prefix="kd_short_"))
    out.mkdir(parents=True, exist_ok=True)

    # 1) the teacher
    teacher_cfg = {**base_config(args), "models": {"teacher": {"arch": args.teacher}},
                   "stages": {"teacher": stage("supervised", args.teacher_steps, train=["teacher"])}}  # fmt: skip
    if args.teacher_file:
        teacher_file = Path(args.teacher_file)
        teacher_s = 0.0
        teacher_top1 = torch.load(teacher_file.parents[1] / "last.pt", weights_only=True)["results"]["teacher"]
        teacher_top1 = teacher_top1["last"]["teacher/top1"]
    else:
        print(f"== teacher {args.teacher}: {args.teacher_steps} steps", flush=True)
        teacher_top1, teacher_s = run(teacher_cfg, out / "teacher")
        teacher_file = out / "teacher" / "run" / "checkpoints" / "teacher" / "last.pt"

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    test = f"{args.limit_test} test images (class-balanced)" if args.limit_test else "full test split"
    print(f"\n{args.dataset.upper()}: {args.limit_train} train images, {test}; seed {args.seed}; {device}")
    print(f"teacher {args.teacher}: {args.teacher_steps} steps, top-1 {100 * teacher_top1:.2f}% ({teacher_s:.0f} s)")
    for name in suites:
        SUITES[name](args, out, teacher_file)
    print(f"\nrun folders: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
