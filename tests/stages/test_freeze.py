"""`freeze:` holds: a frozen part keeps its weights, its BatchNorm running statistics and `num_batches_tracked`, and
eval mode, through training steps, evaluation (which restores train mode on whole models), wrappers that call the
part's children directly (MultiExit) and resume; it is in no optimizer group; an unknown part fails `--dry-run`.
Every model kind: a CIFAR ResNet, a WRN, a ViT with a distillation token (DeiT), MultiExit, torchvision's ResNet."""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import TINY_VIT, assert_resume_exact, run_cli, tiny_config, torchrun_cli

import ssl_kd.callbacks as callbacks_mod
from ssl_kd.engine import Callback
from ssl_kd.engine.freeze import freeze_part
from ssl_kd.engine.scoring import eval_mode
from ssl_kd.models import create_model

# (arch, kwargs, the frozen part, below the model's name)
KINDS = {
    "cifar_resnet": ("resnet8", {}, "stem"),
    "wrn": ("wrn_16_1", {}, "groups.0"),
    "deit": ("vit", {**TINY_VIT, "dist_token": True, "dropout": 0.1}, "encoder"),
    "multi_exit": ("multi_exit", {"backbone": "resnet8", "exits": [2]}, "backbone.stages"),  # never called
    "torchvision": ("resnet18", {}, "layer1"),
}


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kind", KINDS)
def test_a_frozen_part_stays_in_eval_mode_whatever_toggles_the_mode(kind):
    arch, kwargs, sub = KINDS[kind]
    torch.manual_seed(0)
    model = create_model(arch, 10, **kwargs).train()
    frozen = freeze_part({"m": model}, f"m.{sub}", "stages.s.freeze[0]")
    part = model.get_submodule(sub)
    before = _state(part)
    size = kwargs.get("image_size", 8)
    x = torch.randn(4, 3, size, size)
    for toggle in (lambda: model.train(), lambda: model.apply(lambda mod: mod.train()), lambda: part.train(True)):
        toggle()
        assert not any(m.training for m in part.modules())
        out = model(x)  # a forward pass in train mode, and a backward one
        sum(v.sum() for v in [out.logits, *out.aux.values()] if v.requires_grad).backward()
        with eval_mode(model):
            model(x)
        assert not any(m.training for m in part.modules())  # evaluation gives the part back its eval mode
    assert model.training and all(p.grad is None for p in part.parameters())
    after = _state(part)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    frozen.release()
    model.train()
    assert all(m.training for m in part.modules())  # released at the stage's end: the next stage sets the mode


class Watch(Callback):
    """Records, at every step of stage 'frozen', whether any module of the part is in train mode, and which
    parameters the optimizer holds."""

    order = 1000

    def __init__(self, sub: str) -> None:
        self.sub, self.training, self.in_optimizer = sub, [], set()

    def on_step_end(self, runner, terms) -> None:
        if runner.stage.name == "frozen":
            part = runner.models["m"].get_submodule(self.sub)
            self.training.append(any(m.training for m in part.modules()))
            held = {id(p) for g in runner.optimizer.param_groups for p in g["params"]}
            self.in_optimizer |= {n for n, p in part.named_parameters() if id(p) in held}


def _stages(sub: str, iters: int = 4) -> dict:
    sgd = {"name": "sgd", "lr": 0.05, "momentum": 0.9}
    return {
        "warm": {"type": "supervised", "train": ["m"], "iters": 2, "batch_size": 16, "optimizer": sgd},
        "frozen": {"type": "supervised", "train": ["m"], "iters": iters, "batch_size": 16, "optimizer": sgd,
                   "freeze": [f"m.{sub}"], "eval": {"every": 1, "unit": "steps"}},
    }  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_a_frozen_part_keeps_weights_statistics_and_mode_through_a_stage_with_evaluations(kind, tmp_path, monkeypatch):
    arch, kwargs, sub = KINDS[kind]
    watch = Watch(sub)
    orig = callbacks_mod.experiment_callbacks
    monkeypatch.setattr(callbacks_mod, "experiment_callbacks", lambda cfg: [*orig(cfg), watch])
    cfg = tiny_config(tmp_path / "c.yaml", {"m": {"arch": arch, "kwargs": kwargs}}, _stages(sub))
    out = tmp_path / "r"
    assert run_cli(cfg, f"experiment.output_dir={out}") == 0
    warm = torch.load(out / "checkpoints" / "warm" / "last.pt", weights_only=True)["models"]["m"]
    frozen = torch.load(out / "checkpoints" / "frozen" / "last.pt", weights_only=True)["models"]["m"]
    keys = [k for k in warm if k.startswith(f"{sub}.")]
    assert keys and all(torch.equal(warm[k], frozen[k]) for k in keys), [
        k for k in keys if not torch.equal(warm[k], frozen[k])
    ]  # weights, running_mean / running_var and num_batches_tracked
    assert any(not torch.equal(warm[k], frozen[k]) for k in frozen if not k.startswith(f"{sub}."))  # the rest trains
    assert watch.training == [False] * 4  # after each step's evaluation too
    assert watch.in_optimizer == set()


