"""Quantized linear layers for the GPU path (``nanoify quantize --target cuda``), in plain PyTorch.

Formats (weights per output channel, symmetric; activations per row of the flattened input):
* ``int8``: INT8 weights and dynamically quantized INT8 activations, multiplied by ``torch._int_mm``
  (INT32 accumulation, cuBLAS on CUDA). cuBLAS needs M > 16 and K, N multiples of 8: the weight is padded once
  (K, N), the activation rows are padded to 17 when fewer — small-M results of ``_int_mm`` were wrong in some
  cuBLAS versions, so the tests compare against a float reference at every M, and the GPU check does too.
* ``int8-static``: as ``int8`` with each layer's activation scale fixed from calibration (max |x| over the
  calibration batches, the seed's recipe of calibrated ranges), so no per-row reduction at run time.
* ``fp8``: float8 e4m3 weights and per-row dynamic e4m3 activations through ``torch._scaled_mm`` with row-wise
  scales (compute capability ≥ 8.9 on CUDA: Ada, Hopper; dimensions padded to multiples of 16; bfloat16 output,
  the one cuBLASLt gives row-wise scaling).
* ``int8-weight-only``: INT8 weights widened to the activations' dtype on the fly and multiplied there
  (memory-bound small batches).

Activations are quantized in their own dtype (FP16/BF16 on a GPU), and the query, key and value layers of one
attention block (:data:`SIBLINGS`) quantize their shared input once (issue 23: the first version quantized in
float32, about eight elementwise passes per layer, three times over the same tensor).

Everything here also runs on the CPU (``_int_mm`` and ``_scaled_mm`` have CPU kernels in torch 2.13), which is
how the numerics are tested on machines without a GPU; speed is only measured on CUDA.
The artifact is the Hugging Face folder's config and tokenizer plus ``model.safetensors`` holding the quantized
tensors and scales, and ``quantization.json`` (format, which layers, versions), loadable by the torch engine.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from ..errors import ModelError, first_line
from ..models.load import LABEL_MAP_FILE
from .files import QUANT_FILE

FORMATS = ("int8", "int8-static", "fp8", "int8-weight-only")
FP8_MAX = 448.0  # largest finite float8 e4m3fn
EPS = 1e-12


def _ceil(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def fp8_supported(device: str | torch.device) -> bool:
    """FP8 matmuls: any CPU build with ``_scaled_mm``; CUDA compute capability ≥ 8.9."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return hasattr(torch, "_scaled_mm")
    return torch.cuda.get_device_capability(dev) >= (8, 9)


