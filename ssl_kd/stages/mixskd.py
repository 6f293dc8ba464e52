"""MixSKD: self-distillation from mixup images (Yang et al., ECCV 2022, arXiv 2208.05768; winycg/Self-KD-Lib@ede3062d
main_mixskd_cifar.py, main_mixskd_imagenet.py).

    lam ~ Beta(alpha, alpha), perm = randperm(B)              one mix per batch (ssl_kd.data.mixing)
    x~  = lam x + (1 - lam) x[perm]
    exits z_k, maps F_k = model([x; x~])                       one forward over 2B rows: BN sees both halves
    F^_k = lam F_k(x) + (1 - lam) F_k(x)[perm],  F~_k = F_k(x~)
    t^, t~ = SelfTeacher(F^), SelfTeacher(F~)                  concat -> 1x1 conv -> GAP -> fc
    L = cls + mix + div + fea (+ gan)                          ssl_kd.losses.mixskd_losses, all weights 1

The model is a multi-exit network (`arch: multi_exit`, K exits, the backbone last). Reference quirks, each an
option whose default reproduces the reference:

* `train_teacher_with_mixcls` (default True): the ImageNet script adds the mixup CE of every exit and of both
  self-teacher outputs to the loss; the CIFAR script only logs it (its self-teacher then gets no gradient at all).
  False reproduces the CIFAR script: `mix` is logged with weight 0 and the self-teacher is frozen.
* `gan` (default `frozen_random`): the reference's critics live in a Python list, so they are random MLPs that are
  never trained while the network minimizes their BCE. `adversarial_grl` trains them against a gradient-reversed
  feature (the min-max the paper describes); `off` drops the term.
* `fallback_lam`: lambda when alpha <= 0 (0.5 in the CIFAR script, 0 in the ImageNet one).
* Evaluation scores every exit; the reference quotes the best exit at the best epoch (`best/<model>/max/top1`),
  the comparable headline is the backbone exit (`test/<model>/top1`). The self-teacher is never evaluated.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ssl_kd.config.schema import StageConfig
from ssl_kd.data import mix_tensors, sample_mixup
from ssl_kd.engine import Plot, Stage, register_stage
from ssl_kd.errors import UserError
from ssl_kd.losses import accuracy, interpolate_rows, mixskd_losses
from ssl_kd.models import FeatureCritics, MultiExit, SelfTeacher
from ssl_kd.stages._common import Augment, labelled_views

TERMS = ("cls", "mix", "div", "fea", "gan")


class MixSKDConfig(StageConfig):
    """Defaults: Self-KD-Lib's CIFAR-100 recipe (alpha 0.4, T 3); the schedule lives in configs/selfkd/."""

    loss_weights: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(TERMS, 1.0))
    alpha: float = Field(0.4, ge=0, description="mixup Beta(alpha, alpha); <= 0 uses fallback_lam")
    fallback_lam: float = Field(0.5, ge=0, le=1)
    temperature: float = Field(3.0, gt=0)
    train_teacher_with_mixcls: bool = True  # False: the CIFAR script (mix logged, not optimized)
    gan: Literal["off", "frozen_random", "adversarial_grl"] = "frozen_random"
    critic_hidden: int = Field(128, ge=1)
    augment: Augment = "weak"

    @classmethod
    def derived_defaults(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`mix` / `gan` weigh 0 when their switch turns them off; a non-zero weight there is a contradiction."""
        given = data.get("loss_weights") if isinstance(data.get("loss_weights"), dict) else {}
        off = {"mix": data.get("train_teacher_with_mixcls") is False, "gan": data.get("gan") == "off"}
        for term in [t for t, is_off in off.items() if is_off and given.get(t)]:
            why = "train_teacher_with_mixcls is false" if term == "mix" else "gan is off"
            raise ValueError(f"loss_weights.{term} is {given[term]} but {why}; drop the weight or the switch")
        return {"loss_weights": {t: 0.0 for t, is_off in off.items() if is_off}}


@register_stage("mixskd")
class MixSKD(Stage):
    Config = MixSKDConfig
    cfg: MixSKDConfig
    plots = (
        Plot("mix_lambda", {"lam": "lambda"}, "mixup lambda per step", "lambda"),
        Plot("exit_accuracy", {"acc_exit1": "exit 1", "acc_exit2": "exit 2", "acc_exit3": "exit 3",
                               "acc": "backbone"}, "train top-1 of each exit (clean images)", "accuracy"),
    )  # fmt: skip

    def setup(self) -> None:
        c = self.cfg
        self.net = self.single("train")
        raw = self.raw_model(self.net)
        if not isinstance(raw, MultiExit):
            raise UserError(
                f"stages.{self.name}.train: a 'mixskd' stage trains a multi-exit model, but model '{self.net}' is "
                f"'{type(raw).__name__}'; use `arch: multi_exit` with `kwargs: {{backbone: cifar_resnet18}}`."
            )
        self.exits = raw.exit_names
        self.add_stream("train", labelled_views(self, c.augment, "all"))
        channels = raw.feat_dim  # channels of every exit's final (pre-pool) map
        teacher = self.register_module("self_teacher", SelfTeacher(len(self.exits), channels, raw.num_classes))
        if not c.train_teacher_with_mixcls:
            teacher.requires_grad_(False)  # the CIFAR script: nothing reaches it, so it is not trained
        if c.gan != "off":
            critics = FeatureCritics([channels] * len(self.exits), c.critic_hidden, c.gan == "adversarial_grl")
            self.register_module("critics", critics.requires_grad_(c.gan == "adversarial_grl"))

    def train_step(self, batch):
        c = self.cfg
        part = batch["train"]
        x, y = part["x"], part["y"]
        n = len(y)
        raw = self.raw_model(self.net)
        mix = sample_mixup(n, c.alpha, c.fallback_lam).to(x.device)  # perm moved once, without a sync
        extra = self.inputs(self.net, part)
        mixed = mix_tensors({"x": x, **extra}, mix)  # metadata, if any, mixed with the same lambda and perm
        both = {k: torch.cat([extra[k], mixed[k]]) for k in extra}
        out = self.forward(self.net, part, torch.cat([x, mixed["x"]]), **both)

        logits, maps = raw.exit_logits(out), raw.exit_maps(out)
        clean, mixed_logits = [z[:n] for z in logits], [z[n:] for z in logits]
        maps_hat = [interpolate_rows(m[:n], mix.perm, mix.lam) for m in maps]
        maps_tilde = [m[n:] for m in maps]
        # one call on both halves (the teacher has no BN): t^ on the interpolated maps, t~ on the mixed image's
        t_hat, t_tilde = self.module("self_teacher")([torch.cat(p) for p in zip(maps_hat, maps_tilde)]).split(n)
        losses = mixskd_losses(clean, mixed_logits, t_hat, t_tilde, maps_hat, maps_tilde, y, mix.perm, mix.lam,
                               c.temperature)  # fmt: skip
        if c.gan != "off":
            losses["gan"] = self.module("critics")(maps_hat, maps_tilde)
        diagnostics = {"lam": torch.full((), mix.lam, device=x.device)}  # a fill, not a copy from the host
        for name, z in zip(self.exits, clean):
            diagnostics["acc" if name == "backbone" else f"acc_{name}"] = accuracy(z, y)
        return losses, diagnostics
