"""The device path for image files (`data.pipeline: device` + `data.transform`), run on the CPU: batched decode_jpeg,
roi_align crops of the host path's boxes and flips. Its difference from the host path for the same boxes is stated
here (plants_jpeg; skipped without it); unreadable files in a batch are skipped or, with strict, an error."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from test_large_image import plants_root, write_jpeg, write_tree

from ssl_kd.data import DataConfig, DeviceJpegViewDataset, build_transform, load_dataset
from ssl_kd.data.device_jpeg import DeviceCrops, decode_batch
from ssl_kd.data.hashing import mix_seed, mix_seeds
from ssl_kd.data.image_files import EncodedImage
from ssl_kd.errors import UserError

CPU = torch.device("cpu")


def bundle_of(path, **transform):
    cfg = DataConfig(dataset="image_folder", path=str(path), normalize="imagenet",
                     transform={"fast_decode": False, **transform})  # fmt: skip
    return cfg, load_dataset(cfg)


@pytest.mark.parametrize("kind", ["weak", "test"])
def test_device_crops_match_the_host_path_within_the_stated_tolerance(kind):
    """Same boxes and flips as the host path; the resampling differs (roi_align's area average vs the antialiased
    bilinear): per-image mean |device - host| about 0.8 gray levels at 224 px on plants_jpeg (tested < 1.5, each
    image < 4), single pixels up to a few tens of levels on sharp edges (tested <= 64)."""
    cfg, b = bundle_of(plants_root(), size=224)
    host = build_transform(kind, b, cfg)
    split = b.train if kind == "weak" else b.test
    images = [split.image(i) for i in range(0, len(split), len(split) // 12)][:12]
    seeds = [mix_seed(5, i) for i in range(len(images))]
    dev = DeviceCrops(host, CPU).crops(images, seeds)
    ref = torch.stack([host.crop_uint8(EncodedImage(im.path), s) for im, s in zip(images, seeds)]).float()
    per_image = (dev - ref).abs().flatten(1).mean(1)
    assert per_image.mean() < 1.5 and per_image.max() < 4 and (dev - ref).abs().max() <= 64


def test_device_views_are_seeded_like_the_host_views_and_skip_bad_files(tmp_path, caplog):
    root = write_tree(tmp_path, bad="1b.jpg")
    cfg, b = bundle_of(root, size=16)
    views = {"w": build_transform("weak", b, cfg), "s": build_transform("strong", b, cfg)}
    ds = DeviceJpegViewDataset(b.train, views, CPU)
    pos, seeds = np.array([0, 1, 3, 4]), mix_seeds(9, np.arange(4))
    out = ds.batch(pos, seeds)
    assert out["w"].shape == (4, 3, 16, 16) and out["s"].shape == (4, 3, 16, 16)
    assert torch.equal(out["y"], torch.as_tensor(b.train.targets[pos]))
    again = ds.batch(pos, seeds)
    assert all(torch.equal(out[k], again[k]) for k in out)  # a pure function of (position, seed)
    host = views["w"]
    for k, s in enumerate(seeds.tolist()):  # the host path's boxes and flips: same crop up to resampling
        want = host(EncodedImage(b.train.files[pos[k]]), mix_seed(s, 0))
        assert (out["w"][k] - want).abs().mean() < 0.1
    with caplog.at_level(logging.WARNING, logger="ssl_kd.data"):
        bad = ds.batch(np.array([2, 0]), mix_seeds(9, np.arange(2)))
    assert bad["idx"].tolist() == [3, 0] and "1b.jpg" in caplog.text
    cfg, b = bundle_of(root, size=16, strict=True)
    with pytest.raises(UserError, match=r"1b\.jpg"):
        DeviceJpegViewDataset(b.train, {"x": build_transform("test", b, cfg)}, CPU).batch(np.array([2]), seeds[:1])


def test_png_in_a_batch_decodes_on_the_host(tmp_path):
    from PIL import Image

    jpg = EncodedImage(str(write_jpeg(tmp_path / "a.jpg", 40, 30)))
    Image.fromarray(np.full((20, 10, 3), 7, np.uint8)).save(tmp_path / "b.png")
    x = decode_batch([jpg, EncodedImage(str(tmp_path / "b.png"))], CPU)
    assert x[0].shape == (3, 30, 40) and x[1].shape == (3, 20, 10) and int(x[1].max()) == 7
