"""Dynamic INT8 of the tiny exported BERT: INT8 ops present, output within SQNR ≥ 20 dB of FP32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from nanoify.data.text import collate
from nanoify.engines import open_engine
from nanoify.export.onnx import export
from nanoify.quant.dynamic import quantize_dynamic_int8
from nanoify.tasks.classify import cosine, sqnr_db


def test_sqnr_and_cosine_by_hand():
    ref = np.array([[3.0, 4.0]])
    assert sqnr_db(ref, ref + np.array([[0.3, 0.4]])) == pytest.approx(20.0)
    assert cosine(ref, 2 * ref) == pytest.approx(1.0)


def test_dynamic_int8_of_tiny_bert(tiny_teacher, tmp_path):
    export(tiny_teacher, tmp_path / "e")
    src, dst = tmp_path / "e" / "model.fused.onnx", tmp_path / "int8.onnx"
    # the GEMM path alone must stay within 20 dB; the embedding table is checked separately below
    quantize_dynamic_int8(src, dst, op_types=("MatMul", "Gemm", "Attention"))
    ops = [n.op_type for n in onnx.load(dst).graph.node]
    assert ops.count("QAttention") == 4 and "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    rng = np.random.default_rng(0)
    feeds = [collate([list(rng.integers(5, 80, size=n)) for n in lens], 0) for lens in ([7, 12, 20], [30], [5, 9])]
    with open_engine("onnxruntime", str(src)) as fp32, open_engine("onnxruntime", str(dst)) as q:
        ref = np.concatenate([fp32.infer(f)["logits"] for f in feeds])
        got = np.concatenate([q.infer(f)["logits"] for f in feeds])
    assert sqnr_db(ref, got) >= 20.0
    assert dst.stat().st_size < src.stat().st_size


def test_default_dynamic_ops_also_quantize_the_embedding_table(tiny_teacher, tmp_path):
    export(tiny_teacher, tmp_path / "e")
    src, gemm_only, full = tmp_path / "e" / "model.fused.onnx", tmp_path / "g.onnx", tmp_path / "f.onnx"
    quantize_dynamic_int8(src, gemm_only, op_types=("MatMul", "Gemm", "Attention"))
    quantize_dynamic_int8(src, full)
    ops = [n.op_type for n in onnx.load(full).graph.node]
    assert "QEmbedLayerNormalization" in ops and "EmbedLayerNormalization" not in ops
    assert full.stat().st_size < gemm_only.stat().st_size
