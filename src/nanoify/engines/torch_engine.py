"""PyTorch eager engine: FP32 or BF16, CUDA when present (``device='cuda'``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Engine, EngineUnavailable


class TorchEngine(Engine):
    """A Hugging Face classifier folder run in PyTorch eager mode."""

    name = "torch"

    def _load(self) -> None:
        import torch

        from ..models.load import load_classifier

        dtype = self.options.get("dtype", "fp32")
        device = self.options.get("device", "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineUnavailable("torch engine: CUDA was asked for but torch.cuda.is_available() is False")
        self.model, self.tokenizer, self.label_map = load_classifier(self.path)
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        if dtype not in dtypes:
            raise EngineUnavailable(f"torch engine: unknown dtype {dtype!r}; use fp32, bf16 or fp16")
        self.model.to(device=device, dtype=dtypes[dtype])
        self.device = device
        self.options.setdefault("max_sequence", int(getattr(self.model.config, "max_position_embeddings", 0)) or None)

    def close(self) -> None:
        self.__dict__.pop("model", None)
        super().close()

    def input_spec(self) -> dict[str, tuple[str, list[Any]]]:
        return {k: ("int64", ["batch", "sequence"]) for k in ("input_ids", "attention_mask", "token_type_ids")}

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        feed = self._check_feed(feed)
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(v).to(self.device) for k, v in feed.items()}).logits
        return {"logits": out.float().cpu().numpy()}
