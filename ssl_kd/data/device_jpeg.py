"""The large-image crops made for a whole batch on the device (a GPU in training, the CPU in tests): batched JPEG
decoding with `torchvision.io.decode_jpeg(..., device=...)` (nvJPEG on CUDA), then every sample's crop box resized to
the output with `torchvision.ops.roi_align` (one call per distinct image size in the batch, so images are never
padded), the flips and the normalisation as batch ops.

The boxes and flips are the host path's (`CropTransform.box`, from the same view seeds), so the two paths differ only
in the resampling: roi_align averages `ceil(box / out)`^2 bilinear samples per output pixel (an area filter), where the
host path uses torchvision's antialiased bilinear (triangle) filter. `tests/unit/test_device_jpeg.py` states the
per-image difference in gray levels on plants_jpeg.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.ops import roi_align

from ssl_kd.data.containers import EncodedImageSet
from ssl_kd.data.device_augment import DeviceStrong, uniforms
from ssl_kd.data.hashing import mix_seeds
from ssl_kd.data.image_files import EncodedImage, UnreadableImage, decode, is_jpeg
from ssl_kd.data.large_image import Box, CropTransform, center_box, resize_shorter
from ssl_kd.data.transfer import array_on_device
from ssl_kd.data.view_dataset import SKIPPED
from ssl_kd.errors import UserError

log = logging.getLogger("ssl_kd.data")


def decode_batch(images: Sequence[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    """(3, H, W) uint8 RGB per image on `device`: JPEGs in one batched `decode_jpeg` call, other formats (a PNG in
    the tree) through the host decoder; an unreadable file raises `UnreadableImage` naming it."""
    out: list[torch.Tensor | None] = [None] * len(images)
    jpegs = [i for i, im in enumerate(images) if is_jpeg(im.buf)]
    if jpegs:
        data = [torch.from_numpy(images[i].buf) for i in jpegs]
        try:
            decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad file fails the batch: find it
            decoded = []
            for i, d in zip(jpegs, data):
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=device))
                except RuntimeError as e:
                    raise UnreadableImage(images[i].path, f"corrupt JPEG ({str(e).splitlines()[-1]})") from None
        for i, x in zip(jpegs, decoded):
            out[i] = x
    for i, im in enumerate(images):
        if out[i] is None:
            out[i] = torch.from_numpy(decode(im.buf, im.path)).permute(2, 0, 1).to(device)
    return out  # type: ignore[return-value]


def roi_resized_crops(images: Sequence[torch.Tensor], boxes: Sequence[Box], out: int) -> torch.Tensor:
    """(B, 3, out, out) float32 on 0..255: box b of image b (top, left, height, width in pixels) resized to out x out
    by roi_align (aligned pixel centres, adaptive sampling = an area average)."""
    dev = images[0].device
    result = torch.empty((len(images), 3, out, out), dtype=torch.float32, device=dev)
    groups: dict[tuple[int, int], list[int]] = {}
    for b, x in enumerate(images):
        groups.setdefault(tuple(x.shape[1:]), []).append(b)
    for members in groups.values():
        stack = torch.stack([images[b] for b in members]).to(torch.float32)
        rois = torch.tensor(
            [[k, boxes[b][1], boxes[b][0], boxes[b][1] + boxes[b][3], boxes[b][0] + boxes[b][2]]
             for k, b in enumerate(members)], dtype=torch.float32, device=dev,
        )  # fmt: skip
        crops = roi_align(stack, rois, (out, out), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        result[torch.tensor(members, device=dev)] = crops
    return result


def eval_boxes(sizes: Sequence[tuple[int, int]], out: int, crop_pct: float) -> list[Box]:
    """The resize + centre crop as a box in the original image: the centre crop of the image resized to
    floor(out / crop_pct) on its shorter side, mapped back (same area, no second resize)."""
    boxes = []
    short = int(np.floor(out / crop_pct + 1e-9))
    for h, w in sizes:
        rh, rw = resize_shorter(h, w, short)
        top, left = center_box(rh, rw, out)
        sy, sx = h / rh, w / rw
        boxes.append((top * sy, left * sx, out * sy, out * sx))
    return boxes


class DeviceCrops:
    """A `CropTransform` for whole batches on a device: `t(images, seeds) -> (B, 3, size, size)` normalised float.

    Boxes and flips are the host path's for the same view seeds. The strong view adds the batched RandAugment +
    Cutout of `device_augment.DeviceStrong` on the rounded crops, with its draws `uniforms(seed, j)` (the device
    path's own random stream, as for CIFAR)."""

    def __init__(self, host: CropTransform, device: torch.device) -> None:
        if host.kind != "test" and (any(host.cfg.color_jitter) or host.cfg.lighting):
            raise UserError(
                "data.transform: color_jitter / lighting run on the host path only; set data.pipeline: host or "
                "drop them."
            )
        self.host, self.device = host, device
        self._ra = None
        if host.kind == "strong":
            self._ra = DeviceStrong(host.mean, host.std, host._ra.weak, host._ra.strong)
        std = torch.tensor(host.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._inv = 1.0 / (255.0 * std)
        self._bias = -torch.tensor(host.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) / std

    def boxes(self, sizes: Sequence[tuple[int, int]], seeds: Sequence[int]) -> tuple[list[Box], torch.Tensor]:
        h = self.host
        if h.kind == "test" or h.cfg.train == "resize_center_crop":
            boxes = eval_boxes(sizes, h.size, h.cfg.crop_pct)
            flips = [h.kind != "test" and h.box(1, 1, int(s))[1] for s in seeds]
        else:
            drawn = [h.box(hh, ww, int(s)) for (hh, ww), s in zip(sizes, seeds)]
            boxes, flips = [d[0] for d in drawn], [d[1] for d in drawn]
        return boxes, torch.tensor(flips, dtype=torch.bool, device=self.device)

    def crops(self, images: Sequence[EncodedImage], seeds: Sequence[int]) -> torch.Tensor:
        """(B, 3, size, size) float on 0..255, flipped where drawn, before normalisation."""
        decoded = decode_batch(images, self.device)
        boxes, flips = self.boxes([tuple(x.shape[1:]) for x in decoded], seeds)
        x = roi_resized_crops(decoded, boxes, self.host.size)
        return torch.where(flips.view(-1, 1, 1, 1), x.flip(-1), x)

    def __call__(self, images: Sequence[EncodedImage], seeds: Sequence[int]) -> torch.Tensor:
        x = self.crops(images, seeds)
        if self._ra is not None:
            s = self._ra.strong
            u = uniforms(mix_seeds(np.asarray(seeds, dtype=np.uint64), 1), 3 * s.num_ops + 3)
            x = self._ra.randaugment(x.round_().clamp_(0, 255), array_on_device(u, self.device))
        return x.mul_(self._inv).add_(self._bias)


class DeviceJpegViewDataset:
    """`ds.batch(positions, seeds) -> {view: (B, 3, S, S) float, "y", "idx", field, ...}` on the device, for image
    files (`data.pipeline: device` with large-image crops): the files are read on the host (bytes only), decoded and
    cropped on the device. The same contract as `ViewDataset`: view k of a sample is drawn from mix_seed(seed, k); an
    unreadable file is skipped (the next position stands in) and logged, or with `strict` stops the run."""

    batched = True  # the engine calls `batch` per step instead of running a DataLoader

    def __init__(
        self, images: EncodedImageSet, views: Mapping[str, CropTransform], device: torch.device,
        indices: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        self.images, self.device = images, device
        self.views = {k: DeviceCrops(t, device) for k, t in views.items()}
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.targets = images.targets if self.indices is None else images.targets[self.indices]
        self._fields = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in images.fields.items()}

    def __len__(self) -> int:
        return len(self.images) if self.indices is None else len(self.indices)

    def batch(self, positions: np.ndarray, seeds: np.ndarray) -> dict[str, torch.Tensor]:
        positions = np.asarray(positions, dtype=np.int64).copy()
        for _ in range(len(self)):
            try:
                return self._batch(positions, np.asarray(seeds, dtype=np.uint64))
            except UnreadableImage as e:
                if getattr(self.images, "strict", False):
                    raise UserError(f"{e} (data.transform.strict: true stops on unreadable images).") from None
                bad = [p for p in range(len(positions)) if self._file(positions[p]) == e.path]
                positions[bad] = (positions[bad] + 1) % len(self)
                if e.path not in SKIPPED:
                    SKIPPED[e.path] = e.reason
                    log.warning("skipped unreadable image %s (%s); %d skipped so far", e.path, e.reason, len(SKIPPED))
        raise UserError(f"no readable image among the {len(self)} samples of this dataset.")

    def _file(self, pos: int) -> str:
        return self.images.files[int(pos) if self.indices is None else int(self.indices[pos])]

    def _batch(self, positions: np.ndarray, seeds: np.ndarray) -> dict[str, torch.Tensor]:
        idx_host = positions if self.indices is None else self.indices[positions]
        handles = [self.images.image(int(i)) for i in idx_host]
        out = {name: t(handles, mix_seeds(seeds, k).tolist()) for k, (name, t) in enumerate(self.views.items())}
        idx = array_on_device(idx_host.astype(np.int64), self.device)
        out["y"] = array_on_device(self.images.targets[idx_host], self.device)
        out["idx"] = idx
        for name, value in self._fields.items():
            out[name] = value.index_select(0, idx)
        return out
