"""DynamicMLP's pieces: the location / date encoding by hand and against a loop, the fusion heads and their parameter
counts, any model carrying a head, partial checkpoints, and the metadata readers (npz, iNaturalist JSON, image
folder with CSV) with their errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_fake_inat, write_fake_npz, write_fake_plants

from ssl_kd.data import load_dataset
from ssl_kd.data.config import DataConfig
from ssl_kd.data.metadata import encode_metadata, parse_date, synthetic_locations
from ssl_kd.errors import UserError
from ssl_kd.models import FCNet, FusionModule, create_model, create_model_from_spec, model_spec
from ssl_kd.models.fusion import DynamicBlock


# ================================================================================================ encoding
def loop_encoding(lat, lon, doy, days, use):
    """Transcription of the reference dataset.py: per sample, zeros if anything is missing, else
    [sin(pi u_1), ..., sin(pi u_k), cos(pi u_1), ..., cos(pi u_k)]."""
    rows = []
    for a, o, d, n in zip(lat, lon, doy, days):
        dim = 2 * ((2 if "geo" in use else 0) + (1 if "temporal" in use else 0))
        if any(math.isnan(v) for v in (a, o, d, n)):
            rows.append([0.0] * dim)
            continue
        u = ([a / 90, o / 180] if "geo" in use else []) + ([d / n * 2 - 1] if "temporal" in use else [])
        rows.append([math.sin(math.pi * x) for x in u] + [math.cos(math.pi * x) for x in u])
    return torch.tensor(rows, dtype=torch.float32)


def test_encoding_by_hand():
    # lat 45, lon 90, 1 March 2020 (leap year: day 61 of 366)
    doy, days = parse_date("2020-03-01T10:00:00", "x")
    assert (doy, days) == (61, 366)
    e = encode_metadata(torch.tensor([45.0]), torch.tensor([90.0]), torch.tensor([doy]), torch.tensor([days]))
    d = 2 * 61 / 366 - 1
    want = [math.sin(math.pi / 2), math.sin(math.pi / 2), math.sin(math.pi * d),
            math.cos(math.pi / 2), math.cos(math.pi / 2), math.cos(math.pi * d)]  # fmt: skip
    assert e.shape == (1, 6) and torch.allclose(e[0], torch.tensor(want), atol=1e-6)
    # sines first, then cosines; geo only and temporal only
    g = encode_metadata(torch.tensor([-90.0]), torch.tensor([180.0]), torch.tensor([1.0]), torch.tensor([365.0]),
                        use=("geo",))  # fmt: skip
    assert g.shape == (1, 4) and torch.allclose(g[0], torch.tensor([0.0, 0.0, -1.0, -1.0]), atol=1e-6)
    t = encode_metadata(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([183.0]), torch.tensor([366.0]),
                        use=("temporal",))  # fmt: skip
    assert t.shape == (1, 2) and torch.allclose(t[0], torch.tensor([0.0, 1.0]), atol=1e-6)  # mid-year: u = 0


@pytest.mark.parametrize(
    "date,doy,days",
    [("2019-12-31", 365, 365), ("2020-12-31", 366, 366), ("2020-02-29", 60, 366), ("2019-03-01", 60, 365),
     ("1900-12-31", 365, 365), ("2000-12-31", 366, 366), ("2021-01-01 23:59", 1, 365)],
)  # fmt: skip
def test_leap_years_and_day_of_year(date, doy, days):
    assert parse_date(date, "x") == (doy, days)


def test_last_day_of_any_year_encodes_as_u_equal_one():
    for date in ("2019-12-31", "2020-12-31"):
        d, n = parse_date(date, "x")
        e = encode_metadata(torch.zeros(1), torch.zeros(1), torch.tensor([d]), torch.tensor([n]), use=("temporal",))
        assert torch.allclose(e, torch.tensor([[0.0, -1.0]]), atol=1e-6)


def test_encoding_against_a_loop_with_missing_values():
    g = torch.Generator().manual_seed(0)
    n = 64
    lat = torch.rand(n, generator=g, dtype=torch.float64) * 180 - 90
    lon = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    days = torch.where(torch.rand(n, generator=g) < 0.3, 366.0, 365.0).double()
    doy = torch.floor(torch.rand(n, generator=g, dtype=torch.float64) * days) + 1
    for col in (lat, lon, doy):
        col[torch.randperm(n, generator=g)[:6]] = float("nan")
    for use in (("geo", "temporal"), ("geo",), ("temporal",)):
        got = encode_metadata(lat, lon, doy, days, use=use)
        want = loop_encoding(lat.tolist(), lon.tolist(), doy.tolist(), days.tolist(), use)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    # reference: any missing value zeroes the row; `missing="used"` looks only at the encoded parts
    only_date_missing = torch.tensor([float("nan")])
    one = torch.tensor([10.0])
    ref = encode_metadata(one, one, only_date_missing, torch.tensor([365.0]), use=("geo",))
    used = encode_metadata(one, one, only_date_missing, torch.tensor([365.0]), use=("geo",), missing="used")
    assert not ref.any() and used.abs().sum() > 0


def test_bad_arguments_are_rejected():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="use"):
        encode_metadata(x, x, x, x + 365, use=("where",))
    with pytest.raises(ValueError, match="equal length"):
        encode_metadata(x, x, torch.zeros(3), x + 365)


# ================================================================================================ label smoothing
def test_label_smoothing_conventions_by_hand():
    """C = 4, z = [0, 0, 0, ln 5] (p = [1, 1, 1, 5] / 8), y = 3, eps = 0.3. off_target (DynamicMLP's
    LabelSmoothingLoss): t = [0.1, 0.1, 0.1, 0.7], CE = ln 8 - 0.7 ln 5; uniform: t = [.075, .075, .075, .775],
    CE = ln 8 - 0.775 ln 5 (= F.cross_entropy(label_smoothing=0.3))."""
    from ssl_kd.losses import smooth_targets, soft_cross_entropy

    z, q = torch.tensor([[0.0, 0.0, 0.0, math.log(5)]]), torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    off, uni = smooth_targets(q, 0.3, "off_target"), smooth_targets(q, 0.3, "uniform")
    assert torch.allclose(off, torch.tensor([[0.1, 0.1, 0.1, 0.7]])) and torch.allclose(uni[0, :3], torch.tensor(0.075))
    assert soft_cross_entropy(z, off).item() == pytest.approx(math.log(8) - 0.7 * math.log(5), abs=1e-6)
    assert soft_cross_entropy(z, uni).item() == pytest.approx(math.log(8) - 0.775 * math.log(5), abs=1e-6)
    assert torch.allclose(soft_cross_entropy(z, uni), F.cross_entropy(z, torch.tensor([3]), label_smoothing=0.3))
    # a lam-mix of one-hots: lam t(y_a) + (1 - lam) t(y_b), entry by entry, in both conventions
    mixed = torch.tensor([[0.25, 0.0, 0.0, 0.75]])
    assert torch.allclose(smooth_targets(mixed, 0.3, "off_target"), torch.tensor([[0.25, 0.1, 0.1, 0.55]]))
    assert torch.allclose(smooth_targets(mixed, 0.3, "uniform"), torch.tensor([[0.25, 0.075, 0.075, 0.6]]))
    assert smooth_targets(q, 0.0, "off_target") is q


# ================================================================================================ models
def test_parameter_counts_match_the_spec():
    """ylingfeng/DynamicMLP (its fusion module after global pooling): fusion on a 2048-d feature C ~ 6.78M,
    B ~ 6.62M, A ~ 9.48M; location net ~ 0.59M."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(FusionModule(2048, variant="c")) == 6_775_232
    assert count(FusionModule(2048, variant="b")) == 6_623_680
    assert count(FusionModule(2048, variant="a")) == 9_476_992
    assert count(FCNet(6)) == 593_664


