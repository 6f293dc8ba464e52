"""Large-image data path: torchvision's RandomResizedCrop box sampling driven by the hash, crops equal to torchvision's
on the same box, reduced-size JPEG decoding within its stated tolerance, unreadable files, the folder index cache and
the imagenet source. Real photos: plants_jpeg under $SSL_KD_DATA or ../shared/data (those tests skip without it)."""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms as T
from helpers import SHARED_DATA
from PIL import Image
from sync_trap import SyncTrap
from torchvision.transforms.v2 import functional as F

from ssl_kd.config import validate_config
from ssl_kd.data import DataConfig, ViewDataset, build_transform, load_dataset
from ssl_kd.data.hashing import mix_seed
from ssl_kd.data.image_files import EncodedImage, UnreadableImage, decode, header_size
from ssl_kd.data.large_image import TRIES, hash_uniforms, resize_center_crop, resized_crop, rrc_box
from ssl_kd.data.sources import folder_index
from ssl_kd.errors import UserError


def plants_root() -> Path:
    for base in (os.environ.get("SSL_KD_DATA"), SHARED_DATA):
        if base and (Path(base) / "plants_jpeg" / "train").is_dir():
            return Path(base) / "plants_jpeg"
    pytest.skip("plants_jpeg not found under $SSL_KD_DATA or ../shared/data")


def write_jpeg(path: Path, w: int = 120, h: int = 90, mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 255, (h, w))], -1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).convert(mode).save(path, "JPEG", quality=90)
    return path


def tv_get_params(u, height, width, scale, ratio):
    """torchvision 0.29 RandomResizedCrop.get_params (transforms/transforms.py), transcribed with its four torch draws
    (two uniforms per try, then two randints) replaced by the given uniforms in that order of use."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for t in range(10):
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[2 * t + 1])
        w = int(round(math.sqrt(target_area * aspect_ratio)))
        h = int(round(math.sqrt(target_area / aspect_ratio)))
        if 0 < w <= width and 0 < h <= height:
            i = math.floor(u[20] * (height - h + 1))  # torch.randint(0, height - h + 1)
            j = math.floor(u[21] * (width - w + 1))
            return i, j, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        w = width
        h = height
    return (height - h) // 2, (width - w) // 2, h, w


# ---------------------------------------------------------------- box sampling
def test_box_is_torchvisions_get_params_on_hash_uniforms():
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    for seed in range(300):
        h, w = 200 + seed % 7 * 50, 500 - seed % 5 * 60
        u = hash_uniforms(seed, 2 * TRIES + 2)
        assert rrc_box(u, h, w, scale, ratio) == tv_get_params(u, h, w, scale, ratio)
    # the fallback and the one-box cases are deterministic: torchvision's own get_params gives them
    img = torch.empty(3, 10, 1000)
    u = hash_uniforms(1, 22)
    assert rrc_box(u, 10, 1000, (1.0, 1.0), ratio) == T.RandomResizedCrop.get_params(img, [1.0, 1.0], list(ratio))
    assert rrc_box(u, 1000, 10, (1.0, 1.0), ratio) == T.RandomResizedCrop.get_params(
        torch.empty(3, 1000, 10), [1.0, 1.0], list(ratio)
    )
    assert rrc_box(u, 64, 64, (1.0, 1.0), (1.0, 1.0)) == (0, 0, 64, 64)


def test_box_distribution_matches_torchvision():
    """Area fraction and aspect of 3000 boxes against torchvision's get_params (its own RNG) on a 375 x 500 image."""
    torch.manual_seed(0)
    ours = np.array([rrc_box(hash_uniforms(s, 22), 375, 500, (0.08, 1), (3 / 4, 4 / 3)) for s in range(3000)])
    ref = np.array([T.RandomResizedCrop.get_params(torch.empty(3, 375, 500), [0.08, 1], [3 / 4, 4 / 3])
                    for _ in range(3000)])  # fmt: skip
    for boxes in (ours, ref):
        assert (boxes[:, 0] + boxes[:, 2] <= 375).all() and (boxes[:, 1] + boxes[:, 3] <= 500).all()
    area = [b[:, 2] * b[:, 3] / (375 * 500) for b in (ours, ref)]
    aspect = [np.log(b[:, 3] / b[:, 2]) for b in (ours, ref)]
    assert abs(area[0].mean() - area[1].mean()) < 0.02 and abs(aspect[0].mean() - aspect[1].mean()) < 0.02


