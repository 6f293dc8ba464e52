"""The labelled/unlabelled split: per-class balanced, seeded, saved in the run folder, reloaded on resume."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ssl_kd.errors import UserError


def ssl_split(
    targets: np.ndarray, num_labels: int | None, num_classes: int, seed: int,
    include_labeled_in_unlabeled: bool = True,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(labelled indices, unlabelled indices) into `targets`.

    Per class c, num_labels / num_classes indices are drawn without replacement by
    `np.random.RandomState(seed).choice`, class by class; this is TorchSSL's procedure (its global np.random
    seeded with the run seed), and the legacy RandomState stream is frozen by numpy, so a split never changes
    with the numpy version. Labelled indices come class by class in draw order. The unlabelled set is the
    whole train set (TorchSSL/USB default) or, if not included, the rest, ascending.
    num_labels=None labels everything (supervised).
    """
    targets = np.asarray(targets, dtype=np.int64)
    n = len(targets)
    if num_labels is None:
        lb = np.arange(n, dtype=np.int64)
    else:
        if num_labels % num_classes:
            near = max(1, round(num_labels / num_classes)) * num_classes
            raise UserError(
                f"data.ssl.num_labels: {num_labels} labels do not split evenly over {num_classes} "
                f"classes; use a multiple of {num_classes} (e.g. {near})."
            )
        per_class = num_labels // num_classes
        counts = np.bincount(targets[targets >= 0], minlength=num_classes)
        short = [c for c in range(num_classes) if counts[c] < per_class]
        if short:
            raise UserError(
                f"data.ssl.num_labels: {num_labels} labels need {per_class} per class, but class(es) "
                f"{short[:10]} have only {min(counts[c] for c in short)} training image(s); the most "
                f"possible here is {int(counts.min()) * num_classes}."
            )
        rs = np.random.RandomState(int(seed) % (2**32))
        lb = np.concatenate(
            [rs.choice(np.flatnonzero(targets == c), per_class, replace=False) for c in range(num_classes)]
        )
        lb = lb.astype(np.int64)
    if include_labeled_in_unlabeled:
        ulb = np.arange(n, dtype=np.int64)
    else:
        mask = np.ones(n, bool)
        mask[lb] = False
        ulb = np.flatnonzero(mask).astype(np.int64)
    return lb, ulb


def save_split(path: str | Path, lb: np.ndarray, ulb: np.ndarray | None) -> None:
    """`.npz` keeps both index arrays; `.npy` keeps the labelled ones only (TorchSSL/USB's file format).
    Written to a temporary file and renamed, so a crash never leaves half a split behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        if path.suffix == ".npy":
            np.save(f, np.asarray(lb, dtype=np.int64))
        else:
            arrays = {"lb_idx": np.asarray(lb, dtype=np.int64)}
            if ulb is not None:
                arrays["ulb_idx"] = np.asarray(ulb, dtype=np.int64)
            np.savez(f, **arrays)
    os.replace(tmp, path)


def load_split(
    path: str | Path, num_train: int | None = None, include_labeled_in_unlabeled: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a split written by `save_split` (or a TorchSSL/USB labelled-index .npy).

    A file holding only labelled indices gets its unlabelled set rebuilt when `num_train` is given, else None.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"split file {path} does not exist.")
    try:
        obj = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"split file {path}: cannot read it as .npy/.npz ({e}).") from None
    if isinstance(obj, np.lib.npyio.NpzFile):
        with obj:
            if "lb_idx" not in obj.files:
                raise UserError(f"split file {path}: has arrays {obj.files}; expected 'lb_idx' (and 'ulb_idx').")
            lb = obj["lb_idx"].astype(np.int64)
            ulb = obj["ulb_idx"].astype(np.int64) if "ulb_idx" in obj.files else None
    else:
        lb, ulb = np.asarray(obj).astype(np.int64).ravel(), None
    if ulb is None and num_train is not None:
        if include_labeled_in_unlabeled:
            ulb = np.arange(num_train, dtype=np.int64)
        else:
            ulb = np.setdiff1d(np.arange(num_train, dtype=np.int64), lb)
    return lb, ulb