def reference_head_params(variant: str, feat: int, cin: int, d: int, h: int, n: int) -> int:
    """Parameters of the reference's loc_net + loc_att, transcribed from the layer shapes of
    ylingfeng/DynamicMLP@773197c5: FCNet(num_inputs=cin, num_classes=d, num_filts=256) and
    FusionModule(inplanes=feat, planes=d, hidden=h, num_layers=n) whose blocks all get loc_planes=planes=d."""
    lin = lambda i, o, bias=True: i * o + (o if bias else 0)  # noqa: E731
    ln = lambda c: 2 * c  # noqa: E731
    fcnet = lin(cin, 256) + 4 * (lin(256, 256) + lin(256, 256)) + lin(256, d, bias=False)
    loc = d  # loc_planes

    def block(i: int, o: int) -> int:
        if variant == "a":  # get_weight, norm
            return lin(loc, i * o) + ln(o)
        src = i if variant == "b" else i + loc  # conv11's input
        conv11, conv12 = lin(src, i), lin(i, i)
        conv21 = lin(loc if variant == "b" else i + loc, i)
        conv22 = lin(i, i * o)
        br, conv3 = ln(o), lin(o, o, bias=False) + ln(o)  # Basic1d(bias=False): Linear + LayerNorm
        return conv11 + conv12 + conv21 + conv22 + br + conv3

    widths = [(d, d)] if n == 1 else [(d, h)] + [(h, h)] * (n - 2) + [(h, d)]
    fusion = lin(feat, d) + sum(block(i, o) for i, o in widths) + lin(d, feat) + ln(feat)
    return fcnet + fusion


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("mlp_d", [64, 128, 256])
@pytest.mark.parametrize("mlp_n", [1, 2, 3])
def test_head_parameter_counts_follow_the_reference_at_any_mlp_d(variant, mlp_d, mlp_n):
    """The location embedding is mlp_d wide (FCNet's output and every block's loc_planes), not a fixed 256."""
    m = create_model("resnet8", 7, head={"type": "dynamic_mlp", "variant": variant, "meta_dim": 6, "mlp_d": mlp_d,
                                         "mlp_h": 32, "mlp_n": mlp_n})  # fmt: skip
    assert m.feat_dim == 64 and m.fusion.loc_net.out.out_features == mlp_d
    got = sum(p.numel() for p in m.fusion.parameters())
    assert got == reference_head_params(variant, 64, 6, mlp_d, 32, mlp_n)


