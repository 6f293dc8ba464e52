"""MCL: Mutual Contrastive Learning of N peer networks trained together (Yang et al., AAAI 2022; winycg/MCL).

    batch: m images of each of batch/m classes         `sampler: {kind: m_per_class, m: 2}` (MPerClassSampler)
    for each peer i:  z_i, f_i = net_i(x)              logits and pooled feature
                      e_i = normalize(MLP_i(f_i))      embedding head d -> 128 -> 128, L2-normalised (registered)
    VCL, soft VCL, ICL, soft ICL = mcl_losses(e, y)    tau_c = 0.1, soft terms T^2-scaled KL at T = 3
    L = sum_i CE(z_i, y) + alpha VCL + gamma soft VCL + beta ICL + lambda soft ICL   (+ logit KD, optional)
    logit KD = KL_T(z_i || sg(mean_j z_j))             `--logit-distill`: both peers when N = 2, the last when N > 2

Defaults are scripts/train_cifar_mcl.sh: alpha 0.1, gamma 1, beta 0.1, lambda 1 (`loss_weights`: vcl, soft_vcl,
icl, soft_icl; the argparse defaults are 0), tau_c 0.1 (main_cifar.py's current default; the repository's early
logs ran 0.07), T = 3, no logit KD (`loss_weights.logit_kd: 1` turns on the `--logit-distill` variant). The peers
are the models under `train:` (one optimizer over all of them and the heads, as the reference's one SGD); evaluation
reports each peer (`test/<peer>/top1`) and their ensemble (`test/ensemble/top1`). The reference ensembles by the
sum of the peers' logits at test time; the mean used here has the same top-1 (its CE `loss` is that of the mean).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ssl_kd.config.schema import StageConfig
from ssl_kd.data import SamplerConfig
from ssl_kd.engine import Stage, register_stage
from ssl_kd.losses import accuracy, ensemble_kd_loss, mcl_losses
from ssl_kd.models.feature_heads import MLPHead
from ssl_kd.stages._common import Augment, check_same_classes, feat_dim, labelled_views


def _mcl_weights() -> dict[str, float]:
    return {"ce": 1.0, "vcl": 0.1, "soft_vcl": 1.0, "icl": 0.1, "soft_icl": 1.0, "logit_kd": 0.0}


class MCLConfig(StageConfig):
    loss_weights: dict[str, float] = Field(default_factory=_mcl_weights)  # ce is per peer, summed over peers
    sampler: SamplerConfig = Field(default_factory=lambda: SamplerConfig(kind="m_per_class", m=2))
    tau: float = Field(0.1, gt=0)  # contrastive temperature tau_c
    temperature: float = Field(3.0, gt=0)  # T of the soft ICL / VCL and of the logit KD (`kd_T`)
    embed_dim: int = Field(128, ge=1)  # the head's hidden and output width (`feat_dim`)
    # logit KD to the ensemble: None = the reference (all peers when N = 2, only the last when N > 2)
    logit_kd_all_peers: bool | None = None
    augment: Augment = "weak"

    @model_validator(mode="after")
    def _peers(self) -> MCLConfig:
        if len(self.train) < 2:
            raise ValueError(f"train: MCL trains N >= 2 peer networks together, got {self.train or '[]'}")
        if "ensemble" in self.train:
            raise ValueError("train: 'ensemble' is the name the peers' ensemble is reported under; rename the model")
        return self


@register_stage("mcl")
class MCL(Stage):
    Config = MCLConfig
    cfg: MCLConfig

    def setup(self) -> None:
        c = self.cfg
        self.peers = list(c.train)
        check_same_classes(self, *self.peers)
        self.add_stream("train", labelled_views(self, c.augment, "all"))
        for i, p in enumerate(self.peers):
            head = MLPHead(feat_dim(self, p), c.embed_dim, c.embed_dim, normalize=True, seed=self.seed("embed", i))
            self.register_module(f"embed_{p}", head)

    def train_step(self, batch):
        c = self.cfg
        part = batch["train"]
        y = part["y"]
        outs = [self.forward(p, part) for p in self.peers]
        logits = [o.logits for o in outs]
        embeddings = [self.module(f"embed_{p}")(o.feat) for p, o in zip(self.peers, outs)]
        losses: dict[str, Any] = {"ce": sum(F.cross_entropy(z, y) for z in logits)}
        losses.update(mcl_losses(embeddings, y, c.tau, c.temperature))
        losses["logit_kd"] = ensemble_kd_loss(logits, c.temperature, c.logit_kd_all_peers)  # weight 0: logged only
        diagnostics = {f"acc_{p}": accuracy(z, y) for p, z in zip(self.peers, logits)}
        return losses, diagnostics

    def eval_targets(self):
        models = [self.raw_model(p) for p in self.peers]

        def ensemble(batch):
            return torch.stack([self.predict(p, m, batch) for p, m in zip(self.peers, models)]).mean(0)

        return {"ensemble": ensemble}
