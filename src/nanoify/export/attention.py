"""Fuse self-attention with an additive score bias into ONNX Runtime's ``MultiHeadAttention`` (com.microsoft).

ONNX Runtime's transformer optimizer fuses BERT's attention, whose scores get one additive term (the padding
mask). Encoders with a learned relative position bias (MPNet, the 12-layer teacher of the benchmarks) add a
second term before the softmax, so that fusion does not match and every layer runs as a dozen small nodes
(MatMul, Div, two Adds, Softmax, MatMul and the head-splitting Reshape/Transposes). ``MultiHeadAttention`` takes
an additive ``attention_bias`` of shape (B or 1, H or 1, S, S), so both terms become one bias, computed once and
shared by every layer, and each layer one node. The pattern matched, per layer (exported by torch.onnx from any
eager attention written the textbook way):
    q = Transpose[0,2,1,3](Reshape(Xq))        k = Transpose[0,2,3,1](Reshape(Xk))   v = Transpose[0,2,1,3](Reshape(Xv))
    p = Softmax(Add(Add(Div|Mul(MatMul(q, k), c), bias_a), bias_b))
    out = Reshape(Transpose[0,2,1,3](MatMul(p, v)))          →   out = MultiHeadAttention(Xq, Xk, Xv, bias_a + bias_b)

Xq, Xk, Xv are the projections (B, S, D). Only that exact shape of graph is rewritten; anything else is left as
it was, and the export's validation against PyTorch checks the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import helper
from onnxruntime.transformers.onnx_model import OnnxModel


class _Graph:
    """Producer/consumer lookups over an ORT ``OnnxModel`` (its own maps and constant reader)."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt
        self.producer = opt.output_name_to_node()
        self.consumers = opt.input_name_to_nodes()

    @staticmethod
    def attr(node: Any, name: str) -> Any:
        return OnnxModel.get_node_attribute(node, name)

    def parent(self, node: Any, index: int, op: str | tuple[str, ...]) -> Any | None:
        if node is None or index >= len(node.input):
            return None
        p = self.producer.get(node.input[index])
        return p if p is not None and p.op_type in ((op,) if isinstance(op, str) else op) else None

    def chain(self, add: Any, op: str | tuple[str, ...]) -> tuple[Any | None, str | None]:
        """For ``add`` = Add(x, y) with x produced by ``op``: (that producer, y), either input order."""
        for i in (0, 1):
            p = self.parent(add, i, op)
            if p is not None:
                return p, add.input[1 - i]
        return None, None

    def only_child(self, node: Any, op: str) -> Any | None:
        kids = self.consumers.get(node.output[0], []) if node is not None else []
        return kids[0] if len(kids) == 1 and kids[0].op_type == op else None

    def scalar(self, name: str) -> float | None:
        v = self.opt.get_constant_value(name)
        return float(np.asarray(v).reshape(-1)[0]) if v is not None and np.asarray(v).size == 1 else None

    def heads_input(self, name: str, perm: list[int]) -> str | None:
        """X when ``name`` is the output of Transpose[perm](Reshape(X)) (the split into heads), else None."""
        node = self.producer.get(name)
        if node is None or node.op_type != "Transpose" or list(self.attr(node, "perm") or []) != perm:
            return None
        r = self.parent(node, 0, "Reshape")
        return r.input[0] if r is not None else None


def fuse_biased_attention(opt: Any, num_heads: int) -> int:
    """Rewrite every matching attention block of ``opt`` (an ORT ``OnnxModel``, in place); returns how many.

    Each match's output is taken over by one MultiHeadAttention node; what only fed it (the score chain, the
    head-splitting Reshape/Transposes and their shape arithmetic) is then unused and pruned."""

    gr = _Graph(opt)
    fused, merges, new_nodes, bias_sum = 0, [], [], {}
    for sm in opt.get_nodes_by_op_type("Softmax"):
        axis = gr.attr(sm, "axis")
        if (axis if axis is not None else -1) not in (-1, 3):
            continue
        add_b = gr.parent(sm, 0, "Add")
        add_a, bias_b = gr.chain(add_b, "Add")
        scaled, bias_a = gr.chain(add_a, ("Div", "Mul"))
        qk = gr.parent(scaled, 0, "MatMul")
        c = gr.scalar(scaled.input[1]) if qk is not None else None
        if not c:
            continue
        xq, xk = gr.heads_input(qk.input[0], [0, 2, 1, 3]), gr.heads_input(qk.input[1], [0, 2, 3, 1])
        pv = gr.only_child(sm, "MatMul")
        if xq is None or xk is None or pv is None or pv.input[0] != sm.output[0]:
            continue
        xv = gr.heads_input(pv.input[1], [0, 2, 1, 3])
        tr = gr.only_child(pv, "Transpose")
        merge = gr.only_child(tr, "Reshape") if tr is not None and list(gr.attr(tr, "perm")) == [0, 2, 1, 3] else None
        if xv is None or merge is None:
            continue
        if any(len(gr.consumers.get(n.output[0], [])) != 1 for n in (qk, scaled, add_a, add_b, sm, pv, tr)):
            continue  # an intermediate result is used elsewhere (attention probabilities as an output, say)
        key = (bias_a, bias_b)
        if key not in bias_sum:
            bias_sum[key] = f"attention_bias_sum_{len(bias_sum)}"
            new_nodes.append(helper.make_node("Add", list(key), [bias_sum[key]],
                                              name=f"AttentionBiasSum_{len(bias_sum)}"))
        scale = 1.0 / c if scaled.op_type == "Div" else c
        new_nodes.append(helper.make_node("MultiHeadAttention", [xq, xk, xv, "", "", bias_sum[key]],
                                          [merge.output[0]], name=f"MultiHeadAttention_biased_{fused}",
                                          domain="com.microsoft", num_heads=num_heads,
                                          scale=float(np.float32(scale))))
        merges.append(merge)
        fused += 1
    if fused:
        opt.remove_nodes(merges)
        opt.add_nodes(new_nodes)
        if not any(o.domain == "com.microsoft" for o in opt.model.opset_import):
            opt.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        opt.prune_graph(allow_remove_graph_inputs=False)
        opt.topological_sort()
    return fused
