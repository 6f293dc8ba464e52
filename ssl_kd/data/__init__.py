"""Data layer: data sources and loading, the SSL split, seeded augmentation, the stream sampler and batch mixing."""

from ssl_kd.data.augment import (
    RANDAUGMENT_OPS,
    StrongTransform,
    Transform,
    WeakTransform,
    build_transform,
    cutout,
)
from ssl_kd.data.config import (
    SYNTHETIC_NAME_REGEX,
    AugmentConfig,
    DataConfig,
    SSLSplitConfig,
    StrongAugConfig,
    TrainSourceConfig,
    TransformConfig,
    WeakAugConfig,
)
from ssl_kd.data.containers import (
    ConcatImageSet,
    DatasetBundle,
    EncodedImageSet,
    FolderImageSet,
    ImageSet,
    SubsetImageSet,
    concat_image_sets,
)
from ssl_kd.data.device_augment import DeviceStrong, DeviceTransform, DeviceWeak, to_device_transform
from ssl_kd.data.device_dataset import DeviceImages, DeviceViewDataset
from ssl_kd.data.device_jpeg import DeviceCrops, DeviceJpegViewDataset
from ssl_kd.data.hashing import hash_keys, mix_seed
from ssl_kd.data.loading import dataset_info, load_dataset
from ssl_kd.data.metadata import encode_metadata
from ssl_kd.data.mixing import (
    MixConfig,
    MixParams,
    box_lam,
    mix_tensors,
    one_hot,
    recursive_mix,
    sample_cutmix,
    sample_mix,
    sample_mixup,
    sample_paste_box,
)
from ssl_kd.data.rotation import ROTATIONS, class_logits, joint_labels, rotate4, rotated, unrotated
from ssl_kd.data.sampler import MPerClassSampler, SamplerConfig, StreamSampler, stream_labels
from ssl_kd.data.sources.npz_cache import decoded_npz
from ssl_kd.data.split import load_split, save_split, ssl_split
from ssl_kd.data.view_dataset import ViewDataset

__all__ = [
    "ROTATIONS",
    "class_logits",
    "joint_labels",
    "rotate4",
    "rotated",
    "unrotated",
    "SYNTHETIC_NAME_REGEX",
    "TrainSourceConfig",
    "TransformConfig",
    "MixConfig",
    "MixParams",
    "RANDAUGMENT_OPS",
    "AugmentConfig",
    "ConcatImageSet",
    "DataConfig",
    "DatasetBundle",
    "EncodedImageSet",
    "DeviceCrops",
    "DeviceImages",
    "DeviceJpegViewDataset",
    "DeviceStrong",
    "DeviceTransform",
    "DeviceViewDataset",
    "DeviceWeak",
    "FolderImageSet",
    "ImageSet",
    "SSLSplitConfig",
    "MPerClassSampler",
    "SamplerConfig",
    "StreamSampler",
    "stream_labels",
    "StrongAugConfig",
    "StrongTransform",
    "SubsetImageSet",
    "Transform",
    "ViewDataset",
    "WeakAugConfig",
    "WeakTransform",
    "box_lam",
    "build_transform",
    "concat_image_sets",
    "cutout",
    "dataset_info",
    "decoded_npz",
    "encode_metadata",
    "hash_keys",
    "load_dataset",
    "load_split",
    "mix_seed",
    "mix_tensors",
    "one_hot",
    "recursive_mix",
    "sample_cutmix",
    "sample_mix",
    "sample_mixup",
    "sample_paste_box",
    "save_split",
    "ssl_split",
    "to_device_transform",
]
