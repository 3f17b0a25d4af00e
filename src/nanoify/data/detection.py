"""Detection data: YOLO-format sets, COCO-format JSON annotations, and plain image folders.

- YOLO format: ``images/<split>/*.jpg`` with ``labels/<split>/<image>.txt`` holding ``class cx cy w h`` per line,
  normalised to 0..1 (an image without a label file has no objects), and ``names.txt`` (one class name a line,
  in id order) beside ``images/``.
- COCO format: ``annotations/instances_<split>.json`` (``bbox`` = x, y, w, h in pixels) with the images in
  ``images/<split>/`` or ``<split>/``; categories are numbered 0.. in the order of their COCO ids.
- A plain folder of images: unlabelled (calibration; evaluation then scores agreement with the FP32 model).

Split folders follow :mod:`nanoify.data.splits` (``train2017`` is train, ``val2017`` validation). Boxes are
returned in the original image's pixels as x1, y1, x2, y2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .images import IMAGE_SUFFIXES, FileSource
from .splits import split_of


@dataclass
class DetSplit:
    """One split: images, their sizes (H, W), and per image boxes (k×4 xyxy pixels) and class ids — or None
    when unlabelled; class names."""

    source: FileSource
    sizes: list[tuple[int, int]]
    boxes: list[np.ndarray] | None
    classes: list[np.ndarray] | None
    names: list[str] | None
    where: str
    provenance: dict[str, Any] = field(default_factory=dict)


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) as the image is meant to be seen (EXIF rotation applied), from its header only."""

    try:
        with Image.open(path) as im:
            orientation = im.getexif().get(0x0112, 1)
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} does not decode ({type(e).__name__}); remove or replace it") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _split_dirs(folder: Path) -> dict[str, Path]:
    out: dict[str, list[Path]] = {}
    for c in sorted(folder.iterdir()):
        s = split_of(c.name)
        if c.is_dir() and s is not None:
            out.setdefault(s, []).append(c)
    for s, cands in out.items():
        if len(cands) > 1:
            raise DataError(f"{folder} has several {s} folders ({', '.join(c.name for c in cands)}); keep one")
    return {s: c[0] for s, c in out.items()}


def _names(root: Path) -> list[str] | None:
    for cand in (root / "names.txt", root / "classes.txt"):
        if cand.is_file():
            return [ln.strip() for ln in cand.read_text().splitlines() if ln.strip()]
    return None


def detection_splits(spec: str) -> tuple[str, dict[str, Path] | None]:
    """(layout, split → folder or annotation file); None: a plain image folder serving every split."""
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise DataError(f"detection data {root} is not a folder; pass a YOLO-format or COCO-format set, or a folder "
                        "of images")
    ann = root / "annotations"
    if ann.is_dir() and list(ann.glob("instances_*.json")):
        found = {}
        for f in sorted(ann.glob("instances_*.json")):
            s = split_of(f.stem.removeprefix("instances_"))
            if s:
                found[s] = f
        return "coco", found
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "yolo", _split_dirs(root / "images")
    if (root / "images").is_dir():
        dirs = _split_dirs(root / "images")
        return "images", dirs or None
    dirs = _split_dirs(root)
    return "images", dirs or None


def load_detection(spec: str, split: str | None) -> DetSplit:
    """The images (and boxes, when the set has them) of one split; ``split`` None for a plain image folder."""
    root = Path(spec).expanduser()
    layout, splits = detection_splits(spec)
    if layout == "coco":
        assert splits is not None and split is not None
        return _load_coco(root, splits[split], split)
    folder = root if splits is None else splits[split]
    if splits is None and not _images(folder) and (root / "images").is_dir():
        folder = root / "images"  # images/ with no split folders inside: one folder serves every split
    paths = _images(folder)
    if not paths:
        raise DataError(f"{folder} holds no images")
    sizes = [image_size(p) for p in paths]
    if layout != "yolo":
        return DetSplit(FileSource(paths), sizes, None, None, None, str(folder),
                        {"folder": str(folder), "images": len(paths), "layout": "unlabelled images"})
    labels_dir = root / "labels" / folder.name
    names = _names(root)
    boxes, classes, n_obj = [], [], 0
    for p, (h, w) in zip(paths, sizes, strict=True):
        f = labels_dir / (p.stem + ".txt")
        rows = []
        if f.is_file():
            for i, line in enumerate(f.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                parts = line.split()
                try:
                    vals = [float(v) for v in parts[:5]]
                    if len(parts) < 5:
                        raise ValueError
                except ValueError:
                    raise DataError(f"{f}:{i}: expected 'class cx cy w h' (normalised), got {line[:60]!r}") from None
                rows.append(vals)
        a = np.asarray(rows, dtype=np.float64).reshape(-1, 5)
        cls = a[:, 0].astype(np.int64)
        if names is not None and len(cls) and (cls.min() < 0 or cls.max() >= len(names)):
            raise DataError(f"{f} has class {int(cls.max())} but names.txt lists {len(names)} classes")
        cx, cy, bw, bh = a[:, 1] * w, a[:, 2] * h, a[:, 3] * w, a[:, 4] * h
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1).astype(np.float32))
        classes.append(cls)
        n_obj += len(cls)
    return DetSplit(FileSource(paths), sizes, boxes, classes, names, str(folder),
                    {"folder": str(folder), "images": len(paths), "objects": n_obj, "layout": "yolo"})


def _load_coco(root: Path, ann_file: Path, split: str) -> DetSplit:
    try:
        d = json.loads(ann_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{ann_file} is not readable COCO JSON ({e})") from None
    stem = ann_file.stem.removeprefix("instances_")
    folder = next((c for c in (root / "images" / stem, root / stem) if c.is_dir()), None)
    if folder is None:
        raise DataError(f"the images of {ann_file.name} are neither in {root / 'images' / stem} nor {root / stem}")
    cats = sorted(d.get("categories", []), key=lambda c: c["id"])
    cat_index = {c["id"]: i for i, c in enumerate(cats)}
    per_image: dict[int, list[Any]] = {}
    for a in d.get("annotations", []):
        if a.get("iscrowd"):
            continue  # crowd regions are ignored by COCO's own evaluation of detections
        per_image.setdefault(a["image_id"], []).append(a)
    paths, sizes, boxes, classes = [], [], [], []
    for im in sorted(d.get("images", []), key=lambda x: x["file_name"]):
        p = folder / im["file_name"]
        if not p.is_file():
            raise DataError(f"{ann_file.name} names {im['file_name']}, which is not in {folder}")
        anns = per_image.get(im["id"], [])
        b = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        paths.append(p)
        sizes.append((int(im["height"]), int(im["width"])))
        boxes.append(np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1))
        classes.append(np.asarray([cat_index[a["category_id"]] for a in anns], dtype=np.int64))
    return DetSplit(FileSource(paths), sizes, boxes, classes, [c["name"] for c in cats], str(folder),
                    {"annotations": str(ann_file), "images": len(paths), "layout": "coco", "split": split})
