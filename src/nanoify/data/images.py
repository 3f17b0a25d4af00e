"""Images: where they come from (``.npz`` arrays, class-per-folder trees, plain folders) and how a model wants
them (``preprocess.json``).

Data specs:
- a ``.npz`` file with ``images`` (N×H×W×3 uint8, RGB) and optionally ``labels`` (N integers) and ``classes``
  (names in id order): every split reads it;
- a folder holding ``.npz`` files or split folders, named by the split rule of :mod:`nanoify.data.splits`
  (``train_1000.npz``, ``test.npz``; ``train/``, ``val/``); a split folder holds class folders or images;
- a class-per-folder tree (ImageNet layout: ``<class>/<image>``): labelled, every split reads it;
- a folder of images: unlabelled (calibration; evaluation then scores agreement with the FP32 model).

Images are decoded and resized by Pillow. Preprocessing is data, saved beside the model as
``preprocess.json`` with exactly the keys of :class:`Preprocess`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from .splits import split_of

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".gif")
PREPROCESS_FILE = "preprocess.json"
RESIZES = ("stretch", "letterbox", "center-crop")
INTERPOLATIONS = ("nearest", "bilinear", "area", "bicubic")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: resize to ``size`` (H, W) by ``resize`` with ``interpolation``
    (letterbox pads with ``pad``), order the ``channels``, then pixels × ``scale`` − ``mean``, ÷ ``std``, in
    ``layout``; ``mean`` and ``std`` are in the model's channel order. ``size`` None means "the model's own
    fixed input size" (filled in when the model is known).

    ``center-crop`` scales the image so it covers ``size`` and cuts the centre out.
    """

    size: tuple[int, int] | None = None
    resize: str = "stretch"
    pad: float = 114
    interpolation: str = "bilinear"
    channels: str = "rgb"
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "nchw"

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "preprocess") -> Preprocess:
        """Validate a preprocessing dict; any unknown key or bad value is a one-line DataError."""
        if not isinstance(d, dict):
            raise DataError(f"{where} must hold a JSON object with keys {', '.join(cls.__dataclass_fields__)}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise DataError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: "
                            f"{', '.join(cls.__dataclass_fields__)}")
        kw: dict[str, Any] = dict(d)
        try:
            if kw.get("size") is not None:
                size = kw["size"]
                size = [size, size] if isinstance(size, int) else list(size)
                if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
                    raise ValueError("size must be [H, W] of positive integers")
                kw["size"] = (size[0], size[1])
            for key in ("mean", "std"):
                if key in kw:
                    v = [float(x) for x in kw[key]]
                    if len(v) != 3:
                        raise ValueError(f"{key} must hold 3 numbers")
                    if key == "std" and any(x == 0 for x in v):
                        raise ValueError("std must not be 0")
                    kw[key] = tuple(v)
            for key in ("scale", "pad"):
                if key in kw:
                    kw[key] = float(kw[key])
        except (TypeError, ValueError) as e:
            raise DataError(f"{where}: {e}") from None
        choices = {"resize": RESIZES, "interpolation": INTERPOLATIONS, "channels": ("rgb", "bgr"),
                   "layout": ("nchw", "nhwc")}
        for key, allowed in choices.items():
            if key in kw and kw[key] not in allowed:
                raise DataError(f"{where}: {key} {kw[key]!r} is not one of {', '.join(allowed)}")
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path) -> Preprocess:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"preprocessing file {p} does not exist")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{p} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
        return cls.from_dict(d, str(p))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) or (H, W, C) of one image, by layout."""
        assert self.size is not None
        h, w = self.size
        return (3, h, w) if self.layout == "nchw" else (h, w, 3)

    def geometry(self, h: int, w: int) -> dict[str, float]:
        """How an h×w image maps onto the model's input: input = original × scale + pad (per axis). Boxes map
        back with original = (input − pad) / scale."""
        assert self.size is not None
        th, tw = self.size
        if (h, w) == (th, tw) or self.resize == "stretch":
            return {"scale_x": tw / w, "scale_y": th / h, "pad_x": 0.0, "pad_y": 0.0, "height": h, "width": w}
        if self.resize == "letterbox":
            r = min(th / h, tw / w)
            nh, nw = max(1, round(h * r)), max(1, round(w * r))
            return {"scale_x": nw / w, "scale_y": nh / h, "pad_x": float((tw - nw) // 2),
                    "pad_y": float((th - nh) // 2), "height": h, "width": w}
        r = max(th / h, tw / w)  # center-crop: cover, then cut the centre
        nh, nw = max(th, round(h * r)), max(tw, round(w * r))
        return {"scale_x": nw / w, "scale_y": nh / h, "pad_x": -float((nw - tw) // 2),
                "pad_y": -float((nh - th) // 2), "height": h, "width": w}

    def resize_one(self, img: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """One RGB uint8 H×W×3 image resized to ``size``; also the transform (:meth:`geometry`) that maps input
        pixels back to the original image (detectors need it)."""

        assert self.size is not None
        th, tw = self.size
        h, w = img.shape[:2]
        info = self.geometry(h, w)
        if (h, w) == (th, tw):
            return img, info
        resample = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "area": Image.BOX,
                    "bicubic": Image.BICUBIC}[self.interpolation]
        pil = Image.fromarray(img)
        if self.resize == "stretch":
            return np.asarray(pil.resize((tw, th), resample)), info
        nh, nw = round(h * info["scale_y"]), round(w * info["scale_x"])
        resized = np.asarray(pil.resize((nw, nh), resample))
        if self.resize == "letterbox":
            out = np.full((th, tw, 3), int(round(self.pad)), dtype=np.uint8)
            top, left = int(info["pad_y"]), int(info["pad_x"])
            out[top:top + nh, left:left + nw] = resized
            return out, info
        top, left = -int(info["pad_y"]), -int(info["pad_x"])
        return resized[top:top + th, left:left + tw], info

    def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """A float32 batch in the model's layout from RGB uint8 images of any size."""
        assert self.size is not None
        if all(im.shape[:2] == tuple(self.size) for im in images):
            x = np.stack(images)
        else:
            x = np.stack([self.resize_one(im)[0] for im in images])
        if self.channels == "bgr":
            x = x[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        y = (x.astype(np.float32) * np.float32(self.scale) - mean) / std
        if self.layout == "nchw":
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y, dtype=np.float32)


