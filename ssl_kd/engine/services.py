"""Data services: the dataset (loaded once), transforms by kind, and the labelled/unlabelled split (computed once
per run, saved in the run folder, reloaded on resume). One for the run's `data:`, and one for each stage that names
its own dataset (`stages.<name>.data`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_kd.config.schema import Config
from ssl_kd.data import (
    DataConfig,
    DatasetBundle,
    DeviceImages,
    DeviceJpegViewDataset,
    DeviceViewDataset,
    EncodedImageSet,
    ImageSet,
    Transform,
    ViewDataset,
    build_transform,
    load_dataset,
    load_split,
    save_split,
    ssl_split,
    to_device_transform,
)
from ssl_kd.engine.run_dir import RunDir
from ssl_kd.errors import UserError


class DataServices:
    def __init__(
        self, cfg: Config, run_dir: RunDir, write: bool, device: torch.device | None = None,
        data: DataConfig | None = None, split_path: Path | None = None, channels_last: bool = False,
    ) -> None:  # fmt: skip
        self.cfg, self.run_dir, self.write = cfg, run_dir, write
        self.channels_last = (
            channels_last  # device-made batches in NHWC (the runner's resolved experiment.channels_last)
        )
        self.data_cfg = data or cfg.data  # a stage's own dataset, or the run's
        self.split_path = split_path or run_dir.split
        self.device = device or torch.device("cpu")
        self._device_images: dict[int, tuple[ImageSet, DeviceImages]] = {}
        self._data: DatasetBundle | None = None
        self._transforms: dict[str, Any] = {}
        self._split: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def data(self) -> DatasetBundle:
        if self._data is None:
            self._data = load_dataset(self.data_cfg)
        return self._data

    def transform(self, kind: str):
        if kind not in self._transforms:
            self._transforms[kind] = build_transform(kind, self.data, self.data_cfg.augment)
        return self._transforms[kind]

    def view_dataset(self, images: ImageSet, views: Mapping[str, Transform], indices: np.ndarray | None = None):
        """The dataset a stream reads views from: per-image in loader workers (`data.pipeline: host`), or whole
        batches on the device (`device`), with the same views, options and per-sample seeding either way."""
        if self.data_cfg.pipeline == "host":  # on a GPU the views travel as uint8 and are normalised there
            return ViewDataset(images, views, indices, defer_normalize=self.device.type == "cuda")
        if isinstance(images, EncodedImageSet):  # image files: decoded and cropped per batch on the device
            return DeviceJpegViewDataset(images, views, self.device, indices)
        key = id(images)
        if key not in self._device_images:  # one device copy per image set, shared by its streams
            self._device_images[key] = (images, DeviceImages(images, self.device))
        cl = self.channels_last
        return DeviceViewDataset(
            self._device_images[key][1], {k: to_device_transform(t, cl) for k, t in views.items()}, indices,
            graph=self.data_cfg.device_graph,
        )  # fmt: skip

    def ssl_split(self, stage_name: str | None) -> tuple[np.ndarray, np.ndarray]:
        if self._split is None:
            scfg = self.data_cfg.ssl
            if scfg.num_labels is None:
                raise UserError(
                    f"stages.{stage_name or '?'}: this stage needs a labelled subset; "
                    f"set data.ssl.num_labels (e.g. data.ssl.num_labels=40)."
                )
            if self.split_path.exists():
                self._split = load_split(self.split_path)
            else:
                seed = scfg.seed if scfg.seed is not None else self.cfg.experiment.seed
                self._split = ssl_split(
                    self.data.train.targets, scfg.num_labels, self.data.num_classes, seed,
                    include_labeled_in_unlabeled=scfg.include_labeled_in_unlabeled,
                )  # fmt: skip
                if self.write:
                    save_split(self.split_path, *self._split)
        return self._split
