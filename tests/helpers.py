"""What the tests share, importable from every tier (pyproject's pytest `pythonpath`) and by benchmarks/ scripts:
fake data in the real file formats, the CLI with a simulated crash, the exact-resume check, tiny configs, and the
shipped configs with their short-run overrides. No pytest import here: benchmarks/config_fingerprints.py uses it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ssl_kd.engine import Callback

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()


def real_data_root(name: str = "cifar10.npz") -> Path | None:
    """The folder holding the real data file `name`: `$SSL_KD_DATA` first (where a user keeps their data), then the
    shared data folder beside this checkout; None when neither has it (a test that needs it skips). Every test and
    fixture that reads real data finds it here."""
    for root in (os.environ.get("SSL_KD_DATA"), SHARED_DATA):
        if root and (Path(root).expanduser() / name).is_file():
            return Path(root).expanduser().resolve()
    return None


# ------------------------------------------------------------------------------------------------ fake data
def write_fake_npz(
    path: Path, num_classes: int, per_class_train: int, per_class_test: int, size: int = 32, unlabeled: int = 0
) -> Path:
    """Real-format (uint8 NHWC) stand-ins with class-dependent colour so a few steps can learn something."""
    rng = np.random.default_rng(num_classes)

    def make(per_class):
        y = np.repeat(np.arange(num_classes), per_class)
        x = rng.integers(0, 256, size=(len(y), size, size, 3), dtype=np.uint8)
        x[..., 0] = (y[:, None, None] * 255 // max(1, num_classes - 1)).astype(np.uint8)
        return x, y.astype(np.int64)

    x_tr, y_tr = make(per_class_train)
    x_te, y_te = make(per_class_test)
    extra = {}
    if unlabeled:
        extra["x_unlabeled"] = rng.integers(0, 256, size=(unlabeled, size, size, 3), dtype=np.uint8)
        extra["y_unlabeled"] = np.full(unlabeled, -1, dtype=np.int64)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, **extra)
    return path


def write_synthetic_folder(folder: Path, num_classes: int, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """DM-KD-style generated images: PNGs named class_<c>_seed_<s>_num_<i>.png (class-dependent red channel)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        for i in range(per_class):
            x = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            x[..., 0] = c * 255 // max(1, num_classes - 1)
            Image.fromarray(x).save(folder / f"class_{c}_seed_{seed + c}_num_{i}.png")
    return folder


def write_fake_plants(path: Path, num_classes: int = 51, per_class_train: int = 3, per_class_test: int = 1) -> Path:
    """A stand-in for the UCSC plants file (ucsc_plants32.npz): the same keys (dates as 'YYYY-MM-DD', a constant
    location)."""
    write_fake_npz(path, num_classes, per_class_train, per_class_test)
    with np.load(path) as z:
        arrays = dict(z)
    rng = np.random.default_rng(51)
    for split in ("train", "test"):
        n = len(arrays[f"y_{split}"])
        days = rng.integers(0, 365 * 3, n)
        dates = np.datetime64("2019-01-01") + days.astype("timedelta64[D]")
        arrays[f"date_{split}"] = np.array([str(d) for d in dates])
        arrays[f"lat_{split}"] = np.full(n, 36.99)
        arrays[f"lon_{split}"] = np.full(n, -122.06)
    arrays["label_names"] = np.array([f"species_{i}" for i in range(num_classes)])
    np.savez(path, **arrays)
    return path


