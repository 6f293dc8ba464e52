"""Datasets as plain arrays: N images, N labels and optional per-sample fields (e.g. location/date metadata).

Every split becomes an `ImageSet`. Augmentation, views and sampling live elsewhere, so a dataset is only ever
"N images, N labels and N rows of each field". Fields travel un-augmented into the batch under their own name
(`ViewDataset`), and models that declare them as extra inputs receive them (`ClassifierModel.extra_inputs`).
Where the images come from (npz, torchvision files, folders) is `sources/`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ssl_kd.errors import UserError


class ImageSet:
    """One split held in memory as an (N, H, W, 3) uint8 array (often a read-only memmap of the decode cache).

    `fields` maps a name to an array whose first axis is the sample (e.g. `meta`: (N, D) float32). Subclasses
    (`FolderImageSet`, `ConcatImageSet`, `SubsetImageSet`) decode or dispatch lazily and keep `images = None`.
    """

    def __init__(
        self,
        images: np.ndarray | None,
        targets: np.ndarray,
        classes: Sequence[str] | None = None,
        fields: Mapping[str, np.ndarray] | None = None,
    ):
        self.targets = np.asarray(targets, dtype=np.int64)
        self.classes = list(classes) if classes is not None else None
        self._mmap_file: str | None = None
        self.images = None
        self.fields = {k: np.asarray(v) for k, v in (fields or {}).items()}
        bad = {k: len(v) for k, v in self.fields.items() if len(v) != len(self.targets)}
        if bad:
            raise ValueError(f"per-sample fields {bad} do not match the {len(self.targets)} targets")
        if images is not None:
            images = as_rgb_batch(np.asarray(images))
            if len(images) != len(self.targets):
                raise ValueError(f"{len(images)} images but {len(self.targets)} targets")
            self.images = images

    def __len__(self) -> int:
        return len(self.targets)

    def image(self, i: int) -> np.ndarray:
        return self.images[i]

    def sample_fields(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.fields.items()}

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return tuple(self.images.shape[1:3]) if len(self) else (0, 0)

    def _sub_fields(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[indices] for k, v in self.fields.items()}

    def subset(self, indices: np.ndarray) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.images[indices], self.targets[indices], self.classes, self._sub_fields(indices))

    # A memmapped set pickles as its file name, so DataLoader workers started by spawn/forkserver (the
    # default from Python 3.14) re-map the cache instead of receiving 150 MB through a pipe.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._mmap_file is not None:
            state["images"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._mmap_file is not None and self.images is None:
            self.images = as_rgb_batch(np.asarray(np.load(self._mmap_file, mmap_mode="r")))


class FolderImageSet(ImageSet):
    """Image files decoded on access (PIL), resized to `size` (H, W) when they differ from it."""

    def __init__(self, files: Sequence[str], targets: np.ndarray, size: tuple[int, int], classes=None, fields=None):
        super().__init__(None, targets, classes, fields)
        self.files = [str(f) for f in files]
        self.size = (int(size[0]), int(size[1]))

    def image(self, i: int) -> np.ndarray:
        return read_image(self.files[i], self.size)

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.size

    def subset(self, indices: np.ndarray) -> FolderImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return FolderImageSet(
            [self.files[i] for i in indices], self.targets[indices], self.size, self.classes, self._sub_fields(indices)
        )


class EncodedImageSet(FolderImageSet):
    """Image files kept encoded for the large-image transforms (`data.transform`): `image(i)` is an `EncodedImage`
    handle (header read on demand, decoded at the reduced size the crop allows); `size` is the transforms' output
    size. `np.asarray(handle)` is the full decode, for code that wants pixels."""

    def __init__(self, files, targets, size, classes=None, fields=None, strict: bool = False):
        super().__init__(files, targets, size, classes, fields)
        self.strict = strict  # an unreadable file stops the run (ViewDataset) instead of being skipped

    def image(self, i: int):
        from ssl_kd.data.image_files import EncodedImage

        return EncodedImage(self.files[i])

    def subset(self, indices: np.ndarray) -> EncodedImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        files = [self.files[i] for i in indices]
        sub = self.targets[indices], self.size, self.classes, self._sub_fields(indices)
        return EncodedImageSet(files, *sub, strict=self.strict)


class ConcatImageSet(ImageSet):
    """Several sets seen as one (e.g. STL-10 train + unlabeled as the unlabelled pool) without copying. Fields
    are kept when every part has them (same names)."""

    def __init__(self, parts: Sequence[ImageSet]):
        names = set.intersection(*(set(p.fields) for p in parts)) if parts else set()
        fields = {k: np.concatenate([p.fields[k] for p in parts]) for k in sorted(names)}
        targets = np.concatenate([p.targets for p in parts]) if parts else np.zeros(0, np.int64)
        super().__init__(None, targets, None, fields)
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.classes = next((p.classes for p in parts if p.classes is not None), None)

    def image(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k].image(i - int(self.offsets[k]))

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.parts[0].image_shape

    def subset(self, indices: np.ndarray) -> ImageSet:
        return SubsetImageSet(self, indices)


class SubsetImageSet(ImageSet):
    """A lazy view of selected images of another set."""

    def __init__(self, base: ImageSet, indices: np.ndarray):
        self.indices = np.asarray(indices, dtype=np.int64)
        super().__init__(None, base.targets[self.indices], base.classes, base._sub_fields(self.indices))
        self.base = base

    def image(self, i: int) -> np.ndarray:
        return self.base.image(int(self.indices[i]))

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.base.image_shape

    def subset(self, indices: np.ndarray) -> ImageSet:
        return SubsetImageSet(self.base, self.indices[np.asarray(indices, dtype=np.int64)])


def concat_image_sets(*sets: ImageSet) -> ImageSet:
    return ConcatImageSet(sets)


@dataclass
class DatasetBundle:
    """A loaded dataset: the splits plus what models and transforms need to know about them."""

    name: str
    train: ImageSet
    test: ImageSet
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    unlabeled: ImageSet | None = None
    classes: list[str] | None = None
    source: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    transform: Any = None  # data.transform (TransformConfig) when the splits are EncodedImageSets


def as_rgb_batch(x: np.ndarray) -> np.ndarray:
    """(N,H,W) or (N,H,W,1) -> (N,H,W,3); anything else with 3 channels passes through untouched."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise UserError(f"images must be N x H x W x 3 (or grayscale N x H x W), got shape {x.shape}.")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=3)
    if x.dtype != np.uint8:
        raise UserError(f"images must be uint8 (0..255), got {x.dtype}.")
    return x


def resize_set(s: ImageSet, size: tuple[int, int]) -> ImageSet:
    """The set with every image resized to `size` (H, W) in memory (area filter when shrinking), or `s` itself when
    it already has that size."""
    if s.image_shape == size or len(s) == 0:
        return s
    import cv2

    h, w = s.image_shape
    interp = cv2.INTER_AREA if size[0] < h else cv2.INTER_LINEAR
    out = np.empty((len(s), size[0], size[1], 3), np.uint8)
    for i in range(len(s)):
        out[i] = cv2.resize(np.ascontiguousarray(s.image(i)), (size[1], size[0]), interpolation=interp)
    return ImageSet(out, s.targets, s.classes, s.fields)


def read_image(file: str, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    with Image.open(file) as im:
        im = im.convert("RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        return np.asarray(im)
