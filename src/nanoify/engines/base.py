"""The Engine contract: a context manager with ``input_spec()`` and ``infer(feed) -> outputs``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DataError, NanoifyError


class EngineUnavailable(NanoifyError):
    """The backend is not installed here, or cannot run this model."""


class Engine:
    """Base class: subclasses implement ``_load``, ``input_spec`` and ``infer``."""

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

    def input_spec(self) -> dict[str, tuple[str, list[Any]]]:
        """Input name → (dtype, shape with symbolic names for dynamic axes)."""
        raise NotImplementedError

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch. Inputs not in ``input_spec()`` are ignored; missing ones are an error."""
        raise NotImplementedError

    def _check_feed(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        spec = self.input_spec()
        missing = [k for k in spec if k not in feed]
        if missing:
            raise EngineUnavailable(f"{self.name} engine needs input(s) {', '.join(missing)}; got {', '.join(feed)}")
        limit = self.options.get("max_sequence")
        ids = feed.get("input_ids")
        if limit and ids is not None and ids.ndim == 2 and ids.shape[1] > limit:
            raise DataError(f"sequence length {ids.shape[1]} is longer than the model allows ({limit} positions); "
                            f"truncate the inputs to {limit} tokens (--max-length {limit})")
        return {k: feed[k] for k in spec}
