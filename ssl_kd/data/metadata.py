"""Where and when a photo was taken, as the model input DynamicMLP fuses with the image
(ylingfeng/DynamicMLP@773197c5 dataset.py).

Encoding (ylingfeng/DynamicMLP dataset.py): u = [lat/90, lon/180] (geo) ++ [2 doy/days_in_year - 1] (temporal),
e = [sin(pi u), cos(pi u)] (every sine first, then every cosine); 6-d for both, 4-d geo only, 2-d temporal only.
doy is 1-based (1 January = 1, 31 December = days_in_year), days_in_year is 366 in leap years. A sample with any
of lat/lon/date missing gets the all-zero vector (the reference's "unknown" code, `missing: any`); `missing: used`
only looks at the parts that are encoded (a dataset with dates but no coordinates, temporal only).

Sources, each read into per-sample (lat, lon, doy, days_in_year) arrays with NaN for missing:
* iNaturalist's COCO-style JSON: `ssl_kd.data.sources.inat.read_inat_json`;
* a CSV of per-file metadata beside an image folder: `read_metadata_csv`;
* `.npz` keys `lat_<split>`, `lon_<split>`, `date_<split>` ('YYYY-MM-DD') or `doy_<split>` (+ optional
  `year_<split>`): `npz_metadata`.
`synthetic_locations` attaches made-up, class-correlated coordinates to any dataset (tests and benchmarks only; it
is called synthetic everywhere it appears). Every bad value is one `UserError` naming the file and the row.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ssl_kd.errors import UserError

USES = ("geo", "temporal")


# ------------------------------------------------------------------------------------------------ encoding
def is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def meta_dim(use: Sequence[str]) -> int:
    """Length of the encoded vector: 2 per geo coordinate and 2 for the date (`mlp_cin` in the reference)."""
    return 2 * ((2 if "geo" in use else 0) + (1 if "temporal" in use else 0))


def _check_use(use: Sequence[str]) -> tuple[str, ...]:
    use = tuple(use)
    if not use or any(u not in USES for u in use) or len(set(use)) != len(use):
        raise ValueError(f"use must be a non-empty subset of {USES}, got {use}")
    return tuple(u for u in USES if u in use)  # fixed order: geo before temporal, as the reference


def encode_metadata(
    lat: Tensor,
    lon: Tensor,
    day_of_year: Tensor,
    days_in_year: Tensor,
    use: Sequence[str] = ("geo", "temporal"),
    missing: str = "any",
) -> Tensor:
    """(N,) tensors (NaN = missing) -> (N, 6 | 4 | 2) float32 encodings [sin(pi u), cos(pi u)].

    u = [lat/90, lon/180] if geo, ++ [2 doy/days_in_year - 1] if temporal. A row is all zeros when any of lat, lon,
    doy is missing (``missing="any"``, the reference) or when any *encoded* part is (``missing="used"``).
    """
    use = _check_use(use)
    if missing not in ("any", "used"):
        raise ValueError(f"missing must be 'any' or 'used', got {missing!r}")
    cols = [torch.as_tensor(v, dtype=torch.float64).reshape(-1) for v in (lat, lon, day_of_year, days_in_year)]
    n = cols[0].shape[0]
    if any(c.shape[0] != n for c in cols):
        raise ValueError(f"lat, lon, day_of_year, days_in_year must have equal length, got {[len(c) for c in cols]}")
    lat_, lon_, doy, days = cols
    u = []
    if "geo" in use:
        u += [lat_ / 90.0, lon_ / 180.0]
    if "temporal" in use:
        u += [2.0 * doy / days - 1.0]
    u = torch.stack(u, dim=1)
    enc = torch.cat([torch.sin(math.pi * u), torch.cos(math.pi * u)], dim=1)
    checked = [lat_, lon_, doy, days] if missing == "any" else [c for c in u.T]
    bad = torch.zeros(n, dtype=torch.bool)
    for c in checked:
        bad |= torch.isnan(c)
    enc[bad] = 0.0
    return enc.float()


# ------------------------------------------------------------------------------------------------ raw values
@dataclass
class RawMetadata:
    """Per-sample values before encoding; NaN = missing. ``where`` names the source for error messages."""

    lat: np.ndarray
    lon: np.ndarray
    doy: np.ndarray
    days: np.ndarray
    where: str = ""

    def __len__(self) -> int:
        return len(self.lat)

    @staticmethod
    def empty(n: int, where: str = "") -> RawMetadata:
        nan = np.full(n, np.nan)
        return RawMetadata(nan.copy(), nan.copy(), nan.copy(), nan.copy(), where)

    def encode(self, use: Sequence[str], missing: str = "any") -> np.ndarray:
        cols = (torch.from_numpy(np.asarray(a, np.float64)) for a in (self.lat, self.lon, self.doy, self.days))
        return encode_metadata(*cols, use=use, missing=missing).numpy()


def parse_date(value: Any, where: str) -> tuple[float, float]:
    """'YYYY-MM-DD[ anything]' -> (day of year, days in that year); None / '' / NaN -> (nan, nan).

    Only the first 10 characters are read (the reference's ``date[:10]``: the time of day is ignored)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan, math.nan
    s = str(value).strip()
    if s == "" or s.lower() in ("nan", "none", "null"):
        return math.nan, math.nan
    try:
        d = dt.datetime.strptime(s[:10], "%Y-%m-%d").date()
    except ValueError:
        raise UserError(f"{where}: date {s!r} is not a valid YYYY-MM-DD date.") from None
    return float(d.timetuple().tm_yday), float(366 if is_leap(d.year) else 365)


def parse_coord(value: Any, limit: float, name: str, where: str) -> float:
    """A latitude (limit 90) or longitude (180) in degrees; None / '' / NaN -> nan; out of range is an error."""
    if value is None:
        return math.nan
    if isinstance(value, str):
        if value.strip() == "" or value.strip().lower() in ("nan", "none", "null"):
            return math.nan
        try:
            value = float(value)
        except ValueError:
            raise UserError(f"{where}: {name} {value!r} is not a number.") from None
    v = float(value)
    if math.isnan(v):
        return v
    if not -limit <= v <= limit:
        raise UserError(f"{where}: {name} {v} is outside [-{limit:g}, {limit:g}] degrees.")
    return v


def check_coords(lat: np.ndarray, lon: np.ndarray, where: str) -> None:
    """Range check with one error naming the first bad row."""
    for name, arr, limit in (("latitude", lat, 90.0), ("longitude", lon, 180.0)):
        bad = np.flatnonzero(~np.isnan(arr) & (np.abs(arr) > limit))
        if len(bad):
            i = int(bad[0])
            raise UserError(
                f"{where}, row {i}: {name} {arr[i]} is outside [-{limit:g}, {limit:g}] degrees "
                f"({len(bad)} bad row(s)).")  # fmt: skip


# ------------------------------------------------------------------------------------------------ npz
def npz_metadata(arrays: Mapping[str, np.ndarray], split: str, n: int, where: str) -> RawMetadata:
    """`lat_<split>`, `lon_<split>`, `date_<split>` or `doy_<split>` (+ `year_<split>`) from an npz; absent keys
    are missing values. Without `year_<split>` a bare day of year counts in a 365-day year (366 for doy 366)."""
    out = RawMetadata.empty(n, where)
    for key, attr in ((f"lat_{split}", "lat"), (f"lon_{split}", "lon")):
        if key in arrays:
            a = np.asarray(arrays[key])
            if len(a) != n:
                raise UserError(f"{where}: {key} has {len(a)} rows but the {split} split has {n} images.")
            try:
                setattr(out, attr, a.astype(np.float64))
            except ValueError:
                raise UserError(f"{where}: {key} must hold numbers (degrees), got dtype {a.dtype}.") from None
    check_coords(out.lat, out.lon, f"{where} (lat_{split}/lon_{split})")
    if f"date_{split}" in arrays:
        dates = np.asarray(arrays[f"date_{split}"])
        if len(dates) != n:
            raise UserError(f"{where}: date_{split} has {len(dates)} rows but the {split} split has {n} images.")
        for i, d in enumerate(dates.tolist()):
            out.doy[i], out.days[i] = parse_date(d, f"{where} (date_{split}), row {i}")
    elif f"doy_{split}" in arrays:
        doy = np.asarray(arrays[f"doy_{split}"], dtype=np.float64)
        if len(doy) != n:
            raise UserError(f"{where}: doy_{split} has {len(doy)} rows but the {split} split has {n} images.")
        if f"year_{split}" in arrays:
            years = np.asarray(arrays[f"year_{split}"], dtype=np.int64)
            days = np.array([366.0 if is_leap(int(y)) else 365.0 for y in years])
        else:
            days = np.where(doy == 366, 366.0, 365.0)
        bad = np.flatnonzero(~np.isnan(doy) & ((doy < 1) | (doy > days)))
        if len(bad):
            i = int(bad[0])
            raise UserError(f"{where} (doy_{split}), row {i}: day of year {doy[i]:g} is outside 1..{days[i]:g}.")
        out.doy, out.days = doy, np.where(np.isnan(doy), np.nan, days)
    return out


# ------------------------------------------------------------------------------------------------ CSV
LAT_COLS, LON_COLS, FILE_COLS = ("lat", "latitude"), ("lon", "lng", "longitude"), ("file", "file_name", "path")


def read_metadata_csv(path: Path, files: Sequence[str], root: Path) -> RawMetadata:
    """Per-file metadata for an image folder: a CSV with a header `file,lat,lon,date` (also `file_name`,
    `latitude`, `longitude`/`lng`); `file` is relative to the folder (e.g. train/oak/1.jpg). Every image needs a
    row (empty cells = missing), and every row must name an image of the folder."""
    where = str(path)
    if not path.is_file():
        raise UserError(f"data.metadata.csv: no such file {path} (columns file,lat,lon,date).")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        pick = lambda names: next((h for h in header if h in names), None)  # noqa: E731
        fcol, latc, lonc = pick(FILE_COLS), pick(LAT_COLS), pick(LON_COLS)
        datec = "date" if "date" in header else None
        if fcol is None or not (latc or lonc or datec):
            raise UserError(
                f"{where}: the header must name a file column ({'/'.join(FILE_COLS)}) and at least one of lat, "
                f"lon, date; it has {header}.")  # fmt: skip
        reader.fieldnames = header
        rows = {}
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():  # csv.DictReader: extra cells under None, missing ones None
                n = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
                raise UserError(
                    f"{where}, line {line}: {n} cell(s), but the header has {len(header)} ({','.join(header)}); "
                    f"give every row one cell per column (empty cells for unknown values)."
                )  # fmt: skip
            name = (row.get(fcol) or "").strip().replace("\\", "/")
            if name in rows:
                raise UserError(f"{where}, line {line}: file {name!r} appears twice.")
            rows[name] = (line, row)
    index = {Path(fl).resolve().relative_to(root.resolve()).as_posix(): i for i, fl in enumerate(files)}
    out = RawMetadata.empty(len(files), where)
    unknown = [(ln, name) for name, (ln, _) in rows.items() if name not in index]
    if unknown:
        ln, name = unknown[0]
        raise UserError(
            f"{where}, line {ln}: file {name!r} is not an image under {root} ({len(unknown)} such row(s)); file "
            f"paths are relative to the folder, e.g. {next(iter(index), 'train/<class>/<image>')}.")  # fmt: skip
    absent = [name for name in index if name not in rows]
    if absent:
        raise UserError(
            f"{where}: {len(absent)} image(s) have no row, e.g. {absent[0]!r}; give every image a row "
            f"(empty cells for unknown values).")  # fmt: skip
    for name, (ln, row) in rows.items():
        i, at = index[name], f"{where}, line {ln}"
        out.lat[i] = parse_coord(row.get(latc) if latc else None, 90.0, "latitude", at)
        out.lon[i] = parse_coord(row.get(lonc) if lonc else None, 180.0, "longitude", at)
        out.doy[i], out.days[i] = parse_date(row.get(datec) if datec else None, at)
    return out


# ------------------------------------------------------------------------------------------------ synthetic
def synthetic_locations(groups: np.ndarray, seed: int, spread: float, split_salt: int) -> tuple[np.ndarray, np.ndarray]:
    """SYNTHETIC class-correlated coordinates: each group (e.g. CIFAR-100 coarse class) gets a region centre drawn
    once from `seed` (latitude in [-60, 60], longitude in [-180, 180]); each sample is its centre plus N(0, spread)
    degrees (latitude clipped to +-90, longitude wrapped). Made up for tests and benchmarks: not real data."""
    groups = np.asarray(groups, dtype=np.int64)
    k = int(groups.max()) + 1 if len(groups) else 0
    centres = np.random.default_rng([seed, 0x10CA7]).uniform((-60.0, -180.0), (60.0, 180.0), size=(k, 2))
    noise = np.random.default_rng([seed, split_salt]).normal(0.0, spread, size=(len(groups), 2))
    lat = np.clip(centres[groups, 0] + noise[:, 0], -90.0, 90.0)
    lon = (centres[groups, 1] + noise[:, 1] + 180.0) % 360.0 - 180.0
    return lat, lon
