"""Rotation self-supervision (HSAKD, HSSAKD, SSKD): every image as four copies rotated by k * 90 degrees.

The copies are **interleaved per sample**, as the references build them (`torch.stack([rot90(x, k) for k in
range(4)], 1).view(-1, ...)`): row 4i + k is image i rotated k times, so `x4[0::4]` are the originals. The joint
label of row 4i + k is 4 y_i + k, a label space of 4C classes (class-major: columns 4c..4c+3 belong to class c).
Rotated rows enter BatchNorm together with the originals; main-logit losses and evaluation read only the
unrotated rows (`unrotated`).
"""

from __future__ import annotations

import torch
from torch import Tensor

ROTATIONS = 4


def rotate4(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (4B, C, H, W): each image followed by its 90, 180 and 270 degree rotations (counter-clockwise,
    `torch.rot90` over the spatial dims). Needs square images (a rotated copy must stack with the original)."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation self-supervision needs a batch of square images (B, C, H, H), got {tuple(x.shape)}")
    return torch.stack([torch.rot90(x, k, (2, 3)) for k in range(ROTATIONS)], 1).flatten(0, 1)


def rotate_copies(copies: list[Tensor] | tuple[Tensor, ...]) -> Tensor:
    """Four (B, C, H, W) copies of one batch (e.g. independently cropped views) -> (4B, C, H, W) with copy k rotated
    k * 90 degrees, in `rotate4`'s interleaved row order (SSKD's loader rotates four separately cropped copies)."""
    if len(copies) != ROTATIONS:
        raise ValueError(f"rotate_copies needs {ROTATIONS} copies, got {len(copies)}")
    if copies[0].ndim != 4 or copies[0].shape[-1] != copies[0].shape[-2]:
        raise ValueError(f"rotation self-supervision needs square images (B, C, H, H), got {tuple(copies[0].shape)}")
    return torch.stack([torch.rot90(c, k, (2, 3)) for k, c in enumerate(copies)], 1).flatten(0, 1)


def joint_labels(y: Tensor) -> Tensor:
    """(B,) class labels -> (4B,) joint labels 4 y + k, in `rotate4`'s row order."""
    return torch.stack([y * ROTATIONS + k for k in range(ROTATIONS)], 1).flatten()


def unrotated(t: Tensor) -> Tensor:
    """The rows of the original (0 degree) images of a `rotate4` batch."""
    return t[0::ROTATIONS]


def rotated(t: Tensor) -> Tensor:
    """The rows of the rotated copies (k = 1, 2, 3) of a `rotate4` batch, in order."""
    return t.unflatten(0, (-1, ROTATIONS))[:, 1:].flatten(0, 1)


def class_logits(joint: Tensor) -> Tensor:
    """(N, 4C) joint logits -> (N, C): the sum of each class's four rotation logits (the references' class
    accuracy of an auxiliary head)."""
    return joint.unflatten(1, (-1, ROTATIONS)).sum(-1)
