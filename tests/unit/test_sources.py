"""The data-source registry (ssl_kd.data.sources): names, errors, a new source in one class, and each built-in
source's `info` on the fake data the tests write (it must agree with what `load` reads)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_fake_inat, write_fake_npz, write_fake_plants
from PIL import Image
from pydantic import ValidationError

from ssl_kd.config.validate import validate_config
from ssl_kd.data import DataConfig, ImageSet, dataset_info, load_dataset
from ssl_kd.data.sources import Source, SourceInfo, SourceSplits, base, get_source, register_source, source_names
from ssl_kd.errors import UserError

BUILT_IN = [
    "cifar10", "cifar100", "digits", "image_folder", "imagenet", "inat", "npz", "stl10", "svhn", "ucsc_plants32"
]  # fmt: skip


def test_builtin_sources_are_registered():
    assert source_names() == BUILT_IN
    assert all(get_source(n).name == n for n in BUILT_IN)


def test_unknown_name_is_one_clear_error():
    with pytest.raises(UserError, match=r"data.dataset: unknown dataset 'cifar11'\. Did you mean 'cifar10'\? Valid: "):
        get_source("cifar11")
    with pytest.raises(UserError) as e:
        validate_config({"data": {"dataset": "imagenet22k"}})
    msg = str(e.value)
    assert f"data.dataset: must be one of {', '.join(BUILT_IN)}" in msg and "got 'imagenet22k'" in msg
    with pytest.raises(UserError, match=r"must be one of .*ucsc_plants32 \(did you mean 'cifar10'\?\), got 'cifar11'"):
        validate_config({"data": {"dataset": "cifar11"}})
    with pytest.raises(ValidationError):
        DataConfig(dataset="cifar11")


def test_a_source_that_needs_a_path_says_so():
    with pytest.raises(UserError, match=r"data: dataset 'npz' needs `path`: the \.npz file"):
        validate_config({"data": {"dataset": "npz"}})
    with pytest.raises(ValidationError, match="needs `path`: the folder holding train/<class>/"):
        DataConfig(dataset="image_folder")


def test_registering_a_name_twice_is_a_programming_error():
    with pytest.raises(ValueError, match="'digits' is already registered"):

        @register_source("digits")
        class Other(Source):
            pass


@pytest.fixture
def toy_source():
    """A source registered the way a new one is (one class, one decorator), removed again afterwards."""

    @register_source("toy")
    class Toy(Source):
        stats = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

        def load(self, cfg: DataConfig) -> SourceSplits:
            x = np.zeros((12, 4, 4, 3), np.uint8)
            y = np.arange(12) % 3
            return SourceSplits(train=ImageSet(x, y), test=ImageSet(x[:6], y[:6]), num_classes=3, source="toy")

        def info(self, cfg: DataConfig) -> SourceInfo:
            return SourceInfo(12, 6, 0, 3, 4, "toy")

    yield Toy
    del base._SOURCES["toy"]


def test_a_new_source_is_one_class_and_one_register_line(toy_source):
    cfg = DataConfig.model_validate({"dataset": "toy", "limit_train": 6})  # valid in a YAML at once
    b = load_dataset(cfg)
    assert (len(b.train), len(b.test), b.num_classes, b.image_size) == (6, 6, 3, 4)
    assert b.mean == (0.5, 0.5, 0.5) and np.bincount(b.train.targets).tolist() == [2, 2, 2]
    info = dataset_info(cfg)
    assert (info["num_train"], info["num_train_available"], info["num_test"], info["source"]) == (6, 12, 6, "toy")


# ------------------------------------------------------------------------------------------------ info vs load
def _agree(cfg: DataConfig) -> SourceInfo:
    """The source's info, checked against what its load reads."""
    source = get_source(cfg.dataset)
    info, splits = source.info(cfg), source.load(cfg)
    n_unl = len(splits.unlabeled) if splits.unlabeled is not None else 0
    got = (len(splits.train), len(splits.test), n_unl, splits.num_classes, splits.source)
    assert got == (info.num_train, info.num_test, info.num_unlabeled, info.num_classes, info.source)
    assert info.image_size == splits.train.image_shape[0]
    return info


