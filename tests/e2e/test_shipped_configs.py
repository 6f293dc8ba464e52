"""Every shipped config: --dry-run at its paper size, and a few real steps on tiny data (fake files in the real
formats) with each model swapped for the small member of its family (helpers.small_overrides)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import CONFIGS, SSL_TYPES, fit_labels, run_cli, shipped_configs, small_model, small_overrides

from ssl_kd.config import load_yaml
from ssl_kd.engine.run_dir import read_metrics

SHIPPED = shipped_configs()
# ImageNet recipes whose stage types their CIFAR configs already run here: their few steps are in the slow tier
SLOW_RUNS = {"imagenet/hsakd_r34_r18", "imagenet/pad_l2_r34_r18", "imagenet/mixskd_r50"}


def _name(p):
    return p.relative_to(CONFIGS).with_suffix("").as_posix()


def _family(p) -> str:
    """A label-count variant's family: fixmatch_cifar10_{40,250,4000} -> fixmatch_cifar10."""
    return re.sub(r"_(40|250|4000|400|2500|10000|1000)$", "", _name(p))


# the first config of each label-count family runs its few steps; the others differ from it only in
# data.ssl.num_labels, which the tiny runs set to one label per class anyway (test_label_count_variants_...)
FAMILY_HEAD = {}
for _p in SHIPPED:
    FAMILY_HEAD.setdefault(_family(_p), _p)
VARIANTS = [p for p in SHIPPED if FAMILY_HEAD[_family(p)] != p]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


@pytest.mark.parametrize("path", VARIANTS, ids=_name)
def test_label_count_variants_differ_from_their_family_only_in_labels(path):
    from ssl_kd.config import resolve_config, resolved_dict

    head = FAMILY_HEAD[_family(path)]
    a, b = (_flat(resolved_dict(resolve_config(p, [], [])[0])) for p in (head, path))
    assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= {"data.ssl.num_labels", "experiment.name"}


def test_configs_exist():
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "cifar10_supervised.yaml", "teacher_student_cifar100.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.relative_to(CONFIGS).with_suffix("").as_posix())
def test_dry_run(path, fake_data_root, tmp_path, capsys):
    raw = load_yaml(path)
    args = [f"data.root={fake_data_root}", *fit_labels(raw), f"experiment.output_dir={tmp_path / 'r'}", "--dry-run"]
    assert run_cli(path, *args) == 0
    plan = capsys.readouterr().out
    for name, st in raw["stages"].items():
        assert name in plan and st["type"] in plan
    assert "params" in plan and "Data:" in plan
    assert not (tmp_path / "r").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.slow) if _name(p) in SLOW_RUNS or p in VARIANTS else p for p in SHIPPED],
    ids=_name,
)
def test_runs_a_few_steps(path, fake_data_root, tmp_path):
    out = tmp_path / "r"
    assert run_cli(path, *small_overrides(path, fake_data_root), f"experiment.output_dir={out}") == 0
    stages = {r["stage"] for r in read_metrics(out)}
    enabled = [n for n, s in load_yaml(path)["stages"].items() if s.get("enabled", True)]
    assert stages == set(enabled)


def _shapes_only(arch, head, kwargs):
    """The model on the meta device (shapes and classes, no memory or init work) where its constructor allows."""
    from ssl_kd.models import create_model

    try:
        with torch.device("meta"):
            return create_model(arch, 10, head=head, **kwargs)
    except NotImplementedError:  # an initialiser that reads a value (torchvision's RegNet)
        return create_model(arch, 10, head=head, **kwargs)


def test_the_small_stand_ins_are_of_each_models_own_family():
    """The 2-step runs swap each model for a small one of the same class, so every stage runs its own code path:
    stage-based backbones for HSAKD's exits, prunable convs, the ViT's distillation token, the same heads."""
    from ssl_kd.errors import UserError
    from ssl_kd.models import is_stage_based
    from ssl_kd.prune.units import prunable_units

    def units(model):
        try:
            return {u.role for u in prunable_units(model)}
        except UserError:  # an architecture pruning does not support
            return None

    specs = {json.dumps(m, sort_keys=True): m for p in SHIPPED for m in load_yaml(p)["models"].values()}
    backbones = [{"arch": m["kwargs"]["backbone"], "kwargs": m["kwargs"].get("backbone_kwargs")}
                 for m in specs.values() if m["arch"] == "multi_exit"]  # fmt: skip
    for spec in [*specs.values(), *backbones]:
        arch, kwargs = small_model(spec)
        paper = _shapes_only(spec["arch"], spec.get("head"), spec.get("kwargs") or {})
        small = _shapes_only(arch, spec.get("head"), kwargs)
        assert type(small) is type(paper) and is_stage_based(small) == is_stage_based(paper), spec
        assert getattr(small, "dist_token", None) is not None or getattr(paper, "dist_token", None) is None, spec
        assert units(small) == units(paper), spec
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert count(small) <= count(paper), spec