class ImageSource:
    """A sequence of images decoded on demand (RGB uint8 H×W×3), so a large set never sits in memory."""

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, idx: Sequence[int]) -> list[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def name(self, i: int) -> str:
        return str(i)


@dataclass
class ArraySource(ImageSource):
    """Images held in one uint8 array (an ``.npz``)."""

    images: np.ndarray
    where: str = ""

    def __len__(self) -> int:
        return len(self.images)

    def load(self, idx: Sequence[int]) -> list[np.ndarray]:
        return [self.images[i] for i in idx]

    def name(self, i: int) -> str:
        return f"{self.where}[{i}]"


@dataclass
class FileSource(ImageSource):
    """Image files decoded by Pillow; a file that does not decode is a DataError naming it."""

    paths: list[Path]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, idx: Sequence[int]) -> list[np.ndarray]:
        return [decode_image(self.paths[i]) for i in idx]

    def name(self, i: int) -> str:
        return str(self.paths[i])


def decode_image(path: Path) -> np.ndarray:
    """RGB uint8 H×W×3 from an image file (EXIF rotation applied, as a phone photo is meant to be seen)."""

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image {path} does not decode ({type(e).__name__}); remove or replace it") from None


@dataclass
class ImageSplit:
    """One split: its images, raw labels (ints or class-folder names; None when unlabelled), class names."""

    source: ImageSource
    labels: list[Any] | None
    classes: list[str] | None
    where: str
    provenance: dict[str, Any] = field(default_factory=dict)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and _images_in(p))


