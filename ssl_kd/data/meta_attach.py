"""`data.metadata`: each split's location/date metadata encoded into the per-sample field `meta`, from wherever the
source has it (the .npz's lat_/lon_/date_ keys, iNat's JSON), a CSV beside an image folder, or SYNTHETIC
class-correlated locations (`ssl_kd.data.metadata` reads and encodes; this module decides which applies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_kd.data.config import DataConfig
from ssl_kd.data.metadata import RawMetadata, meta_dim, npz_metadata, read_metadata_csv, synthetic_locations
from ssl_kd.data.sources import SourceSplits
from ssl_kd.errors import UserError


def split_csvs(root: Path, csv_name: Path) -> dict[str, tuple[Path, Path]] | None:
    """`data.metadata.csv: metadata.csv` naming a file in each split folder of a train/ + val/ (or test/) tree, each
    listing its own images relative to that folder (the iNaturalist-export layout of e.g. plants_jpeg); None when
    the CSV is one file for the whole folder."""
    if csv_name.is_absolute() or csv_name.is_file():
        return None
    test_dir = next((root / d for d in ("val", "test") if (root / d / csv_name).is_file()), None)
    if test_dir is None or not (root / "train" / csv_name).is_file():
        return None
    return {"train": (root / "train" / csv_name, root / "train"), "test": (test_dir / csv_name, test_dir)}


def attach_metadata(cfg: DataConfig, splits: SourceSplits) -> str:
    """Set `fields["meta"]` on every split when `data.metadata` is given. Returns a one-line description ('' without
    metadata)."""
    m = cfg.metadata
    if m is None:
        return ""
    arrays = splits.arrays
    where = {"npz": f"data.path ({cfg.path})"}.get(cfg.dataset, f"data.dataset={cfg.dataset}")
    metas = dict(splits.metadata or {})
    if m.csv and (per_split := split_csvs(Path(cfg.path).expanduser(), Path(m.csv).expanduser())):
        for split, (file, folder) in per_split.items():  # one CSV in each split's folder
            metas[split] = read_metadata_csv(file, getattr(splits, split).files, folder)
    elif m.csv:
        train, test = splits.train, splits.test
        rm = read_metadata_csv(Path(m.csv).expanduser(), train.files + test.files, Path(cfg.path).expanduser())
        n = len(train)
        cut = lambda a, sl: a[sl]  # noqa: E731
        for split, sl in (("train", slice(0, n)), ("test", slice(n, None))):
            metas[split] = RawMetadata(*(cut(a, sl) for a in (rm.lat, rm.lon, rm.doy, rm.days)), rm.where)
    syn = m.synthetic_location
    for salt, split in enumerate(("train", "test", "unlabeled")):
        s = getattr(splits, split)
        if s is None:
            continue
        rm = metas.get(split)
        if rm is None:
            rm = npz_metadata(arrays, split, len(s), where) if arrays is not None else RawMetadata.empty(len(s))
        if syn is not None:
            groups = s.targets
            if syn.by == "coarse":
                key = f"y_{split}_coarse"
                if arrays is None or key not in arrays:
                    if split == "unlabeled":
                        groups = None
                    else:
                        raise UserError(
                            f"data.metadata.synthetic_location.by=coarse: {where} has no `{key}` array (coarse "
                            f"labels, e.g. the CIFAR-100 npz); use by: class.")  # fmt: skip
                else:
                    groups = np.asarray(arrays[key], dtype=np.int64)
            if groups is not None and (groups >= 0).all():
                rm.lat, rm.lon = synthetic_locations(groups, syn.seed, syn.spread, salt)
        s.fields["meta"] = rm.encode(m.use, m.missing).astype(np.float32)
        if split == "train" and len(s) and not np.abs(s.fields["meta"]).any():
            raise UserError(
                f"data.metadata: {where} has no usable {'/'.join(m.use)} metadata (every training sample's "
                f"encoding is the zero 'unknown' vector). Give lat_/lon_/date_<split> arrays (npz), a CSV "
                f"(image_folder: data.metadata.csv), the iNat JSON's fields, or data.metadata.synthetic_location; "
                f"when only some parts are known (dates but no coordinates, or synthetic coordinates without dates) "
                f"encode those (`use: [temporal]` / `use: [geo]`) with `missing: used`.")  # fmt: skip
    desc = f"meta = {'+'.join(m.use)} ({meta_dim(m.use)}-d, missing -> zeros: {m.missing})"
    if syn is not None:
        desc += f", SYNTHETIC locations (one region per {syn.by}, spread {syn.spread:g} deg, seed {syn.seed})"
    return desc
