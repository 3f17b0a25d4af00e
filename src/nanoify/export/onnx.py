"""Export a classifier to ONNX (dynamic batch and sequence), fuse it, and check both against PyTorch.

Measured on this project's machine: exporting with SDPA attention or the dynamo exporter leaves the
attention unfused (ONNX Runtime's transformer optimizer does not recognise the pattern) and runs about
1.3× slower, so we export with eager attention through the TorchScript exporter, passing inputs as
keywords (positional inputs collide with ``use_cache`` on transformers 5).
"""

from __future__ import annotations

import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch
import transformers
from onnxruntime.transformers.optimizer import MODEL_TYPES, optimize_model
from packaging.version import Version  # a dependency of transformers and onnxruntime alike

from ..artifacts import MANIFEST, atomic_dir, manifest, write_json
from ..data.text import collate, encode_texts
from ..errors import ConfigError
from ..models.load import load_classifier, max_tokens, save_classifier
from ..runtime.ort import ort_session
from ..tasks.base import synthetic_feed
from ..tasks.text import TextKind
from .attention import fuse_biased_attention
from .errors import ExportError, unsupported
from .module import export_module, export_module_folder

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOLERANCE = 1e-4  # max |logit difference| against PyTorch FP32
MODEL_FILE, FUSED_FILE = "model.onnx", "model.fused.onnx"


def _text_spec(model: Any) -> dict[str, tuple[str, list[Any]]]:
    """The text inputs the classifier's forward takes (MPNet/DistilBERT have no token_type_ids)."""

    params = inspect.signature(model.forward).parameters
    return {k: ("int64", ["batch", "sequence"]) for k in INPUTS if k in params}


