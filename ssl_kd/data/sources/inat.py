"""iNaturalist: COCO-style JSONs (`data.inat.train` / `data.inat.test`) under the data root, each listing image files
(relative to the root) with their location and date, and their species (`annotations[i].category_id`). Images are
decoded on access and resized to `data.image_size` (default 224), or with `data.transform` cropped as DynamicMLP's
RandomResizedCrop / CenterCrop protocol does (`large_image.py`); the location/date is the metadata DynamicMLP
fuses (`data.metadata`), carried here per split.

The reference (ylingfeng/DynamicMLP, dataset.py) reads the JSON with `json.loads(file)`, which fails, and derives
the class count from an always-true condition; here the file is read with `json.load`, and the class count comes
from the JSON's categories when they are 0..K-1, else from the largest label + 1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ssl_kd.data.config import DataConfig
from ssl_kd.data.containers import EncodedImageSet, FolderImageSet
from ssl_kd.data.metadata import RawMetadata, parse_coord, parse_date
from ssl_kd.data.sources.base import Source, SourceInfo, SourceSplits, register_source
from ssl_kd.errors import UserError

IMAGE_SIZE = 224


@register_source("inat")
class INaturalist(Source):
    def load(self, cfg: DataConfig) -> SourceSplits:
        root = cfg.data_root()
        size = (cfg.transform.out_size(cfg.image_size) if cfg.transform else cfg.image_size or IMAGE_SIZE,) * 2
        kind = EncodedImageSet if cfg.transform is not None else FolderImageSet  # crops of large images, or whole
        sets, metas, names = {}, {}, None
        for split, file in (("train", cfg.inat.train), ("test", cfg.inat.test)):
            files, labels, meta, classes = read_inat_json(root / file, root)
            if not files:
                raise UserError(f"{root / file}: the JSON lists no images.")
            sets[split], metas[split] = kind(files, labels, size, classes), meta
            if cfg.transform is not None:
                sets[split].strict = cfg.transform.strict
            names = names or classes
        num_classes = len(names) if names else int(max(s.targets.max() for s in sets.values()) + 1)
        for s in sets.values():
            s.classes = names
        return SourceSplits(**sets, num_classes=num_classes, classes=names, source=str(root), metadata=metas)

    def info(self, cfg: DataConfig) -> SourceInfo:
        splits = self.load(cfg)  # the JSONs are the listing: reading them is the cheapest check
        return SourceInfo(
            num_train=len(splits.train), num_test=len(splits.test), num_unlabeled=0, num_classes=splits.num_classes,
            image_size=splits.train.image_shape[0], source=splits.source,
        )  # fmt: skip


def read_inat_json(json_path: Path, root: Path) -> tuple[list[str], np.ndarray, RawMetadata, list[str] | None]:
    """(image files, labels, metadata, class names or None) from an iNaturalist COCO-style JSON.

    `images[i]` (file_name relative to `root`, latitude, longitude, date) pairs with `annotations[i]` (category_id)
    by position, as in the reference; when both carry ids (`images[i].id`, `annotations[i].image_id`) they must
    agree, so a reordered file is an error instead of silently wrong labels."""
    where = str(json_path)
    if not json_path.is_file():
        raise UserError(f"data.inat: no such file {json_path} (an iNaturalist JSON under data.root {root}).")
    try:
        with open(json_path, encoding="utf-8") as f:
            obj = json.load(f)  # the reference's json.loads(file handle) raises here
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: not a readable JSON file ({e}).") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise UserError(f"{where}: expected an object with lists `images` and `annotations` (iNaturalist format).")
    images, anns = obj["images"], obj.get("annotations")
    if not isinstance(anns, list) or len(anns) != len(images):
        n = len(anns) if isinstance(anns, list) else "no"
        raise UserError(f"{where}: {len(images)} images but {n} annotations; they pair by position.")
    files, labels, meta = [], np.zeros(len(images), np.int64), RawMetadata.empty(len(images), where)
    for i, (img, ann) in enumerate(zip(images, anns)):
        at = f"{where}, images[{i}]"
        if not isinstance(img, dict) or "file_name" not in img:
            raise UserError(f"{at}: has no file_name.")
        if not isinstance(ann, dict) or not isinstance(ann.get("category_id"), int) or ann["category_id"] < 0:
            raise UserError(f"{where}, annotations[{i}]: category_id must be a non-negative integer.")
        if "id" in img and "image_id" in ann and img["id"] != ann["image_id"]:
            raise UserError(
                f"{where}: annotations[{i}].image_id = {ann['image_id']} but images[{i}].id = {img['id']}; "
                f"the two lists must be in the same order.")  # fmt: skip
        f = root / img["file_name"]
        files.append(str(f))
        labels[i] = ann["category_id"]
        meta.lat[i] = parse_coord(img.get("latitude"), 90.0, "latitude", at)
        meta.lon[i] = parse_coord(img.get("longitude"), 180.0, "longitude", at)
        meta.doy[i], meta.days[i] = parse_date(img.get("date"), at)
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise UserError(f"{where}: {len(missing)} image file(s) not found, e.g. {missing[0]} (file_name is relative "
                        f"to data.root {root}).")  # fmt: skip
    cats = obj.get("categories")
    classes = None
    if isinstance(cats, list) and cats and all(isinstance(c, dict) and "id" in c for c in cats):
        by_id = {int(c["id"]): str(c.get("name", c["id"])) for c in cats}
        if sorted(by_id) == list(range(len(by_id))):
            classes = [by_id[k] for k in range(len(by_id))]
    return files, labels, meta, classes
