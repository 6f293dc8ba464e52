"""KD (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", arXiv 1503.02531; as
megvii-research/mdistiller@a08d46f mdistiller/distillers/KD.py):

    L = w_ce CE(z_s, y) + w_kd tau^2 KL(softmax(z_t / tau) || softmax(z_s / tau))

Defaults are mdistiller's CIFAR-100 recipe (tau 4, w_ce 0.1, w_kd 0.9). The step around the term (the frozen
teacher, mixup / CutMix, an unlabelled stream, the temperature policy and KA) is `LogitDistillation`'s, so the
variants are options of this stage:

- CTKD / DTD: `temperature: {policy: ctkd_global | ctkd_instance | dtd, ...}` (ssl_kd.components.temperature);
- KA: `ka: {mode: lsr | ps}` corrects the teacher's target where it is wrong (ssl_kd.components.knowledge_adjust);
- DOT is not an option here but an optimizer (`optimizer.name: dot`) that backpropagates `kd` and `ce` separately;
- DM-KD (Li et al., arXiv 2305.12954; zhengli97/DM-KD@bbab9ce8 helper/loops.py) is this stage on synthetic images
  (`data.train_source`, real test set) with `loss_weights: {ce: 0, kd: 1}` and `mix:`: with a CE weight of 0 the
  step never reads a label (the logged `agree` is the student's agreement with the teacher). The teacher is called
  in eval mode under no_grad (DM-KD's reference builds its graph: same result, more memory);
- `unlabeled: true`: the KD term also covers data.ssl's unlabelled images (CE stays on the labelled batch).
"""

from __future__ import annotations

from typing import Any

import torch

from ssl_kd.engine import register_stage
from ssl_kd.losses import kd_loss
from ssl_kd.stages._teacher_student import LogitDistillation, LogitDistillationConfig


class KDConfig(LogitDistillationConfig):
    @classmethod
    def migrate(cls, data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """`loss: dkd` was DKD on this stage (now `type: dkd`); `loss: kd` said what `type: kd` says."""
        data, notes = super().migrate(data)
        loss = data.pop("loss", None)
        if loss == "dkd":
            data["type"] = "dkd"
            notes.append("`type: kd` with `loss: dkd` is now `type: dkd`")
        elif loss is not None:
            if loss != "kd":
                raise ValueError(f"loss: '{loss}' is not a KD loss; use type: kd or type: dkd")
            notes.append("`loss: kd` is dropped: the stage type says which loss it is")
        return data, notes


@register_stage("kd")
class KD(LogitDistillation):
    Config = KDConfig
    cfg: KDConfig

    def distill(self, student, teacher, target, tau) -> torch.Tensor:
        return kd_loss(student, teacher, tau, self.temperature.tau_squared)
