"""An ONNX graph run by PyTorch: the torch engine's way into models that ship only as ``.onnx``.

A detector like FastestDet comes as an ONNX file and nothing else; ONNX Runtime's CPU build runs it, but the GPU
path of issue 11 (CUDA graphs, FP16, ``torch.compile``, streams) is PyTorch's. :class:`OnnxModule` interprets
the graph node by node with torch operators, so ``nanoify bench det.onnx --engine torch:cuda:fp16:graphs``
measures the same model there, and the result is checked against ONNX Runtime (the tests: FastestDet and the
exported test nets agree within 1e-4).

Floating-point initializers become buffers (``.to(device, dtype)`` moves and casts them); integer initializers
and ``Constant`` nodes stay on the host as numpy arrays, and so do values computed from shapes (``Shape`` →
``Gather`` → ``Concat`` → ``Reshape``), so shape arithmetic never syncs with the GPU and a captured CUDA graph
holds only the tensor work. The operator set covers the usual exports of CNNs and YOLO-style detectors
(convolutions, pooling, resize, pad, reshape family, elementwise and activation ops, softmax, matmul/gemm,
batch norm, reductions); any other operator is one line at load naming it. ONNX's opset < 13 ``Softmax`` over
a flattened tail is honoured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import helper, numpy_helper

from ..errors import ModelError

Value = Any  # a torch.Tensor on the model's device, or a numpy array (host constants and shape values)
OpFn = Callable[..., Any]
_OPS: dict[str, OpFn] = {}


def _op(*names: str) -> Callable[[OpFn], OpFn]:
    def reg(fn: OpFn) -> OpFn:
        for n in names:
            _OPS[n] = fn
        return fn
    return reg


class _Ctx:
    """What an operator may need besides its inputs: attributes, the opset, and host→device conversion."""

    def __init__(self, module: OnnxModule, attrs: dict[str, Any]) -> None:
        self.m, self.a = module, attrs

    def t(self, v: Value, like: torch.Tensor | None = None) -> torch.Tensor:
        """``v`` as a tensor on the model's device (host constants converted once and kept)."""
        if isinstance(v, torch.Tensor):
            return v
        dev = like.device if like is not None else self.m.device
        key = (id(v), str(dev))
        if id(v) in self.m._const_ids:
            hit = self.m._dev_cache.get(key)
            if hit is None:
                hit = self.m._dev_cache[key] = self._cast(torch.tensor(np.asarray(v), device=dev),
                                                          like)
            return hit
        # a value computed on the host from shapes (a detector's grid from Range): the same for the same input
        # shapes, so it is kept by content — a CUDA graph replays without host→device copies, which capture
        # forbids (the warm-up passes before a capture fill this)
        arr = np.ascontiguousarray(v)
        if arr.nbytes > 1 << 20:
            return self._cast(torch.tensor(arr, device=dev), like)
        ckey = (arr.dtype.str, arr.shape, arr.tobytes(), str(dev), None if like is None else like.dtype)
        hit = self.m._value_cache.get(ckey)
        if hit is None:
            if len(self.m._value_cache) > 512:
                self.m._value_cache.clear()
            hit = self.m._value_cache[ckey] = self._cast(torch.tensor(arr, device=dev), like)
        return hit

    def _cast(self, t: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
        """Float constants follow the precision of the tensor they meet (an FP16 run stays FP16)."""
        if t.is_floating_point():
            return t.to(like.dtype if like is not None and like.is_floating_point() else self.m.float_dtype)
        return t


def _host(v: Value) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        raise ModelError("an ONNX shape, axis or size input is computed on the device; this graph needs constant or "
                         "shape-derived values there (export with constant folding)")
    return np.asarray(v)


def _ints(v: Value) -> list[int]:
    return [int(x) for x in _host(v).reshape(-1)]


def _binary(fn_np: Callable[[Any, Any], Any], fn_t: Callable[[Any, Any], Any]) -> OpFn:
    def run(c: _Ctx, a: Value, b: Value) -> Value:
        if not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor):
            return np.asarray(fn_np(np.asarray(a), np.asarray(b)))
        if not isinstance(a, torch.Tensor):
            a = a.item() if np.size(a) == 1 and np.ndim(a) <= np.ndim(b.shape) else c.t(a, b)
        if not isinstance(b, torch.Tensor):
            b = b.item() if np.size(b) == 1 and np.ndim(b) <= a.dim() else c.t(b, a)
        return fn_t(a, b)
    return run


def _int_div_np(a: Any, b: Any) -> Any:
    if np.issubdtype(np.asarray(a).dtype, np.integer) and np.issubdtype(np.asarray(b).dtype, np.integer):
        return np.trunc(np.true_divide(a, b)).astype(np.asarray(a).dtype)
    return np.true_divide(a, b)