class QuantLinear(nn.Module):
    """A linear layer with quantized weights; ``fmt`` in FORMATS. Build with :meth:`from_linear`."""

    def __init__(self, in_features: int, out_features: int, fmt: str, bias: bool) -> None:
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown GPU quantization format {fmt!r}; use one of {', '.join(FORMATS)}")
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        align = 16 if fmt == "fp8" else 8  # cuBLASLt: FP8 GEMM dimensions multiples of 16, INT8 of 8
        k, n = _ceil(in_features, align), _ceil(out_features, align)
        wdtype = torch.float8_e4m3fn if fmt == "fp8" else torch.int8
        self.register_buffer("weight_q", torch.zeros(n, k, dtype=wdtype))
        self.register_buffer("weight_scale", torch.ones(n, dtype=torch.float32))
        self.register_buffer("input_scale", torch.zeros((), dtype=torch.float32))  # int8-static only
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.shared: SharedInput | None = None  # set by quantize_model for layers that read one input

    @classmethod
    def from_linear(cls, lin: nn.Linear, fmt: str) -> QuantLinear:
        q = cls(lin.in_features, lin.out_features, fmt, lin.bias is not None)
        w = lin.weight.detach().float()
        top = FP8_MAX if fmt == "fp8" else 127.0
        scale = w.abs().amax(1).clamp_min(EPS) / top
        wq = (w / scale[:, None]).clamp(-top, top)
        wq = wq.to(torch.float8_e4m3fn) if fmt == "fp8" else wq.round().to(torch.int8)
        q.weight_q.zero_()
        q.weight_q[: lin.out_features, : lin.in_features] = wq
        q.weight_scale[: lin.out_features] = scale
        if lin.bias is not None:
            q.bias = lin.bias.detach().float().clone()
        return q.to(lin.weight.device)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, fmt={self.fmt}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        n, k = self.out_features, self.in_features
        x2 = x.reshape(-1, shape[-1])
        if self.fmt == "int8-weight-only":
            # the INT8 weight widened and scaled in the activations' dtype: on a GPU an FP16/BF16 GEMM on tensor
            # cores (not an FP32 rebuild of the weight and an FP32 matmul)
            w = self.weight_q[:n, :k].to(dtype) * self.weight_scale[:n, None].to(dtype)
            y = x2 @ w.t()
        else:
            xq, a_scale = self._quantized_input(x, x2)
            m = xq.shape[0]
            if self.fmt == "fp8":
                # row-wise scaled FP8 GEMMs return bfloat16 on CUDA (the only output type cuBLASLt offers for them);
                # fast accumulation on CUDA as torchao's FP8 inference config does, so the two rows compare alike
                y = torch._scaled_mm(xq, self.weight_q.t(), scale_a=a_scale, scale_b=self.weight_scale[None, :],
                                     out_dtype=torch.bfloat16, use_fast_accum=xq.is_cuda)[:, :n]
            else:
                if m <= 16:  # cuBLAS int8 GEMM needs M > 16
                    xq = nn.functional.pad(xq, (0, 0, 0, 17 - m))
                acc = torch._int_mm(xq, self.weight_q.t())[:m, :n]
                y = acc.float() * a_scale * self.weight_scale[None, :n]  # the INT32 sums need float32
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.to(dtype).reshape(*shape[:-1], n)

    def _quantized_input(self, x: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The activations as INT8 (or FP8) rows and their float32 scales (rows × 1). Computed in the activations'
        own dtype (FP16/BF16 on a GPU: half the traffic of float32, one multiply by the reciprocal scale, rounding
        and clamping in place); reused when the layer shares its input with the previous caller of ``shared``
        (query, key and value read the same tensor: quantized once, not three times)."""
        entry = self.shared.entry if self.shared is not None else None
        if entry is not None and entry[0] is x:
            return entry[1]
        top = FP8_MAX if self.fmt == "fp8" else 127.0
        if self.fmt == "int8-static":
            scale = self.input_scale.clamp_min(EPS).expand(x2.shape[0], 1)
        else:
            scale = x2.abs().amax(1, keepdim=True).float().clamp_min(EPS) / top
        inv = (1.0 / scale).clamp(max=torch.finfo(x2.dtype).max).to(x2.dtype)
        y = x2 * inv
        k_pad = self.weight_q.shape[1] - self.in_features
        if k_pad:
            y = nn.functional.pad(y, (0, k_pad))
        if self.fmt == "fp8":
            xq = y.clamp_(-top, top).to(torch.float8_e4m3fn)
        else:
            xq = y.round_().clamp_(-top, top).to(torch.int8)
        out = (xq, scale)
        if self.shared is not None:
            self.shared.entry = (x, out)  # one reference swap: a reader sees the old entry or the new one
        return out


class SharedInput:
    """The last input a group of :class:`QuantLinear` layers quantized and its result (layers that read one tensor:
    an attention block's query, key and value). Not state: nothing of it is saved."""

    def __init__(self) -> None:
        self.entry: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None


# sibling linear layers that read the same input in the encoders nanoify loads (BERT/MiniLM, MPNet, and the
# *_proj naming of others): they share one quantized input
SIBLINGS = (("query", "key", "value"), ("q", "k", "v"), ("q_proj", "k_proj", "v_proj"))


def cast_except_quantized(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model.to(dtype)`` for every float parameter and buffer except the QuantLinear ones (``Module.to`` would
    turn FP8 weights, which are floating point, into the new dtype); QuantLinear quantizes its input in the input's
    dtype, keeps INT32 sums and scales in float32, and returns the input's dtype."""
    for m in model.modules():
        if isinstance(m, QuantLinear):
            continue
        for _name, p in list(m.named_parameters(recurse=False)):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
        for name, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                setattr(m, name, b.to(dtype))
    return model


def quantizable_linears(model: nn.Module, skip: tuple[str, ...] = ("classifier", "pooler", "out_proj")) -> list[str]:
    """Names of the ``nn.Linear`` modules to quantize: every one in the encoder (the small classification head
    and pooler stay float: they are a rounding error of the time and the most sensitive to rounding)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not any(s in n for s in skip)]


def calibrate_input_scales(model: nn.Module, names: list[str],
                           batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """max |input| / 127 of every named linear layer over the calibration batches (int8-static)."""
    mods = dict(model.named_modules())
    amax: dict[str, float] = {n: 0.0 for n in names}
    hooks = []
    for n in names:
        def hook(_m: nn.Module, args: tuple[Any, ...], n: str = n) -> None:
            amax[n] = max(amax[n], float(args[0].detach().abs().max()))
        hooks.append(mods[n].register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            for b in batches:
                model(**b)
    finally:
        for h in hooks:
            h.remove()
    return {n: max(v, EPS) / 127.0 for n, v in amax.items()}


def quantize_model(model: nn.Module, fmt: str, names: list[str] | None = None,
                   input_scales: dict[str, float] | None = None) -> list[str]:
    """Replace the named linear layers of ``model`` (in place) by QuantLinear; returns the names replaced."""
    names = quantizable_linears(model) if names is None else names
    if fmt == "int8-static" and input_scales is None:
        raise ValueError("int8-static needs calibrated input scales (calibrate_input_scales)")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        q = QuantLinear.from_linear(getattr(parent, attr), fmt)
        if input_scales is not None and fmt == "int8-static":
            q.input_scale.fill_(input_scales[name])
        setattr(parent, attr, q)
    share_inputs(model, names, fmt, input_scales)
    return names


def share_inputs(model: nn.Module, names: list[str], fmt: str,
                 input_scales: dict[str, float] | None = None) -> list[list[str]]:
    """Give the quantized layers of each sibling group (:data:`SIBLINGS`, all quantized, under one parent) one
    :class:`SharedInput`; int8-static layers only when their calibrated scales agree. Returns the groups."""
    if fmt == "int8-weight-only":
        return []
    chosen, groups = set(names), []
    parents = {n.rpartition(".")[0] for n in names}
    for parent in sorted(parents):
        for sib in SIBLINGS:
            group = [f"{parent}.{a}" if parent else a for a in sib]
            if not all(g in chosen for g in group):
                continue
            if fmt == "int8-static" and len({(input_scales or {}).get(g) for g in group}) != 1:
                continue
            shared = SharedInput()
            for g in group:
                model.get_submodule(g).shared = shared
            groups.append(group)
    return groups


def save_quantized(model: nn.Module, tokenizer: Any, label_names: list[str], out: Path, fmt: str,
                   names: list[str], extra: dict[str, Any] | None = None) -> None:
    """config + tokenizer + label map + quantized ``model.safetensors`` + ``quantization.json``."""

    out.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / LABEL_MAP_FILE).write_text(json.dumps({"names": label_names}, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt", "nanoify_quantization": fmt})
    (out / QUANT_FILE).write_text(json.dumps({"format": fmt, "layers": names, **(extra or {})}, indent=2) + "\n")


def load_quantized(folder: str | Path, attention: str = "eager") -> tuple[nn.Module, Any, list[str], dict[str, Any]]:
    """(model with QuantLinear layers, tokenizer, label names, quantization.json) from ``save_quantized``."""

    folder = Path(folder)
    try:
        qcfg = json.loads((folder / QUANT_FILE).read_text())
        cfg = AutoConfig.from_pretrained(folder)
        cfg._attn_implementation = attention
        model = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attention)
        fmt, names = qcfg["format"], list(qcfg["layers"])
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            lin = getattr(parent, attr)
            setattr(parent, attr, QuantLinear(lin.in_features, lin.out_features, fmt, lin.bias is not None))
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        if fmt == "int8-static":
            scales = {n: float(model.get_submodule(n).input_scale) for n in names}
        share_inputs(model, names, fmt, scales if fmt == "int8-static" else None)
        tok = AutoTokenizer.from_pretrained(folder)
        labels = json.loads((folder / LABEL_MAP_FILE).read_text())["names"]
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        first = first_line(e)
        raise ModelError(f"cannot load the quantized GPU model in {folder} ({first})") from None
    return model.eval(), tok, labels, qcfg


TORCHAO_FORMATS = ("int8", "int8-weight-only", "fp8")


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def torchao_quantize(model: nn.Module, fmt: str, names: list[str] | None = None) -> list[str]:
    """The same layers quantized by torchao's inference configs instead of :class:`QuantLinear` — the
    comparison issue 11 asks for (torchao's Int8DynamicActivationInt8Weight, Int8WeightOnly,
    Float8DynamicActivationFloat8Weight with per-row scales), measured side by side in benchmarks/gpu_check.py.
    torchao's compiled extension is not needed for these paths, so it is not loaded (it is built for one torch
    version and fails to load beside others). ``fp8`` casts the whole model to bfloat16 (torchao's per-row FP8
    takes no other weight dtype; nanoify's FP8 rows run on the same bfloat16 model in the GPU check). Not an
    artifact format: torchao's tensor subclasses do not go into nanoify's safetensors folders."""

    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    if fmt not in TORCHAO_FORMATS:
        raise ValueError(f"torchao format {fmt!r}: choose {', '.join(TORCHAO_FORMATS)}")
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        Int8WeightOnlyConfig,
        PerRow,
        quantize_,
    )

    names = quantizable_linears(model) if names is None else names
    chosen = set(names)
    # set_inductor_config=False: torchao's default turns on coordinate-descent tuning and other Inductor settings
    # for the whole process, so every torch.compile after it would run another mode than its row says (issue 23)
    config = {"int8": Int8DynamicActivationInt8WeightConfig, "int8-weight-only": Int8WeightOnlyConfig}.get(fmt)
    if config:
        cfg = config(set_inductor_config=False)
    else:  # per-row FP8 asserts bfloat16 weights (torchao 0.18): the model becomes bfloat16 first
        model.to(torch.bfloat16)
        cfg = Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False)
    quantize_(model, cfg, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in chosen)
    return names
