import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from nanoify.data.text import LabelMap
from nanoify.errors import ConfigError, ModelError
from nanoify.models.student import (
    build_student,
    copy_teacher_layers,
    parse_student_spec,
    resolve_init,
    teacher_layer_choice,
)


def _teacher(layers=6, hidden=32, heads=4, inter=64):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=64, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def test_presets_and_key_values():
    t = _teacher().config
    assert parse_student_spec("half", t).to_dict() == {"layers": 3, "hidden": 32, "heads": 4, "intermediate": 64}
    tb = parse_student_spec("tinybert", t)
    assert (tb.layers, tb.hidden, tb.intermediate) == (4, 16, 64) and tb.hidden % tb.heads == 0
    s = parse_student_spec("layers=2,hidden=16", t)
    assert (s.layers, s.hidden, s.heads, s.intermediate) == (2, 16, 4, 32)
    cfg384 = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    tb = parse_student_spec("tinybert", cfg384)
    assert (tb.layers, tb.hidden, tb.heads, tb.intermediate) == (4, 96, 12, 384)


@pytest.mark.parametrize("spec", ["layers=2,width=3", "layers=two", "hidden=30,heads=4", "layers=0"])
def test_bad_specs(spec):
    with pytest.raises(ConfigError):
        parse_student_spec(spec, _teacher().config)


def test_layer_choice_every_kth_from_first():
    assert teacher_layer_choice(3, 6) == [0, 2, 4]
    assert teacher_layer_choice(6, 12) == [0, 2, 4, 6, 8, 10]
    assert teacher_layer_choice(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        teacher_layer_choice(5, 4)


def test_teacher_layers_init_copies_exactly_the_right_tensors():
    teacher = _teacher()
    spec = parse_student_spec("half", teacher.config)
    student, tok = build_student(teacher, spec, "teacher-layers", LabelMap(["0", "1"]))
    assert tok is None
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    for s_idx, t_idx in enumerate([0, 2, 4]):
        for suffix in ("attention.self.query.weight", "output.dense.bias", "attention.output.LayerNorm.weight"):
            assert torch.equal(s_sd[f"bert.encoder.layer.{s_idx}.{suffix}"],
                               t_sd[f"bert.encoder.layer.{t_idx}.{suffix}"])
        # and not a neighbouring layer
        assert not torch.equal(s_sd[f"bert.encoder.layer.{s_idx}.intermediate.dense.weight"],
                               t_sd[f"bert.encoder.layer.{t_idx + 1}.intermediate.dense.weight"])
    for name in ("bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.bias",
                 "bert.pooler.dense.weight", "classifier.weight", "classifier.bias"):
        assert torch.equal(s_sd[name], t_sd[name])
    mapping = copy_teacher_layers(teacher, student)
    assert mapping["bert.encoder.layer.1.output.dense.weight"] == "bert.encoder.layer.2.output.dense.weight"
    assert len(mapping) == len(s_sd)


def test_teacher_layers_needs_same_width():
    teacher = _teacher()
    spec = parse_student_spec("layers=2,hidden=16,heads=4", teacher.config)
    with pytest.raises(ModelError, match="--init random"):
        build_student(teacher, spec, "teacher-layers", LabelMap(["0", "1"]))
    student, _ = build_student(teacher, spec, "random", LabelMap(["0", "1"]))
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 2


def test_auto_init_fits_the_student():
    teacher = _teacher()
    half = parse_student_spec("half", teacher.config)
    narrow = parse_student_spec("layers=2,hidden=16,heads=4", teacher.config)
    wide = parse_student_spec("layers=2,hidden=64,heads=4", teacher.config)
    assert resolve_init(teacher.config, half) == "teacher-layers"
    assert resolve_init(teacher.config, narrow) == "teacher-pca"
    assert resolve_init(teacher.config, wide) == "random"
    student, _ = build_student(teacher, half, "auto", LabelMap(["0", "1"]))
    copied = teacher.bert.encoder.layer[teacher_layer_choice(3, 6)[0]].attention.self.query.weight
    assert torch.equal(student.bert.encoder.layer[0].attention.self.query.weight, copied)


def test_unknown_init_is_clear():
    teacher = _teacher()
    with pytest.raises(ConfigError, match="--init"):
        build_student(teacher, None, "/no/such/encoder", LabelMap(["0", "1"]))


def test_teacher_pca_projects_embeddings_onto_top_components():
    from nanoify.models.student import pca_basis

    teacher = _teacher()
    spec = parse_student_spec("layers=2,hidden=16,heads=4", teacher.config)
    student, _ = build_student(teacher, spec, "teacher-pca", LabelMap(["0", "1"]))
    e_t = teacher.bert.embeddings.word_embeddings.weight.detach()
    basis = pca_basis(e_t, 16)
    assert torch.allclose(basis.T @ basis, torch.eye(16), atol=1e-5)
    assert torch.allclose(student.bert.embeddings.word_embeddings.weight, e_t @ basis, atol=1e-6)
    assert torch.allclose(student.bert.embeddings.position_embeddings.weight,
                          teacher.bert.embeddings.position_embeddings.weight @ basis, atol=1e-6)
    # the top principal directions keep more of the centred embedding energy than a random basis would
    centred = e_t - e_t.mean(0)
    rand = torch.linalg.qr(torch.randn(32, 16))[0]
    assert (centred @ basis).pow(2).sum() > (centred @ rand).pow(2).sum()
    wide = parse_student_spec("layers=2,hidden=64,heads=4", teacher.config)
    with pytest.raises(ModelError, match="no wider"):
        build_student(teacher, wide, "teacher-pca", LabelMap(["0", "1"]))


def _mpnet_teacher(layers=4, hidden=32, heads=4):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    cfg = MPNetConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      intermediate_size=2 * hidden, max_position_embeddings=66, num_labels=2)
    t = MPNetForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a bias unlike any fresh initialisation, so copying is visible
        t.mpnet.encoder.relative_attention_bias.weight.copy_(torch.randn(32, heads) * 3)
    return t