def _dummy(model: Any, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token batches built from the model's own input spec (Polygraphy-style), one row padded so the
    mask path is exercised."""

    vocab = int(model.config.vocab_size)
    ranges = {"input_ids": (min(1000, vocab - 1) if vocab > 2000 else 1, vocab), "attention_mask": (1, 2),
              "token_type_ids": (0, 1)}
    feed = synthetic_feed(_text_spec(model), {"batch": batch, "sequence": seq}, ranges, seed)
    if batch > 1 and "attention_mask" in feed:
        feed["attention_mask"][-1, seq // 2:] = 0
    return feed


def _torch_logits(model: Any, feed: dict[str, np.ndarray]) -> np.ndarray:
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.float().numpy()


def export_model(model: Any, path: str | Path, opset: int = 17, max_length: int = 128) -> None:
    """Write ``model`` (a torch sequence classifier) to ``path`` with dynamic batch and sequence axes."""

    model.eval()
    feed = _dummy(model, 2, min(16, max_length))
    kwargs = {k: torch.from_numpy(v) for k, v in feed.items()}
    axes = {k: {0: "batch", 1: "sequence"} for k in feed}
    axes["logits"] = {0: "batch"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (), str(path), kwargs=kwargs, input_names=list(feed),
                              output_names=["logits"], dynamic_axes=axes, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
    except Exception as e:  # noqa: BLE001
        raise unsupported(e, opset) from None


def fuse(path: str | Path, out: str | Path, num_heads: int, hidden: int, model_type: str = "bert") -> dict[str, int]:
    """ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu, …); returns fused-op counts."""

    # encoders ONNX Runtime has no fusion table for (MPNet, DistilBERT, RoBERTa, ...) share BERT's patterns
    # (SkipLayerNorm, BiasGelu, and Attention where the score computation matches)
    known = model_type in MODEL_TYPES
    opt = optimize_model(str(path), model_type=model_type if known else "bert", num_heads=num_heads,
                         hidden_size=hidden, opt_level=1)
    stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    if not stats.get("Attention"):
        # attention with a second additive score term (MPNet's relative position bias): see export/attention.py

        n = fuse_biased_attention(opt, num_heads)
        if n:
            stats["MultiHeadAttention"] = n
    opt.save_model_to_file(str(out))
    return stats


def _unfused_reason(transformers_version: str = transformers.__version__,
                    ort_version: str = onnxruntime.__version__) -> str:
    """Why ONNX Runtime's optimizer may have left attention unfused, with what to do (for the installed
    versions, or the ones given)."""
    if Version(transformers_version).major >= 5 and Version(ort_version).release < (1, 32):
        # measured: ORT 1.30 fuses none of transformers 5's eager attention blocks (its mask is built as
        # Where/Expand/And), 1.32 fuses all — ORT 1.32 added that pattern to fusion_attention.py
        return (f"onnxruntime {ort_version} predates the attention-mask pattern of transformers 5; "
                "upgrade to onnxruntime>=1.32 and export again")
    return ("the exported attention pattern was not recognised; it depends on the model type and the torch and "
            "transformers versions — fusion was verified for BERT and MPNet with torch 2.13 + transformers 5.24 "
            "(and 5.17) + onnxruntime 1.32")


def validate(model: Any, onnx_path: str | Path, feeds: list[dict[str, np.ndarray]],
             tolerance: float = TOLERANCE) -> float:
    """Max |logit difference| between PyTorch and ONNX Runtime over ``feeds``; ExportError above tolerance."""
    sess = ort_session(onnx_path)
    names = {i.name for i in sess.get_inputs()}
    worst = 0.0
    for feed in feeds:
        want = _torch_logits(model, feed)
        got = sess.run(["logits"], {k: v for k, v in feed.items() if k in names})[0]
        worst = max(worst, float(np.abs(want - got).max()))
    if worst > tolerance:
        raise ExportError(f"{Path(onnx_path).name} disagrees with PyTorch: max |Δlogit| {worst:.2e} > {tolerance:g}")
    return worst


def validation_feeds(model: Any, tok: Any = None, texts: list[str] | None = None,
                     lengths: tuple[int, ...] = (8, 32, 128)) -> list[dict[str, np.ndarray]]:
    """Random token batches at several sequence lengths, plus real sentences when given."""

    limit = max_tokens(model.config)
    feeds = [_dummy(model, b, min(n, limit), seed=n) for n in lengths for b in (1, 3)]
    if tok is not None and texts:
        ids = encode_texts(tok, texts[:16], min(128, limit))
        names = _text_spec(model)
        feeds.append({k: v for k, v in collate(ids, int(tok.pad_token_id or 0)).items() if k in names})
    return feeds


def export(model: Any, out: str | Path, opset: int = 17, texts: list[str] | None = None,
           fuse_graph: bool = True, **kwargs: Any) -> dict[str, Any]:
    """``nanoify export``: a Hugging Face text classifier folder, a torch-module folder (``module.json``) or a
    live ``torch.nn.Module`` (with ``example_input=``; see :func:`nanoify.export.module.export_module`) to ONNX,
    validated against PyTorch and written atomically with what it needs to run (tokenizer, or preprocessing and
    labels)."""
    if not isinstance(model, str | Path):
        return export_module(model, out, opset=opset, **kwargs)
    if (Path(model) / "module.json").is_file():
        return export_module_folder(model, out, opset=opset, **kwargs)
    if kwargs:
        raise ConfigError(f"option(s) {', '.join(kwargs)} apply to PyTorch image models, not to {model}")
    return export_text(model, out, opset, texts, fuse_graph)


def export_text(model_dir: str | Path, out: str | Path, opset: int = 17, texts: list[str] | None = None,
                fuse_graph: bool = True) -> dict[str, Any]:
    """``nanoify export``: ONNX + fused ONNX + tokenizer + label map + manifest, validated, written atomically."""

    model, tok, label_map = load_classifier(str(model_dir))
    model.float().eval()
    cfg = model.config
    feeds = validation_feeds(model, tok, texts)
    with atomic_dir(out) as tmp:
        export_model(model, tmp / MODEL_FILE, opset)
        checks = {MODEL_FILE: validate(model, tmp / MODEL_FILE, feeds)}
        fused_ops: dict[str, int] = {}
        if fuse_graph:
            fused_ops = fuse(tmp / MODEL_FILE, tmp / FUSED_FILE, cfg.num_attention_heads, cfg.hidden_size,
                             model_type=cfg.model_type)
            checks[FUSED_FILE] = validate(model, tmp / FUSED_FILE, feeds)
        warns = []
        attn = fused_ops.get("Attention", 0) + fused_ops.get("MultiHeadAttention", 0)
        if fuse_graph and attn < cfg.num_hidden_layers:
            why = _unfused_reason()
            warns.append(f"ONNX Runtime fused {attn} of {cfg.num_hidden_layers} attention "
                         f"blocks; the fused graph is correct but slower ({why})")
            log.warning(warns[-1])
        save_classifier(model, tok, label_map, tmp / "hf")  # the source, for torch engines and re-export
        man = manifest("export", {"model": str(model_dir), "opset": opset, "fused": fuse_graph},
                       task=TextKind.name, labels=label_map.names,
                       inputs={k: ["batch", "sequence"] for k in _text_spec(model)},
                       outputs={"logits": ["batch", len(label_map)]},
                       max_sequence=max_tokens(cfg),
                       validation={"tolerance": TOLERANCE, "max_abs_logit_diff": checks,
                                   "feeds": [{k: list(v.shape) for k, v in f.items() if k == "input_ids"}
                                             for f in feeds]},
                       fused_ops=fused_ops, warnings=warns)
        write_json(tmp / MANIFEST, man)
    return man
