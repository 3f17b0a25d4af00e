"""Students carved from the teacher (issue 22): structured pruning by importance measured on the task's data.

Importance (Minitron, Muralidharan et al. 2024: activation magnitude on a small calibration set), from one pass of
the teacher over calibration batches, padded tokens excluded:

* **heads** — the mean L2 norm of each head's context vector (the attention output before the output projection);
* **head dimensions** — query/key dimension ``i`` of a head: mean ``|q_i|`` × mean ``|k_i|``; value dimension
  ``i``: mean ``|context_i|`` (the score of a head's slice, used when the student's head is narrower);
* **FFN neurons** — mean ``|activation|`` of each intermediate neuron (the input of the FFN's output projection);
* **hidden channels** — mean ``|x_c|`` of every hidden state (the embeddings' and each layer's output, all after
  LayerNorm), summed over the states;
* **layers** — block influence (Men et al., 2024, "ShortGPT"): ``1 − cos(h_in, h_out)`` per token, averaged: a
  layer that barely turns the hidden state matters least.

Pruning slices every tensor (:func:`prune_model`): the embeddings' columns, every projection's rows and columns,
the LayerNorms, pooler and classifier, and — MPNet — the relative position bias's head columns. The result is a
model of the same class with a plain config (layers, hidden, heads, intermediate), so ``from_pretrained`` loads
it with no custom code. Transformers' configs have one head count and hidden = heads × head size, so every layer
keeps the same number of heads (its own most important ones; for MPNet, whose position bias is shared by all
layers, the same heads everywhere), and a student whose head size is smaller than the teacher's keeps each kept
head's most important dimensions — queries scaled by ``sqrt(d'/d)`` so the attention scores keep their scale.
LayerNorms normalise over the kept channels only: the pruned model is an initialisation, distillation repairs
what slicing changes.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from ..errors import ConfigError, ModelError
from .load import encoder_layers

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """One transformer layer's modules, whatever the architecture names them."""

    q: Any
    k: Any
    v: Any
    o: Any
    ln_attn: Any
    ffn_in: Any
    ffn_out: Any
    ln_ffn: Any


def layer_parts(layer: Any) -> Parts:
    """BERT (MiniLM, DistilBERT-style BERT students) and MPNet layers."""
    att = layer.attention
    if hasattr(att, "self") and hasattr(att, "output"):
        return Parts(att.self.query, att.self.key, att.self.value, att.output.dense, att.output.LayerNorm,
                     layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)
    if hasattr(att, "attn") and hasattr(att.attn, "q"):
        return Parts(att.attn.q, att.attn.k, att.attn.v, att.attn.o, att.LayerNorm, layer.intermediate.dense,
                     layer.output.dense, layer.output.LayerNorm)
    raise ModelError(f"{type(layer).__name__}: pruning knows BERT and MPNet layers only")


def _shared_head_bias(model: Any) -> Any:
    """MPNet's relative position bias (buckets × heads, one table for every layer), or None."""
    enc = model.base_model.encoder
    return getattr(enc, "relative_attention_bias", None)


@dataclass
class Importance:
    """Scores from the calibration pass (higher matters more); ``rows`` sentences were seen."""

    heads: torch.Tensor  # layers × heads
    qk_dims: torch.Tensor  # layers × heads × head size
    v_dims: torch.Tensor  # layers × heads × head size
    neurons: torch.Tensor  # layers × intermediate
    channels: torch.Tensor  # hidden
    layers: torch.Tensor  # layers
    rows: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "heads": self.heads.tolist(), "layers": self.layers.tolist(),
                "channels_top": torch.argsort(self.channels, descending=True)[:16].tolist()}