def test_views_are_a_pure_function_of_the_seed(tmp_path):
    """Same (stream seed, position) -> the same pixels, in this process or in 2 DataLoader workers; another seed ->
    another box."""
    for c in range(2):
        for i in range(3):
            write_jpeg(tmp_path / "train" / f"c{c}" / f"{i}.jpg", 150 + 10 * i, 100, seed=i + 3 * c)
            write_jpeg(tmp_path / "val" / f"c{c}" / f"{i}.jpg", 100, 120, seed=9 + i)
    cfg = DataConfig(dataset="image_folder", path=str(tmp_path), transform={"size": 32}, normalize="imagenet")
    bundle = load_dataset(cfg)
    views = {"w": build_transform("weak", bundle, cfg), "s": build_transform("strong", bundle, cfg)}
    ds = ViewDataset(bundle.train, views)
    keys = [[(p, mix_seed(7, e * 6 + p)) for p in range(6)] for e in range(2)]
    ref = [[ds[k] for k in batch] for batch in keys]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=keys, num_workers=2)
    for batch, want in zip(loader, ref):
        for name in ("w", "s", "y", "idx"):
            assert torch.equal(batch[name], torch.stack([w[name] for w in want]))
    t = views["w"]
    assert t.box(300, 400, 5) == t.box(300, 400, 5) and t.box(300, 400, 5) != t.box(300, 400, 6)
    assert not torch.equal(ref[0][0]["w"], ref[1][0]["w"])  # another epoch, another view


def test_views_leave_the_worker_as_uint8_and_finish_to_the_same_floats(tmp_path):
    """The crops travel as uint8 (a quarter of the bytes) and are normalised on the batch (`ViewDataset.finish`,
    where the batch is): bit-identical to normalising each sample; `lighting` (a per-sample float shift) stays float."""
    for i in range(4):
        write_jpeg(tmp_path / "train" / f"c{i % 2}" / f"{i}.jpg", 140 + 10 * i, 100, seed=i)
        write_jpeg(tmp_path / "val" / f"c{i % 2}" / f"{i}.jpg", 100, 120, seed=9 + i)
    cfg = DataConfig(dataset="image_folder", path=str(tmp_path), transform={"size": 32}, normalize="imagenet")
    bundle = load_dataset(cfg)
    views = {k: build_transform(k, bundle, cfg) for k in ("weak", "strong", "test")}
    ds = ViewDataset(bundle.train, views)
    keys = [(p, mix_seed(3, p)) for p in range(4)]
    raw = torch.utils.data.default_collate([ds[k] for k in keys])
    assert all(raw[k].dtype == torch.uint8 for k in views)
    done = ds.finish(raw)
    for k, (name, t) in enumerate(views.items()):
        want = torch.stack([t(bundle.train.image(p), mix_seed(seed, k)) for p, seed in keys])
        assert done[name].dtype == torch.float32 and torch.equal(done[name], want), name
    with SyncTrap() as trap:  # the constants went to the batch's device once: later batches copy nothing
        again = ds.finish(raw)
    assert not trap.events and all(torch.equal(again[k], done[k]) for k in views), trap.summary()
    assert "_on_device" not in pickle.loads(pickle.dumps(views["weak"])).__dict__  # workers get host constants
    lit = DataConfig(dataset="image_folder", path=str(tmp_path), transform={"size": 32, "lighting": 0.1})
    b2 = load_dataset(lit)
    ds2 = ViewDataset(b2.train, {"w": build_transform("weak", b2, lit), "x": build_transform("test", b2, lit)})
    sample = ds2[(0, 1)]
    assert sample["w"].dtype == torch.float32 and sample["x"].dtype == torch.uint8


