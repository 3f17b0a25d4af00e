"""An MPNet teacher (relative position bias, no token type ids, its own tokenizer) through the text chain:
fine-tune, distil into a half student and a narrow one with layer and relation losses, export with parity."""

from __future__ import annotations

import onnx
import pytest

from nanoify.config import DataConfig, DistillConfig, TrainConfig
from nanoify.distill.run import distill
from nanoify.export.onnx import export
from tests.conftest import finetune_tiny, make_mpnet_encoder


@pytest.fixture(scope="module")
def mpnet_teacher(tmp_path_factory, tiny_data):
    enc = make_mpnet_encoder(tmp_path_factory.mktemp("mpnet") / "encoder")
    return finetune_tiny(enc, tiny_data, tmp_path_factory.mktemp("mpnet_teacher") / "teacher")


def _distill(teacher, data, out, **kw):
    cfg = DistillConfig(teacher=str(teacher), data=DataConfig(data=str(data), max_length=32),
                        train=TrainConfig(epochs=kw.pop("epochs", 2), batch_size=32, lr=3e-3, log_every=10,
                                          min_steps=0), **kw)
    return distill(cfg, out, progress=False)


def test_mpnet_half_student_keeps_the_teacher_and_exports(tmp_path, mpnet_teacher, tiny_data):
    man = _distill(mpnet_teacher, tiny_data, tmp_path / "half", student="half")
    assert man["student"]["init"] == "teacher-layers" and man["student"]["layers"] == 2
    assert man["metrics"]["validation"]["accuracy"] > 0.75
    ex = export(tmp_path / "half", tmp_path / "onnx", texts=["good w1 w2", "bad w3 w4 w5 w6 w7", "w9"])
    assert max(ex["validation"]["max_abs_logit_diff"].values()) <= 1e-4
    assert set(ex["inputs"]) == {"input_ids", "attention_mask"}  # MPNet takes no token type ids
    # the relative position bias + padding mask attention becomes one MultiHeadAttention per layer (validated above
    # against PyTorch, padded rows included)
    assert ex["fused_ops"]["MultiHeadAttention"] == 2 and ex["warnings"] == []
    ops = [n.op_type for n in onnx.load(tmp_path / "onnx" / "model.fused.onnx").graph.node]
    assert ops.count("MultiHeadAttention") == 2 and "Softmax" not in ops


@pytest.mark.parametrize("losses", [{"attention_weight": 1.0, "hidden_weight": 1.0},
                                    {"relation_weight": 1.0}], ids=["tinybert", "relations"])
def test_narrow_mpnet_student_learns_with_layer_or_relation_losses(tmp_path, mpnet_teacher, tiny_data, losses):
    man = _distill(mpnet_teacher, tiny_data, tmp_path / "narrow", student="layers=2,hidden=16,heads=2,intermediate=32",
                   epochs=5, **losses)
    assert man["student"]["init"] == "teacher-pca"
    assert man["metrics"]["validation"]["accuracy"] > 0.6
