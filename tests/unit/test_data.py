"""Data layer: datasets, split, sampler, transforms, mixing (real CIFAR-10 tests skip without it: real_data_root)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import real_data_root
from PIL import Image, ImageEnhance, ImageOps
from pydantic import ValidationError

from ssl_kd.data import (
    RANDAUGMENT_OPS,
    AugmentConfig,
    DataConfig,
    ImageSet,
    StreamSampler,
    StrongAugConfig,
    ViewDataset,
    WeakAugConfig,
    build_transform,
    cutout,
    dataset_info,
    load_dataset,
    load_split,
    mix_seed,
    save_split,
    ssl_split,
)
from ssl_kd.data.containers import DatasetBundle
from ssl_kd.data.mixing import mix_tensors, one_hot, sample_cutmix, sample_mixup
from ssl_kd.data.sources import get_source, npz_cache
from ssl_kd.data.subsets import balanced_subset
from ssl_kd.errors import UserError

SHARED = real_data_root("cifar10.npz")
HAS_CIFAR10 = SHARED is not None


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(dataset="digits"))


def _rand_bundle(n=20, size=32, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    s = ImageSet(x, y)
    return DatasetBundle("rand", s, s, classes, size, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))


# ------------------------------------------------------------------------------------------------ datasets
def test_digits_shapes_and_identity(digits):
    assert len(digits.train) == 1397 and len(digits.test) == 400
    assert digits.num_classes == 10 and digits.image_size == 8
    img = digits.train.image(0)
    assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    assert digits.train.targets.dtype == np.int64
    assert np.bincount(digits.test.targets).tolist() == [40] * 10
    assert digits.train.images.max() == 255 and digits.train.images.min() == 0
    again = load_dataset(DataConfig(dataset="digits"))
    assert np.array_equal(again.train.images, digits.train.images)
    assert np.array_equal(again.test.targets, digits.test.targets)
    # normalization computed from the train split
    x = digits.train.images.astype(np.float64) / 255
    assert np.allclose(digits.mean, x.reshape(-1, 3).mean(0))
    info = dataset_info(DataConfig(dataset="digits"))
    assert (info["num_train"], info["num_test"], info["num_classes"], info["image_size"]) == (
        1397,
        400,
        10,
        8,
    )


def test_limits_are_balanced_nested_and_resize(digits):
    b = load_dataset(DataConfig(dataset="digits", limit_train=100, limit_test=30, image_size=32))
    assert len(b.train) == 100 and len(b.test) == 30
    assert np.bincount(b.train.targets).tolist() == [10] * 10
    assert b.image_size == 32 and b.train.image(3).shape == (32, 32, 3)
    small, big = balanced_subset(digits.train.targets, 50), balanced_subset(digits.train.targets, 200)
    assert set(small) <= set(big)
    # a class too small for its quota hands the rest to the others
    t = np.array([0] * 2 + [1] * 50 + [2] * 50)
    keep = balanced_subset(t, 30)
    assert len(keep) == 30 and np.bincount(t[keep]).tolist() == [2, 14, 14]


def test_config_validation(monkeypatch, tmp_path):
    with pytest.raises(ValidationError):
        DataConfig(dataset="digits", bogus=1)
    with pytest.raises(ValidationError):
        DataConfig(dataset="npz")
    with pytest.raises(ValidationError):
        DataConfig(mean=[0.5, 0.5, 0.5])
    with pytest.raises(ValidationError):
        DataConfig(augment={"strong": {"cutout_fill": [1, 2]}})
    monkeypatch.setenv("SSL_KD_DATA", str(tmp_path))
    assert DataConfig().data_root() == tmp_path
    assert DataConfig(root="/x").data_root() == Path("/x")


def test_missing_dataset_names_files(tmp_path):
    cfg = DataConfig(dataset="cifar10", root=str(tmp_path))
    for fn in (load_dataset, dataset_info):
        with pytest.raises(UserError) as e:
            fn(cfg)
        msg = str(e.value)
        assert str(tmp_path / "cifar10.npz") in msg
        assert str(tmp_path / "cifar-10-batches-py") in msg and "data_batch_1" in msg
        assert "SSL_KD_DATA" in msg and "download" in msg
    with pytest.raises(UserError, match="no such file"):
        load_dataset(DataConfig(dataset="npz", path=str(tmp_path / "nope.npz")))


def test_npz_decode_cache_and_pickle(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (30, 16, 16, 3), dtype=np.uint8), "y_train": np.arange(30) % 3,
        "x_test": rng.integers(0, 256, (9, 16, 16), dtype=np.uint8), "y_test": np.arange(9) % 3,
    }  # fmt: skip
    path = tmp_path / "mine.npz"
    np.savez_compressed(path, **arrays)
    monkeypatch.setenv("SSL_KD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(npz_cache, "CACHE_MIN_BYTES", 0)
    cfg = DataConfig(dataset="npz", path=str(path))
    b = load_dataset(cfg)
    assert b.num_classes == 3 and b.image_size == 16 and len(b.train) == 30
    assert np.array_equal(b.train.images, arrays["x_train"])
    assert b.test.image(0).shape == (16, 16, 3)  # grayscale repeated to RGB
    (entry,) = (tmp_path / "cache").iterdir()
    assert (entry / "x_train.npy").is_file() and not any(p.name.startswith(".") for p in (tmp_path / "cache").iterdir())
    assert b.train._mmap_file is not None
    clone = pickle.loads(pickle.dumps(b.train))
    assert len(pickle.dumps(b.train)) < arrays["x_train"].nbytes and np.array_equal(clone.image(7), b.train.image(7))
    info = dataset_info(cfg)
    assert (info["num_train"], info["num_test"], info["num_classes"]) == (30, 9, 3)
    # npz found under root by name, and a missing key is a clear error
    np.savez(tmp_path / "svhn.npz", x_train=arrays["x_train"], y_train=arrays["y_train"])
    with pytest.raises(UserError, match="x_test"):
        load_dataset(DataConfig(dataset="svhn", root=str(tmp_path)))


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / split / c / f"{i}.png"
                )
    b = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path), image_size=8))
    assert (len(b.train), len(b.test), b.num_classes, b.image_size) == (6, 4, 2, 8)
    assert b.train.image(0).shape == (8, 8, 3) and b.classes == ["cat", "dog"]
    assert b.test.targets.tolist() == [0, 0, 1, 1]
    info = dataset_info(DataConfig(dataset="image_folder", path=str(tmp_path)))
    assert info["image_size"] == 12 and info["num_train"] == 6


@pytest.mark.skipif(not HAS_CIFAR10, reason="real CIFAR-10 not found (helpers.real_data_root)")
def test_cifar10_npz():
    cfg = DataConfig(dataset="cifar10", root=str(SHARED), limit_train=200, limit_test=100)
    info = dataset_info(cfg)
    assert info["num_train_available"] == 50000 and info["num_classes"] == 10 and info["num_train"] == 200
    b = load_dataset(cfg)  # decodes once into the cache (~10 s), memory-maps afterwards
    assert len(b.train) == 200 and len(b.test) == 100 and b.image_size == 32
    assert np.bincount(b.train.targets).tolist() == [20] * 10
    assert b.mean == get_source("cifar10").stats[0] and b.train.image(0).shape == (32, 32, 3)
    imagenet = load_dataset(cfg.model_copy(update={"normalize": "imagenet"}))
    assert imagenet.mean == (0.485, 0.456, 0.406)


# --------------------------------------------------------------------------------------------------- split
def test_ssl_split(digits, tmp_path):
    t = digits.train.targets
    lb, ulb = ssl_split(t, 40, 10, seed=0)
    lb2, _ = ssl_split(t, 40, 10, seed=0)
    lb3, _ = ssl_split(t, 40, 10, seed=1)
    assert np.array_equal(lb, lb2) and not np.array_equal(np.sort(lb), np.sort(lb3))
    assert np.bincount(t[lb], minlength=10).tolist() == [4] * 10 and len(set(lb)) == 40
    assert set(lb) <= set(ulb) and len(ulb) == len(t)
    lb4, ulb4 = ssl_split(t, 40, 10, seed=0, include_labeled_in_unlabeled=False)
    assert not set(lb4) & set(ulb4) and len(lb4) + len(ulb4) == len(t)
    with pytest.raises(UserError, match="multiple of 10"):
        ssl_split(t, 45, 10, seed=0)
    with pytest.raises(UserError, match="per class"):
        ssl_split(t, 2000, 10, seed=0)
    save_split(tmp_path / "split.npz", lb, ulb)
    a, b = load_split(tmp_path / "split.npz")
    assert np.array_equal(a, lb) and np.array_equal(b, ulb)
    save_split(tmp_path / "lb.npy", lb, ulb)
    a, b = load_split(tmp_path / "lb.npy", num_train=len(t), include_labeled_in_unlabeled=False)
    assert np.array_equal(a, lb) and np.array_equal(b, np.setdiff1d(np.arange(len(t)), lb))
    with pytest.raises(UserError, match="does not exist"):
        load_split(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------------------- sampler
def _take(sampler, k):
    it = iter(sampler)
    return [next(it) for _ in range(k)]


@pytest.mark.parametrize("n,drop_last", [(103, True), (96, True), (103, False), (10, True)])
def test_stream_sampler_ranks_interleave(n, drop_last):
    b, k = 8, 40
    single = _take(StreamSampler(n, 2 * b, seed=5, drop_last=drop_last), k)
    r0 = _take(StreamSampler(n, b, seed=5, rank=0, world_size=2, drop_last=drop_last), k)
    r1 = _take(StreamSampler(n, b, seed=5, rank=1, world_size=2, drop_last=drop_last), k)
    for t in range(k):
        assert r0[t] + r1[t] == single[t]
    resumed = _take(StreamSampler(n, 2 * b, seed=5, drop_last=drop_last, start_batch=17), k - 17)
    assert resumed == single[17:]
    seeds = [s for batch in single for _, s in batch]
    assert seeds[:3] == [mix_seed(5, q) for q in range(3)] and len(set(seeds)) == len(seeds)
    assert all(0 <= p < n for batch in single for p, _ in batch)


def test_stream_sampler_passes_are_permutations():
    n, g = 103, 16
    s = StreamSampler(n, g, seed=3)
    assert s.batches_per_pass == 6
    stream = [p for batch in _take(s, 3 * s.batches_per_pass) for p, _ in batch]
    passes = [stream[i * 96 : (i + 1) * 96] for i in range(3)]
    for p in passes:
        assert len(set(p)) == 96
    assert passes[0] != passes[1]
    assert _take(StreamSampler(n, g, seed=4), 1) != _take(s, 1)
    # a set smaller than one global batch streams whole permutations back to back
    tiny = [p for batch in _take(StreamSampler(10, 16, seed=0), 5) for p, _ in batch]
    for i in range(8):
        assert sorted(tiny[i * 10 : (i + 1) * 10]) == list(range(10))


# ---------------------------------------------------------------------------------------------- transforms
def test_transforms_deterministic_and_normalized():
    bundle = _rand_bundle()
    img = bundle.train.image(0)
    img.flags.writeable = False  # the memmap case: transforms must not write into their input
    for kind in ("test", "weak", "strong"):
        t = build_transform(kind, bundle, AugmentConfig())
        a, b, c = t(img, 7), t(img, 7), t(img, 8)
        assert a.shape == (3, 32, 32) and a.dtype == torch.float32 and a.is_contiguous()
        assert torch.equal(a, b)
        if kind != "test":
            assert not torch.equal(a, c)
        if kind == "test":
            ref = (img.astype(np.float32) / 255 - np.float32(bundle.mean)) / np.float32(bundle.std)
            assert torch.allclose(a, torch.from_numpy(ref.transpose(2, 0, 1)), atol=1e-5)
    # pickled (as DataLoader workers get it) gives the same views
    t = build_transform("strong", bundle, AugmentConfig())
    assert torch.equal(pickle.loads(pickle.dumps(t))(img, 3), t(img, 3))
    with pytest.raises(UserError, match="strong"):
        build_transform("strnog", bundle)


def test_weak_is_flip_and_crop_of_original():
    bundle = _rand_bundle()
    img = bundle.train.image(1)
    t = build_transform("weak", bundle, AugmentConfig(weak=WeakAugConfig(pad_mode="constant")))
    padded = np.pad(img.astype(np.float32), ((4, 4), (4, 4), (0, 0)))
    for seed in range(10):
        out = t(img, seed).numpy().transpose(1, 2, 0) * np.float32(bundle.std) + np.float32(bundle.mean)
        out = np.round(out * 255)
        found = False
        for cand in (padded, padded[:, ::-1]):
            for dy in range(9):
                for dx in range(9):
                    found |= np.array_equal(cand[dy : dy + 32, dx : dx + 32], out)
        assert found


def test_strong_changes_image_and_cutout_fill():
    bundle = _rand_bundle()
    img = bundle.train.image(2)
    test_t = build_transform("test", bundle)
    strong = build_transform("strong", bundle, AugmentConfig(weak=WeakAugConfig(flip=False, crop_padding=0)))
    changed = sum(not torch.equal(strong(img, s), test_t(img)) for s in range(20))
    assert changed == 20  # cutout alone already changes almost every image
    # only cutout, fixed half-size box: filled region of the fill colour
    cfg = AugmentConfig(
        weak=WeakAugConfig(flip=False, crop_padding=0),
        strong=StrongAugConfig(num_ops=0, cutout=0.5, cutout_random_size=False, cutout_fill=[10, 20, 30]),
    )
    fill = (torch.tensor([10, 20, 30]) / 255 - torch.tensor(bundle.mean)) / torch.tensor(bundle.std)
    sizes = []
    for seed in range(8):
        hit = torch.isclose(build_transform("strong", bundle, cfg)(img, seed), fill[:, None, None], atol=1e-5).all(0)
        rows, cols = hit.any(1).sum().item(), hit.any(0).sum().item()
        assert hit.sum().item() == rows * cols > 0  # one axis-aligned box, clipped at the border
        sizes.append(hit.sum().item())
    assert max(sizes) == 17 * 17
    box = cutout(np.zeros((32, 32, 3), np.uint8), 16.0, 16.0, 16.0, (1, 2, 3))
    assert (box[..., 0] == 1).sum() == 17 * 17  # PIL's rectangle includes both corners
    assert (cutout(np.zeros((32, 32, 3), np.uint8), 16.0, 0.0, 0.0, (1, 2, 3))[..., 0] == 1).sum() == 17 * 17


def _pil_op(name, img, v):
    im = Image.fromarray(img)
    affine = {"ShearX": (1, v, 0, 0, 1, 0), "ShearY": (1, 0, 0, v, 1, 0)}
    affine["TranslateX"] = (1, 0, v * im.size[0], 0, 1, 0)
    affine["TranslateY"] = (1, 0, 0, 0, 1, v * im.size[1])
    enhance = {"Brightness": ImageEnhance.Brightness, "Color": ImageEnhance.Color}
    enhance.update(Contrast=ImageEnhance.Contrast, Sharpness=ImageEnhance.Sharpness)
    if name in affine:
        return np.asarray(im.transform(im.size, Image.AFFINE, affine[name]))
    if name in enhance:
        return np.asarray(enhance[name](im).enhance(v))
    out = {
        "AutoContrast": lambda: ImageOps.autocontrast(im), "Equalize": lambda: ImageOps.equalize(im),
        "Identity": lambda: im, "Posterize": lambda: ImageOps.posterize(im, max(1, int(v))),
        "Solarize": lambda: ImageOps.solarize(im, v), "Rotate": lambda: im.rotate(v),
    }[name]()  # fmt: skip
    return np.asarray(out)


@pytest.mark.parametrize("name", list(RANDAUGMENT_OPS))
def test_randaugment_ops_match_pil(name):
    op, lo, hi = RANDAUGMENT_OPS[name]
    rng = np.random.default_rng(1)
    mismatch = []
    for i in range(12):
        if i % 2:
            img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        else:  # blocky image with a narrow range, where autocontrast/equalize/solarize matter
            base = rng.integers(40, 200, (4, 4, 3)).astype(np.uint8)
            img = np.ascontiguousarray(np.kron(base, np.ones((8, 8, 1), np.uint8)))
        v = lo + (hi - lo) * rng.random()
        diff = op(img, v).astype(int) != _pil_op(name, img, v).astype(int)
        mismatch.append(diff.any(-1).mean())
    # pixel ops are exact; nearest-neighbour geometry may differ on exact ties of the sampling grid
    assert max(mismatch) <= (0.0 if name not in ("Rotate", "ShearX", "ShearY") else 0.01)


# -------------------------------------------------------------------------------------------- view dataset
def test_view_dataset_and_loader():
    bundle = _rand_bundle(n=24)
    views = {"w": build_transform("weak", bundle), "s": build_transform("strong", bundle)}
    indices = np.arange(24)[::-1].copy()
    ds = ViewDataset(bundle.train, views, indices)
    item = ds[(2, 99)]
    assert set(item) == {"w", "s", "y", "idx"} and item["idx"].item() == 21
    assert item["y"].item() == 21 % 4 and item["y"].dtype == torch.int64
    assert torch.equal(item["w"], views["w"](bundle.train.image(21), mix_seed(99, 0)))
    assert torch.equal(item["s"], views["s"](bundle.train.image(21), mix_seed(99, 1)))
    batches = []
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(
            ds, batch_sampler=StreamSampler(len(ds), 8, seed=1), num_workers=workers
        )  # fmt: skip
        it = iter(loader)
        batches.append([next(it) for _ in range(3)])
    for a, b in zip(*batches):
        assert a["s"].shape == (8, 3, 32, 32) and a["idx"].shape == (8,)
        assert all(torch.equal(a[k], b[k]) for k in a)


# -------------------------------------------------------------------------------------------------- mixing
def mixup(x, y, alpha, num_classes):
    """A mixup of images and one-hot labels, as a stage draws and applies one."""
    out = mix_tensors({"x": x, "y": one_hot(y, num_classes)}, sample_mixup(x.shape[0], alpha))
    return out["x"], out["y"]


def cutmix(x, y, alpha, num_classes):
    out = mix_tensors({"x": x, "y": one_hot(y, num_classes)}, sample_cutmix(x.shape[0], alpha, x.shape[-2:]))
    return out["x"], out["y"]


@pytest.mark.parametrize("fn", [mixup, cutmix])
def test_mixing_soft_targets(fn):
    x = torch.randn(6, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    torch.manual_seed(0)
    xm, t = fn(x, y, 1.0, 5)
    assert xm.shape == x.shape and t.shape == (6, 5)
    assert torch.allclose(t.sum(1), torch.ones(6))
    torch.manual_seed(0)
    xm2, t2 = fn(x, y, 1.0, 5)
    assert torch.equal(xm, xm2) and torch.equal(t, t2)
    if fn is cutmix:  # label weight = share of pixels that stayed
        same = (xm == x).all(1).float().mean((1, 2))
        moved = t[torch.arange(6), y]
        assert torch.all(moved >= same - 1e-6)
    xi, ti = fn(x, y, 0.0, 5)  # alpha 0: no mixing
    assert torch.equal(xi, x) and torch.equal(ti, torch.nn.functional.one_hot(y, 5).float())


def test_real_data_is_looked_up_under_ssl_kd_data_first(tmp_path, monkeypatch):
    """Every test that reads real data finds it through real_data_root: a user's $SSL_KD_DATA, not only the shared
    folder beside this checkout (two tests used to skip when only $SSL_KD_DATA held the data)."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "cifar10.npz").write_bytes(b"")
    monkeypatch.setenv("SSL_KD_DATA", str(tmp_path / "mine"))
    assert real_data_root("cifar10.npz") == (tmp_path / "mine").resolve()
    assert real_data_root("no_such_dataset.npz") is None
