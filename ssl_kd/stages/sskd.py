"""SSKD: Knowledge Distillation Meets Self-Supervision (Xu et al., ECCV 2020; xuguodong03/SSKD
student.py, cifar.py, wrapper.py). Two stage types after a trained teacher:

    data (both stages; cifar.py):
        x^k = rot90(crop_k(flip(x)), k), k = 0..3       one flip per image, four independent crops (`flip: shared`)
        rows interleaved per image: 4i + k; k = 0 normal, k = 1..3 transformed (`ssl_kd.data.rotation`)

    stage `sskd_head` (student.py, first loop; 60 epochs, lr 0.05, x0.1 at 30/45):
        f = teacher(x^0..3).feat                         frozen: eval mode, no grad
        A = cos(h_t(f^rot), h_t(f^0))                    (3B, B), h_t = MLP d -> d -> d (`teacher_head`)
        L = CE(A, own source index)                      no temperature

    stage `sskd` (student.py, second loop; 240 epochs, lr 0.05, x0.1 at 150/180/210):
        z_s, f_s = student(x^0..3)      z_t, f_t = teacher(x^0..3)     all 4B rows, one forward each
        A_s = cos(h_s(f_s^rot), h_s(f_s^0))   A_t = cos(h_t(f_t^rot), h_t(f_t^0))   h_t loaded, frozen; h_s trained
        L = 0.1 CE(z_s^0, y) + 0.9 tau1^2 KL(z_t^0 || z_s^0)                                   tau1 = 4
          + 2.7 tau2^2 KL(z_t^rot || z_s^rot) on rows kept by error-level ranking (ratio_tf 1.0)   tau2 = 4
          + 10  tau3^2 KL(row-softmax A_t || A_s) on rows kept by ranking A_t (ratio_ss 0.75)      tau3 = 0.5

The loss functions and the reference's conventions (batchmean over kept rows, detach points) are documented in
`ssl_kd/losses/sskd.py`, with where they differ; the one that changes which rows are distilled: rows of equal rank
at the keep/drop cut (common: ranks are integers) are kept by row index, where the reference's unstable
`torch.argsort` keeps a device-dependent subset. Evaluation scores the student's plain logits on the clean test
set, as the reference.

Data: each image yields four crop-only views of the weak transform (the dataset's `data.augment.weak` padding and
pad mode, flip off); the stage flips all four copies of an image together (a per-image bit hashed from the stage
seed, the step and the image index: the same draws on any number of processes and after a resume) and rotates copy
k by k * 90 degrees. Cropping before flipping and rotating gives the reference's distribution (a flipped or rotated
random crop is a random crop of the flipped or rotated image: the padding is symmetric and the offsets uniform).
`flip: independent` flips each copy separately (four plain weak views); `augment: none` uses four un-augmented
copies. Rotated rows enter the student's BatchNorm together with the normal ones, as in the reference.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ssl_kd.config.schema import OptimizerConfig, StageConfig
from ssl_kd.data import WeakTransform, hash_keys, mix_seed
from ssl_kd.data.rotation import ROTATIONS, rotate_copies, rotated, unrotated
from ssl_kd.engine import Plot, Stage, register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import (
    accuracy,
    kd_loss,
    similarity_matrix,
    source_index,
    sskd_head_loss,
    sskd_similarity_loss,
    sskd_transform_loss,
)
from ssl_kd.models import MLPHead
from ssl_kd.stages._common import feat_dim
from ssl_kd.stages._teacher_student import TeacherStudent

VIEWS = tuple(f"x{k}" for k in range(ROTATIONS))  # the four copies of an image, rotated by k * 90 degrees


def _reference_sgd() -> OptimizerConfig:
    return OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4)  # student.py argparse defaults


class RotationData(StageConfig):
    """How the four copies of an image are made (both SSKD stages)."""

    augment: Literal["weak", "none"] = "weak"  # weak: four independent pad-and-crops; none: four identical copies
    flip: Literal["shared", "independent"] = "shared"  # shared: one flip per image (cifar.py); with augment: weak
    optimizer: OptimizerConfig = Field(default_factory=_reference_sgd)


class SSKDHeadConfig(RotationData):
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ss": 1.0})

    @model_validator(mode="after")
    def _frozen_teacher(self) -> SSKDHeadConfig:
        if self.train:
            raise ValueError(
                "sskd_head trains only the teacher's projection head (the teacher is frozen, lr 0 in the "
                f"reference): list the teacher under `uses` and leave `train` empty, got train: {self.train}"
            )
        return self


class SSKDConfig(RotationData):
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"ce": 0.1, "kd": 0.9, "tf": 2.7, "ss": 10.0}
    )  # student.py --ce/kd/tf/ss-weight
    kd_temperature: float = Field(4.0, gt=0)  # tau1, KD on the normal rows (--kd-T)
    tf_temperature: float = Field(4.0, gt=0)  # tau2, L_tf on the rotated rows (--tf-T)
    ss_temperature: float = Field(0.5, gt=0)  # tau3, L_ss on the similarity rows (--ss-T)
    ratio_tf: float = Field(1.0, ge=0, le=1)  # share of the teacher's wrong rotated rows kept in L_tf
    ratio_ss: float = Field(0.75, ge=0, le=1)  # share of the teacher's wrong similarity rows kept in L_ss

    @model_validator(mode="after")
    def _head_is_loaded(self) -> SSKDConfig:
        if "teacher_head" not in self.init.modules:
            raise ValueError(
                "the teacher's projection head must come from an sskd_head stage: set init.modules: [teacher_head] "
                "with that stage as the source, e.g. init: {mode: stage, stage: teacher_head, which: last, "
                "models: [], modules: [teacher_head]} (or mode: checkpoint with that stage's weight file)"
            )
        return self


class RotationStage(Stage):
    """What both SSKD stages share: the four-copy stream and the 4B-row batch."""

    cfg: RotationData

    def add_rotation_stream(self) -> None:
        c = self.cfg
        self.shared_flip = False
        if c.augment == "none":
            view = self.transform("test")
        else:
            view = self.transform("weak")
            if c.flip == "shared" and view.weak.flip:  # crops only; rotated_batch flips an image's copies together
                self.shared_flip = True
                view = WeakTransform(view.mean, view.std, view.weak.model_copy(update={"flip": False}))
        self.add_stream("train", self.view_dataset(self.data.train, {v: view for v in VIEWS}))

    def rotated_batch(self, part: dict[str, torch.Tensor]) -> torch.Tensor:
        """(4B, C, H, H): copy k of each image rotated k * 90 degrees, rows interleaved per image."""
        copies = [part[v] for v in VIEWS]
        if self.shared_flip:
            base = mix_seed(self.seed("flip"), self.progress.step)
            flip = (hash_keys(base, part["idx"], 1)[:, 0] & 1).bool().view(-1, 1, 1, 1)
            copies = [torch.where(flip, c.flip(-1), c) for c in copies]
        try:
            return rotate_copies(copies)
        except ValueError as e:
            raise UserError(f"stages.{self.name}: {e}; SSKD rotates images by 90 degrees (use square images)") from e


@register_stage("sskd_head")
class SSKDHead(RotationStage):
    """Train the teacher's projection head to match each rotated image to its own original (cosine CE)."""

    Config = SSKDHeadConfig
    cfg: SSKDHeadConfig
    plots = (Plot("sskd_head", {"ss_acc": "rotated row -> own source"}, "Teacher head similarity accuracy", "acc"),)

    def setup(self) -> None:
        teacher = self.single("uses")
        self.teacher = self.frozen_teacher(teacher)
        d = feat_dim(self, teacher)
        self.register_module("teacher_head", MLPHead(d, d, d, seed=self.seed("teacher_head")))
        self.add_rotation_stream()

    def train_step(self, batch):
        x = self.rotated_batch(batch["train"])
        f = self.teacher.output(x).feat  # eval mode, no grad: the reference detaches the backbone (bb_grad=False)
        h = self.module("teacher_head")(f)
        sim = similarity_matrix(rotated(h), unrotated(h))
        target = source_index(sim.shape[1], sim.device)
        return {"ss": sskd_head_loss(sim)}, {"ss_acc": accuracy(sim, target)}