def write_fake_inat(root: Path, num_classes: int = 4, files_per_class: int = 3, size: int = 8) -> Path:
    """iNaturalist-format JSONs (train_mini.json, val.json) and tiny PNGs under `root`; one image lacks a location.
    The train JSON lists 520 entries (the shipped config's batch is 512) that reuse a few image files."""
    from PIL import Image

    rng = np.random.default_rng(7)
    for split, file, n in (("train_mini", "train_mini.json", 520), ("val", "val.json", 12)):
        images, anns = [], []
        for i in range(n):
            c = i % num_classes
            name = f"{split}/{c:05d}_cls/{i % (num_classes * files_per_class)}.png"
            if not (root / name).exists():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                px = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                px[..., 0] = 60 * c
                Image.fromarray(px).save(root / name)
            lat = None if i == 0 else float(10 * c - 20)
            images.append({"id": i, "file_name": name, "latitude": lat, "longitude": float(30 * c),
                           "date": f"2020-0{1 + c}-15 10:30:00+00:00"})  # fmt: skip
            anns.append({"id": i, "image_id": i, "category_id": c})
        cats = [{"id": c, "name": f"cls{c}"} for c in range(num_classes)]
        (root / file).write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def write_fake_imagenet(root: Path, num_classes: int = 10, train_per_class: int = 104, val_per_class: int = 2) -> Path:
    """ILSVRC2012's extracted layout (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG) with small JPEGs of varied shapes and
    class-dependent colour: 1,040 training images, as many as the recipes' largest global batch (1024) needs."""
    from PIL import Image

    rng = np.random.default_rng(1000)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in range(num_classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                px = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                px[..., 0] = c * 255 // max(1, num_classes - 1)
                Image.fromarray(px).save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return root


def make_fake_data_root(root: Path) -> Path:
    """A data.root holding tiny cifar10.npz / cifar100.npz and the other shipped configs' datasets (svhn, stl10, the
    plant photos with dates, an iNaturalist folder, a DM-KD-style synthetic folder), so every shipped config can run
    offline."""
    root.mkdir(parents=True, exist_ok=True)
    write_synthetic_folder(root / "dmkd_cifar100", 100, 2)  # 200 >= the shipped batch size
    write_fake_npz(root / "cifar10.npz", 10, 52, 10)  # >= 512 train images: the linear probe's batch
    write_fake_npz(root / "cifar100.npz", 100, 2, 1)
    write_fake_npz(root / "svhn.npz", 10, 20, 10, unlabeled=40)
    write_fake_npz(root / "stl10.npz", 10, 4, 2, size=96, unlabeled=40)
    write_fake_plants(root / "ucsc_plants32.npz")
    write_fake_inat(root)
    write_fake_imagenet(root / "imagenet")
    write_synthetic_folder(root / "dmkd_imagenet", 10, 26)  # DM-KD's generated ImageNet images, its 10 fake classes
    return root


# ------------------------------------------------------------------------------------------------ the CLI
def run_cli(*args: Any) -> int:
    """`python -m ssl_kd.run ARGS` in this process; returns its exit code."""
    from ssl_kd.run import main

    return main([str(a) for a in args])


def one_line_error(capsys: Any, *needles: str) -> str:
    """The CLI's stderr (read from pytest's `capsys`) is one `ssl_kd: error:` line, no traceback, holding `needles`."""
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("ssl_kd: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def torchrun_cli(*args: Any, port: int, timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m ssl_kd.run ARGS`: two CPU processes (gloo) with this checkout on the path and
    the tests' one intra-op thread (a run compared with one in this process reduces in the same order)."""
    cmd = ["torchrun", "--nproc_per_node", "2", "--master_port", str(port), "-m", "ssl_kd.run", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


class Crash(Callback):
    """Simulates a crash (Ctrl-C) right after global step `at`; the run then resumes from its last checkpoint."""

    order = 1000

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, runner, terms) -> None:
        if runner.global_step == self.at:
            raise KeyboardInterrupt


def quickstart_short(iters: int) -> list[str]:
    """Overrides making the quickstart (digits teacher -> student) `iters` steps per stage, without a progress bar."""
    return [
        "stages.teacher.epochs=null", f"stages.teacher.iters={iters}", "stages.distill.epochs=null",
        f"stages.distill.iters={iters}", "experiment.logger.progress=false",
    ]  # fmt: skip


def train_quickstart_teacher(out: Path, epochs: int) -> Path:
    """The quickstart's digits teacher trained alone for `epochs` (its distill stage off); returns its weight file, for
    tests that skip the teacher stage the documented way (`init` from a file)."""
    assert run_cli(CONFIGS / "quickstart.yaml", f"stages.teacher.epochs={epochs}", "stages.distill.enabled=false",
                   "experiment.logger.progress=false", f"experiment.output_dir={out}") == 0  # fmt: skip
    return out / "checkpoints" / "teacher" / "last.pt"


@contextlib.contextmanager
def extra_callback(callback: Callback) -> Iterator[None]:
    """Inside the block every run (CLI included) gets `callback` after its own; the callbacks are as before after."""
    import ssl_kd.callbacks as callbacks_mod

    orig = callbacks_mod.experiment_callbacks
    callbacks_mod.experiment_callbacks = lambda cfg: [*orig(cfg), callback]
    try:
        yield
    finally:
        callbacks_mod.experiment_callbacks = orig


def crash_at(at: int) -> contextlib.AbstractContextManager[None]:
    """Inside the block every run gets a `Crash(at)` callback after its own."""
    return extra_callback(Crash(at))


def run_crashing(at: int, *args: Any) -> int:
    """run_cli with a simulated crash after global step `at` (exit 130)."""
    with crash_at(at):
        return run_cli(*args)


# ------------------------------------------------------------------------------------------------ run folders
def load_checkpoint(run: Path, rel: str = "checkpoints/last.pt") -> dict:
    return torch.load(run / rel, weights_only=True)


def read_records(run: Path, drop: Sequence[str] = ("it_s",)) -> list[dict]:
    """metrics.jsonl without its wall-clock field (it/s), the only one that differs between equal runs."""
    from ssl_kd.engine import read_metrics

    return [{k: v for k, v in r.items() if k not in drop} for r in read_metrics(run)]


def assert_same_tree(a: Any, b: Any, where: str = "") -> None:
    """Nested dicts / lists of tensors and plain values: the same keys and bit-identical tensors."""
    if isinstance(a, Mapping):
        assert isinstance(b, Mapping) and a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}" if where else str(k))
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _part(run: Path, spec: str) -> Any:
    """'file.pt' or 'file.pt:key.sub': a run folder's file (relative path), or a part of it."""
    rel, _, keys = spec.partition(":")
    obj = load_checkpoint(run, rel)
    for k in filter(None, keys.split(".")):
        obj = obj[k]
    return obj


Args = Sequence[Any] | Callable[[Path], Sequence[Any]]


def _argv(args: Args, out: Path) -> list[Any]:
    """`args` is the CLI's arguments (the output folder is appended) or a function of the output folder."""
    return list(args(out)) if callable(args) else [*args, f"experiment.output_dir={out}"]


def assert_resume_exact(
    args: Args,
    at: int,
    tmp: Path,
    *,
    full: Path | None = None,
    compare: Sequence[str] = ("checkpoints/last.pt:models",),
    metrics: bool = False,
    after_crash: Callable[[Path], None] | None = None,
) -> tuple[Path, Path]:
    """Exact resume: run uninterrupted (into tmp/full, unless `full` names a finished run of the same arguments); run
    again into tmp/cut with a simulated crash after global step `at` (exit 130), call `after_crash(cut)` (to look at
    the checkpoint it left), `--resume` it; then every part named in `compare` ('file' or 'file:key.sub', relative
    to the run folder; default: every model's final weights) is bit-identical, and with `metrics` so is every
    metrics record (less it/s). Returns (full, cut) for the test's own further checks."""
    if full is None:
        full = tmp / "full"
        assert run_cli(*_argv(args, full)) == 0
    cut = tmp / "cut"
    assert run_crashing(at, *_argv(args, cut)) == 130
    if after_crash is not None:
        after_crash(cut)
    assert run_cli(cut / "config.yaml", "--resume") == 0
    for spec in compare:
        assert_same_tree(_part(full, spec), _part(cut, spec), spec)
    if metrics:
        assert read_records(full) == read_records(cut)
    return full, cut


# ------------------------------------------------------------------------------------------------ tiny configs
def tiny_config(
    path: Path,
    models: dict,
    stages: dict,
    *,
    data: dict | None = None,
    name: str = "t",
    seed: int = 0,
    log_every: int = 1,
) -> Path:
    """A YAML of the embedded digits data (8 px, 10 classes, no download) with the given models and stages: a run of
    seconds, no progress bar, every step logged. `data` adds to (or replaces) the data keys."""
    cfg = {
        "experiment": {"name": name, "seed": seed, "logger": {"progress": False, "log_every": log_every}},
        "data": {"dataset": "digits", "num_workers": 0, **(data or {})},
        "models": models,
        "stages": stages,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


TINY_VIT = {"image_size": 8, "patch_size": 2, "depth": 1, "dim": 32, "heads": 2}  # a `vit` on digits: a 4x4 patch grid


# ------------------------------------------------------------------------------------------------ shipped configs
SSL_TYPES = {"fixmatch", "flexmatch", "fullmatch", "fullflex", "freematch", "softmatch", "adamatch", "dash", "uda",
             "pseudolabel", "pimodel", "meanteacher"}  # fmt: skip
ROTATION_TYPES = {"hsakd_teacher", "hsakd", "hssakd_online", "sskd_head", "sskd"}  # 4 rotated rows per image


# one shipped config per stateful stage type (EMA models, histories, memory banks, snapshots, shape-changing chains):
# the fault-injection test (tests/e2e/test_faults.py) and its long version (benchmarks/fault_injection.py)
STATEFUL_CONFIGS = [
    "fixmatch_cifar10_40", "flexmatch_cifar10_40", "fullmatch_cifar10_40", "selfkd/mixskd_cifar100_resnet18",
    "selfkd/recursivemix_cifar10_resnet18", "selfkd/ctc_cifar100_resnet18", "kd/sskd_res32x4_res8x4",
    "kd/mcl_x2_resnet32", "kd/pad_res32x4_res8x4", "kd/kd_ctkd_wrn40_2_wrn16_2", "kd/kd_dot_wrn40_2_wrn16_2",
    "kd/hsakd_wrn40_2_wrn16_2", "kd/cskd_res32x4_vit_cifar100", "prune/ghfp_resnet56_cifar10",
    "prune/ghfp_kd_res32x4_res8x4", "dynamic_mlp/plants32_resnet18_c", "fullmatch_then_kd_cifar10_4000",
]  # fmt: skip


def fault_overrides(path: Path, data_root: Path, steps: int) -> list[str]:
    """small_overrides with `steps` steps per stage, a checkpoint every 2 steps and an evaluation every 4: a run
    with many points to be killed at, in seconds."""
    from ssl_kd.config import load_yaml

    out = [*small_overrides(path, data_root), "experiment.logger.progress=false"]
    for st in load_yaml(path).get("stages", {}):
        out += [f"stages.{st}.iters={steps}", f"stages.{st}.checkpoint.every=2", f"stages.{st}.checkpoint.unit=steps",
                f"stages.{st}.eval.every=4", f"stages.{st}.eval.unit=steps"]  # fmt: skip
    return out


def random_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Trained-like BN statistics and affine parameters, so a zeroed filter still outputs BN(0) != 0 (the case a
    pruning export must fold exactly)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model


def ssl_digits_config(
    path: Path,
    type_: str,
    *,
    iters: int,
    eval_every: int,
    log_every: int,
    checkpoint_every: int | None = None,
    loss_weights: Mapping[str, float] | None = None,
) -> Path:
    """A small SSL run on digits, written to `path`: 20 labels, cnn_small (width 16), batch 10, mu 2, EMA 0.9."""
    stage: dict[str, Any] = {"type": type_, "train": ["net"], "iters": iters, "batch_size": 10, "uratio": 2,
                             "ema": {"decay": 0.9}, "eval": {"every": eval_every, "batch_size": 400}}  # fmt: skip
    if checkpoint_every is not None:
        stage["checkpoint"] = {"every": checkpoint_every}
    if loss_weights is not None:
        stage["loss_weights"] = dict(loss_weights)
    cfg = {"_base_": str(CONFIGS / "_base_" / "digits.yaml"), "data": {"ssl": {"num_labels": 20}},
           "models": {"net": {"arch": "cnn_small", "kwargs": {"width": 16}}}, "stages": {"ssl": stage},
           "experiment": {"logger": {"log_every": log_every}}}  # fmt: skip
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def shipped_configs() -> list[Path]:
    """Every runnable YAML under configs/ (the `_base_` pieces are not)."""
    return sorted(p for p in CONFIGS.rglob("*.yaml") if "_base_" not in p.parts)


def fit_labels(raw: dict) -> list[str]:
    """The fake files hold a few images per class: one label per class instead of the paper's count."""
    if raw.get("data", {}).get("ssl", {}).get("num_labels"):
        return [f"data.ssl.num_labels={100 if raw['data'].get('dataset') == 'cifar100' else 10}"]
    return []


def tiny_overrides(path: Path, data_root: Path) -> list[str]:
    """Shrink a config to seconds: 2 steps per stage, small batches, tiny data (and, for SSL, 1 label per class
    and mu = 1, since the fake files hold a few images per class); the models are the shipped (paper) sizes.
    benchmarks/config_fingerprints.py hashes the runs these give: change them and its old hashes no longer apply."""
    from ssl_kd.config import load_yaml

    raw = load_yaml(path)
    out = [f"data.root={data_root}", "data.num_workers=0", "data.limit_test=50", *fit_labels(raw)]
    if raw.get("data", {}).get("dataset") in ("inat", "imagenet"):
        out.append("data.image_size=32")  # the fake photos are small; 224 px ResNet-50 steps cost a minute
        out += [
            f"models.{n}.kwargs.image_size=32"
            for n, m in raw.get("models", {}).items()
            if m["arch"] in ("deit_tiny", "deit_small")
        ]  # fmt: skip  (a ViT's position embedding fixes its size)
    out += [f"models.{n}.pretrained=null" for n, m in raw.get("models", {}).items() if m.get("pretrained")]  # offline
    for name, st in raw.get("stages", {}).items():
        batch = 4 if st.get("type") in ROTATION_TYPES else 16  # the same rows per step
        out += [f"stages.{name}.epochs=None", f"stages.{name}.iters=2", f"stages.{name}.batch_size={batch}",
                f"stages.{name}.eval.batch_size=25"]  # fmt: skip
        if st.get("type") in SSL_TYPES:
            out.append(f"stages.{name}.uratio=1")
        if "unlabeled_batch_size" in st:
            out.append(f"stages.{name}.unlabeled_batch_size=16")
    return out


# the smallest member of each shipped model's family: the same class, hence the same code path (stage-based for
# HSAKD's exits, prunable units, feature maps for PAD / CSKD, the distillation token), at a fraction of the cost
SMALL_ARCH: dict[str, tuple[str, dict[str, Any]]] = {
    **{a: ("resnet8", {}) for a in ("resnet20", "resnet32", "resnet56", "resnet32x4", "resnet8x4")},
    **{a: ("wrn_16_1", {}) for a in ("wrn_40_2", "wrn_16_2")},
    "wrn_28_8": ("wrn_28_2", {}),
    "resnet34": ("resnet18", {}),
    "resnet50": ("resnet18", {}),  # torchvision's ResNet class (Bottleneck -> BasicBlock, the same contract)
    "regnet_y_16gf": ("regnet_y_400mf", {}),
    **{
        a: ("vit", {"image_size": 32, "patch_size": 8, "depth": 1, "dim": 32, "heads": 2})
        for a in ("deit_tiny", "deit_small")
    },
    "cifar_resnet18": ("cifar_resnet18", {"width": 8}),
    "vit_cifar_tiny": ("vit", {"depth": 1, "dim": 32, "heads": 2}),
}


def small_model(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(arch, kwargs) of the small stand-in for a config's model entry (its own kwargs kept, multi_exit's backbone
    shrunk the same way)."""
    arch, kwargs = spec["arch"], dict(spec.get("kwargs") or {})
    if arch == "multi_exit":
        backbone, extra = SMALL_ARCH.get(kwargs.get("backbone", "cifar_resnet18"), (kwargs.get("backbone"), {}))
        return arch, {**kwargs, "backbone": backbone, "backbone_kwargs": {**(kwargs.get("backbone_kwargs") or {}),
                                                                          **extra}}  # fmt: skip
    small, extra = SMALL_ARCH.get(arch, (arch, {}))
    return small, {**kwargs, **extra}


def small_overrides(path: Path, data_root: Path) -> list[str]:
    """tiny_overrides with smaller batches, and every model swapped for the small member of its family (SMALL_ARCH):
    every stage still runs its own code, in about a second rather than the minute a paper-size ResNet-32x4 chain
    takes on a CPU."""
    from ssl_kd.config import load_yaml

    raw = load_yaml(path)
    out = [*tiny_overrides(path, data_root), "data.limit_test=20"]  # later overrides win
    for name, st in raw.get("stages", {}).items():  # smaller batches than tiny_overrides', 2 evaluation batches
        # (SSL steps push 1 + 2 mu views through the SSL WRN-28-2, which has no smaller sibling: 4 labelled rows)
        batch = 2 if st.get("type") in ROTATION_TYPES else 4 if st.get("type") in SSL_TYPES else 8
        out += [f"stages.{name}.batch_size={batch}", f"stages.{name}.eval.batch_size=10"]
        if "unlabeled_batch_size" in st:
            out.append(f"stages.{name}.unlabeled_batch_size=8")
    for name, spec in raw.get("models", {}).items():
        arch, kwargs = small_model(spec)
        if (arch, kwargs) != (spec["arch"], spec.get("kwargs") or {}):
            out += [f"models.{name}.arch={arch}", f"models.{name}.kwargs={json.dumps(kwargs)}"]
    return out