def test_dry_run_on_real_cifar10(shared_data, tmp_path, capsys):
    path = CONFIGS / "cifar10_supervised.yaml"
    assert run_cli(path, f"data.root={shared_data}", f"experiment.output_dir={tmp_path / 'r'}", "--dry-run") == 0
    plan = capsys.readouterr().out
    assert "50000 train / 10000 test" in plan and "30 epochs x 390 = 11700 steps" in plan


# ------------------------------------------------------------------------------ each config follows its reference
# the weak / strong augmentation of TorchSSL@f26e1d4 and megvii-research/FullMatch@c54c0b9 (their datasets/ code),
# written out here rather than read from the _base_ pieces
TORCHSSL_AUG = {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "reflect"},
                "strong": {"num_ops": 3, "op_prob": 1.0, "cutout": 0.5, "cutout_random_size": True,
                           "cutout_fill": [125, 123, 114], "order": "before"}}  # fmt: skip
FULLMATCH_AUG = {"weak": {"flip": True, "crop_padding": 4, "pad_mode": "constant"},
                 "strong": {"num_ops": 2, "op_prob": 0.5, "cutout": 0.5, "cutout_random_size": False,
                            "cutout_fill": [127, 127, 127], "order": "after"}}  # fmt: skip
# USB@1ef4cbe semilearn/datasets/cv_datasets/cifar.py: TorchSSL's ops after flip + crop, ImageNet statistics
USB_AUG = {"weak": TORCHSSL_AUG["weak"], "strong": {**TORCHSSL_AUG["strong"], "order": "after"}}
USB_TYPES = {"freematch", "softmatch", "adamatch", "dash", "uda", "pseudolabel", "pimodel", "meanteacher"}
SSL_PAPER = [p for p in SHIPPED if p.stem.split("_")[0] in SSL_TYPES]


def _ssl_reference(path) -> tuple[dict, str]:
    algo = path.stem.split("_")[0]
    if algo in ("fixmatch", "flexmatch"):
        return TORCHSSL_AUG, "TorchSSL"
    if algo in USB_TYPES or "_on_" in path.stem:  # FullMatch's terms on a USB algorithm: USB's protocol
        return USB_AUG, "USB"
    return FULLMATCH_AUG, "FullMatch"


@pytest.mark.parametrize("path", SSL_PAPER, ids=lambda p: p.stem)
def test_ssl_configs_take_their_references_augmentation(path):
    from ssl_kd.config import resolve_config

    cfg, _ = resolve_config(path, [])
    expected, who = _ssl_reference(path)
    assert cfg.data.augment.model_dump() == expected
    if who == "USB":
        assert cfg.data.normalize == "imagenet"
    assert f"Follows {who}" in path.read_text().splitlines()[0] or "FullMatch" in path.read_text()[:300]


def test_dkd_ctkd_follows_the_ctkd_repository_and_dkd_mdistiller():
    from ssl_kd.config import resolve_config

    for pair in ("res32x4_res8x4", "wrn40_2_wrn16_2"):
        ctkd, _ = resolve_config(CONFIGS / "kd" / f"dkd_ctkd_{pair}.yaml", [])
        dkd, _ = resolve_config(CONFIGS / "kd" / f"dkd_{pair}.yaml", [])
        assert ctkd.stages["student"].warmup_epochs == 0 and dkd.stages["student"].warmup_epochs == 20
        assert ctkd.stages["student"].temperature.policy == "ctkd_global" and ctkd.stages["student"].type == "dkd"
        dtd, _ = resolve_config(CONFIGS / "kd" / f"kd_dtd_{pair}.yaml", [])
        assert dtd.stages["student"].temperature.tau_squared and dtd.stages["student"].temperature.tau == 4.0


def test_configs_readme_names_the_reference_of_every_config():
    text = (CONFIGS / "README.md").read_text()
    section = text[text.index("## Which reference each config reproduces") :]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    for path in SHIPPED:
        name = str(path.relative_to(CONFIGS).with_suffix(""))
        row = next((r for r in rows if f"`{name}`" in r), None)
        assert row is not None, f"configs/README.md does not list {name}"
        assert row.split("|")[2].strip(), f"{name}: no reference given"


def test_dtd_tau_squared_option_reaches_the_loss(tmp_path, monkeypatch):
    from ssl_kd.stages import kd

    seen = []
    real = kd.kd_loss
    monkeypatch.setattr(kd, "kd_loss", lambda s, t, tau, *a: seen.append(a) or real(s, t, tau, *a))
    args = ["stages.teacher.enabled=false", "stages.distill.epochs=null", "stages.distill.iters=2",
            "stages.distill.temperature={policy: dtd, tau_squared: false}",
            "experiment.logger.progress=false", f"experiment.output_dir={tmp_path / 'r'}"]  # fmt: skip
    assert run_cli(CONFIGS / "quickstart.yaml", *args) == 0
    assert seen and all(a == (False,) for a in seen)