@register_stage("sskd")
class SSKD(TeacherStudent, RotationStage):
    """Distil the teacher's logits on normal and rotated images and its similarity structure into the student."""

    Config = SSKDConfig
    cfg: SSKDConfig
    plots = (
        Plot("sskd_kept", {"kept_tf": "L_tf rows kept", "kept_ss": "L_ss rows kept"},
             "Error-level ranking: share of rotated rows kept", "fraction"),
        Plot("sskd_similarity", {"ss_acc": "student", "t_ss_acc": "teacher"},
             "Rotated row -> own source (similarity argmax)", "acc"),
    )  # fmt: skip

    def setup(self) -> None:
        self.setup_pair(self.add_rotation_stream)
        d_s, d_t = feat_dim(self, self.student), feat_dim(self, self.teacher_name)
        self.register_module("student_head", MLPHead(d_s, d_s, d_s, seed=self.seed("student_head")))
        # loaded from the sskd_head stage (init.modules) and frozen: out of the optimizer, never DDP-wrapped
        head = MLPHead(d_t, d_t, d_t, seed=self.seed("teacher_head")).requires_grad_(False)
        self.register_module("teacher_head", head)

    def train_step(self, batch):
        c = self.cfg
        part = batch["train"]
        y = part["y"]
        x = self.rotated_batch(part)
        out = self.model(self.student)(x)  # all 4B rows through the student's BatchNorm together
        t_out = self.teacher.output(x)  # eval mode, no grad
        h_s = self.module("student_head")(out.feat)
        with torch.no_grad():
            h_t = self.module("teacher_head")(t_out.feat)
        z_s, z_t = out.logits, t_out.logits
        tf, keep_tf = sskd_transform_loss(rotated(z_s), rotated(z_t), y, c.tf_temperature, c.ratio_tf)
        s_sim = similarity_matrix(rotated(h_s), unrotated(h_s))
        t_sim = similarity_matrix(rotated(h_t), unrotated(h_t))
        ss, keep_ss = sskd_similarity_loss(s_sim, t_sim, c.ss_temperature, c.ratio_ss)
        losses = {
            "ce": F.cross_entropy(unrotated(z_s), y),
            "kd": kd_loss(unrotated(z_s), unrotated(z_t), c.kd_temperature),
            "tf": tf,
            "ss": ss,
        }
        src = source_index(len(y), x.device)
        diagnostics = {
            "acc": accuracy(unrotated(z_s), y),
            "ss_acc": accuracy(s_sim, src),
            "t_ss_acc": accuracy(t_sim, src),
            "kept_tf": keep_tf.float().mean(),
            "kept_ss": keep_ss.float().mean(),
        }
        return losses, diagnostics