def test_head_parameter_counts_at_d128_by_hand():
    """The reference's counts at d 128, h 32, N 2 on a 64-d feature with 6-d metadata (the fixed 256-d location
    embedding gave A 2,716,032, B 1,368,224, C 1,426,592)."""
    for variant, want in (("a", 1_634_688), ("b", 1_314_976), ("c", 1_352_864)):
        m = create_model("resnet8", 7, head={"type": "dynamic_mlp", "variant": variant, "meta_dim": 6, "mlp_d": 128,
                                             "mlp_h": 32, "mlp_n": 2})  # fmt: skip
        assert sum(p.numel() for p in m.fusion.parameters()) == want


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_fusion_shapes_and_residual(variant, n):
    torch.manual_seed(0)
    f = FusionModule(48, d=32, h=8, n=n, variant=variant).eval()
    img, loc = torch.randn(5, 48), torch.randn(5, 32)  # the location embedding is d wide
    out = f(img, loc)
    assert out.shape == (5, 48)
    widths = [(b.c_in, b.c_out) for b in f.blocks]
    assert widths == ([(32, 32)] if n == 1 else [(32, 8)] + [(8, 8)] * (n - 2) + [(8, 32)])
    torch.nn.init.zeros_(f.norm.weight)  # LN gain 0: the fusion branch adds its bias only (0) -> the identity
    assert torch.allclose(f(img, loc), img)


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_dynamic_block_against_a_per_sample_loop(variant):
    torch.manual_seed(1)
    blk = DynamicBlock(6, 4, loc_dim=5, variant=variant).eval()
    h, loc = torch.randn(3, 6), torch.randn(3, 5)
    got = blk(h, loc)
    ln = lambda v, m: torch.nn.functional.layer_norm(v, (v.shape[-1],), m.weight, m.bias)  # noqa: E731
    for b in range(3):
        if variant == "a":
            w = (blk.get_weight.weight @ loc[b] + blk.get_weight.bias).reshape(6, 4)
            want = torch.relu(ln(h[b] @ w, blk.norm))
        else:
            src_h = h[b] if variant == "b" else torch.cat([h[b], loc[b]])
            src_l = loc[b] if variant == "b" else torch.cat([h[b], loc[b]])
            lin = lambda m, v: m.weight @ v + (m.bias if m.bias is not None else 0)  # noqa: E731
            h2 = lin(blk.img2, torch.relu(lin(blk.img1[0], src_h)))
            w = lin(blk.loc2, torch.relu(lin(blk.loc1[0], src_l))).reshape(6, 4)
            y = torch.relu(ln(h2 @ w, blk.norm))
            want = torch.relu(ln(blk.out[0].weight @ y, blk.out[1]))
        assert torch.allclose(got[b], want, atol=1e-5)


