"""Small heads that methods attach to a model's maps: MixSKD's self-teacher and feature critics, RecursiveMix's RoI
features. Stages register them as their own modules (optimized, checkpointed, saved with the stage)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from ssl_kd.losses import grad_reverse
from ssl_kd.models.base import global_pool


class SelfTeacher(nn.Module):
    """MixSKD's self-teacher (Self-KD-Lib ``ResNet_Final_Auxiliary_Classifer``): concatenate the K exits' final maps
    on channels, 1x1 conv without bias (K*C -> C; no BN, no ReLU), global pool, fc. PyTorch's default init."""

    def __init__(self, num_maps: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_maps * channels, channels, 1, bias=False)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        return self.fc(global_pool(self.conv(torch.cat(list(maps), dim=1))))


class FeatureCritics(nn.Module):
    """MixSKD's ``L_gan``: per exit a critic D_k = Linear(C_k, 128) -> ReLU -> Linear(128, 2) on the pooled maps,
    trained to tell interpolated maps (target [1, 0]) from mixed-image maps ([0, 1]) by BCE-with-logits, summed
    over k.

    ``adversarial=False`` is the reference (methods/adversarial.py keeps the critics in a Python list, so they are
    never optimized): the stage freezes them and the network *minimizes* the BCE through fixed random critics.
    ``adversarial=True`` trains the critics on the BCE and reverses the gradient into the features (a GRL), the
    min-max the paper describes."""

    def __init__(self, channels: Sequence[int], hidden: int = 128, adversarial: bool = False) -> None:
        super().__init__()
        self.critics = nn.ModuleList(
            nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2)) for c in channels
        )
        self.adversarial = adversarial

    def forward(self, maps_hat: Sequence[Tensor], maps_tilde: Sequence[Tensor]) -> Tensor:
        total = maps_hat[0].new_zeros((), dtype=torch.float32)
        for critic, a, b in zip(self.critics, maps_hat, maps_tilde):
            pooled = global_pool(torch.cat([a, b]))
            if self.adversarial:
                pooled = grad_reverse(pooled, 1.0)
            n = a.shape[0]
            target = torch.zeros(2 * n, 2, device=pooled.device)
            target[:n, 0] = 1.0
            target[n:, 1] = 1.0
            total = total + F.binary_cross_entropy_with_logits(critic(pooled).float(), target)
        return total


def roi_features(feature_map: Tensor, box: tuple[int, int, int, int], image_size: tuple[int, int]) -> Tensor:
    """(B, C): RoIAlign of one pixel box (x1, y1, x2, y2) on every image of the batch, pooled to 1x1.

    As RecursiveMix (models_cifar/resnet.py): each box gets its batch index, spatial_scale = map width / image width
    (the width ratio only), sampling_ratio adaptive, aligned=True. Flattened rather than ``squeeze()``d, so a batch
    of one keeps its batch dimension (the reference drops it)."""
    n = feature_map.shape[0]
    # four fills, not a copy from the host (which makes the host wait for the GPU)
    boxes = torch.stack([torch.full((), float(v), dtype=feature_map.dtype, device=feature_map.device) for v in box])
    boxes = boxes[None].expand(n, 4)
    rois = torch.cat([torch.arange(n, device=feature_map.device, dtype=feature_map.dtype)[:, None], boxes], dim=1)
    scale = feature_map.shape[-1] / image_size[1]
    out = roi_align(feature_map, rois, output_size=(1, 1), spatial_scale=scale, sampling_ratio=-1, aligned=True)
    return out.flatten(1)