def test_resume_with_a_frozen_backbone_under_multi_exit_is_exact(tmp_path):
    """HSAKD's `--freezed` teacher: MultiExit calls backbone.stem / backbone.stages directly, and the evaluation
    before the crash must not have switched the backbone's BatchNorm to train mode in the uninterrupted run."""
    net = {"arch": "multi_exit", "kwargs": {"backbone": "resnet8", "exits": [1, 2, 3], "exit_label_factor": 4}}
    stages = {
        "warm": {"type": "supervised", "train": ["teacher"], "iters": 2, "batch_size": 16},
        "heads": {"type": "hsakd_teacher", "train": ["teacher"], "iters": 6, "batch_size": 4,
                  "freeze": ["teacher.backbone"], "eval": {"every": 2, "unit": "steps"}},
    }  # fmt: skip
    cfg = tiny_config(tmp_path / "h.yaml", {"teacher": net}, stages)
    full, _ = assert_resume_exact([cfg], at=5, tmp=tmp_path)
    warm = torch.load(full / "checkpoints" / "warm" / "last.pt", weights_only=True)["models"]["teacher"]
    heads = torch.load(full / "checkpoints" / "heads" / "last.pt", weights_only=True)["models"]["teacher"]
    assert all(torch.equal(v, heads[k]) for k, v in warm.items() if k.startswith("backbone."))


def test_an_unknown_freeze_part_fails_the_dry_run_naming_the_yaml_path_and_the_valid_parts(tmp_path, capsys):
    stages = _stages("stem")
    stages["frozen"]["freeze"] = ["m.stages.7"]
    cfg = tiny_config(tmp_path / "c.yaml", {"m": {"arch": "resnet8"}}, stages)
    assert run_cli(cfg, "--dry-run", f"experiment.output_dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "stages.frozen.freeze[0]" in err and "m.stages.0, m.stages.1, m.stages.2)" in err
    stages["frozen"]["freeze"] = ["m.trunk"]
    cfg = tiny_config(tmp_path / "d.yaml", {"m": {"arch": "resnet8"}}, stages)
    assert run_cli(cfg, "--dry-run", f"experiment.output_dir={tmp_path / 'r'}") == 2
    err = capsys.readouterr().err
    assert "stages.frozen.freeze[0]" in err and "m.stem" in err and "m.fc" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # torchrun: the mode hold is a per-module train(); one process shows it
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_a_frozen_part_holds_under_ddp_with_two_processes(tmp_path):
    """DDP wraps the trained model and evaluation toggles the mode on the plain module: the part stays frozen."""
    cfg = tiny_config(tmp_path / "c.yaml", {"m": {"arch": "resnet8"}}, _stages("stem"))
    out = tmp_path / "r"
    res = torchrun_cli(str(cfg), f"experiment.output_dir={out}", port=29531)
    assert res.returncode == 0, res.stderr[-3000:]
    warm = torch.load(out / "checkpoints" / "warm" / "last.pt", weights_only=True)["models"]["m"]
    frozen = torch.load(out / "checkpoints" / "frozen" / "last.pt", weights_only=True)["models"]["m"]
    assert all(torch.equal(v, frozen[k]) for k, v in warm.items() if k.startswith("stem."))
    assert any(not torch.equal(v, frozen[k]) for k, v in warm.items() if not k.startswith("stem."))
