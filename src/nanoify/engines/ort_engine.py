"""ONNX Runtime engine: CPU by default; CUDA or TensorRT execution providers when installed."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError, first_line
from ..runtime.ort import ort_session
from .base import Engine, EngineUnavailable


class OrtEngine(Engine):
    """An ``.onnx`` file in an ONNX Runtime session (options: ``threads``, ``providers``, ``max_dims``)."""

    name = "onnxruntime"

    def _load(self) -> None:
        import onnxruntime as ort

        providers = self.options.get("providers") or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise EngineUnavailable(f"ONNX Runtime here has no {', '.join(missing)} "
                                    f"(available: {', '.join(ort.get_available_providers())})")
        self.session = ort_session(self.path, self.options.get("threads"), providers)
        self._inputs = {i.name: i for i in self.session.get_inputs()}
        self._outputs = [o.name for o in self.session.get_outputs()]

    def close(self) -> None:
        self.__dict__.pop("session", None)
        super().close()

    def input_spec(self) -> dict[str, tuple[str, list[Any]]]:
        self._require_loaded()
        return {n: (i.type.replace("tensor(", "").rstrip(")"), list(i.shape)) for n, i in self._inputs.items()}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self._check_feed(feed)
        try:
            outs = self.session.run(self._outputs, feed)
        except Exception as e:  # noqa: BLE001 - a runtime failure inside the graph becomes one line
            first = first_line(e)
            raise ModelError(f"ONNX Runtime failed running {self.path}: {first}") from None
        return dict(zip(self._outputs, outs, strict=True))
