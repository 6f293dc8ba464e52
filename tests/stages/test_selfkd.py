"""Self-distillation in runs: the `mixskd` / `recursivemix` stages end to end (including resume in the middle of
an epoch with a non-empty history, the reference switches, the `mix:` block, DDP). Mixing, the batch history,
multi-exit models and MixSKD's losses: tests/unit/test_selfkd_parts.py."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_resume_exact, run_cli, torchrun_cli

from ssl_kd.data.mixing import (
    box_lam,
)
from ssl_kd.report import load_run, stage_rows

# ================================================================================================ stages
TINY = """
data: {{dataset: cifar10, root: {root}, num_workers: 0, limit_test: 40}}
experiment: {{seed: 1, logger: {{progress: false, log_every: 1}}}}
models:
  net: {model}
stages:
  s:
    type: {kind}
    train: [net]
    epochs: 2
    steps_per_epoch: 4
    batch_size: 8
    optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, nesterov: true}}
    eval: {{every: 1, batch_size: 40}}
    checkpoint: {{every: 3, unit: steps}}
{extra}"""


MULTI = "{arch: multi_exit, kwargs: {backbone: cifar_resnet18, backbone_kwargs: {width: 4, stem_relu: false}}}"


PLAIN = "{arch: cifar_resnet18, kwargs: {width: 4}}"


def _config(tmp_path, fake_data_root, kind, model, extra=""):
    path = tmp_path / f"{kind}.yaml"
    path.write_text(TINY.format(root=fake_data_root, kind=kind, model=model, extra=extra))
    return path


def _records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind,model", [("recursivemix", PLAIN), ("mixskd", MULTI)], ids=["recursivemix", "mixskd"])
def test_resume_mid_epoch_is_bit_exact(tmp_path, fake_data_root, kind, model):
    """Crash at step 5 (epoch 2, after the mid-epoch checkpoint at step 3, whose history is not empty)."""

    def history_saved(cut):
        if kind == "recursivemix":
            state = torch.load(cut / "checkpoints/last.pt", weights_only=True)
            assert state["step"] == 3 and state["stage"]["states"]["history"]["tensors"]["x"].shape == (8, 3, 32, 32)

    cfg = _config(tmp_path, fake_data_root, kind, model)
    full, cut = assert_resume_exact([cfg], 5, tmp_path, after_crash=history_saved)
    rec = _records(full)
    train = [r for r in rec if r["kind"] == "train"]
    assert [r["train/lam"] for r in train] == [r["train/lam"] for r in _records(cut) if r["kind"] == "train"]
    if kind == "recursivemix":
        assert all(math.isclose(r["train/area"], 1 - r["train/lam"], abs_tol=1e-6) for r in train)
    else:
        ev = [r for r in rec if r["kind"] == "eval"][-1]
        exits = [ev[f"test/net/{n}/top1"] for n in ("exit1", "exit2", "exit3")] + [ev["test/net/top1"]]
        assert ev["test/net/max/top1"] == max(exits) and ev["best/net/max/top1"] >= ev["test/net/max/top1"]
        assert {"train/cls", "train/mix", "train/div", "train/fea", "train/gan", "train/acc_exit1"} <= set(train[-1])
        curves = [row[5] for row in stage_rows(load_run(full))]  # the report: one row per exit, backbone, max
        assert curves == ["net", "net/exit1", "net/exit2", "net/exit3", "net/max"]


def test_recursivemix_history_resets_each_epoch_or_never(tmp_path, fake_data_root):
    """Steps without a paste (lam = 1): the first of each epoch with reset: epoch, only the very first with never
    (here with the shared fc and bilinear resize, the reference's other options)."""
    never = "    history_reset: never\n    share_fc: true\n    interpolate: bilinear\n"
    for extra, expected in (("", [1, 5]), (never, [1])):
        cfg = _config(tmp_path, fake_data_root, "recursivemix", PLAIN, extra)
        out = tmp_path / str(len(extra))
        assert run_cli(cfg, f"experiment.output_dir={out}", "stages.s.alpha=1.0") == 0
        train = [r for r in _records(out) if r["kind"] == "train"]
        assert [r["step"] for r in train if r["train/lam"] == 1.0] == expected
        assert all(r["train/roi"] == 0.0 for r in train if r["train/lam"] == 1.0)
        assert all(r["train/roi"] > 0.0 for r in train if r["train/lam"] < 1.0)
        saved = torch.load(out / "checkpoints/s/last.pt", weights_only=True)["modules"]
        assert set(saved) == (set() if extra else {"roi_head"})


@pytest.mark.parametrize("roi_box", [None, "transposed"])
def test_recursivemix_step_pastes_the_previous_mixed_batch(tmp_path, fake_data_root, monkeypatch, roi_box):
    """The stage's history chain, read from the calls it makes (on the device data path, which gives the stage its
    batches as whole tensors): step t pastes step t-1's *mixed* images and labels, the RoI target is softmax of step
    t-1's logits, the CE target is the mixed label, and the RoI pools the pasted box (the default, as ed381bf2) or,
    with `roi_box: transposed`, 6364e11's (y1, x1, y2, x2)."""
    import ssl_kd.stages.recursivemix as rm_mod

    calls: list[tuple] = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls.append((name, [a.detach().clone() if torch.is_tensor(a) else a for a in args], out))
            return out

        monkeypatch.setattr(rm_mod, name, wrapped)

    for name in ("recursive_mix", "roi_features", "soft_cross_entropy"):
        spy(name, getattr(rm_mod, name))
    cfg = _config(tmp_path, fake_data_root, "recursivemix", PLAIN)
    extra = [] if roi_box is None else [f"stages.s.roi_box={roi_box}"]
    assert (
        run_cli(cfg, f"experiment.output_dir={tmp_path / 'o'}", "stages.s.epochs=1", "data.pipeline=device", *extra)
        == 0
    )
    steps: list[dict] = []  # per step: [recursive_mix], [roi_features, soft_cross_entropy (RoI)], soft_cross_entropy
    cur: dict = {}
    for name, args, out in calls:
        if name == "recursive_mix":
            cur["rm"] = (args, out)
        elif name == "roi_features":
            cur["roi_features"] = args
        elif "roi_features" in cur and "roi" not in cur:
            cur["roi"] = args
        else:
            cur["ce"] = (args, out)
            steps.append(cur)
            cur = {}
    assert len(steps) == 4 and "rm" not in steps[0] and all("rm" in st for st in steps[1:])
    for prev, st in zip(steps, steps[1:]):
        (x, y, hist_x, hist_y, box, mode), (xm, ym, lam) = st["rm"]
        prev_logits, prev_target = prev["ce"][0]
        prev_x = prev["rm"][1][0] if "rm" in prev else None
        if prev_x is not None:  # the history holds the previous step's mixed images, not its raw ones
            assert torch.equal(hist_x, prev_x)
        torch.testing.assert_close(hist_y, prev_target)  # and its mixed (or one-hot) labels
        torch.testing.assert_close(st["roi"][1], F.softmax(prev_logits, 1))  # RoI target: softmax(z_{t-1})
        torch.testing.assert_close(st["ce"][0][1], ym)  # CE target: the mixed label
        x1, y1, x2, y2 = box
        assert st["roi_features"][1] == (box if roi_box is None else (y1, x1, y2, x2))
        assert mode == "nearest" and lam == box_lam(box, (32, 32))


@pytest.mark.parametrize(
    "extra,teacher_trains,critics_train,pipeline",
    [
        ("", True, False, "host"),  # defaults: ImageNet-script loss, the reference's frozen random critics
        ("    train_teacher_with_mixcls: false\n", False, False, "host"),  # the CIFAR script: teacher untouched
        ("    gan: adversarial_grl\n", True, True, "device"),  # (on the device data path)
    ],
    ids=["default", "cifar_script", "adversarial_device_pipeline"],
)
def test_mixskd_reference_switches(tmp_path, fake_data_root, extra, teacher_trains, critics_train, pipeline):
    """What trains: compare the stage modules after 4 steps with those after 1 step (same initialisation)."""
    cfg = _config(tmp_path, fake_data_root, "mixskd", MULTI, extra)
    a, b = tmp_path / "a", tmp_path / "b"
    data = f"data.pipeline={pipeline}"
    assert run_cli(cfg, f"experiment.output_dir={a}", "stages.s.epochs=1", data) == 0
    assert run_cli(cfg, f"experiment.output_dir={b}", "stages.s.epochs=1", "stages.s.steps_per_epoch=1", data) == 0
    ma = torch.load(a / "checkpoints/s/last.pt", weights_only=True)["modules"]
    mb = torch.load(b / "checkpoints/s/last.pt", weights_only=True)["modules"]
    for mod, trains in (("self_teacher", teacher_trains), ("critics", critics_train)):
        same = all(torch.equal(ma[mod][k], mb[mod][k]) for k in ma[mod])
        assert same != trains, mod
    train = [r for r in _records(a) if r["kind"] == "train"]
    assert all(r["train/mix"] > 0 for r in train)  # logged in every form (weight 0 in the CIFAR-script form)


def test_mix_block_gives_the_baselines_and_user_errors_are_clear(tmp_path, fake_data_root, capsys):
    for kind in ("mixup", "cutmix"):
        cfg = _config(tmp_path, fake_data_root, "supervised", PLAIN, f"    mix: {{kind: {kind}, alpha: 1.0}}\n")
        out = tmp_path / kind
        assert run_cli(cfg, f"experiment.output_dir={out}", "stages.s.epochs=1") == 0
        lams = [r["train/lam"] for r in _records(out) if r["kind"] == "train"]
        assert len(lams) == 4 and all(0 < v < 1 for v in lams)
    cfg = _config(tmp_path, fake_data_root, "supervised", PLAIN, "    mix: {kind: mixup}\n    mixup_alpha: 0.2\n")
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'both'}") == 2
    err = capsys.readouterr().err
    assert "mixup_alpha: these keys were replaced by the `mix:` block" in err and "Traceback" not in err
    cfg = _config(tmp_path, fake_data_root, "mixskd", PLAIN)
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'plain'}") == 2
    err = capsys.readouterr().err
    assert "multi_exit" in err and "Traceback" not in err
    cfg = _config(tmp_path, fake_data_root, "mixskd", MULTI, "    gan: 'off'\n    loss_weights: {gan: 1.0}\n")
    assert run_cli(cfg, f"experiment.output_dir={tmp_path / 'gan'}") == 2
    assert "gan is off" in capsys.readouterr().err


