"""HSAKD (Yang et al., IJCAI 2021) and its online form HSSAKD (TNNLS 2022): distillation of a hierarchical
self-supervision augmented distribution (Yang et al., IJCAI 2021 and TNNLS 2022; winycg/HSAKD@28c8dc2).

Every batch is expanded to 4B rotated copies, interleaved per sample (ssl_kd.data.rotation): row 4i + k is image i
rotated k * 90 degrees, with joint label 4 y_i + k. The networks are multi-exit models whose auxiliary heads after
stages 1..3 predict the 4C joint labels (`arch: multi_exit, exits: [1, 2, 3], exit_label_factor: 4`; the exit after
the last stage is a stride-1 copy of it, as the reference's third branch):

    x4, y4 = rotate4(x), joint_labels(y)                      one forward over 4B rows: rotated rows share BN
    hsakd_teacher:  L = CE(z(x4)[0::4], y) + sum_l CE(q_l(x4), y4)
                    (the reference's `--freezed` mode: `freeze: [teacher.backbone]`, only the heads train)
    hsakd:          L = CE(z_S(x4)[0::4], y) + sum_l T^2 KL(q_l^T || q_l^S) + T^2 KL(z_T || z_S)     (all 4B rows)
    hssakd_online:  L = sum_i [CE(z_i[0::4], y) + sum_l CE(q_il, y4)]
                        + sum_i mean_{j!=i} [T^2 KL(z_j || z_i) + sum_l T^2 KL(q_jl || q_il)]   (targets detached)

T = 3, every weight 1 (the reference's), SGD Nesterov. The student gets no joint-label CE (its heads learn only
the teacher's heads), and its heads' gradients flow into its backbone (`grad=True` in train_student_cifar.py).
Evaluation scores the main logits of clean (unrotated) test images, as the references' test loops do (they rotate
the test batch too but read only rows [0::4]); each auxiliary head is reported on its class accuracy (the sum of
its four rotation logits per class), and `hssakd_online` adds the peers' ensemble (mean softmax). The online
reference quotes the better of its two peers at the best epoch: compare with max(best/<peer>/top1).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from pydantic import Field

from ssl_kd.config.schema import StageConfig
from ssl_kd.data import joint_labels, rotate4, unrotated
from ssl_kd.engine import Plot, Stage, register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import accuracy, hierarchical_kd, joint_ce, mutual_kd
from ssl_kd.models import MultiExit
from ssl_kd.stages._common import Augment, check_same_classes, labelled_views
from ssl_kd.stages._teacher_student import TeacherStudent

EXAMPLE = "{arch: multi_exit, kwargs: {backbone: resnet8x4, exits: [1, 2, 3], exit_label_factor: 4}}"


def rotation_heads(stage: Stage, name: str, key: str) -> MultiExit:
    """Model `name` as a multi-exit network whose auxiliary heads predict the 4C joint (class, rotation) labels."""
    model = stage.raw_model(name)
    if not isinstance(model, MultiExit) or model.exit_label_factor != 4:
        raise UserError(
            f"stages.{stage.name}.{key}: '{stage.type_name}' needs model '{name}' to be a multi-exit network whose "
            f"auxiliary heads predict class x rotation (4C) labels, e.g. models.{name}: {EXAMPLE}."
        )
    return model


def heads(model: MultiExit, out) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(main logits, auxiliary joint logits in depth order) of one forward."""
    exits = model.exit_logits(out)
    return exits[-1], exits[:-1]


class HSAKDConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "kd_aux": 1.0, "kd": 1.0})
    temperature: float = Field(3.0, gt=0)
    augment: Augment = "weak"


class HSAKDTeacherConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "ce_aux": 1.0})
    augment: Augment = "weak"


class HSSAKDOnlineConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "ce_aux": 1.0, "kd": 1.0, "kd_aux": 1.0})
    temperature: float = Field(3.0, gt=0)
    augment: Augment = "weak"


