"""RecursiveMix: paste the previous batch into this one (Yang et al., NeurIPS 2022, arXiv 2203.06844;
implus/RecursiveMix-pytorch@ed381bf2 main.py, utils.py).

    H = (x_h, y_h, z_h): the previous step's mixed input, mixed soft label and logits (detached; empty at every
                         epoch start with history_reset: epoch, the reference's local variable)
    if H: r ~ U(0, alpha), box side sqrt(r) (H, W), centre uniform, clipped       one box for the whole batch
          x' = x with resize(x_h) pasted into the box,  lam = 1 - area / (H W),  y' = lam y + (1 - lam) y_h
    z = fc(GAP(F(x'))),  z_roi = fc_roi(RoIAlign(F(x'), box))      F: the last stage's map (box: see roi_box)
    L = CE(z, y') + omega (1 - lam) CE(z_roi, softmax(z_h))           both soft-target CEs; omega = loss_weights.roi
    H <- (x', y', z)

Reference quirks kept (each an option with the reference's current code, ed381bf2, as default): the history
resets every epoch (one unmixed step per epoch), z_h is one optimizer step stale, nearest-neighbour resize
(`interpolate: bilinear` uses align_corners), the consistency term scales with the pasted area (`roi_area_weight`),
a separate RoI classifier (`share_fc: true` reuses fc) and label smoothing eps/(C-1) off target. `roi_box: pasted`
(default) pools the pasted box, as ed381bf2 ("Update utils.py", 2023-04-24) does; `roi_box: transposed` reproduces
the superseded commit 6364e11, whose ``rand_bbox`` named the row axis x, pasted into rows x1:x2 and columns y1:y2,
then handed the same four numbers to ``roi_align``, which reads x as the column axis: it pooled the pasted box
mirrored across the image diagonal (same size, centre (cy, cx) instead of (cx, cy)). The RoI head is trained but
never evaluated.
On steps without a pasted box the RoI head still runs (times 0) so that DDP sees every parameter used; its
gradient is then 0, as the reference's zeroed (not None) gradient is.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ssl_kd.config.schema import StageConfig
from ssl_kd.data import MixParams, mix_tensors, one_hot, recursive_mix, sample_paste_box
from ssl_kd.data.mixing import Box
from ssl_kd.engine import Plot, Stage, register_stage
from ssl_kd.losses import accuracy, smooth_targets, soft_cross_entropy
from ssl_kd.memory import BatchHistory
from ssl_kd.models import roi_features
from ssl_kd.stages._common import Augment, labelled_views


class RecursiveMixConfig(StageConfig):
    """Defaults: RecursiveMix's argparse defaults (alpha 0.5, omega 0.5, nearest); paper recipes in configs/selfkd/."""

    loss_weights: dict[str, float] = Field(default_factory=lambda: {"ce": 1.0, "roi": 0.5})  # roi = omega
    alpha: float = Field(0.5, gt=0, le=1, description="pasted area ratio ~ U(0, alpha) before clipping")
    interpolate: Literal["nearest", "bilinear"] = "nearest"
    share_fc: bool = False  # the RoI logits through the model's fc instead of a separate fc_roi
    history_reset: Literal["epoch", "never"] = "epoch"
    roi_area_weight: bool = True  # omega (1 - lam) CE_roi (reference); false: omega CE_roi
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # RecursiveMix's smooth_one_hot: 1 - eps, eps / (C - 1)
    roi_box: Literal["pasted", "transposed"] = "pasted"  # pasted: ed381bf2; transposed: 6364e11's swap (module doc)
    augment: Augment = "weak"


@register_stage("recursivemix")
class RecursiveMix(Stage):
    Config = RecursiveMixConfig
    cfg: RecursiveMixConfig
    plots = (
        Plot("recursivemix", {"lam": "lambda", "area": "pasted area (1 - lambda)"}, "RecursiveMix paste", "fraction"),
    )

    def setup(self) -> None:
        c = self.cfg
        self.net = self.single("train")
        self.add_stream("train", labelled_views(self, c.augment, "all"))
        self.history = self.register_state("history", BatchHistory(c.history_reset, self.device))
        raw = self.raw_model(self.net)
        if not c.share_fc:
            self.register_module("roi_head", nn.Linear(raw.feat_dim, raw.num_classes))

    def on_epoch_start(self) -> None:
        self.history.on_epoch_start()

    def train_step(self, batch):
        c = self.cfg
        part = batch["train"]
        x, y = part["x"], part["y"]
        n, size = len(y), (x.shape[-2], x.shape[-1])
        raw = self.raw_model(self.net)
        soft = smooth_targets(one_hot(y, raw.num_classes), c.label_smoothing, "off_target")  # RecursiveMix's
        extra = self.inputs(self.net, part)
        hist = self.history
        box, lam = None, 1.0
        if not hist.empty:
            box = sample_paste_box(size, c.alpha)
            x, soft, lam = recursive_mix(x, soft, hist["x"], hist["y"], box, c.interpolate)
            if extra:  # metadata of the pasted image is blended with the same lambda
                extra = mix_tensors(extra, MixParams(lam), partner={k: hist[k] for k in extra})
        out = self.forward(self.net, part, x, return_feats=[-1], **extra)
        z = out.logits
        head = raw.fc if c.share_fc else self.module("roi_head")
        if lam < 1.0:
            z_roi = head(roi_features(out.feats[0], roi_box(box, c.roi_box), size))
            roi_ce = soft_cross_entropy(z_roi, F.softmax(hist["z"][:n].float(), dim=1))
            roi = (1.0 - lam) * roi_ce if c.roi_area_weight else roi_ce
        else:
            roi_ce = roi = 0.0 * head(out.feat.detach()).sum()
        hist.update(x=x, y=soft, z=z, **extra)
        diagnostics = {
            "lam": torch.full((), lam, device=z.device),  # fills, not copies from the host
            "area": torch.full((), 1.0 - lam, device=z.device),
            "roi_ce": roi_ce.detach(),
            "acc": accuracy(z, y),
        }
        return {"ce": soft_cross_entropy(z, soft), "roi": roi}, diagnostics


def roi_box(box: Box, kind: Literal["pasted", "transposed"]) -> Box:
    """The box the RoI head pools: the pasted (x1, y1, x2, y2) itself (ed381bf2), or 6364e11's (y1, x1, y2, x2)."""
    x1, y1, x2, y2 = box
    return box if kind == "pasted" else (y1, x1, y2, x2)
