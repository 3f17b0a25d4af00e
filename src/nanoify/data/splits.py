"""One rule for split names and for which split a command reads, shared by every data kind and command.

Names: a file or folder whose name starts with ``train`` is the training split, with ``val`` or ``dev`` the
validation split, with ``test`` the test split (``train2017``, ``train_1000.npz``, ``val2017``, ``dev.tsv``).

Which split:

- evaluation (``finetune``/``distill`` metrics, ``evaluate``, ``quantize --eval``, ``bench``): the split asked
  for when one is named; otherwise ``validation``, else ``test``. A set with train and test files only (TREC)
  is therefore evaluated on test by every command.
- calibration (``quantize --calib``): ``train``, else the evaluation split (recorded in the manifest: calibrating
  on the data you evaluate on flatters the result).
"""

from __future__ import annotations

from collections.abc import Collection

from ..errors import DataError

SPLITS = ("train", "validation", "test")
EVAL_ORDER = ("validation", "test")
CALIB_ORDER = ("train", "validation", "test")


def split_of(name: str) -> str | None:
    """The split a file or folder name belongs to (see module docstring), or None."""
    stem = name.lower().split(".", 1)[0]
    if stem.startswith("train"):
        return "train"
    if stem.startswith(("val", "dev")):
        return "validation"
    if stem.startswith("test"):
        return "test"
    return None


def pick_split(available: Collection[str] | None, wanted: str | None, purpose: str, where: str) -> str:
    """The split to read for ``purpose`` ("eval" or "calib"); ``available`` None means any split is served
    (a single file). A named split must exist."""
    order = EVAL_ORDER if purpose == "eval" else CALIB_ORDER
    if available is None:
        return wanted or order[0]
    if wanted:
        if wanted not in available:
            raise DataError(f"{where} has no {wanted!r} split (it has: {', '.join(sorted(available)) or 'none'}); "
                            "pick another split or add its files")
        return wanted
    for s in order:
        if s in available:
            return s
    raise DataError(f"{where} has none of the splits {', '.join(order)} (it has: "
                    f"{', '.join(sorted(available)) or 'none'}); name files train/validation/test")
