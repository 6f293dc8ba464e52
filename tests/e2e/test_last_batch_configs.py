"""The shipped configs keep an epoch's last, partial batch where their reference's train loader does
(configs/README.md, "Epoch length"), and drop it everywhere else."""

from __future__ import annotations

from helpers import CONFIGS, shipped_configs

from ssl_kd.config import resolve_config

KEEP = {  # config -> its stages that keep the last batch
    **{f"kd/{m}_{p}": {"teacher", "student"} for m in ("kd", "dkd", "kd_ctkd", "dkd_ctkd", "kd_dot", "kd_dtd", "kd_ka")
       for p in ("res32x4_res8x4", "wrn40_2_wrn16_2")},
    "kd/pad_res32x4_res8x4": {"teacher", "student"},
    "prune/ghfp_kd_res32x4_res8x4": {"teacher", "student"},
    "kd/hsakd_res32x4_res8x4": {"teacher", "teacher_aux", "student"},
    "kd/hsakd_wrn40_2_wrn16_2": {"teacher", "teacher_aux", "student"},
    "kd/cskd_res32x4_vit_cifar100": {"teacher"},
    "kd/deit_res32x4_vit_cifar100": {"teacher"},
    **{f"prune/{m}_resnet56_cifar10": {"prune"} for m in ("sfp", "asrfp", "ghfp")},
    "teacher_student_cifar100": {"teacher", "student"},
    "kd/sskd_res32x4_res8x4": {"teacher", "teacher_head", "student"},
    "kd/hssakd_online_wrn40_2": {"online"},
    **{f"selfkd/{m}_cifar100_resnet18": {"train"} for m in ("ce", "mixup", "cutmix", "ctc_ce_baseline")},
    "selfkd/mixskd_cifar100_resnet18": {"mixskd"},
    "selfkd/ctc_cifar100_resnet18": {"instance", "contrast"},
    # ImageNet: torchvision's ImageFolder loaders with drop_last=False (mdistiller, HSAKD, torchdistill, Self-KD-Lib)
    **{f"imagenet/{m}_{p}": {"distill"} for m in ("kd", "dkd", "dot") for p in ("r34_r18", "r50_mv1")},
    "imagenet/ctkd_r34_r18": {"distill"},
    "imagenet/hsakd_r34_r18": {"teacher_aux", "student"},
    "imagenet/pad_l2_r34_r18": {"student"},
    "imagenet/mixskd_r50": {"mixskd"},
    "imagenet/ghfp_r50": {"prune"},
    **{f"dynamic_mlp/{m}": {"train"} for m in ("inat21_mini_resnet50_c", "plants32_resnet18_c",
                                                "plants32_resnet18_concat", "plants32_resnet18_image_only")},
}  # fmt: skip


def test_shipped_configs_keep_the_last_batch_where_their_reference_does():
    seen = set()
    for path in shipped_configs():
        name = str(path.relative_to(CONFIGS).with_suffix(""))
        cfg, _ = resolve_config(path, [])
        keep = {n for n, s in cfg.stages.items() if s.last_batch == "keep"}
        assert keep == KEEP.get(name, set()), name
        seen.add(name)
    assert set(KEEP) <= seen