def importance(model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> Importance:
    """Activation importance of every prunable unit of ``model`` over ``batches`` (tokenizer outputs with an
    ``attention_mask``)."""
    cfg = model.config
    n, a = cfg.num_hidden_layers, cfg.num_attention_heads
    d = cfg.hidden_size // a
    parts = [layer_parts(layer) for layer in encoder_layers(model)]
    acc = {"heads": torch.zeros(n, a, dtype=torch.float64), "v": torch.zeros(n, a, d, dtype=torch.float64),
           "q": torch.zeros(n, a, d, dtype=torch.float64), "k": torch.zeros(n, a, d, dtype=torch.float64),
           "neurons": torch.zeros(n, cfg.intermediate_size, dtype=torch.float64),
           "channels": torch.zeros(cfg.hidden_size, dtype=torch.float64), "layers": torch.zeros(n, dtype=torch.float64)}
    state: dict[str, Any] = {"mask": None, "tokens": 0.0}

    def masked_sum(x: torch.Tensor) -> torch.Tensor:  # B×T×… → sum over real tokens
        m = state["mask"].to(x.dtype).reshape(*state["mask"].shape, *([1] * (x.dim() - 2)))
        return (x * m).sum(dim=(0, 1)).double()

    def hook(i: int, what: str) -> Any:
        def fn(mod: Any, inputs: tuple[Any, ...], output: Any) -> None:
            if what == "o":  # the context: heads' outputs before the output projection
                ctx = inputs[0].reshape(*inputs[0].shape[:2], a, d)
                acc["heads"][i] += masked_sum(ctx.norm(dim=-1))
                acc["v"][i] += masked_sum(ctx.abs())
            elif what in ("q", "k"):
                acc[what][i] += masked_sum(output.reshape(*output.shape[:2], a, d).abs())
            else:  # the FFN's activations
                acc["neurons"][i] += masked_sum(inputs[0].abs())
        return fn

    handles = []
    for i, p in enumerate(parts):
        handles += [p.o.register_forward_hook(hook(i, "o")), p.q.register_forward_hook(hook(i, "q")),
                    p.k.register_forward_hook(hook(i, "k")), p.ffn_out.register_forward_hook(hook(i, "ffn"))]
    was_training = model.training
    model.eval()
    rows = 0
    try:
        with torch.no_grad():
            for b in batches:
                state["mask"] = b["attention_mask"].bool()
                out = model(**b, output_hidden_states=True)
                hs = out.hidden_states  # embeddings, then each layer's output
                for h in hs:
                    acc["channels"] += masked_sum(h.abs())
                for i in range(n):
                    cos = torch.nn.functional.cosine_similarity(hs[i], hs[i + 1], dim=-1)
                    acc["layers"][i] += masked_sum((1 - cos).unsqueeze(-1)).squeeze(-1)
                state["tokens"] += float(state["mask"].sum())
                rows += int(state["mask"].shape[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if rows == 0:
        raise ConfigError("pruning needs calibration rows: the data gave none")
    t = max(state["tokens"], 1.0)
    return Importance(heads=acc["heads"] / t, qk_dims=(acc["q"] / t) * (acc["k"] / t), v_dims=acc["v"] / t,
                      neurons=acc["neurons"] / t, channels=acc["channels"] / t, layers=acc["layers"] / t, rows=rows)


@dataclass
class Kept:
    """What a pruned model keeps of the teacher (sorted indices)."""

    layers: list[int]
    channels: list[int]
    heads: list[list[int]]  # per kept layer
    qk_dims: list[list[list[int]]]  # per kept layer, per kept head
    v_dims: list[list[list[int]]]
    neurons: list[list[int]]
    head_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "channels": self.channels, "heads": self.heads, "neurons": self.neurons,
                "head_size": self.head_size, "qk_dims": self.qk_dims, "v_dims": self.v_dims}


def _top(scores: torch.Tensor, k: int) -> list[int]:
    return sorted(torch.argsort(scores, descending=True, stable=True)[:k].tolist())


def check_shape(config: Any, layers: int, hidden: int, heads: int, intermediate: int) -> None:
    """One line when the teacher cannot be carved into this shape."""
    n, h, a = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    d = h // a
    if min(layers, hidden, heads, intermediate) <= 0:
        raise ConfigError("--student prune: every size must be positive")
    if layers > n or hidden > h or heads > a or intermediate > config.intermediate_size:
        raise ConfigError(f"--student prune:{layers}x{hidden},heads={heads},ffn={intermediate}: larger than the "
                          f"teacher ({n}x{h}, heads={a}, ffn={config.intermediate_size}); pruning only removes")
    if hidden % heads:
        raise ConfigError(f"--student prune: hidden {hidden} is not divisible by heads {heads}")
    if hidden // heads > d:
        raise ConfigError(f"--student prune: {heads} heads of {hidden // heads} dimensions need wider heads than the "
                          f"teacher's {d}; use at least {math.ceil(hidden / d)} heads")


def choose(config: Any, imp: Importance, layers: int, hidden: int, heads: int, intermediate: int,
           shared_heads: bool = False) -> Kept:
    """The most important units for the shape (every layer keeps ``heads`` heads; ``shared_heads``: the same
    ones in every layer)."""
    check_shape(config, layers, hidden, heads, intermediate)
    d_new = hidden // heads
    keep_layers = _top(imp.layers, layers)
    shared = _top(imp.heads[keep_layers].sum(0), heads) if shared_heads else None
    head_sets = [shared if shared is not None else _top(imp.heads[i], heads) for i in keep_layers]
    return Kept(layers=keep_layers, channels=_top(imp.channels, hidden), heads=head_sets,
                qk_dims=[[_top(imp.qk_dims[i, h], d_new) for h in hs] for i, hs in zip(keep_layers, head_sets,
                                                                                       strict=True)],
                v_dims=[[_top(imp.v_dims[i, h], d_new) for h in hs] for i, hs in zip(keep_layers, head_sets,
                                                                                     strict=True)],
                neurons=[_top(imp.neurons[i], intermediate) for i in keep_layers], head_size=d_new)


def _linear(dst: Any, src: Any, rows: list[int] | None, cols: list[int] | None, scale: float = 1.0) -> None:
    w = src.weight.detach()
    w = w[rows] if rows is not None else w
    w = w[:, cols] if cols is not None else w
    with torch.no_grad():
        dst.weight.copy_(w * scale)
        if getattr(dst, "bias", None) is not None and src.bias is not None:
            b = src.bias.detach()
            dst.bias.copy_((b[rows] if rows is not None else b) * scale)


def _norm(dst: Any, src: Any, idx: list[int]) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight.detach()[idx])
        dst.bias.copy_(src.bias.detach()[idx])
    dst.eps = src.eps


def prune_model(teacher: Any, kept: Kept) -> Any:
    """A model of the teacher's class and config family with only ``kept`` (see module docstring)."""
    tc = teacher.config
    d = tc.hidden_size // tc.num_attention_heads
    cfg = copy.deepcopy(tc)
    cfg.num_hidden_layers, cfg.hidden_size = len(kept.layers), len(kept.channels)
    cfg.num_attention_heads, cfg.intermediate_size = len(kept.heads[0]), len(kept.neurons[0])
    cfg._name_or_path = ""
    cfg.pruned_heads = {}
    with environment_kept():
        student = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
    ch = kept.channels
    t_base, s_base = teacher.base_model, student.base_model
    t_emb, s_emb = t_base.embeddings, s_base.embeddings
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            src, dst = getattr(t_emb, name, None), getattr(s_emb, name, None)
            if src is not None and dst is not None:
                dst.weight.copy_(src.weight.detach()[:, ch])
    _norm(s_emb.LayerNorm, t_emb.LayerNorm, ch)
    t_bias, s_bias = _shared_head_bias(teacher), _shared_head_bias(student)
    if t_bias is not None and s_bias is not None:
        with torch.no_grad():
            s_bias.weight.copy_(t_bias.weight.detach()[:, kept.heads[0]])
    t_layers, s_layers = encoder_layers(teacher), encoder_layers(student)
    scale = math.sqrt(kept.head_size / d)  # queries: the scores keep their scale over fewer dimensions
    for j, i in enumerate(kept.layers):
        tp, sp = layer_parts(t_layers[i]), layer_parts(s_layers[j])
        qk = [h * d + x for h, dims in zip(kept.heads[j], kept.qk_dims[j], strict=True) for x in dims]
        v = [h * d + x for h, dims in zip(kept.heads[j], kept.v_dims[j], strict=True) for x in dims]
        _linear(sp.q, tp.q, qk, ch, scale)
        _linear(sp.k, tp.k, qk, ch)
        _linear(sp.v, tp.v, v, ch)
        _linear(sp.o, tp.o, ch, v)
        _norm(sp.ln_attn, tp.ln_attn, ch)
        _linear(sp.ffn_in, tp.ffn_in, kept.neurons[j], ch)
        _linear(sp.ffn_out, tp.ffn_out, ch, kept.neurons[j])
        _norm(sp.ln_ffn, tp.ln_ffn, ch)
    _heads(teacher, student, ch)
    return student


@contextlib.contextmanager
def environment_kept() -> Iterator[None]:
    """Building a model makes transformers import dynamo, which sets TORCHINDUCTOR_CACHE_DIR in the caller's
    environment; a library call must not change the process it runs in."""
    before = set(os.environ)
    try:
        yield
    finally:
        for k in set(os.environ) - before:
            del os.environ[k]


def _heads(teacher: Any, student: Any, ch: list[int]) -> None:
    """Pooler and classifier: hidden-sized sides sliced to the kept channels."""
    t_pool, s_pool = getattr(teacher.base_model, "pooler", None), getattr(student.base_model, "pooler", None)
    if t_pool is not None and s_pool is not None:
        _linear(s_pool.dense, t_pool.dense, ch, ch)
    t_cls, s_cls = teacher.classifier, student.classifier
    if isinstance(t_cls, torch.nn.Linear):  # BERT: hidden → labels
        _linear(s_cls, t_cls, None, ch)
    elif hasattr(t_cls, "dense") and hasattr(t_cls, "out_proj"):  # MPNet/RoBERTa: dense hidden → hidden, out_proj
        _linear(s_cls.dense, t_cls.dense, ch, ch)
        _linear(s_cls.out_proj, t_cls.out_proj, None, ch)
    else:
        raise ModelError(f"{type(t_cls).__name__}: pruning knows BERT's and MPNet's classifier heads only")


def carve(teacher: Any, batches: Iterable[dict[str, torch.Tensor]], layers: int, hidden: int, heads: int,
          intermediate: int) -> tuple[Any, Kept, Importance]:
    """Importance on ``batches``, the choice for the shape, the pruned model."""
    check_shape(teacher.config, layers, hidden, heads, intermediate)
    imp = importance(teacher, batches)
    kept = choose(teacher.config, imp, layers, hidden, heads, intermediate,
                  shared_heads=_shared_head_bias(teacher) is not None)
    student = prune_model(teacher, kept)
    log.info("pruned student %dx%d, %d heads of %d, FFN %d: teacher layers %s", layers, hidden, heads,
             kept.head_size, intermediate, kept.layers)
    return student, kept, imp