# ---------------------------------------------------------------- pixels vs torchvision
def test_crops_equal_torchvision_on_the_same_box():
    """Full decode: exactly `v2.functional.resized_crop` on torchvision's decode (the same uint8 antialias kernel);
    within 1 gray level of the PIL pipeline (PIL's bilinear rounds differently); eval = Resize + CenterCrop."""
    files = sorted((plants_root() / "train").glob("*/*.jpg"))[::25]
    for n, f in enumerate(files):
        img = EncodedImage(str(f))
        h, w = img.size
        x = torchvision.io.decode_jpeg(torchvision.io.read_file(str(f)), mode=torchvision.io.ImageReadMode.RGB)
        assert x.shape[1:] == (h, w)
        box = rrc_box(hash_uniforms(n, 22), h, w, (0.08, 1), (3 / 4, 4 / 3))
        ours = resized_crop(img, box, 224, None)
        assert torch.equal(ours, F.resized_crop(x, *box, [224, 224], antialias=True))
        pil = F.resized_crop(Image.open(f).convert("RGB"), *box, [224, 224])
        d = (ours.permute(1, 2, 0).int() - torch.from_numpy(np.array(pil)).int()).abs()
        assert d.max() <= 1 and d.float().mean() < 0.3
        ev = resize_center_crop(img, 224, 0.875, None)
        assert torch.equal(ev, F.center_crop(F.resize(x, 256, antialias=True), 224))
        pil = T.CenterCrop(224)(T.Resize(256)(Image.open(f).convert("RGB")))
        assert (ev.permute(1, 2, 0).int() - torch.from_numpy(np.array(pil)).int()).abs().max() <= 1


def test_fast_decode_stays_within_its_stated_tolerance():
    """DCT-domain 1/2..1/8 decoding where the box stays >= 2x the output: mean difference from the full decode under 3
    gray levels per image (about 2 measured on plants_jpeg at 64 px); no reduction, no difference."""
    files = sorted((plants_root() / "train").glob("*/*.jpg"))[::15]
    means = []
    for n, f in enumerate(files):
        img = EncodedImage(str(f))
        box = rrc_box(hash_uniforms(n, 22), *img.size, (0.08, 1), (3 / 4, 4 / 3))
        full, fast = resized_crop(img, box, 64, None), resized_crop(img, box, 64, 2.0)
        reduced = min(box[2], box[3]) >= 256
        means.append((fast.int() - full.int()).abs().float().mean().item())
        if not reduced:
            assert means[-1] == 0
    assert max(means) > 0 and np.mean(means) < 3.0