def test_any_model_carries_a_head_and_its_spec_round_trips():
    for arch, kw in (("cnn_small", {"width": 8}), ("resnet8", {})):
        for head in ({"type": "dynamic_mlp", "variant": "a", "meta_dim": 4, "mlp_d": 16, "mlp_h": 8},
                     {"type": "concat", "meta_dim": 2}):  # fmt: skip
            m = create_model(arch, 7, head=head, **kw)
            assert m.extra_inputs == ("meta",)
            out = m(torch.randn(3, 3, 16, 16), meta=torch.randn(3, head["meta_dim"]))
            assert out.logits.shape == (3, 7) and out.feat.shape == (3, m.feat_dim) == (3, m.fc.in_features)
            again = create_model_from_spec(model_spec(m))
            shapes = lambda net: {k: v.shape for k, v in net.state_dict().items()}  # noqa: E731
            assert shapes(again) == shapes(m)
            assert m.predict({"x": torch.randn(2, 3, 16, 16), "meta": torch.zeros(2, head["meta_dim"])}).shape == (2, 7)
    assert model_spec(create_model("resnet8", 3)) == {"arch": "resnet8", "num_classes": 3, "kwargs": {}}  # no head key


def test_head_errors_are_user_errors():
    with pytest.raises(UserError, match="unknown head type 'dynamic'.*Did you mean 'dynamic_mlp'"):
        create_model("resnet8", 3, head={"type": "dynamic"})
    with pytest.raises(UserError, match="has no option 'varient'"):
        create_model("resnet8", 3, head={"type": "dynamic_mlp", "varient": "c"})
    with pytest.raises(UserError, match="variant='d'"):
        create_model("resnet8", 3, head={"type": "dynamic_mlp", "variant": "d"})
    m = create_model("resnet8", 3, head={"type": "dynamic_mlp", "meta_dim": 6})
    with pytest.raises(UserError, match="meta_dim=6 but the batch's `meta` has shape"):
        m(torch.randn(2, 3, 16, 16), meta=torch.randn(2, 2))


