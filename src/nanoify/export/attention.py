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


def _attr(node: Any, name: str) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


class _Graph:
    def __init__(self, model: Any) -> None:
        self.g = model.graph
        self.producer = {o: n for n in self.g.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.inits = {t.name: t for t in self.g.initializer}

    def parent(self, node: Any, index: int, op: str | tuple[str, ...]) -> Any | None:
        if index >= len(node.input):
            return None
        p = self.producer.get(node.input[index])
        ops = (op,) if isinstance(op, str) else op
        return p if p is not None and p.op_type in ops else None

    def chain(self, add: Any, op: str | tuple[str, ...]) -> tuple[Any | None, str | None]:
        """For ``add`` = Add(x, y) with x produced by ``op``: (that producer, y), either input order."""
        if add is None:
            return None, None
        for i in (0, 1):
            p = self.parent(add, i, op)
            if p is not None:
                return p, add.input[1 - i]
        return None, None

    def only_child(self, node: Any, op: str) -> Any | None:
        kids = self.consumers.get(node.output[0], [])
        return kids[0] if len(kids) == 1 and kids[0].op_type == op else None

    def scalar(self, name: str) -> float | None:
        from onnx import numpy_helper

        if name in self.inits:
            v = numpy_helper.to_array(self.inits[name])
        else:
            p = self.producer.get(name)
            if p is None or p.op_type != "Constant":
                return None
            v = numpy_helper.to_array(_attr(p, "value"))
        return float(v.reshape(-1)[0]) if v.size == 1 else None


def _heads_input(gr: _Graph, node: Any, perm: list[int]) -> str | None:
    """X when ``node`` is Transpose[perm](Reshape(X)) (the split into heads), else None."""
    if node is None or node.op_type != "Transpose" or list(_attr(node, "perm") or []) != perm:
        return None
    r = gr.parent(node, 0, "Reshape")
    return r.input[0] if r is not None else None


def fuse_biased_attention(model: Any, num_heads: int) -> int:
    """Rewrite every matching attention block of ``model`` (an onnx ModelProto, in place); returns how many."""
    from onnx import helper

    gr = _Graph(model)
    fused, remove, new_nodes, bias_sum = 0, set(), [], {}
    for sm in [n for n in gr.g.node if n.op_type == "Softmax"]:
        if (_attr(sm, "axis") if _attr(sm, "axis") is not None else -1) not in (-1, 3):
            continue
        add_b = gr.parent(sm, 0, "Add")
        add_a, bias_b = gr.chain(add_b, "Add")
        scaled, bias_a = gr.chain(add_a, ("Div", "Mul"))
        qk = gr.parent(scaled, 0, "MatMul") if scaled is not None else None
        if qk is None:
            continue
        c = gr.scalar(scaled.input[1])
        if not c:
            continue
        scale = 1.0 / c if scaled.op_type == "Div" else c
        xq = _heads_input(gr, gr.producer.get(qk.input[0]), [0, 2, 1, 3])
        xk = _heads_input(gr, gr.producer.get(qk.input[1]), [0, 2, 3, 1])
        pv = gr.only_child(sm, "MatMul")
        if xq is None or xk is None or pv is None or pv.input[0] != sm.output[0]:
            continue
        xv = _heads_input(gr, gr.producer.get(pv.input[1]), [0, 2, 1, 3])
        tr = gr.only_child(pv, "Transpose")
        merge = gr.only_child(tr, "Reshape") if tr is not None and list(_attr(tr, "perm")) == [0, 2, 1, 3] else None
        if xv is None or merge is None:
            continue
        chain = [qk, scaled, add_a, add_b, sm, pv, tr]
        if any(len(gr.consumers.get(n.output[0], [])) != 1 for n in chain):
            continue  # an intermediate result is used elsewhere (attention probabilities as an output, say)
        key = (bias_a, bias_b)
        if key not in bias_sum:
            bias_sum[key] = f"attention_bias_sum_{len(bias_sum)}"
            new_nodes.append(helper.make_node("Add", list(key), [bias_sum[key]],
                                              name=f"AttentionBiasSum_{len(bias_sum)}"))
        mha = helper.make_node("MultiHeadAttention", [xq, xk, xv, "", "", bias_sum[key]], [merge.output[0]],
                               name=f"MultiHeadAttention_biased_{fused}", domain="com.microsoft",
                               num_heads=num_heads, scale=float(np.float32(scale)))
        new_nodes.append(mha)
        for n in chain + [merge]:
            remove.add(id(n))
        for t in (qk.input[0], qk.input[1], pv.input[1]):  # the head-splitting Transposes and their Reshapes
            tnode = gr.producer[t]
            if len(gr.consumers.get(t, [])) == 1:
                remove.add(id(tnode))
                r = gr.producer[tnode.input[0]]
                if len(gr.consumers.get(r.output[0], [])) == 1:
                    remove.add(id(r))
        fused += 1
    if not fused:
        return 0
    keep = [n for n in gr.g.node if id(n) not in remove]
    del gr.g.node[:]
    gr.g.node.extend(keep + new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    _topological_sort(model)
    _drop_dead(model)
    return fused


def _topological_sort(model: Any) -> None:
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        progress = False
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
                progress = True
            else:
                rest.append(n)
        if not progress:
            raise RuntimeError("attention fusion left a cycle or a missing input")  # pragma: no cover
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def _drop_dead(model: Any) -> None:
    """Remove nodes whose outputs nobody reads (the shape arithmetic of removed Reshapes), then initializers
    nobody reads."""
    g = model.graph
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if not any(o in used for o in n.output)]
        if not dead:
            unused = [t for t in g.initializer if t.name not in used]
            for t in unused:
                g.initializer.remove(t)
            return
        ids = {id(n) for n in dead}
        keep = [n for n in g.node if id(n) not in ids]
        del g.node[:]
        g.node.extend(keep)