def _div_t(a: Any, b: Any) -> Any:
    if isinstance(a, torch.Tensor) and not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


_OPS["Add"] = _binary(np.add, lambda a, b: a + b)
_OPS["Sub"] = _binary(np.subtract, lambda a, b: a - b)
_OPS["Mul"] = _binary(np.multiply, lambda a, b: a * b)
_OPS["Div"] = _binary(_int_div_np, _div_t)
_OPS["Pow"] = _binary(np.power, lambda a, b: torch.pow(a, b))
_OPS["Equal"] = _binary(np.equal, lambda a, b: torch.eq(a, b))
_OPS["Less"] = _binary(np.less, lambda a, b: torch.lt(a, b))
_OPS["Greater"] = _binary(np.greater, lambda a, b: torch.gt(a, b))
_OPS["GreaterOrEqual"] = _binary(np.greater_equal, lambda a, b: torch.ge(a, b))
_OPS["LessOrEqual"] = _binary(np.less_equal, lambda a, b: torch.le(a, b))
_OPS["And"] = _binary(np.logical_and, lambda a, b: torch.logical_and(a, b) if isinstance(b, torch.Tensor)
                      else a.bool() & bool(b))
_OPS["Or"] = _binary(np.logical_or, lambda a, b: torch.logical_or(a, b) if isinstance(b, torch.Tensor)
                     else a.bool() | bool(b))


@_op("Mod")
def _mod(c: _Ctx, a: Value, b: Value) -> Value:
    fmod = bool(c.a.get("fmod", 0))
    fn = _binary(np.fmod if fmod else np.mod, torch.fmod if fmod else torch.remainder)
    return fn(c, a, b)


@_op("LayerNormalization")
def _layernorm(c: _Ctx, x: torch.Tensor, scale: Value, bias: Value = None) -> torch.Tensor:
    axis = c.a.get("axis", -1) % x.dim()
    shape = tuple(x.shape[axis:])
    return F.layer_norm(x, shape, c.t(scale, x), None if bias is None else c.t(bias, x), c.a.get("epsilon", 1e-5))


