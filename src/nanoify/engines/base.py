"""The Engine contract: a context manager with ``input_spec()`` and ``infer(feed) -> outputs``.

    with open_engine("onnxruntime", "model.onnx") as eng:
        outputs = eng.infer(feed)          # every named output of the model

A feed is checked against the engine's *own* input spec before it runs: every input present, the right rank,
integer or float as declared, fixed axes at their size, and named axes within the limits the model states
(``max_dims``, e.g. ``{"sequence": 512}`` positions). A shape the model cannot take is a one-line DataError,
never a crash inside the runtime.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError, NanoifyError


class EngineUnavailable(NanoifyError):
    """The backend is not installed here, or cannot run this model."""


Spec = dict[str, tuple[str, list[Any]]]
FLOAT_WIDTHS = {"float": np.float32, "float32": np.float32, "float16": np.float16, "double": np.float64,
                "float64": np.float64}


def check_feed(spec: Spec, feed: dict[str, np.ndarray], max_dims: dict[str, int] | None = None,
               engine: str = "engine") -> dict[str, np.ndarray]:
    """The inputs of ``feed`` the spec names, checked (see module docstring)."""
    missing = [k for k in spec if k not in feed]
    if missing:
        raise EngineUnavailable(f"{engine} engine needs input(s) {', '.join(missing)}; got {', '.join(feed) or 'none'}")
    out = {}
    for name, (dtype, shape) in spec.items():
        x = np.asarray(feed[name])
        if len(shape) and x.ndim != len(shape):
            raise DataError(f"input {name!r} has rank {x.ndim} {list(x.shape)} but the model takes rank {len(shape)} "
                            f"{shape}; preprocess the data for this model")
        want_int = any(t in str(dtype).lower() for t in ("int", "bool"))
        if want_int != (x.dtype.kind in "iub"):
            raise DataError(f"input {name!r} is {x.dtype} but the model takes {dtype}")
        if not want_int:  # a float16 (or float64) model gets its own float width
            want = FLOAT_WIDTHS.get(str(dtype).lower().replace("tensor(", "").rstrip(")"))
            if want is not None and x.dtype != want:
                x = x.astype(want)
        for axis, (d, got) in enumerate(zip(shape, x.shape, strict=False)):
            if isinstance(d, int) and d > 0 and d != got:
                raise DataError(f"input {name!r} axis {axis} is {got} but the model was built for {d}; resize the "
                                f"inputs to {shape} (preprocess.json size) or export with a dynamic axis")
            limit = (max_dims or {}).get(d) if isinstance(d, str) else None
            if limit and got > limit:
                if d == "sequence":
                    raise DataError(f"sequence length {got} is longer than the model allows ({limit} positions); "
                                    f"truncate the inputs to {limit} tokens (--max-length {limit})")
                raise DataError(f"input {name!r} axis {d} is {got}, more than the model allows ({limit})")
        out[name] = x
    return out


class Engine:
    """Base class: subclasses implement ``_load``, ``input_spec`` and ``infer``. Options every engine takes:
    ``max_dims`` (limits of named axes), ``threads``, ``device``, ``dtype``."""

    name = "engine"

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        self.options = options
        self._loaded = False

    def __enter__(self) -> Engine:
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Release the model; the engine can be entered again."""
        self._loaded = False

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise EngineUnavailable(f"{self.name} engine used outside its `with` block; open it with "
                                    "`with open_engine(...) as e:`")

    def input_spec(self) -> Spec:
        """Input name → (dtype, shape with symbolic names for dynamic axes): the ``_spec`` ``_load`` set, unless
        an engine reads it otherwise."""
        self._require_loaded()
        return self._spec

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; every named output. Inputs not in ``input_spec()`` are ignored; missing ones are an error."""
        raise NotImplementedError

    def _check_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._require_loaded()
        return check_feed(self.input_spec(), feed, self.options.get("max_dims"), self.name)


Shape = tuple[int, ...]


def profile_shapes(spec: Spec, axes: dict[str, tuple[int, int, int]]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shape per input for an optimisation profile (TensorRT) from the engine's own input spec:
    fixed axes keep their size; a named axis takes its (min, opt, max) from ``axes`` (an unnamed leading axis is
    ``batch``). A dynamic axis with no range is a one-line error."""
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, (_, shape) in spec.items():
        lo, opt, hi = [], [], []
        for i, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                lo.append(d)
                opt.append(d)
                hi.append(d)
                continue
            key = d if isinstance(d, str) and d in axes else ("batch" if i == 0 else None)
            if key is None or key not in axes:
                raise DataError(f"input {name!r} axis {i} ({d!r}) is dynamic and no profile range was given for it")
            a, b, c = axes[key]
            lo.append(a)
            opt.append(b)
            hi.append(c)
        out[name] = (tuple(lo), tuple(opt), tuple(hi))
    return out