# ---------------------------------------------------------------- bad input
def test_unreadable_and_unusual_files(tmp_path):
    good = write_jpeg(tmp_path / "a.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(good[:-2])  # only the end-of-image marker missing
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all" * 20)
    for name, why in (("trunc.jpg", "corrupt or truncated"), ("junk.jpg", "not a readable image")):
        with pytest.raises(UnreadableImage, match=why) as e:
            img = EncodedImage(str(tmp_path / name))
            img.decode(img.size and 1)
        assert name in str(e.value)
    for mode in ("L", "CMYK"):  # grayscale and CMYK JPEGs come out RGB
        x = EncodedImage(str(write_jpeg(tmp_path / f"{mode}.jpg", 64, 48, mode))).decode(1)
        assert x.shape == (48, 64, 3) and x.dtype == np.uint8
    prog = tmp_path / "progressive.jpg"
    Image.open(tmp_path / "a.jpg").save(prog, "JPEG", progressive=True)
    assert EncodedImage(str(prog)).size == (90, 120) and EncodedImage(str(prog)).decode(2).shape == (45, 60, 3)
    buf = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(buf, "PNG")
    png = np.frombuffer(buf.getvalue(), np.uint8)
    assert header_size(png, "x.png") == (20, 30) and decode(png, "x.png", 4).shape == (20, 30, 3)  # no DCT scaling


def write_tree(root: Path, bad: str | None = None) -> Path:
    for c in ("a", "b"):
        for i in range(3):
            write_jpeg(root / "train" / c / f"{i}.jpg", seed=i)
        write_jpeg(root / "val" / c / "0.jpg")
    if bad:
        (root / "train" / "a" / bad).write_bytes(b"\xff\xd8\xff\xe0 broken")
    return root


def test_a_corrupt_image_is_skipped_and_logged_unless_strict(tmp_path, caplog):
    root = write_tree(tmp_path, bad="1b.jpg")  # sorts between 1.jpg and 2.jpg: position 2
    cfg = DataConfig(dataset="image_folder", path=str(root), transform={"size": 16})
    bundle = load_dataset(cfg)
    ds = ViewDataset(bundle.train, {"x": build_transform("weak", bundle, cfg)})
    with caplog.at_level(logging.WARNING, logger="ssl_kd.data"):
        out = ds[(2, 5)]
    assert int(out["idx"]) == 3 and "1b.jpg" in caplog.text and "skipped" in caplog.text  # the next one stood in
    strict = DataConfig(dataset="image_folder", path=str(root), transform={"size": 16, "strict": True})
    bundle = load_dataset(strict)
    ds = ViewDataset(bundle.train, {"x": build_transform("weak", bundle, strict)})
    with pytest.raises(UserError, match=r"1b\.jpg: .*strict"):
        ds[(2, 5)]


def test_empty_class_folder_is_one_line(tmp_path):
    root = write_tree(tmp_path)
    (root / "train" / "c").mkdir()
    with pytest.raises(UserError, match=r"class folder .*train/c holds no images"):
        load_dataset(DataConfig(dataset="image_folder", path=str(root), transform={}))


def test_config_errors_name_the_yaml_path():
    with pytest.raises(UserError, match=r"data.transform.scale"):
        validate_config({"data": {"dataset": "digits", "transform": {"scale": [0.5, 0.1]}}})
    with pytest.raises(UserError, match=r"transform: large-image crops need image files"):
        validate_config({"data": {"dataset": "cifar10", "transform": {}}})
    with pytest.raises(UserError, match=r"augment.strong.order"):
        validate_config({"data": {"dataset": "image_folder", "path": "x", "transform": {},
                                  "augment": {"strong": {"order": "before"}}}})  # fmt: skip


# ---------------------------------------------------------------- index cache and sources
def test_the_folder_index_is_cached_and_refreshed(tmp_path, monkeypatch):
    root = write_tree(tmp_path / "data")
    cfg = DataConfig(dataset="image_folder", path=str(root), transform={})
    first = load_dataset(cfg).train.files
    listed = []
    real = folder_index._list_class
    monkeypatch.setattr(folder_index, "_list_class", lambda d: listed.append(d) or real(d))
    assert load_dataset(cfg).train.files == first and listed == []  # a cache hit lists nothing
    write_jpeg(root / "train" / "b" / "9.jpg")
    files = load_dataset(cfg).train.files
    assert len(files) == len(first) + 1 and files[-1].endswith("b/9.jpg") and listed  # the changed tree is re-listed
    off = DataConfig(dataset="image_folder", path=str(root), transform={}, index_cache=False)
    assert load_dataset(off).train.files == files


def test_imagenet_layouts(tmp_path):
    root = tmp_path / "imagenet"
    wnids = ["n01440764", "n01443537"]
    for w in wnids:
        for i in range(2):
            write_jpeg(root / "train" / w / f"{w}_{i}.JPEG", seed=i)
    for i in range(3):
        write_jpeg(root / "val" / f"ILSVRC2012_val_{i + 1:08d}.JPEG", seed=i)
    with pytest.raises(UserError, match=r"ILSVRC2012_devkit_t12\.tar\.gz"):
        load_dataset(DataConfig(dataset="imagenet", path=str(root)))
    val_wnids = [wnids[1], wnids[0], wnids[1]]
    torch.save(({w: (w,) for w in wnids}, val_wnids), root / "meta.bin")  # torchvision's parsed devkit
    data = load_dataset(DataConfig(dataset="imagenet", path=str(root), image_size=32))
    assert data.test.targets.tolist() == [1, 0, 1] and data.image_size == 32 and data.classes == wnids
    assert data.mean == (0.485, 0.456, 0.406) and data.transform is not None  # large-image crops by default
    assert build_transform("test", data, None)(data.test.image(0)).shape == (3, 32, 32)


def test_color_jitter_and_lighting_follow_torchvision_and_alexnet():
    """Colour jitter = torchvision v2 ColorJitter's kernels with make_params' law (a random order of the four
    adjustments, factors uniform in [1 - s, 1 + s]) on hash draws; lighting = AlexNet's PCA noise, alpha ~ N(0, 0.1²).
    """
    from torchvision.transforms import v2

    from ssl_kd.data.large_image import EIGVAL, EIGVEC, JITTER, LIGHT, jitter_params, lighting_shift

    cfg = DataConfig(dataset="image_folder", path=".", transform={"color_jitter": [0.4, 0.3, 0.2, 0.1]})
    for seed in range(200):
        p = jitter_params(hash_uniforms(seed, JITTER + 8)[JITTER:], cfg.transform.color_jitter)
        assert sorted(p["fn_idx"].tolist()) == [0, 1, 2, 3]
        assert 0.6 <= p["brightness_factor"] <= 1.4 and 0.7 <= p["contrast_factor"] <= 1.3
        assert 0.8 <= p["saturation_factor"] <= 1.2 and -0.1 <= p["hue_factor"] <= 0.1
    x = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    want = x
    for i in p["fn_idx"].tolist():  # torchvision's functional kernels, one by one in the drawn order
        f = [v2.functional.adjust_brightness, v2.functional.adjust_contrast, v2.functional.adjust_saturation,
             v2.functional.adjust_hue][i]  # fmt: skip
        want = f(want, list(p.values())[1 + i])
    assert torch.equal(v2.ColorJitter().transform(x, p), want)
    shifts = torch.stack([lighting_shift(hash_uniforms(s, LIGHT + 6)[LIGHT:], 0.1) for s in range(4000)])
    alpha = torch.linalg.solve(EIGVEC, shifts.T).T / EIGVAL  # back to the per-eigenvector draws
    assert alpha.mean(0).abs().max() < 0.01 and (alpha.std(0) - 0.1).abs().max() < 0.01


def test_inat_takes_the_large_image_crops(tmp_path):
    """DynamicMLP's protocol on iNat (ylingfeng/DynamicMLP@773197c5 dataset.py): RandomResizedCrop(224) + flip for
    training, Resize(256) + CenterCrop(224) for evaluation; here at 16 px on the fake iNat JSONs, metadata kept."""
    from helpers import write_fake_inat

    from ssl_kd.data.containers import EncodedImageSet

    write_fake_inat(tmp_path)
    cfg = DataConfig(dataset="inat", root=str(tmp_path), transform={"size": 16}, metadata={"use": ["geo"]})
    data = load_dataset(cfg)
    assert isinstance(data.train, EncodedImageSet) and data.image_size == 16 and "meta" in data.train.fields
    out = ViewDataset(data.train, {"x": build_transform("weak", data, cfg)})[(0, 1)]
    assert out["x"].shape == (3, 16, 16) and out["meta"].shape[0] > 0


def test_a_train_source_of_arrays_takes_the_crops_too(tmp_path):
    """DM-KD's generated images (`train_source`) with the real test split as image files: both take the crops."""
    from helpers import write_synthetic_folder

    write_synthetic_folder(tmp_path / "syn", 2, 2, size=24)
    root = write_tree(tmp_path / "data")
    cfg = DataConfig(dataset="image_folder", path=str(root), transform={"size": 16},
                     train_source={"path": str(tmp_path / "syn"), "kind": "filenames"})  # fmt: skip
    data = load_dataset(cfg)
    assert data.transform is not None and data.image_size == 16
    assert ViewDataset(data.train, {"x": build_transform("weak", data, cfg)})[(0, 3)]["x"].shape == (3, 16, 16)
    assert ViewDataset(data.test, {"x": build_transform("test", data, cfg)})[0]["x"].shape == (3, 16, 16)