def _read_npz(path: Path) -> ImageSplit:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z.files:
                raise DataError(f"{path} has no 'images' array (it has: {', '.join(z.files)}); save N×H×W×3 uint8 "
                                "images under 'images'")
            images = z["images"]
            labels = z["labels"] if "labels" in z.files else None
            classes = [str(c) for c in z["classes"]] if "classes" in z.files else None
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not a readable .npz ({e})") from None
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise DataError(f"{path}: 'images' must be N×H×W×3 uint8, got {images.dtype} {tuple(images.shape)}")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{path}: {len(labels)} labels for {len(images)} images")
    return ImageSplit(ArraySource(images, path.name), None if labels is None else [int(v) for v in labels], classes,
                      str(path), {"file": str(path), "rows": len(images)})


def _read_folder(folder: Path) -> ImageSplit:
    classes = _class_dirs(folder)
    if classes:
        paths, labels = [], []
        for c in classes:
            for p in _images_in(c):
                paths.append(p)
                labels.append(c.name)
        return ImageSplit(FileSource(paths), labels, [c.name for c in classes], str(folder),
                          {"folder": str(folder), "rows": len(paths), "layout": "class folders"})
    paths = _images_in(folder)
    if not paths:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES[:4])} …) and no class folders of them")
    return ImageSplit(FileSource(paths), None, None, str(folder),
                      {"folder": str(folder), "rows": len(paths), "layout": "unlabelled images"})


def image_splits(spec: str) -> dict[str, Path] | None:
    """Split name → file or folder for a data spec, or None when the spec serves every split."""
    p = Path(spec).expanduser()
    if not p.exists():
        raise DataError(f"data path {p} does not exist; pass an .npz file or a folder of images")
    if p.is_file():
        return None
    found: dict[str, list[Path]] = {}
    for c in sorted(p.iterdir()):
        s = split_of(c.name)
        if s is not None and ((c.is_file() and c.suffix == ".npz") or c.is_dir()):
            found.setdefault(s, []).append(c)
    if not found and (p / "images").is_dir():  # YOLO/COCO layout: images/<split>/
        return image_splits(str(p / "images"))
    if not found:
        return None
    out = {}
    for s, cands in found.items():
        if len(cands) > 1:
            raise DataError(f"{p} has several {s} sets ({', '.join(c.name for c in cands)}); keep one")
        out[s] = cands[0]
    return out


def load_images(spec: str, split: str) -> ImageSplit:
    """The images of one split (the caller picks the split with :func:`nanoify.data.splits.pick_split`)."""
    p = Path(spec).expanduser()
    splits = image_splits(spec)
    target = p if splits is None else splits[split]
    if target.is_file():
        if target.suffix.lower() != ".npz":
            raise DataError(f"{target} is not an .npz file or a folder of images")
        return _read_npz(target)
    npz = sorted(target.glob("*.npz"))
    if npz and not _class_dirs(target) and not _images_in(target):
        if len(npz) > 1:
            raise DataError(f"{target} holds several .npz files ({', '.join(q.name for q in npz)}) and none is named "
                            "by a split (train…, val…, test…); name them so")
        return _read_npz(npz[0])
    return _read_folder(target)


def is_image_data(spec: str | None) -> bool:
    """True when a data spec points at images (an .npz, or a folder whose contents are images/.npz)."""
    if not spec or spec.startswith("hf:"):
        return False
    p = Path(spec).expanduser()
    if p.is_file():
        return p.suffix.lower() == ".npz" or p.suffix.lower() in IMAGE_SUFFIXES
    if not p.is_dir():
        return False
    if (p / "images").is_dir() or (p / "annotations").is_dir():  # YOLO- or COCO-format detection sets
        return True
    for c in p.iterdir():
        if c.is_file() and (c.suffix.lower() == ".npz" or c.suffix.lower() in IMAGE_SUFFIXES):
            return True
        if c.is_dir() and (_images_in(c) or list(c.glob("*.npz")) or _class_dirs(c)):
            return True
    return False