def test_partial_checkpoint_loads_the_backbone_and_skips_the_new_fc(tmp_path):
    from ssl_kd.config.schema import Config
    from ssl_kd.engine.build import build_models

    src = create_model("resnet18", 1000)  # an "ImageNet" classifier: 1000-way fc
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    cfg = Config(models={"net": {"arch": "resnet18", "checkpoint": str(tmp_path / "imagenet.pth"),
                                 "checkpoint_partial": True, "head": {"type": "dynamic_mlp"}}})  # fmt: skip
    net = build_models(cfg, 10, torch.device("cpu"), fields={"meta"})["net"]
    assert torch.equal(net.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    assert net.fc.weight.shape == (10, 512)
    strict = Config(models={"net": {"arch": "resnet18", "checkpoint": str(tmp_path / "imagenet.pth")}})
    with pytest.raises(UserError, match="differ in shape"):
        build_models(strict, 10, torch.device("cpu"))
    with pytest.raises(UserError, match=r"extra input\(s\) \['meta'\].*data.metadata"):
        build_models(Config(models={"net": {"arch": "resnet8", "head": {"type": "concat"}}}), 3, torch.device("cpu"),
                     fields=set())  # fmt: skip


# ================================================================================================ sources
def _npz_with_meta(path, **over):
    write_fake_npz(path, 3, 4, 2)
    with np.load(path) as z:
        arrays = dict(z)
    arrays.update(
        lat_train=np.array([10.0, np.nan, -45, 0, 1, 2, 3, 4, 5, 6, 7, 8]), lon_train=np.linspace(-170, 170, 12),
        date_train=np.array(["2020-02-29", "2021-06-01", "", *[f"2019-01-0{1 + i % 9}" for i in range(9)]]),
        lat_test=np.zeros(6), lon_test=np.zeros(6), doy_test=np.array([1, 366, 100, 200, 300, 365]),
        year_test=np.array([2019, 2020, 2020, 2021, 2022, 2023]),
    )  # fmt: skip
    arrays.update(over)
    np.savez(path, **arrays)
    return path


def test_npz_metadata_dates_doy_and_missing(tmp_path):
    path = _npz_with_meta(tmp_path / "m.npz")
    b = load_dataset(DataConfig(dataset="npz", path=str(path), metadata={}))
    meta = b.train.fields["meta"]
    assert meta.shape == (12, 6) and meta.dtype == np.float32
    assert not meta[1].any() and not meta[2].any() and meta[0].any()  # lat missing, date empty -> zeros
    want = encode_metadata(torch.tensor([10.0]), torch.tensor([-170.0]), torch.tensor([60.0]), torch.tensor([366.0]))
    assert np.allclose(meta[0], want[0].numpy(), atol=1e-6)
    t = b.test.fields["meta"]
    assert np.allclose(t[1, [2, 5]], [0.0, -1.0], atol=1e-6)  # doy 366 of leap 2020 -> u = 1: sin 0, cos -1
    assert "meta = geo+temporal" in b.info["metadata"]
    b2 = load_dataset(DataConfig(dataset="npz", path=str(path), metadata={"use": ["temporal"]}, limit_train=6))
    assert b2.train.fields["meta"].shape == (6, 2)  # limits keep the rows of the kept images


def test_npz_metadata_errors_name_file_and_row(tmp_path):
    bad_date = _npz_with_meta(tmp_path / "d.npz", date_train=np.array(["2020-13-01"] * 12))
    with pytest.raises(UserError, match=r"d.npz.*date_train\), row 0: date '2020-13-01' is not a valid YYYY-MM-DD"):
        load_dataset(DataConfig(dataset="npz", path=str(bad_date), metadata={}))
    feb29 = _npz_with_meta(tmp_path / "f.npz", date_train=np.array(["2019-02-29"] * 12))
    with pytest.raises(UserError, match="row 0: date '2019-02-29'"):
        load_dataset(DataConfig(dataset="npz", path=str(feb29), metadata={}))
    bad_lat = _npz_with_meta(tmp_path / "l.npz", lat_train=np.array([0, 0, 0, 95.5, *[0] * 8], dtype=float))
    with pytest.raises(UserError, match=r"row 3: latitude 95.5 is outside \[-90, 90\]"):
        load_dataset(DataConfig(dataset="npz", path=str(bad_lat), metadata={}))
    short = _npz_with_meta(tmp_path / "s.npz", lon_train=np.zeros(5))
    with pytest.raises(UserError, match="lon_train has 5 rows but the train split has 12 images"):
        load_dataset(DataConfig(dataset="npz", path=str(short), metadata={}))
    bad_doy = _npz_with_meta(tmp_path / "y.npz", doy_test=np.array([1, 366, 100, 200, 300, 366]))
    with pytest.raises(UserError, match=r"doy_test\), row 5: day of year 366 is outside 1..365"):
        load_dataset(DataConfig(dataset="npz", path=str(bad_doy), metadata={}))
    plain = write_fake_npz(tmp_path / "p.npz", 3, 4, 2)
    with pytest.raises(UserError, match="no usable geo/temporal metadata"):
        load_dataset(DataConfig(dataset="npz", path=str(plain), metadata={}))


def test_shared_plants_format_and_synthetic_locations(tmp_path):
    write_fake_plants(tmp_path / "ucsc_plants32.npz", 5, 4, 2)
    b = load_dataset(DataConfig(dataset="ucsc_plants32", root=str(tmp_path), metadata={"use": ["temporal"]}))
    assert b.num_classes == 5 and b.train.fields["meta"].shape == (20, 2) and np.abs(b.train.fields["meta"]).all()
    syn = {"use": ["geo"], "missing": "used", "synthetic_location": {"by": "class", "spread": 0.0, "seed": 4}}
    s = load_dataset(DataConfig(dataset="ucsc_plants32", root=str(tmp_path), metadata=syn))
    meta, y = s.train.fields["meta"], s.train.targets
    for c in range(5):  # spread 0: every sample of a class sits on its region's centre
        assert np.allclose(meta[y == c], meta[y == c][0])
    assert len({tuple(np.round(meta[y == c][0], 5)) for c in range(5)}) == 5
    assert "SYNTHETIC locations" in s.info["metadata"]
    lat, lon = synthetic_locations(np.array([0, 0, 1]), seed=4, spread=3.0, split_salt=0)
    again = synthetic_locations(np.array([0, 0, 1]), seed=4, spread=3.0, split_salt=0)
    assert np.array_equal(lat, again[0]) and (np.abs(lat) <= 90).all() and (np.abs(lon) <= 180).all()
    with pytest.raises(UserError, match="by=coarse.*no `y_train_coarse`"):
        load_dataset(DataConfig(dataset="ucsc_plants32", root=str(tmp_path),
                                metadata={**syn, "synthetic_location": {"by": "coarse"}}))  # fmt: skip
    with pytest.raises(UserError, match="ucsc_plants32.npz not found"):
        load_dataset(DataConfig(dataset="ucsc_plants32", root=str(tmp_path / "nowhere")))


def test_inat_json_loader(tmp_path):
    write_fake_inat(tmp_path)
    b = load_dataset(DataConfig(dataset="inat", root=str(tmp_path), image_size=16, metadata={}))
    assert b.num_classes == 4 and b.classes == ["cls0", "cls1", "cls2", "cls3"]
    assert len(b.train) == 520 and len(b.test) == 12 and b.image_size == 16
    meta = b.train.fields["meta"]
    assert not meta[0].any() and meta[1].any()  # images[0] has no latitude -> the zero vector
    # images[1]: class 1, lat -10, lon 30, 15 Feb 2020 (day 46 of 366)
    want = encode_metadata(torch.tensor([-10.0]), torch.tensor([30.0]), torch.tensor([46.0]), torch.tensor([366.0]))
    assert np.allclose(meta[1], want[0].numpy(), atol=1e-6) and b.train.targets[1] == 1
    assert b.train.image(3).shape == (16, 16, 3)


def _edit_json(path, fn):
    obj = json.loads(path.read_text())
    fn(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize(
    "edit,msg",
    [
        (lambda o: o["annotations"].pop(), "520 images but 519 annotations"),
        (lambda o: o["annotations"][2].update(image_id=7), r"annotations\[2\].image_id = 7 but images\[2\].id = 2"),
        (lambda o: o["images"][4].update(date="15/02/2020"), r"images\[4\]: date '15/02/2020' is not a valid"),
        (lambda o: o["images"][5].update(longitude=200.0), r"images\[5\]: longitude 200.0 is outside"),
        (lambda o: o["images"][6].update(file_name="nope/x.png"), r"image file\(s\) not found, e.g. .*nope/x.png"),
        (lambda o: o["annotations"][1].update(category_id="a"), r"annotations\[1\]: category_id must be"),
    ],
)
def test_inat_json_errors(tmp_path, edit, msg):
    write_fake_inat(tmp_path)
    _edit_json(tmp_path / "train_mini.json", edit)
    with pytest.raises(UserError, match=msg):
        load_dataset(DataConfig(dataset="inat", root=str(tmp_path), image_size=16, metadata={}))
    (tmp_path / "train_mini.json").write_text("{not json")
    with pytest.raises(UserError, match="not a readable JSON file"):
        load_dataset(DataConfig(dataset="inat", root=str(tmp_path), image_size=16))


def _folder_with_csv(root):
    from PIL import Image

    rows = ["file,lat,lon,date"]
    for split in ("train", "test"):
        for c in ("oak", "pine"):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / split / c / f"{i}.png")
                lat = "" if (split, c, i) == ("train", "oak", 1) else str(10 + i)
                rows.append(f"{split}/{c}/{i}.png,{lat},{-20 - i},2020-0{i + 1}-10")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root / "meta.csv"


def test_image_folder_with_csv(tmp_path):
    csv = _folder_with_csv(tmp_path / "f")
    b = load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "f"), metadata={"csv": str(csv)}))
    meta = b.train.fields["meta"]
    assert meta.shape == (4, 6) and not meta[1].any() and meta[0].any()  # train/oak/1.png has no latitude
    want = encode_metadata(torch.tensor([11.0]), torch.tensor([-21.0]), torch.tensor([41.0]), torch.tensor([366.0]))
    assert np.allclose(b.test.fields["meta"][1], want[0].numpy(), atol=1e-6)  # test/oak/1.png, 10 Feb 2020
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # test/pine/1.png loses its row
    with pytest.raises(UserError, match=r"1 image\(s\) have no row, e.g. 'test/pine/1.png'"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "f"), metadata={"csv": str(csv)}))
    csv.write_text("\n".join([*lines, "train/elm/0.png,1,2,2020-01-01"]) + "\n")
    with pytest.raises(UserError, match=r"meta.csv, line 10: file 'train/elm/0.png' is not an image"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "f"), metadata={"csv": str(csv)}))
    csv.write_text("\n".join([lines[0], *lines[1:3], lines[3].replace("2020-01-10", "2020-1-x"), *lines[4:]]))
    with pytest.raises(UserError, match=r"line 4: date '2020-1-x'"):
        load_dataset(DataConfig(dataset="image_folder", path=str(tmp_path / "f"), metadata={"csv": str(csv)}))