def test_digits_info():
    info = _agree(DataConfig(dataset="digits"))
    assert (info.num_train, info.num_test, info.num_classes, info.image_size) == (1397, 400, 10, 8)
    assert get_source("digits").stats is None  # measured on the training images


def test_npz_and_named_npz_info(tmp_path):
    write_fake_npz(tmp_path / "mine.npz", 5, 4, 2, size=16, unlabeled=3)
    info = _agree(DataConfig(dataset="npz", path=str(tmp_path / "mine.npz")))
    assert (info.num_train, info.num_test, info.num_unlabeled, info.num_classes, info.image_size) == (20, 10, 3, 5, 16)
    write_fake_plants(tmp_path / "ucsc_plants32.npz")
    info = _agree(DataConfig(dataset="ucsc_plants32", root=str(tmp_path)))
    assert (info.num_train, info.num_classes) == (153, 51)


def test_torchvision_sources_read_their_npz_stand_in(tmp_path):
    write_fake_npz(tmp_path / "cifar10.npz", 10, 3, 1)
    write_fake_npz(tmp_path / "svhn.npz", 10, 2, 1, unlabeled=5)
    write_fake_npz(tmp_path / "stl10.npz", 10, 2, 1, size=24, unlabeled=4)
    assert _agree(DataConfig(dataset="cifar10", root=str(tmp_path))).num_train == 30
    assert _agree(DataConfig(dataset="svhn", root=str(tmp_path))).num_unlabeled == 0  # extra only when asked
    assert _agree(DataConfig(dataset="svhn", root=str(tmp_path), extra_unlabeled=True)).num_unlabeled == 5
    assert _agree(DataConfig(dataset="stl10", root=str(tmp_path))).image_size == 24


def test_torchvision_facts_without_reading_the_files(tmp_path):
    """With torchvision's files present, info reports the known split sizes (the files are not opened)."""
    stl = tmp_path / "stl10_binary"
    stl.mkdir()
    for f in get_source("stl10").files:
        (stl / f).write_bytes(b"")
    info = get_source("stl10").info(DataConfig(dataset="stl10", root=str(tmp_path)))
    assert info == SourceInfo(5000, 8000, 100000, 10, 96, str(stl))
    info = get_source("cifar100").info(DataConfig(dataset="cifar100", root=str(tmp_path), download=True))
    assert (info.num_train, info.num_classes) == (50000, 100)
    assert info.source == f"{tmp_path} (will download via torchvision)"
    assert get_source("cifar10").stats[0] == (125.3 / 255, 123.0 / 255, 113.9 / 255)  # TorchSSL's constants
    with pytest.raises(UserError, match=r"(?s)svhn: not found .*train_32x32\.mat, test_32x32\.mat, extra_32x32\.mat"):
        get_source("svhn").info(DataConfig(dataset="svhn", root=str(tmp_path), extra_unlabeled=True))


def test_image_folder_info(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for c in ("a", "b", "c"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((10, 10, 3), i, np.uint8)).save(tmp_path / split / c / f"{i}.png")
    info = _agree(DataConfig(dataset="image_folder", path=str(tmp_path)))
    assert (info.num_train, info.num_test, info.num_classes, info.image_size) == (9, 6, 3, 10)
    assert _agree(DataConfig(dataset="image_folder", path=str(tmp_path), image_size=6)).image_size == 6


def test_inat_info(tmp_path):
    write_fake_inat(tmp_path)
    info = _agree(DataConfig(dataset="inat", root=str(tmp_path), image_size=16))
    assert (info.num_train, info.num_test, info.num_classes, info.image_size) == (520, 12, 4, 16)
    assert get_source("inat").load(DataConfig(dataset="inat", root=str(tmp_path))).metadata["train"].lat[1] == -10.0
