"""CTC as stages of one run: instance discrimination, then CRD against a frozen snapshot (refilled memories, Z),
resumed bit-exactly inside stage 2; the presets (one override for both stages) and the snapshot's validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import CONFIGS, assert_resume_exact

from ssl_kd.config import registry, resolve_config
from ssl_kd.engine import Callback
from ssl_kd.errors import UserError
from ssl_kd.stages.ctc import CRD, InstDisc

CTC = """
_base_: {base}
models:
  net: {{arch: mlp, kwargs: {{hidden: 32, depth: 1}}}}
stages:
  instance: {{type: instdisc, train: [net], iters: 6, batch_size: 32, preset: transferability,
             eval: {{batch_size: 400}}}}
  contrast: {{type: crd, train: [net], uses: [net_t0], snapshot: {{of: net, as: net_t0}}, iters: 10, batch_size: 32,
             preset: "${{stages.instance.preset}}", num_negatives: 64, refill_augment: none,
             checkpoint: {{every: 3, unit: steps}}, eval: {{batch_size: 400}}}}
experiment: {{logger: {{progress: false, log_every: 5}}}}
"""


class CheckedCRD(CRD):
    """The crd stage, checking the snapshot's discipline and the refill, and saving its state at the end."""

    def on_stage_start(self) -> None:
        super().on_stage_start()
        with torch.no_grad():  # the refill set every row: M = normalize(g(f_T(x))) for every training image
            ds = self.refill_set
            x = torch.stack([ds[i]["x"] for i in range(len(ds))])
            f_t = self.raw_model("net_t0")(x).feat
            expect_s = F.normalize(self.modules["embed_s"](f_t), dim=1)
            expect_t = F.normalize(self.modules["embed_t"](f_t), dim=1)
        assert torch.allclose(self.memory_s.memory, expect_s, atol=1e-5)
        assert torch.allclose(self.memory_t.memory, expect_t, atol=1e-5)
        assert not self.z.fixed

    def train_step(self, batch):
        snap = self.model("net_t0")
        assert not snap.training and not any(p.requires_grad for p in snap.parameters())
        assert not self.teacher.output(batch["train"]["x"]).feat.requires_grad
        return super().train_step(batch)

    def callbacks(self):
        return [*super().callbacks(), SaveCRDState(self)]


class SaveCRDState(Callback):
    """Saves the stage's memories and Z in the run folder when the stage ends."""

    def __init__(self, stage: CRD) -> None:
        self.stage = stage

    def on_stage_end(self, runner) -> None:
        st = self.stage
        state = {"memory_s": st.memory_s.memory, "memory_t": st.memory_t.memory, "z": st.z.z}
        torch.save(state, runner.run_dir.root / "crd_state.pt")


@pytest.fixture
def ctc_yaml(tmp_path, monkeypatch):
    monkeypatch.setitem(registry._STAGES, "crd", CheckedCRD)
    path = tmp_path / "ctc.yaml"
    path.write_text(CTC.format(base=CONFIGS / "_base_" / "digits.yaml"))
    return path