BIAS = "mpnet.encoder.relative_attention_bias.weight"


def test_mpnet_relative_position_bias_survives_layer_copying():
    teacher = _mpnet_teacher()
    lm = LabelMap(["0", "1"])
    same, _ = build_student(teacher, parse_student_spec("layers=4", teacher.config), "auto", lm)
    ids = torch.randint(5, 100, (3, 40))
    mask = torch.ones_like(ids)
    mask[1, 25:] = 0
    with torch.no_grad():  # a student with every layer is the teacher: the shared bias came along
        torch.testing.assert_close(same.eval()(input_ids=ids, attention_mask=mask).logits,
                                   teacher(input_ids=ids, attention_mask=mask).logits)
    half, _ = build_student(teacher, parse_student_spec("half", teacher.config), "auto", lm)
    assert torch.equal(half.state_dict()[BIAS], teacher.state_dict()[BIAS])


def test_fresh_mpnet_students_take_the_teachers_position_bias_per_head():
    teacher = _mpnet_teacher(heads=4)
    lm = LabelMap(["0", "1"])
    t_bias = teacher.state_dict()[BIAS]
    narrow, _ = build_student(teacher, parse_student_spec("layers=2,hidden=16,heads=4", teacher.config), "auto", lm)
    assert torch.equal(narrow.state_dict()[BIAS], t_bias)
    two, _ = build_student(teacher, parse_student_spec("layers=2,hidden=16,heads=2", teacher.config), "auto", lm)
    assert torch.equal(two.state_dict()[BIAS], t_bias[:, [0, 2]])
    rnd, _ = build_student(teacher, parse_student_spec("layers=2,hidden=16,heads=2", teacher.config), "random", lm)
    assert not torch.equal(rnd.state_dict()[BIAS], t_bias[:, [0, 2]])


def test_mpnet_student_with_other_bucket_count_is_one_clear_error():
    from nanoify.models.student import copy_position_bias

    teacher = _mpnet_teacher()
    cfg = teacher.config.__class__(**{**teacher.config.to_dict(), "relative_attention_num_buckets": 16})
    other = type(teacher)(cfg)
    with pytest.raises(ModelError, match="32 relative-position buckets, the student 16"):
        copy_position_bias(teacher, other)


def test_half_precision_checkpoints_load_as_float32(tmp_path):
    from nanoify.models.load import load_classifier
    from tests.conftest import make_encoder

    enc = make_encoder(tmp_path / "enc")
    model, tok, _ = load_classifier(str(enc), label_map=LabelMap(["a", "b"]))
    model.half().save_pretrained(tmp_path / "fp16")
    tok.save_pretrained(tmp_path / "fp16")
    again, _, lm = load_classifier(str(tmp_path / "fp16"))
    assert again.dtype == torch.float32 and lm.names == ["a", "b"]
