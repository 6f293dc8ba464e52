"""What every data source is: a name in the registry, `load(cfg)` for the splits and `info(cfg)` for their sizes
without decoding images (--dry-run), plus the facts the rest of the data layer asks of it (its normalisation
constants, whether it needs `data.path`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from ssl_kd.data.containers import ImageSet
from ssl_kd.errors import UserError, choices, suggest

if TYPE_CHECKING:
    from ssl_kd.data.config import DataConfig
    from ssl_kd.data.metadata import RawMetadata

Stats = tuple[tuple[float, ...], tuple[float, ...]]  # per-channel (mean, std) on the 0..1 scale


@dataclass
class SourceSplits:
    """A source's splits as read, before the shared steps (metadata, train_source, resize, statistics, limits)."""

    train: ImageSet
    test: ImageSet
    num_classes: int
    source: str  # where the data came from, for the run log
    classes: list[str] | None = None
    unlabeled: ImageSet | None = None
    arrays: Mapping[str, np.ndarray] | None = None  # an .npz's arrays: `data.metadata` may read lat_/date_ keys
    metadata: dict[str, RawMetadata] | None = None  # per split, when the source carries its own (iNat's JSON)


@dataclass
class SourceInfo:
    """Sizes before `limit_train` / `limit_test`, from headers, listings or known facts: no image is decoded."""

    num_train: int
    num_test: int
    num_unlabeled: int
    num_classes: int
    image_size: int
    source: str


class Source:
    """Base of every data source. Subclasses set the class attributes they have and implement `load` / `info`;
    each must raise the same UserError from both when the data is missing or malformed."""

    name: str = ""  # set by register_source
    stats: Stats | None = None  # `normalize: dataset` constants; None = computed from the training images
    path_help: str = ""  # non-empty: `data.path` is required and names this ("the .npz file")
    default_transform: bool = False  # large images: the large-image transforms apply even without `data.transform`

    def load(self, cfg: DataConfig) -> SourceSplits:
        raise NotImplementedError

    def info(self, cfg: DataConfig) -> SourceInfo:
        raise NotImplementedError


_SOURCES: dict[str, Source] = {}
S = TypeVar("S", bound=type[Source])


def register_source(name: str) -> Callable[[S], S]:
    """Class decorator: `data.dataset: <name>` loads with an instance of the class."""

    def deco(cls: S) -> S:
        if name in _SOURCES and type(_SOURCES[name]) is not cls:  # a programming error, not a user mistake
            raise ValueError(f"data source '{name}' is already registered by {type(_SOURCES[name]).__module__}")
        source = cls()
        source.name = name
        _SOURCES[name] = source
        return cls

    return deco


def source_names() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> Source:
    if name not in _SOURCES:
        raise UserError(f"data.dataset: unknown dataset '{name}'.{suggest(name, _SOURCES)} Valid: {choices(_SOURCES)}.")
    return _SOURCES[name]