def test_ctc_snapshot_refill_and_exact_resume_inside_stage_two(ctc_yaml, tmp_path):
    # crash at stage-2 step 7 (global 13): resume from its step-6 checkpoint, after the refill and Z were set; both
    # models, both embeddings, both memory banks and Z come out the same
    compare = [
        "checkpoints/last.pt:models",
        "checkpoints/contrast/last.pt:modules",
        *(f"crd_state.pt:{k}" for k in ("memory_s", "memory_t", "z")),
    ]
    full, _ = assert_resume_exact([ctc_yaml], 6 + 7, tmp_path, compare=compare)
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)
    sa = torch.load(full / "crd_state.pt", weights_only=True)
    assert (sa["z"] > 0).all()

    # the snapshot is the model as stage 1 left it, untouched by stage 2 (which did train the live model)
    stage1 = torch.load(full / "checkpoints/instance/last.pt", weights_only=True)["models"]["net"]
    assert all(torch.equal(a["models"]["net_t0"][k], stage1[k]) for k in stage1)
    assert not all(torch.equal(a["models"]["net"][k], stage1[k]) for k in stage1)
    assert a["specs"]["net_t0"] == a["specs"]["net"]  # rebuilt from its spec on resume
    # stage 1's projection P is never optimized (reference quirk), the embeddings are
    p = torch.load(full / "checkpoints/instance/last.pt", weights_only=True)["modules"]["projection"]
    fresh = InstDisc.__new__(InstDisc)
    seed = resolve_config(ctc_yaml, [])[0].experiment.seed
    from ssl_kd.data import mix_seed

    fresh._ctx = type("Ctx", (), {"stage_seed": lambda self, *parts: mix_seed(seed, 0, *parts)})()  # stage 0's
    from ssl_kd.models import seeded_linear

    p0 = seeded_linear(32, 128, fresh.seed("projection")).state_dict()
    assert all(torch.equal(p[k], p0[k]) for k in p0)


def test_presets_and_one_override_for_both_stages():
    path = CONFIGS / "selfkd" / "ctc_cifar100_resnet18.yaml"
    cfg, _ = resolve_config(path, [])
    inst, crd = cfg.stages["instance"], cfg.stages["contrast"]
    assert (inst.loss_weights["inst"], inst.temperature, inst.momentum) == (0.5, 0.1, 0.9)
    assert (crd.loss_weights["crd"], crd.temperature, crd.momentum, crd.num_negatives) == (1.0, 0.1, 0.9, 16384)
    cfg, raw = resolve_config(path, [("stages.instance.preset", "discriminability")])
    inst, crd = cfg.stages["instance"], cfg.stages["contrast"]
    assert (inst.loss_weights["inst"], inst.temperature, inst.momentum) == (0.1, 0.5, 0.9)
    assert (crd.preset, crd.loss_weights["crd"], crd.temperature, crd.momentum) == ("discriminability", 1.0, 0.4, 0.9)
    assert raw["stages"]["contrast"]["preset"] == "discriminability"  # resolved before it is saved
    # a key given explicitly wins over the preset; "none" leaves the reference's argparse defaults
    cfg, _ = resolve_config(
        path, [("stages.contrast.temperature", 0.2), ("stages.instance.loss_weights", {"inst": 0.3})]
    )
    assert cfg.stages["contrast"].temperature == 0.2 and cfg.stages["instance"].loss_weights == {"ce": 1.0, "inst": 0.3}
    cfg, _ = resolve_config(path, [("stages.instance.preset", "none")])
    inst, crd = cfg.stages["instance"], cfg.stages["contrast"]
    assert (inst.loss_weights["inst"], inst.temperature, inst.momentum) == (0.1, 0.1, 0.5)
    assert (crd.temperature, crd.momentum) == (0.07, 0.5)


@pytest.mark.parametrize(
    "override,message",
    [
        (("stages.contrast.snapshot", {"of": "nope", "as": "t0"}), "stages.contrast.snapshot.of: model 'nope'"),
        (("stages.contrast.snapshot", {"of": "net", "as": "net"}), "is already a model under `models`"),
        (("stages.contrast.train", ["net_t0"]), "is frozen; it cannot be in `train`"),
        (("stages.instance.uses", ["net_t0"]), "stages.instance.uses: model 'net_t0' is not defined"),
        (("stages.probe.data", {"dataset": "cifar11"}), "stages.probe.data.dataset: must be"),
        (("stages.contrast.preset", "${stages.nope.preset}"), "stages.contrast.preset: `${stages.nope.preset}`"),
        (("stages.contrast.preset", "fastest"), "stages.contrast.preset: must be"),
        (("stages.probe.train", ["net"]), "a linear probe trains only its own head"),
    ],
)
def test_bad_ctc_configs_name_the_path(override, message):
    with pytest.raises(UserError) as e:
        resolve_config(CONFIGS / "selfkd" / "ctc_cifar100_resnet18.yaml", [override])
    assert message in str(e.value)