@_op("Gelu")
def _gelu(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh" if c.a.get("approximate", "none") == "tanh" else "none")


@_op("ArgMax", "ArgMin")
def _argmax(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    if c.a.get("select_last_index", 0):
        raise ModelError(f"{c.a['__op']} select_last_index=1 is not supported by the torch runner")
    fn = torch.argmax if c.a["__op"] == "ArgMax" else torch.argmin
    return fn(x, dim=c.a.get("axis", 0), keepdim=bool(c.a.get("keepdims", 1)))

_UNARY: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "Relu": (lambda x: np.maximum(x, 0), F.relu), "Sigmoid": (None, torch.sigmoid), "Tanh": (np.tanh, torch.tanh),
    "Exp": (np.exp, torch.exp), "Log": (np.log, torch.log), "Sqrt": (np.sqrt, torch.sqrt), "Neg": (np.negative,
    torch.neg), "Abs": (np.abs, torch.abs), "Reciprocal": (np.reciprocal, torch.reciprocal), "Floor": (np.floor,
    torch.floor), "Ceil": (np.ceil, torch.ceil), "Erf": (None, torch.erf), "Identity": (lambda x: x, lambda x: x),
    "Softplus": (None, F.softplus), "Not": (np.logical_not, torch.logical_not), "Sin": (np.sin, torch.sin),
    "Cos": (np.cos, torch.cos), "Sign": (np.sign, torch.sign), "Round": (np.round, torch.round),
    "Mish": (None, F.mish), "Softsign": (None, F.softsign),
}


def _unary(name: str) -> OpFn:
    f_np, f_t = _UNARY[name]

    def run(c: _Ctx, x: Value) -> Value:
        if isinstance(x, torch.Tensor):
            return f_t(x)
        if f_np is None:
            return f_t(torch.as_tensor(x)).numpy()
        return np.asarray(f_np(x))
    return run


for _n in _UNARY:
    _OPS[_n] = _unary(_n)


@_op("LeakyRelu")
def _leaky(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, c.a.get("alpha", 0.01))


@_op("HardSigmoid")
def _hsig(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(c.a.get("alpha", 0.2) * x + c.a.get("beta", 0.5), 0, 1)


@_op("HardSwish")
def _hswish(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x)


@_op("Elu")
def _elu(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    return F.elu(x, c.a.get("alpha", 1.0))


@_op("Clip")
def _clip(c: _Ctx, x: torch.Tensor, lo: Value = None, hi: Value = None) -> torch.Tensor:
    lo = c.a.get("min") if lo is None else float(_host(lo))
    hi = c.a.get("max") if hi is None else float(_host(hi))
    return torch.clamp(x, lo, hi)


@_op("Max", "Min", "Sum")
def _variadic(c: _Ctx, *xs: Value) -> Value:
    fn = {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}[c.a["__op"]]
    out = xs[0]
    for x in xs[1:]:
        out = fn(c.t(out, x if isinstance(x, torch.Tensor) else None), c.t(x, out if isinstance(out, torch.Tensor)
                                                                           else None))
    return out


@_op("Where")
def _where(c: _Ctx, cond: Value, a: Value, b: Value) -> Value:
    like = next((v for v in (a, b, cond) if isinstance(v, torch.Tensor)), None)
    if like is None:
        return np.where(cond, a, b)
    return torch.where(c.t(cond, like).bool(), c.t(a, like), c.t(b, like))


def _pads(pads: list[int], n: int) -> tuple[list[int], bool]:
    """ONNX pads [x1_begin, x2_begin, …, x1_end, x2_end, …] → (torch padding per dim if symmetric, symmetric?)."""
    begin, end = pads[:n], pads[n:]
    return begin, begin == end


def _pad_for_torch(pads: list[int], n: int) -> list[int]:
    """ONNX's begin/end lists → F.pad's (last dim first) pairs."""
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out


def _explicit_pads(c: _Ctx, x: torch.Tensor, kernel: list[int], strides: list[int], dilations: list[int]) -> list[int]:
    """The node's pads as ONNX begin/end lists, ``auto_pad`` resolved for this input (SAME_UPPER puts the odd
    pixel at the end, SAME_LOWER at the start; VALID pads nothing)."""
    n = len(kernel)
    mode = c.a.get("auto_pad", "NOTSET")
    if mode == "NOTSET":
        return list(c.a.get("pads", [0] * (2 * n)))
    if mode == "VALID":
        return [0] * (2 * n)
    begin, end = [], []
    for size, k, st, d in zip(x.shape[2:], kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / st) - 1) * st + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if mode == "SAME_UPPER" else big)
        end.append(big if mode == "SAME_UPPER" else small)
    return begin + end


@_op("Conv")
def _conv(c: _Ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    n = w.dim() - 2
    pads = _explicit_pads(c, x, list(w.shape[2:]), c.a.get("strides", [1] * n), c.a.get("dilations", [1] * n))
    begin, sym = _pads(pads, n)
    if not sym:
        x = F.pad(x, _pad_for_torch(pads, n))
        begin = [0] * n
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    w, b = c.t(w, x), (None if b is None else c.t(b, x))
    return fn(x, w, b, stride=c.a.get("strides", [1] * n), padding=begin, dilation=c.a.get("dilations", [1] * n),
              groups=c.a.get("group", 1))


@_op("ConvTranspose")
def _convt(c: _Ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    n = w.dim() - 2
    pads = list(c.a.get("pads", [0] * (2 * n)))
    begin, sym = _pads(pads, n)
    if not sym or "output_shape" in c.a:
        raise ModelError("ConvTranspose with asymmetric pads or output_shape is not supported by the torch runner")
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    return fn(x, w, b, stride=c.a.get("strides", [1] * n), padding=begin,
              output_padding=c.a.get("output_padding", [0] * n), groups=c.a.get("group", 1),
              dilation=c.a.get("dilations", [1] * n))


def _pool(c: _Ctx, x: torch.Tensor, kind: str) -> torch.Tensor:
    k = list(c.a["kernel_shape"])
    n = len(k)
    strides = c.a.get("strides", [1] * n)
    dil = c.a.get("dilations", [1] * n)
    pads = _explicit_pads(c, x, k, strides, dil)
    begin, sym = _pads(pads, n)
    ceil = bool(c.a.get("ceil_mode", 0))
    include = bool(c.a.get("count_include_pad", 0))
    if kind == "avg" and any(d != 1 for d in dil):
        raise ModelError("AveragePool with dilations is not supported by the torch runner")
    if not sym or any(2 * p > kk for p, kk in zip(begin, k, strict=True)):  # torch takes symmetric pads ≤ k/2
        if kind == "max":
            x = F.pad(x, _pad_for_torch(pads, n), value=-math.inf)
            return {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n](x, k, strides, 0, dilation=dil,
                                                                          ceil_mode=ceil)
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
        summed = fn(F.pad(x, _pad_for_torch(pads, n)), k, strides, 0, ceil_mode=ceil, count_include_pad=True)
        if include:
            return summed
        # the padding left out of the count: the same pool over a mask of real pixels gives each window's share
        ones = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        share = fn(F.pad(ones, _pad_for_torch(pads, n)), k, strides, 0, ceil_mode=ceil, count_include_pad=True)
        return summed / share
    if kind == "max":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return fn(x, k, strides, begin, dilation=dil, ceil_mode=ceil)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
    return fn(x, k, strides, begin, ceil_mode=ceil, count_include_pad=include)


_OPS["MaxPool"] = lambda c, x: _pool(c, x, "max")
_OPS["AveragePool"] = lambda c, x: _pool(c, x, "avg")
_OPS["GlobalAveragePool"] = lambda c, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)
_OPS["GlobalMaxPool"] = lambda c, x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@_op("BatchNormalization")
def _bn(c: _Ctx, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
        var: torch.Tensor) -> torch.Tensor:
    scale, bias, mean, var = (c.t(v, x) for v in (scale, bias, mean, var))
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, c.a.get("epsilon", 1e-5))


@_op("Gemm")
def _gemm(c: _Ctx, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    b = c.t(b, a)
    a = a.t() if c.a.get("transA", 0) else a
    b = b.t() if c.a.get("transB", 0) else b
    y = c.a.get("alpha", 1.0) * (a @ b)
    return y if bias is None else y + c.a.get("beta", 1.0) * c.t(bias, y)


_OPS["MatMul"] = lambda c, a, b: torch.matmul(c.t(a, b if isinstance(b, torch.Tensor) else None),
                                              c.t(b, a if isinstance(a, torch.Tensor) else None))


@_op("Softmax", "LogSoftmax")
def _softmax(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    fn = torch.softmax if c.a["__op"] == "Softmax" else torch.log_softmax
    if c.m.opset >= 13:
        return fn(x, c.a.get("axis", -1))
    axis = c.a.get("axis", 1) % x.dim()  # before opset 13: over the tail flattened from ``axis`` on
    if axis == x.dim() - 1:
        return fn(x, -1)
    shape = x.shape
    return fn(x.reshape(int(np.prod(shape[:axis])), -1), 1).reshape(shape)


def _axes(c: _Ctx, given: Value) -> list[int] | None:
    if given is not None:
        return _ints(given)
    return list(c.a["axes"]) if "axes" in c.a else None


@_op("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin")
def _reduce(c: _Ctx, x: torch.Tensor, axes_in: Value = None) -> torch.Tensor:
    axes = _axes(c, axes_in)
    keep = bool(c.a.get("keepdims", 1))
    if axes is None or not axes:
        if c.a.get("noop_with_empty_axes", 0) and axes is not None:
            return x
        axes = list(range(x.dim()))
    dims = tuple(a % x.dim() for a in axes)
    op = c.a["__op"]
    if op == "ReduceMean":
        return x.mean(dim=dims, keepdim=keep)
    if op == "ReduceSum":
        return x.sum(dim=dims, keepdim=keep)
    return x.amax(dim=dims, keepdim=keep) if op == "ReduceMax" else x.amin(dim=dims, keepdim=keep)


def _shape_of(x: Value) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def _is_np(x: Value) -> bool:
    return not isinstance(x, torch.Tensor)


@_op("Shape")
def _shape(c: _Ctx, x: Value) -> np.ndarray:
    s = np.array(_shape_of(x), dtype=np.int64)
    start, end = c.a.get("start", 0), c.a.get("end")
    return s[start:end]


@_op("Size")
def _size(c: _Ctx, x: Value) -> np.ndarray:
    return np.array(int(np.prod(_shape_of(x))), dtype=np.int64)


@_op("Reshape")
def _reshape(c: _Ctx, x: Value, shape: Value) -> Value:
    want = _ints(shape)
    if not c.a.get("allowzero", 0):
        want = [x.shape[i] if s == 0 else s for i, s in enumerate(want)]
    return x.reshape(want)


@_op("Flatten")
def _flatten(c: _Ctx, x: Value) -> Value:
    axis = c.a.get("axis", 1)
    axis = axis + len(x.shape) if axis < 0 else axis  # axis == rank is allowed: (everything, 1)
    lead = int(np.prod(_shape_of(x)[:axis]))
    return x.reshape(lead, -1)


@_op("Transpose")
def _transpose(c: _Ctx, x: Value) -> Value:
    perm = c.a.get("perm", list(reversed(range(len(x.shape)))))
    return np.transpose(x, perm) if _is_np(x) else x.permute(*perm)


@_op("Squeeze")
def _squeeze(c: _Ctx, x: Value, axes_in: Value = None) -> Value:
    axes = _axes(c, axes_in)
    nd = len(x.shape)
    dims = [i for i in range(nd) if x.shape[i] == 1] if axes is None else [a % nd for a in axes]
    shape = [s for i, s in enumerate(_shape_of(x)) if i not in dims]
    return x.reshape(shape)


@_op("Unsqueeze")
def _unsqueeze(c: _Ctx, x: Value, axes_in: Value = None) -> Value:
    axes = _axes(c, axes_in) or []
    nd = len(x.shape) + len(axes)
    shape = list(_shape_of(x))
    for a in sorted(a % nd for a in axes):
        shape.insert(a, 1)
    return x.reshape(shape)


@_op("Concat")
def _concat(c: _Ctx, *xs: Value) -> Value:
    axis = c.a["axis"]
    xs = tuple(x for x in xs if x is not None)
    if all(_is_np(x) for x in xs):
        return np.concatenate([np.asarray(x) for x in xs], axis=axis)
    like = next(x for x in xs if isinstance(x, torch.Tensor))
    return torch.cat([c.t(x, like).to(like.dtype) for x in xs], dim=axis)


@_op("Split")
def _split(c: _Ctx, x: Value, split_in: Value = None) -> list[Value]:
    axis = c.a.get("axis", 0) % len(x.shape)
    sizes = _ints(split_in) if split_in is not None else c.a.get("split")
    n_out = c.a["__n_out"]
    if sizes is None:
        total = x.shape[axis]
        step = -(-total // n_out)
        sizes = [min(step, total - i * step) for i in range(n_out)]
    if _is_np(x):
        return np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    return list(torch.split(x, list(sizes), dim=axis))


@_op("Slice")
def _slice(c: _Ctx, x: Value, starts: Value = None, ends: Value = None, axes: Value = None,
           steps: Value = None) -> Value:
    if starts is None:  # opset < 10: attributes
        st, en, ax = c.a["starts"], c.a["ends"], c.a.get("axes")
        sp = [1] * len(st)
    else:
        st, en = _ints(starts), _ints(ends)
        ax = _ints(axes) if axes is not None else None
        sp = _ints(steps) if steps is not None else [1] * len(st)
    ax = list(range(len(st))) if ax is None else ax
    idx: list[Any] = [slice(None)] * len(x.shape)
    for s, e, a, p in zip(st, en, ax, sp, strict=True):
        dim = x.shape[a]
        if p > 0:
            s, e = max(0, min(dim, s + dim if s < 0 else s)), max(0, min(dim, e + dim if e < 0 else e))
            idx[a] = slice(s, e, p)
        else:  # torch has no negative steps: flip, then slice forward
            s = min(dim - 1, s + dim if s < 0 else s)
            e = e + dim if e < 0 else e
            e = max(-1, min(dim - 1, e))
            if _is_np(x):
                idx[a] = slice(s, e if e >= 0 else None, p)
            else:
                x = x.flip(a)
                idx[a] = slice(dim - 1 - s, dim - 1 - e, -p)
    return x[tuple(idx)]


@_op("Gather")
def _gather(c: _Ctx, x: Value, ind: Value) -> Value:
    axis = c.a.get("axis", 0) % len(x.shape)
    if _is_np(x) and _is_np(ind):
        return np.take(x, np.asarray(ind), axis=axis)
    if _is_np(ind) and np.ndim(ind) == 0:  # a scalar index: select (no device tensor needed)
        i = int(ind)
        return x.select(axis, i + x.shape[axis] if i < 0 else i)
    if _is_np(x):
        x = c.t(x, ind)
    i = c.t(ind, x)
    i = torch.where(i < 0, i + x.shape[axis], i)
    return torch.index_select(x, axis, i.reshape(-1)).reshape(
        tuple(x.shape[:axis]) + tuple(i.shape) + tuple(x.shape[axis + 1:]))


@_op("Cast")
def _cast(c: _Ctx, x: Value) -> Value:
    np_dtype = helper.tensor_dtype_to_np_dtype(c.a["to"])
    if _is_np(x):
        return np.asarray(x).astype(np_dtype)
    if np.issubdtype(np_dtype, np.floating):  # floats follow the engine's precision (fp16/bf16 runs stay so)
        return x if x.is_floating_point() else x.to(c.m.float_dtype)
    return x.to(torch.from_numpy(np.zeros(0, dtype=np_dtype)).dtype)


@_op("ConstantOfShape")
def _const_of_shape(c: _Ctx, shape: Value) -> np.ndarray:
    v = numpy_helper.to_array(c.a["value"]) if "value" in c.a else np.zeros(1, np.float32)
    return np.full(_ints(shape), v.reshape(-1)[0], dtype=v.dtype)


@_op("Range")
def _range(c: _Ctx, start: Value, limit: Value, delta: Value) -> np.ndarray:
    return np.arange(_host(start).item(), _host(limit).item(), _host(delta).item()).astype(_host(start).dtype)


@_op("Expand")
def _expand(c: _Ctx, x: Value, shape: Value) -> Value:
    want = _ints(shape)
    if _is_np(x):
        return np.broadcast_to(x, np.broadcast_shapes(np.shape(x), tuple(want))).copy()
    out = torch.broadcast_shapes(tuple(x.shape), tuple(want))
    return x.expand(out)


@_op("Tile")
def _tile(c: _Ctx, x: Value, reps: Value) -> Value:
    return np.tile(x, _ints(reps)) if _is_np(x) else x.repeat(*_ints(reps))


@_op("Pad")
def _pad(c: _Ctx, x: torch.Tensor, pads_in: Value = None, value: Value = None, axes: Value = None) -> torch.Tensor:
    pads = _ints(pads_in) if pads_in is not None else list(c.a["pads"])
    n = x.dim()
    if axes is not None:
        full = [0] * (2 * n)
        ax = [a % n for a in _ints(axes)]
        for j, a in enumerate(ax):
            full[a], full[a + n] = pads[j], pads[j + len(ax)]
        pads = full
    mode = c.a.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    fill = float(_host(value).reshape(-1)[0]) if value is not None and np.size(_host(value)) else \
        float(c.a.get("value", 0.0))
    torch_pads = _pad_for_torch(pads, n)
    while len(torch_pads) > 2 and torch_pads[-1] == 0 and torch_pads[-2] == 0:
        torch_pads = torch_pads[:-2]  # F.pad's non-constant modes pad only the trailing dims
    if mode == "constant":
        return F.pad(x, torch_pads, value=fill)
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _resize_attrs(c: _Ctx) -> tuple[str, str, str]:
    mode = c.a.get("mode", "nearest")
    ctm = c.a.get("coordinate_transformation_mode", "half_pixel" if c.a["__op"] == "Resize" else "asymmetric")
    near = c.a.get("nearest_mode", "round_prefer_floor" if c.a["__op"] == "Resize" else "floor")
    return tuple(v.decode() if isinstance(v, bytes) else v for v in (mode, ctm, near))  # type: ignore[return-value]


def _nearest_index(out: int, size: int, scale: float, ctm: str, near: str) -> np.ndarray:
    """ONNX Resize's source index of every output position along one axis (nearest mode), exactly."""
    x = np.arange(out, dtype=np.float64)
    if ctm == "half_pixel" or (ctm == "pytorch_half_pixel" and out > 1):
        orig = (x + 0.5) / scale - 0.5
    elif ctm == "pytorch_half_pixel":
        orig = np.zeros_like(x)
    elif ctm == "align_corners":
        orig = x * (size - 1) / (out - 1) if out > 1 else np.zeros_like(x)
    elif ctm == "asymmetric":
        orig = x / scale
    elif ctm == "tf_half_pixel_for_nn":
        orig = (x + 0.5) / scale
    else:
        raise ModelError(f"Resize coordinate_transformation_mode={ctm} is not supported by the torch runner")
    rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                "floor": np.floor, "ceil": np.ceil}
    if near not in rounding:
        raise ModelError(f"Resize nearest_mode={near} is not supported by the torch runner")
    return np.clip(rounding[near](orig), 0, size - 1).astype(np.int64)


@_op("Resize", "Upsample")
def _resize(c: _Ctx, x: torch.Tensor, a: Value = None, b: Value = None, sizes: Value = None) -> torch.Tensor:
    mode, ctm, near = _resize_attrs(c)
    if c.a["__op"] == "Upsample":
        scales: Any = a
    else:  # Resize(X, roi, scales, sizes) from opset 11; (X, scales) in opset 10
        scales = b if c.m.opset >= 11 else a
    spatial = list(x.shape[2:])
    if sizes is not None and np.size(_host(sizes)):
        want = _ints(sizes)
        if want[:2] != list(x.shape[:2]):
            raise ModelError("Resize over batch or channels is not supported by the torch runner")
        out = want[2:]
        sc = [o / i for o, i in zip(out, spatial, strict=True)]
        by_scale = False
    else:
        full = [float(v) for v in _host(scales).reshape(-1)]
        if full[:2] != [1.0, 1.0]:
            raise ModelError("Resize over batch or channels is not supported by the torch runner")
        sc = full[2:]
        out = [int(math.floor(d * s)) for d, s in zip(spatial, sc, strict=True)]
        by_scale = True
    if mode == "nearest":  # gathers along each axis, indices computed on the host (kept by content)
        for axis, (o, i, s_) in enumerate(zip(out, spatial, sc, strict=True), start=2):
            x = x.index_select(axis, c.t(_nearest_index(o, i, s_, ctm, near), x))
        return x
    n = x.dim() - 2
    if mode == "linear" and ctm in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        kind, align = {1: "linear", 2: "bilinear", 3: "trilinear"}[n], ctm == "align_corners"
    elif mode == "cubic" and n == 2 and ctm in ("half_pixel", "align_corners") and \
            c.a.get("cubic_coeff_a", -0.75) == -0.75:
        kind, align = "bicubic", ctm == "align_corners"
    else:
        raise ModelError(f"Resize mode={mode} with coordinate_transformation_mode={ctm} is not supported by the "
                         "torch runner")
    if by_scale and not align:  # ONNX maps coordinates with the given scale, not with out/in
        return F.interpolate(x, scale_factor=sc, mode=kind, align_corners=align, recompute_scale_factor=False)
    return F.interpolate(x, size=out, mode=kind, align_corners=align)


@_op("Constant")
def _constant(c: _Ctx) -> Value:
    raise AssertionError("Constant nodes are folded at load")


@_op("Selu")
def _selu(c: _Ctx, x: torch.Tensor) -> torch.Tensor:
    alpha, gamma = c.a.get("alpha", 1.67326319217681884765625), c.a.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@_op("PRelu")
def _prelu(c: _Ctx, x: torch.Tensor, slope: Value) -> torch.Tensor:
    s = c.t(slope, x)
    return torch.where(x >= 0, x, x * s)


@_op("InstanceNormalization")
def _instance_norm(c: _Ctx, x: torch.Tensor, scale: Value, bias: Value) -> torch.Tensor:
    return F.instance_norm(x, weight=c.t(scale, x), bias=c.t(bias, x), eps=c.a.get("epsilon", 1e-5))


@_op("TopK")
def _topk(c: _Ctx, x: torch.Tensor, k: Value) -> list[torch.Tensor]:
    if not c.a.get("sorted", 1):
        raise ModelError("TopK sorted=0 is not supported by the torch runner")
    values, idx = torch.topk(x, int(_host(k).reshape(-1)[0]), dim=c.a.get("axis", -1),
                             largest=bool(c.a.get("largest", 1)), sorted=True)
    return [values, idx]


@_op("GatherElements")
def _gather_elements(c: _Ctx, x: Value, ind: Value) -> torch.Tensor:
    x = c.t(x)
    i = c.t(ind, x).long()
    axis = c.a.get("axis", 0) % x.dim()
    return torch.gather(x, axis, torch.where(i < 0, i + x.shape[axis], i))


@_op("ScatterND")
def _scatter_nd(c: _Ctx, x: torch.Tensor, ind: Value, upd: Value) -> torch.Tensor:
    if c.a.get("reduction", "none") != "none":
        raise ModelError(f"ScatterND reduction={c.a['reduction']} is not supported by the torch runner")
    i = c.t(ind, x).long()
    u = c.t(upd, x)
    out = x.clone()
    k = i.shape[-1]
    flat_i = i.reshape(-1, k)
    out[tuple(flat_i[:, j] for j in range(k))] = u.reshape(flat_i.shape[0], *x.shape[k:])
    return out


@_op("CumSum")
def _cumsum(c: _Ctx, x: torch.Tensor, axis: Value) -> torch.Tensor:
    a = int(_host(axis).reshape(-1)[0])
    if c.a.get("reverse", 0):
        x = x.flip(a)
    y = torch.cumsum(x, a)
    if c.a.get("exclusive", 0):
        y = y - x
    return y.flip(a) if c.a.get("reverse", 0) else y


@_op("Einsum")
def _einsum(c: _Ctx, *xs: Value) -> torch.Tensor:
    like = next(x for x in xs if isinstance(x, torch.Tensor))
    return torch.einsum(c.a["equation"], *[c.t(x, like) for x in xs])


@_op("Trilu")
def _trilu(c: _Ctx, x: torch.Tensor, k: Value = None) -> torch.Tensor:
    kk = 0 if k is None else int(_host(k).reshape(-1)[0])
    return torch.triu(x, kk) if c.a.get("upper", 1) else torch.tril(x, kk)


@_op("ReduceL2", "ReduceProd", "ReduceLogSumExp")
def _reduce_more(c: _Ctx, x: torch.Tensor, axes_in: Value = None) -> torch.Tensor:
    axes = _axes(c, axes_in)
    keep = bool(c.a.get("keepdims", 1))
    dims = tuple(a % x.dim() for a in (axes if axes else range(x.dim())))
    op = c.a["__op"]
    if op == "ReduceL2":
        return torch.sqrt((x * x).sum(dim=dims, keepdim=keep))
    if op == "ReduceLogSumExp":
        return torch.logsumexp(x, dim=dims, keepdim=keep)
    y = x
    for d in sorted(dims, reverse=True):
        y = y.prod(dim=d, keepdim=keep)
    return y


@_op("Dropout")
def _dropout(c: _Ctx, x: Value, *rest: Value) -> Value:
    return x


# inputs read on the host (shapes, sizes, scales, axes): a float initializer there stays a numpy array as well
HOST_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Slice": (1, 2, 3, 4), "Pad": (1, 2, 3),
    "Expand": (1,), "Tile": (1,), "Split": (1,), "Squeeze": (1,), "Unsqueeze": (1,), "ReduceMean": (1,),
    "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "Clip": (1, 2), "ConstantOfShape": (0,),
    "Range": (0, 1, 2), "TopK": (1,), "CumSum": (1,), "Trilu": (1,), "ReduceL2": (1,), "ReduceProd": (1,),
    "ReduceLogSumExp": (1,),
}


class OnnxModule(torch.nn.Module):
    """``forward(*inputs)`` runs the graph and returns its outputs as a tuple, in the graph's order."""

    def __init__(self, model: Any) -> None:
        super().__init__()

        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self._host_consts: dict[str, np.ndarray] = {}
        self._buffer_names: dict[str, str] = {}
        self._const_ids: set[int] = set()
        self._dev_cache: dict[tuple[int, str], torch.Tensor] = {}
        self._value_cache: dict[tuple[Any, ...], torch.Tensor] = {}
        self.float_dtype = torch.float32

        on_host = {n.input[j] for n in g.node for j in HOST_INPUTS.get(n.op_type, ()) if j < len(n.input)}

        def keep(name: str, arr: np.ndarray) -> None:
            if np.issubdtype(arr.dtype, np.floating) and arr.size > 1:
                key = f"c{len(self._buffer_names)}"
                self.register_buffer(key, torch.from_numpy(arr.astype(np.float32, copy=True)))
                self._buffer_names[name] = key
                if name not in on_host:
                    return
            self._host_consts[name] = arr
            self._const_ids.add(id(arr))

        for init in g.initializer:
            keep(init.name, numpy_helper.to_array(init))
        known = {i.name for i in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in known]
        self.output_names = [o.name for o in g.output]
        self.nodes: list[tuple[str, list[str], list[str], dict[str, Any]]] = []
        missing: set[str] = set()
        for n in g.node:
            if n.domain not in ("", "ai.onnx"):
                missing.add(f"{n.domain}.{n.op_type}")
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attrs.items()}
            if n.op_type == "Constant":
                if "value" in attrs:
                    arr = numpy_helper.to_array(attrs["value"])
                elif "value_float" in attrs or "value_int" in attrs:
                    arr = np.array(attrs.get("value_float", attrs.get("value_int")))
                elif "value_ints" in attrs or "value_floats" in attrs:
                    arr = np.array(attrs.get("value_ints", attrs.get("value_floats")))
                else:
                    missing.add("Constant(" + ",".join(attrs) + ")")
                    continue
                keep(n.output[0], arr)
                continue
            if n.op_type not in _OPS:
                missing.add(n.op_type)
            attrs["__op"], attrs["__n_out"] = n.op_type, len(n.output)
            self.nodes.append((n.op_type, list(n.input), list(n.output), attrs))
        if missing:
            raise ModelError(f"the torch runner for ONNX graphs lacks {', '.join(sorted(missing))}; run this model "
                             "with --engine onnxruntime")

    @property
    def device(self) -> torch.device:
        b = next(self.buffers(), None)
        return b.device if b is not None else torch.device("cpu")

    def _apply(self, fn: Any, recurse: bool = True) -> OnnxModule:
        out = super()._apply(fn, recurse)
        b = next(self.buffers(), None)
        if b is not None:
            self.float_dtype = b.dtype
        self._dev_cache.clear()
        self._value_cache.clear()
        return out

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise ModelError(f"the ONNX graph takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        host = self._host_consts
        env: dict[str, Value] = dict(host)
        for name, key in self._buffer_names.items():
            env[name] = getattr(self, key)
        env.update(zip(self.input_names, inputs, strict=True))
        for op, ins, outs, attrs in self.nodes:
            at_host = HOST_INPUTS.get(op, ())
            args = [(host[i] if j in at_host and i in host else env[i]) if i else None for j, i in enumerate(ins)]
            res = _OPS[op](_Ctx(self, attrs), *args)
            if len(outs) == 1:
                env[outs[0]] = res
            else:
                for name, v in zip(outs, res if isinstance(res, list | tuple) else [res], strict=False):
                    if name:
                        env[name] = v
        out = []
        for name in self.output_names:
            v = env[name]
            out.append(v if isinstance(v, torch.Tensor) else torch.as_tensor(v, device=self.device))
        return tuple(out)


def load_onnx_module(path: str | Path) -> OnnxModule:
    """An ``.onnx`` file (external data beside it allowed) as a torch module."""

    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - a damaged file is one line
        raise ModelError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e})") from None
    return OnnxModule(model).eval()