DDP = """
data: {{dataset: cifar10, root: {root}, num_workers: 0, limit_test: 20}}
experiment: {{seed: 1, logger: {{progress: false, log_every: 2}}}}
models:
  a: {multi}
  b: {plain}
stages:
  mixskd: {{type: mixskd, train: [a], iters: 3, batch_size: 8, eval: {{batch_size: 20}}, gan: adversarial_grl}}
  rm: {{type: recursivemix, train: [b], epochs: 2, steps_per_epoch: 2, batch_size: 8, eval: {{batch_size: 20}}}}
"""


@pytest.mark.slow  # torchrun; DDP = 1 process is held in CI by test_ddp.py
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_both_stages_run_under_ddp(tmp_path, fake_data_root):
    """2 processes: the multi-exit model and every trainable stage module (self-teacher, trained critics taking lists
    of maps, the RoI head) go through DDP and train to the end."""
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(DDP.format(root=fake_data_root, multi=MULTI, plain=PLAIN))
    res = torchrun_cli(str(cfg), f"experiment.output_dir={tmp_path / 'two'}", port=29531, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(tmp_path / "two/checkpoints/mixskd/last.pt", weights_only=True)["modules"]
    b = torch.load(tmp_path / "two/checkpoints/rm/last.pt", weights_only=True)["modules"]
    assert set(a) == {"self_teacher", "critics"} and set(b) == {"roi_head"}