class _Rotated(Stage):
    """The rotation-augmented batch every HSAKD stage trains on."""

    plots = (Plot("rotation_heads", {"acc": "main (unrotated rows)", "acc_aux": "aux heads, joint labels (mean)"},
                  "train top-1", "accuracy"),)  # fmt: skip

    def add_train_stream(self) -> None:
        self.add_stream("train", labelled_views(self, self.cfg.augment, "all"))

    @staticmethod
    def rotated_batch(batch: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        x, y = batch["train"]["x"], batch["train"]["y"]
        return rotate4(x), y, joint_labels(y)

    @staticmethod
    def diagnostics(main: torch.Tensor, aux: list[torch.Tensor], y: torch.Tensor, y4: torch.Tensor) -> dict:
        aux_acc = torch.stack([accuracy(q, y4) for q in aux]).mean()
        return {"acc": accuracy(unrotated(main), y), "acc_aux": aux_acc}


@register_stage("hsakd_teacher")
class HSAKDTeacher(_Rotated):
    """The teacher's auxiliary heads (train_teacher_cifar.py): CE on the unrotated main logits + joint-label CE."""

    Config = HSAKDTeacherConfig
    cfg: HSAKDTeacherConfig

    def setup(self) -> None:
        self.net = self.single("train")
        self.arch = rotation_heads(self, self.net, "train")
        self.add_train_stream()

    def train_step(self, batch):
        x4, y, y4 = self.rotated_batch(batch)
        main, aux = heads(self.arch, self.model(self.net)(x4))
        losses = {"ce": F.cross_entropy(unrotated(main), y), "ce_aux": joint_ce(aux, y4)}
        return losses, self.diagnostics(main, aux, y, y4)


@register_stage("hsakd")
class HSAKD(TeacherStudent, _Rotated):
    """Offline HSAKD (train_student_cifar.py): a frozen teacher with trained auxiliary heads teaches a student."""

    Config = HSAKDConfig
    cfg: HSAKDConfig

    def setup(self) -> None:
        self.setup_pair(self.add_train_stream)
        self.s_arch = rotation_heads(self, self.student, "train")
        self.t_arch = rotation_heads(self, self.teacher_name, "uses")
        if len(self.s_arch.exit_after) != len(self.t_arch.exit_after):
            raise UserError(
                f"stages.{self.name}: the student's auxiliary head l learns the teacher's head l, so both need as "
                f"many heads; got student exits {list(self.s_arch.exit_after)}, teacher {list(self.t_arch.exit_after)}."
            )

    def train_step(self, batch):
        x4, y, y4 = self.rotated_batch(batch)
        s_main, s_aux = heads(self.s_arch, self.model(self.student)(x4))
        t_main, t_aux = heads(self.t_arch, self.teacher.output(x4))
        kd_aux, kd = hierarchical_kd(s_main, s_aux, t_main, t_aux, self.cfg.temperature)
        losses = {"ce": F.cross_entropy(unrotated(s_main), y), "kd_aux": kd_aux, "kd": kd}
        return losses, self.diagnostics(s_main, s_aux, y, y4)


@register_stage("hssakd_online")
class HSSAKDOnline(_Rotated):
    """Online HSSAKD (train_online_kd_cifar.py): N peers (`train: [net1, net2, ...]`, one optimizer) trained from
    scratch with joint-label CE and mutual KL on their main and auxiliary heads."""

    Config = HSSAKDOnlineConfig
    cfg: HSSAKDOnlineConfig

    def setup(self) -> None:
        if len(self.cfg.train) < 2:
            raise UserError(
                f"stages.{self.name}.train: online HSSAKD trains two or more peers together, got {self.cfg.train}; "
                f"e.g. train: [net1, net2]."
            )
        self.peers = list(self.cfg.train)
        self.archs = [rotation_heads(self, n, "train") for n in self.peers]
        check_same_classes(self, *self.peers)
        if len({a.exit_after for a in self.archs}) > 1:
            raise UserError(
                f"stages.{self.name}.train: the peers' heads are paired by depth, so they need the same exits; "
                f"got {[(n, list(a.exit_after)) for n, a in zip(self.peers, self.archs)]}."
            )
        self.add_train_stream()

    def train_step(self, batch):
        x4, y, y4 = self.rotated_batch(batch)
        outs = [heads(a, self.model(n)(x4)) for n, a in zip(self.peers, self.archs)]
        mains = [main for main, _ in outs]
        t = self.cfg.temperature
        losses = {
            "ce": sum(F.cross_entropy(unrotated(main), y) for main in mains),
            "ce_aux": sum(joint_ce(aux, y4) for _, aux in outs),
            "kd": mutual_kd(mains, t),
            "kd_aux": sum(mutual_kd([aux[l] for _, aux in outs], t) for l in range(len(outs[0][1]))),
        }
        diagnostics = self.diagnostics(*outs[0], y, y4)
        for n, main in zip(self.peers[1:], mains[1:]):
            diagnostics[f"acc_{n}"] = accuracy(unrotated(main), y)
        return losses, diagnostics

    def eval_targets(self):
        models = [self.raw_model(n) for n in self.peers]

        def ensemble(batch):  # mean of the peers' softmax on the clean image (log, so argmax and NLL read it)
            probs = torch.stack([F.softmax(m(batch["x"]).logits.float(), dim=1) for m in models]).mean(0)
            return probs.clamp_min(1e-12).log()

        return {"ensemble": ensemble}
