"""Data layer: datasets, the SSL split, seeded augmentation, the stream sampler and batch mixing."""

from ssl_kd.data.augment import (
    RANDAUGMENT_OPS,
    StrongTransform,
    Transform,
    WeakTransform,
    build_transform,
    cutout,
)
from ssl_kd.data.config import AugmentConfig, DataConfig, SSLSplitConfig, StrongAugConfig, WeakAugConfig
from ssl_kd.data.containers import (
    ConcatImageSet,
    DatasetBundle,
    FolderImageSet,
    ImageSet,
    SubsetImageSet,
    concat_image_sets,
)
from ssl_kd.data.dataset import ViewDataset
from ssl_kd.data.datasets import (
    DATASET_STATS,
    IMAGENET_STATS,
    balanced_subset,
    dataset_info,
    decoded_npz,
    image_stats,
    load_dataset,
)
from ssl_kd.data.metadata import encode_metadata
from ssl_kd.data.mixing import (
    MixConfig,
    MixParams,
    box_lam,
    cutmix,
    mix_tensors,
    mixup,
    one_hot,
    recursive_mix,
    sample_cutmix,
    sample_mix,
    sample_mixup,
    sample_paste_box,
)
from ssl_kd.data.sampler import StreamSampler, mix_seed
from ssl_kd.data.split import load_split, save_split, ssl_split

__all__ = [
    "DATASET_STATS",
    "IMAGENET_STATS",
    "MixConfig",
    "MixParams",
    "RANDAUGMENT_OPS",
    "AugmentConfig",
    "ConcatImageSet",
    "DataConfig",
    "DatasetBundle",
    "FolderImageSet",
    "ImageSet",
    "SSLSplitConfig",
    "StreamSampler",
    "StrongAugConfig",
    "StrongTransform",
    "SubsetImageSet",
    "Transform",
    "ViewDataset",
    "WeakAugConfig",
    "WeakTransform",
    "balanced_subset",
    "box_lam",
    "build_transform",
    "concat_image_sets",
    "cutmix",
    "cutout",
    "dataset_info",
    "decoded_npz",
    "encode_metadata",
    "image_stats",
    "load_dataset",
    "load_split",
    "mix_seed",
    "mix_tensors",
    "mixup",
    "one_hot",
    "recursive_mix",
    "sample_cutmix",
    "sample_mix",
    "sample_mixup",
    "sample_paste_box",
    "save_split",
    "ssl_split",
]
