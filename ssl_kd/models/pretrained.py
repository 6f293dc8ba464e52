"""Pretrained ImageNet weights through torchvision's weights API: `models.<name>.pretrained: IMAGENET1K_V1`.

The file is torchvision's own (downloaded once into the torch cache, `$TORCH_HOME/hub/checkpoints`, hash-checked);
offline, a missing file is one error naming it and the folder to put it in. A model built for another class count
keeps everything but its classifier (`fc`) from the file and says so: the usual pretrained backbone under a new
head.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import get_model_weights

from ssl_kd.errors import UserError, choices, suggest

# our registered models whose parameters carry torchvision's names -> torchvision's builder of the same network
TORCHVISION_NAMES = {
    "resnet18": "resnet18", "resnet34": "resnet34", "resnet50": "resnet50", "regnet_y_16gf": "regnet_y_16gf",
}  # fmt: skip


def weights_entry(arch: str, name: str, where: str):
    """torchvision's weights enum member for `arch` named `name` (e.g. IMAGENET1K_V1, DEFAULT), or a UserError
    listing what is valid; checked when the config is read, before any download."""
    tv_name = TORCHVISION_NAMES.get(arch)
    if tv_name is None:
        raise UserError(
            f"{where}: '{arch}' has no pretrained weights here; models with torchvision's ImageNet weights: "
            f"{choices(TORCHVISION_NAMES)} (any model loads a file with `checkpoint:`)."
        )
    enum = get_model_weights(tv_name)
    if name not in enum.__members__:
        valid = list(enum.__members__)
        raise UserError(
            f"{where}: '{name}' is not a weight set of {arch}.{suggest(name, valid)} Valid: {choices(valid)}."
        )
    return enum[name]


def cached_file(entry) -> Path:
    """Where torchvision keeps (or will keep) the file of a weights entry."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(entry.url).path).name


def target(model: nn.Module, arch: str, kwargs: dict | None = None) -> tuple[nn.Module, str]:
    """The module the weights go into and its arch: the model itself, or a `multi_exit` model's backbone (its exits
    are fresh copies of later stages and keep their init, as HSAKD's ImageNet teacher starts)."""
    if arch == "multi_exit":
        return model.backbone, (kwargs or {}).get("backbone", "cifar_resnet18")
    return model, arch


def load_pretrained(model: nn.Module, arch: str, name: str, where: str) -> None:
    """Load torchvision's `name` weights of `arch` into `model` (all but `fc` when the class count differs)."""
    entry = weights_entry(arch, name, where)
    file = cached_file(entry)
    try:
        state = entry.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # offline (URLError), a proxy, a damaged download (hash mismatch)
        raise UserError(
            f"{where}: {name} weights of {arch} are not in the torch cache ({file}) and could not be downloaded "
            f"({type(e).__name__}: {e}). Download {entry.url} into {file.parent} (TORCH_HOME moves the cache)."
        ) from None
    own = model.state_dict()
    head = [k for k in state if k in own and state[k].shape != own[k].shape]
    if head and not all(k.startswith("fc.") for k in head):
        raise UserError(f"{where}: {name} weights do not fit '{arch}' as configured (e.g. {head[0]}); are its "
                        f"kwargs (e.g. cifar_stem) torchvision's?")  # fmt: skip
    missing = [k for k in own if k not in state and not k.startswith("fc.")]
    if missing:
        raise UserError(f"{where}: {name} weights lack {len(missing)} tensor(s) of '{arch}' (e.g. {missing[0]}).")
    model.load_state_dict({k: v for k, v in state.items() if k not in head}, strict=not head)
    if head:
        print(f"{where}: loaded {name} ({len(state) - len(head)} tensors); the classifier keeps its fresh init "
              f"({entry.meta.get('num_params', '?')} parameters at {len(entry.meta.get('categories', []))} classes "
              f"in the file, {model.fc.out_features} classes here).")  # fmt: skip


def pretrained_source(arch: str, name: str) -> str:
    """For --dry-run: the weights and whether their file is cached (a real run downloads a missing one)."""
    file = cached_file(weights_entry(arch, name, "pretrained"))
    return f"torchvision {name} ({file}{'' if file.is_file() else ', not cached yet: downloaded at the start'})"
