"""The `data:` block of an experiment YAML. Defaults live here; paper settings live in configs/."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from ssl_kd.options import Strict

DEFAULT_DATA_ROOT = "~/.cache/ssl_kd/data"
DATASETS = ("cifar10", "cifar100", "svhn", "stl10", "npz", "image_folder", "digits", "ucsc_plants32", "inat")


class WeakAugConfig(Strict):
    """Flip + pad-and-crop. Defaults = TorchSSL/USB: HFlip(0.5), RandomCrop(32, padding=4, reflect).

    FullMatch pads with zeros (`pad_mode: constant`). USB pads int(size * 0.125) px, i.e. 12 for STL-10's
    96 px, while TorchSSL keeps 4 for every dataset; `crop_padding` is in pixels, so either can be written.
    """

    flip: bool = True
    crop_padding: int = Field(4, ge=0, description="pixels on each side before the random crop; 0 disables")
    pad_mode: Literal["reflect", "constant"] = "reflect"


class StrongAugConfig(Strict):
    """FixMatch-style RandAugment (14 ops, magnitude uniform per op) followed by Cutout.

    Defaults = TorchSSL/USB `RandAugment(3, 5)`: 3 ops, always applied, cutout side U[0, 0.5]*W, fill
    (125, 123, 114), applied after flip+crop (USB). TorchSSL applies it before flip+crop (`order: before`).
    FullMatch: `num_ops: 2, op_prob: 0.5, cutout_random_size: false, cutout_fill: [127, 127, 127]`.
    """

    num_ops: int = Field(3, ge=0, description="ops drawn with replacement per image")
    op_prob: float = Field(1.0, ge=0.0, le=1.0, description="probability that each drawn op is applied")
    cutout: float = Field(0.5, ge=0.0, le=1.0, description="cutout side as a fraction of the width (max if random)")
    cutout_random_size: bool = Field(True, description="side ~ U[0, cutout] (TorchSSL/USB); false = fixed (FullMatch)")
    cutout_fill: list[int] = Field(default_factory=lambda: [125, 123, 114], description="RGB fill, 0..255")
    order: Literal["after", "before"] = Field("after", description="RandAugment after flip+crop (USB) or before")

    @field_validator("cutout_fill")
    @classmethod
    def _fill(cls, v: list[int]) -> list[int]:
        if len(v) == 1:
            v = v * 3
        if len(v) != 3 or any(not 0 <= c <= 255 for c in v):
            raise ValueError(f"cutout_fill must be 3 integers in 0..255 (R, G, B), got {v}")
        return v


class AugmentConfig(Strict):
    weak: WeakAugConfig = Field(default_factory=WeakAugConfig)
    strong: StrongAugConfig = Field(default_factory=StrongAugConfig)


class SSLSplitConfig(Strict):
    """Labelled/unlabelled split. Default = TorchSSL/USB: unlabelled set is the whole train set."""

    num_labels: int | None = Field(None, ge=1, description="labelled images in total, split evenly over classes")
    include_labeled_in_unlabeled: bool = True
    seed: int | None = Field(None, description="split seed; null = the experiment seed")


class SyntheticLocationConfig(Strict):
    """SYNTHETIC class-correlated coordinates (ssl_kd.data.metadata.synthetic_locations), for tests and benchmarks
    on datasets without real ones: each group gets a region, each sample a point near it. Not real data."""

    by: Literal["coarse", "class"] = Field(
        "coarse", description="one region per coarse class (npz y_<split>_coarse, e.g. CIFAR-100) or per class"
    )
    spread: float = Field(10.0, ge=0, description="std (degrees) of each sample around its region's centre")
    seed: int = 0


class MetadataConfig(Strict):
    """Per-sample location/date metadata, encoded and passed un-augmented to the batch as `meta`.

    Sources: the dataset's own file (npz keys lat_/lon_/date_ or doy_<split>; the iNaturalist JSON), or `csv` for
    an image folder; `synthetic_location` replaces lat/lon with made-up class-correlated ones. Encoding: DynamicMLP
    (specs/selfkd.md §4.1), 6-d for geo + temporal.
    """

    use: list[Literal["geo", "temporal"]] = Field(default_factory=lambda: ["geo", "temporal"])
    missing: Literal["any", "used"] = Field(
        "any", description="zero vector when any of lat/lon/date is missing (reference) or any *used* one is"
    )
    csv: str | None = Field(None, description="image_folder: CSV with file,lat,lon,date (file relative to path)")
    synthetic_location: SyntheticLocationConfig | None = None

    @field_validator("use")
    @classmethod
    def _use(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"use must list geo and/or temporal once each, got {v}")
        return v


class InatConfig(Strict):
    """iNaturalist COCO-style JSONs under data.root (image file_name relative to it)."""

    train: str = "train_mini.json"
    test: str = "val.json"


class DataConfig(Strict):
    """Which dataset, where it lives, how it is normalized and augmented.

    The default dataset is `digits` (scikit-learn's 1,797 8x8 digits, shipped in the wheel) so that a config
    without a `data:` block runs anywhere offline; paper configs name their dataset. Named datasets are looked
    up under `root` as torchvision's files, then as `<root>/<name>.npz`, then downloaded if `download: true`.
    `limit_train` / `limit_test` keep a class-balanced subset chosen by a fixed hash (the same on every
    machine and for every seed), so tests can run any config on tiny data. `ucsc_plants32` is only looked up as
    `<root>/ucsc_plants32.npz` (the project's shared plant photos with dates); `inat` reads iNaturalist's JSONs
    (`inat.train` / `inat.test`) under `root`, images resized to `image_size` (default 224).
    """

    dataset: Literal[
        "cifar10", "cifar100", "svhn", "stl10", "npz", "image_folder", "digits", "ucsc_plants32", "inat"
    ] = "digits"
    root: str | None = Field(
        None, description=f"folder with the named datasets; null = $SSL_KD_DATA, else {DEFAULT_DATA_ROOT}"
    )
    path: str | None = Field(None, description="the .npz file (dataset: npz) or folder (dataset: image_folder)")
    image_size: int | None = Field(
        None, ge=1, description="resize every image to this square size (image_folder: default = first image)"
    )
    download: bool = False
    extra_unlabeled: bool = Field(
        False, description="SVHN: load the 531k 'extra' split as the unlabelled pool (TorchSSL/USB do)"
    )
    num_workers: int = Field(2, ge=0)
    normalize: Literal["dataset", "imagenet", "none"] = Field(
        "dataset", description="dataset = TorchSSL's per-dataset constants (USB uses imagenet for CIFAR)"
    )
    mean: list[float] | None = Field(None, description="explicit per-channel mean on the 0..1 scale; overrides")
    std: list[float] | None = Field(None, description="explicit per-channel std on the 0..1 scale; overrides")
    limit_train: int | None = Field(None, ge=1, description="keep a class-balanced deterministic train subset")
    limit_test: int | None = Field(None, ge=1, description="keep a class-balanced deterministic test subset")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    metadata: MetadataConfig | None = Field(None, description="location/date metadata as the batch field `meta`")
    inat: InatConfig = Field(default_factory=InatConfig)
    ssl: SSLSplitConfig = Field(default_factory=SSLSplitConfig)

    @field_validator("mean", "std")
    @classmethod
    def _stats(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) == 1:
            v = v * 3
        if len(v) != 3:
            raise ValueError(f"give 3 values (R, G, B), got {len(v)}")
        if any(not 0.0 <= x <= 1.0 for x in v):
            raise ValueError(f"values must be on the 0..1 scale (divide 0..255 values by 255), got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DataConfig:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both `mean` and `std`, or neither")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"`std` must be positive, got {self.std}")
        if self.metadata is not None and self.metadata.csv and self.dataset != "image_folder":
            raise ValueError("metadata.csv is for `dataset: image_folder`; other datasets carry their own metadata")
        if self.dataset in ("npz", "image_folder") and not self.path:
            what = "the .npz file" if self.dataset == "npz" else "the folder holding train/<class>/ and test/<class>/"
            raise ValueError(f"dataset '{self.dataset}' needs `path`: {what}")
        return self

    def data_root(self) -> Path:
        """Resolved at use time (not stored) so a saved config.yaml stays portable between machines."""
        root = self.root or os.environ.get("SSL_KD_DATA") or DEFAULT_DATA_ROOT
        return Path(root).expanduser().absolute()
