"""Data sources: what `data.dataset: <name>` reads. Each source is a small class registered under its name, with
`load(cfg) -> SourceSplits` (the train / test / optional unlabelled `ImageSet`s, classes, where they came from)
and `info(cfg) -> SourceInfo` (their sizes without decoding images, for --dry-run), and the facts about its
dataset as class attributes (file names, split sizes, classes, image size, `stats` for `normalize: dataset`,
`path_help` when it needs `data.path`). Everything after reading is shared and lives outside the sources
(`ssl_kd.data.loading.load_dataset`): metadata, `train_source`, resizing, statistics, limits.

Built in: torchvision.py (cifar10, cifar100, svhn, stl10), npz.py (npz, ucsc_plants32; the decode cache is
npz_cache.py), image_folder.py and imagenet.py (class folders, their listing cached by folder_index.py), inat.py,
digits.py. synthetic.py is DM-KD's `data.train_source`, which replaces the train split of any source and so is not
registered.

Adding a source (e.g. `dataset: imagenet`) is one file here and one line below:

    # ssl_kd/data/sources/imagenet.py
    @register_source("imagenet")
    class ImageNet(Source):
        stats = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

        def load(self, cfg: DataConfig) -> SourceSplits: ...  # raise UserError saying where the files must be
        def info(self, cfg: DataConfig) -> SourceInfo: ...    # the same errors as load, without decoding

and `imagenet` in the import line at the bottom of this file. `data.dataset` is validated against the registry,
so the name is valid in every YAML at once; a user's own module listed in `experiment.imports` can register a
source the same way.
"""

from ssl_kd.data.sources.base import (
    Source,
    SourceInfo,
    SourceSplits,
    Stats,
    get_source,
    register_source,
    source_names,
)

# the built-in sources: importing a module registers its classes
from ssl_kd.data.sources import digits, image_folder, imagenet, inat, npz, torchvision  # noqa: E402, F401  # isort: skip

__all__ = ["Source", "SourceInfo", "SourceSplits", "Stats", "get_source", "register_source", "source_names"]
