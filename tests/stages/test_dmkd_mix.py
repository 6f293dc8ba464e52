"""DM-KD's CutMix box in a run: the shipped DM-KD config presets `mix.box: dmkd`, so turning its CutMix on (DM-KD's
`--use_aug cutmix`, alpha 0.25) draws DM-KD's box. The box against DM-KD's code: tests/unit/test_selfkd_parts.py."""

from __future__ import annotations

from helpers import CONFIGS, run_cli, small_overrides

from ssl_kd.data import mixing


def test_dmkd_config_cutmix_uses_dmkd_box(fake_data_root, tmp_path, monkeypatch):
    calls: list[tuple] = []
    original = mixing.sample_cutmix

    def spy(batch, alpha, size, box="cutmix"):
        mix = original(batch, alpha, size, box)
        calls.append((alpha, box, mix))
        return mix

    monkeypatch.setattr(mixing, "sample_cutmix", spy)
    path = CONFIGS / "kd" / "dmkd_res34_res18_cifar100.yaml"
    args = [*small_overrides(path, fake_data_root), f"experiment.output_dir={tmp_path / 'r'}"]
    assert run_cli(path, *args, "stages.student.mix.kind=cutmix", "stages.student.mix.alpha=0.25") == 0
    assert len(calls) == 2 and all(alpha == 0.25 and box == "dmkd" for alpha, box, _ in calls)
    for _, _, mix in calls:  # DM-KD's box: edges rounded from a continuous centre, inside the 32 x 32 image
        x1, y1, x2, y2 = mix.box
        assert 0 <= x1 <= x2 <= 32 and 0 <= y1 <= y2 <= 32
