"""A tiny in-process BERT teacher distilled for a few dozen steps: losses fall, outputs round-trip,
resume equals an uninterrupted run, failure cases are one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nanoify.cli import main
from nanoify.config import DataConfig, DistillConfig, FinetuneConfig, TrainConfig
from nanoify.data.text import collate, encode_texts
from nanoify.distill import run as run_mod
from nanoify.distill.mapping import LayerMatch
from nanoify.distill.run import _projections, distill, evaluate, finetune
from nanoify.distill.shape import fit_latency
from nanoify.distill.trainer import holdout_split
from nanoify.errors import ConfigError
from nanoify.models.load import load_classifier
from nanoify.tasks.text import predict_logits
from tests.conftest import make_encoder, write_tsv


def _cfg(teacher, data, **kw):
    train = kw.pop("train", TrainConfig(epochs=2, batch_size=32, lr=2e-3, checkpoint_every=5, log_every=5,
                                        min_steps=0))
    return DistillConfig(teacher=str(teacher), data=DataConfig(data=str(data), max_length=32), train=train, **kw)


def _first_last(history, key):
    vals = [h[key] for h in history if key in h]
    return vals[0], vals[-1]


class Killed(Exception):
    pass


def _kill_at(cfg, out: Path, step: int, exc: type[BaseException] = Killed) -> None:
    """Run ``distill(cfg, out)`` and kill it (``exc`` raised from inside the loop) after optimiser step ``step``."""
    def kill(s):
        if s == step:
            raise exc


    orig = run_mod.train
    run_mod.train = lambda *a, **k: orig(*a, **{**k, "on_step": kill})
    try:
        with pytest.raises(exc):
            distill(cfg, out, progress=False)
    finally:
        run_mod.train = orig


def _history(folder: Path):
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_narrow_student_with_all_losses_learns_and_round_trips(tmp_path, tiny_teacher, tiny_data):
    out = tmp_path / "student"
    cfg = _cfg(tiny_teacher, tiny_data, student="layers=2,hidden=16,heads=2,intermediate=32", init="random",
               attention_weight=1.0, hidden_weight=1.0, embedding_weight=1.0,
               train=TrainConfig(epochs=5, batch_size=32, lr=3e-3, log_every=10, min_steps=0))
    man = distill(cfg, out, progress=False)
    hist = _history(out)
    # attention maps are also pulled by the task terms here; the two-stage test checks them falling alone
    for key in ("kd_kl", "hard_ce", "embedding_mse", "hidden_mse_s1_t2", "hidden_mse_s2_t4"):
        first, last = _first_last(hist, key)
        assert last < first, (key, first, last)
    assert "attention_mse_s2_t4" in hist[-1]
    assert man["projections"] == ["embedding_mse", "hidden_mse_s1_t2", "hidden_mse_s2_t4"]
    assert man["student"]["heads"] == 2 and man["teacher_logits_cached"] is False
    assert man["student"]["encoder_flops_ratio_vs_teacher"] > 4
    assert man["metrics"]["validation"]["accuracy"] > 0.6
    # save/load round trip: same logits from the reloaded folder as from the manifest's evaluation
    model, tok, lm = load_classifier(str(out))
    assert lm.names == ["0", "1"] and model.config.hidden_size == 16
    res = evaluate(out, DataConfig(data=str(tiny_data), max_length=32))
    assert res["accuracy"] == pytest.approx(man["metrics"]["validation"]["accuracy"])
    assert not (tmp_path / "student.ckpt").exists()


def test_half_student_logits_only_uses_cached_teacher_logits(tmp_path, tiny_teacher, tiny_data, caplog):
    import logging
    import os

    out = tmp_path / "half"
    man = distill(_cfg(tiny_teacher, tiny_data), out, progress=False)
    assert man["teacher_logits_cached"] is True
    assert list((Path(os.environ["NANOIFY_CACHE"]) / "teacher_logits").glob("*.pt"))
    with caplog.at_level(logging.INFO, logger="nanoify.distill.run"):
        again = distill(_cfg(tiny_teacher, tiny_data, temperature=4.0), tmp_path / "half_t4", progress=False)
    assert "teacher logits from cache" in caplog.text  # the second student reuses the first one's teacher pass
    assert again["metrics"]["validation"]["teacher_accuracy"] == man["metrics"]["validation"]["teacher_accuracy"]
    assert man["student"]["init_teacher_layers"] == [0, 2]
    assert man["stages"] == [{"name": "joint", "weights": {"kd_kl": 1.0, "hard_ce": 0.5}, "steps": 40}]
    assert man["metrics"]["validation"]["accuracy"] > 0.75
    a = man["metrics"]["validation"]["agreement"]
    assert a["both_right"] + a["student_only_right"] + a["teacher_only_right"] + a["both_wrong"] == a["n"] == 200


def test_two_stage_schedule_runs_each_stage_with_its_terms(tmp_path, tiny_teacher, tiny_data):
    out = tmp_path / "two"
    man = distill(_cfg(tiny_teacher, tiny_data, student="layers=2,hidden=16,heads=2,intermediate=32", init="random",
                       stages=("intermediate", "prediction"),
                       train=TrainConfig(epochs=2, batch_size=32, lr=3e-3, log_every=5, min_steps=0)), out,
                 progress=False)
    names = [s["name"] for s in man["stages"]]
    assert names == ["intermediate", "prediction"]
    inter, pred = man["stages"]
    assert "kd_kl" not in inter["weights"] and inter["weights"]["attention_mse_s1_t2"] == 1.0
    assert set(pred["weights"]) == {"kd_kl", "hard_ce"}
    hist = _history(out)
    assert {h["stage"] for h in hist} == {"intermediate", "prediction"}
    assert all("kd_kl" not in h for h in hist if h["stage"] == "intermediate")
    inter_hist = [h for h in hist if h["stage"] == "intermediate"]
    for key in ("attention_mse_s1_t2", "attention_mse_s2_t4", "hidden_mse_s2_t4", "embedding_mse"):
        assert inter_hist[-1][key] < inter_hist[0][key], key


def test_resume_after_kill_equals_uninterrupted(tmp_path, tiny_teacher, tiny_data):
    cfg = _cfg(tiny_teacher, tiny_data, student="layers=2,hidden=16,heads=2,intermediate=32", init="random",
               hidden_weight=1.0, attention_weight=1.0,
               train=TrainConfig(max_steps=12, batch_size=32, lr=2e-3, checkpoint_every=5, log_every=4))
    full = tmp_path / "full"
    distill(cfg, full, progress=False)
    part = tmp_path / "part"
    _kill_at(cfg, part, 8)
    assert not part.exists() and (tmp_path / "part.ckpt" / "state.safetensors").is_file()
    assert not list((tmp_path / "part.ckpt").glob("*.pt"))  # nothing that would be unpickled
    distill(cfg, part, resume=True, progress=False)
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _history(full) == _history(part)


def test_different_tokenizers_logits_only_works_intermediate_is_an_error(tmp_path, tiny_teacher, tiny_data):
    other = make_encoder(tmp_path / "other", hidden=16, layers=2, heads=2, seed=5, vocab_extra=["extra"])
    man = distill(_cfg(tiny_teacher, tiny_data, init=str(other),
                       train=TrainConfig(epochs=1, batch_size=32, lr=2e-3)), tmp_path / "s", progress=False)
    assert man["teacher_logits_cached"] is True
    assert load_classifier(str(tmp_path / "s"))[1].get_vocab().get("extra") is not None
    with pytest.raises(ConfigError, match="tokenizers differ"):
        distill(_cfg(tiny_teacher, tiny_data, init=str(other), hidden_weight=1.0), tmp_path / "s2", progress=False)


def test_cli_evaluate_json_with_teacher(tmp_path, tiny_teacher, tiny_data, capsys):
    out = tmp_path / "cli_student"
    rc = main(["distill", "--teacher", str(tiny_teacher), "--data", str(tiny_data), "--out", str(out),
               "--max-steps", "10", "--lr", "2e-3", "--max-length", "32"])
    assert rc == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(tiny_data), "--teacher", str(tiny_teacher), "--json",
                 "--max-length", "32"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 200 and 0 <= res["accuracy"] <= 1
    assert set(res["agreement"]) >= {"both_right", "student_only_right", "teacher_only_right", "both_wrong",
                                      "copied_mistakes"}


def _run_error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("nanoify: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_and_keep_previous_output(tmp_path, tiny_teacher, tiny_data, capsys, monkeypatch):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "precious.txt").write_text("x")
    base = ["distill", "--teacher", str(tiny_teacher), "--out", str(out), "--max-steps", "2"]
    assert "does not exist" in _run_error(capsys, base + ["--data", str(tmp_path / "nope")])
    assert "no column 'body'" in _run_error(capsys, base + ["--data", str(tiny_data), "--text-column", "body"])
    bad = tmp_path / "bad"
    write_tsv(bad / "train.tsv", [("good", "maybe")])
    assert "label 'maybe'" in _run_error(capsys, base + ["--data", str(bad)])
    empty = tmp_path / "empty"
    write_tsv(empty / "train.tsv", [])
    assert "is empty" in _run_error(capsys, base + ["--data", str(empty)])
    assert "--init random" in _run_error(capsys, base + ["--data", str(tiny_data), "--student", "hidden=16,heads=2",
                                                        "--init", "teacher-layers"])
    assert "does not exist" in _run_error(capsys, ["distill", "--teacher", str(tmp_path / "t"), "--out", str(out)])
    # a student folder whose label map differs from the teacher's
    other = tmp_path / "other_labels"
    other.mkdir()
    for f in Path(tiny_teacher).iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "label_map.json").write_text(json.dumps({"names": ["neg", "pos"]}))
    assert "label maps differ" in _run_error(capsys, base + ["--data", str(tiny_data), "--init", str(other)])
    assert "label maps differ" in _run_error(capsys, ["evaluate", str(tiny_teacher), "--data", str(tiny_data),
                                                      "--teacher", str(other)])
    assert "has no 'test' split (it has: train, validation)" in _run_error(
        capsys, ["evaluate", str(tiny_teacher), "--data", str(tiny_data), "--split", "test"])
    assert sorted(p.name for p in out.iterdir()) == ["precious.txt"]
    assert not any(p.name.startswith(".keep.tmp") for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)  # "keep/missing" is a local path (its folder exists), not a hub id
    assert "model path keep/missing does not exist" in _run_error(capsys, ["evaluate", "keep/missing"])


def test_teacher_logits_agree_with_a_direct_forward(tiny_teacher, tiny_data):
    model, tok, _ = load_classifier(str(tiny_teacher))
    texts = ["good w1 w2", "bad", "w3 w4 w5 w6 nice"]
    ids = encode_texts(tok, texts, 32)
    got = predict_logits(model, ids, 0, batch_size=2)
    with torch.no_grad():
        for i, x in enumerate(ids):
            feed = {k: torch.from_numpy(v) for k, v in collate([x], 0).items()}
            np.testing.assert_allclose(got[i], model(**feed).logits[0].numpy(), atol=1e-5)


def test_stale_checkpoint_is_an_error_for_resume_and_ignored_for_auto(tmp_path, tiny_teacher, tiny_data):
    import dataclasses


    train = TrainConfig(max_steps=6, batch_size=32, lr=2e-3, checkpoint_every=2)
    cfg = _cfg(tiny_teacher, tiny_data, student="layers=2,hidden=16,heads=2,intermediate=32", init="random",
               train=train)
    other = dataclasses.replace(cfg, train=dataclasses.replace(train, lr=1e-3))
    fresh = tmp_path / "fresh"
    distill(other, fresh, progress=False)

    out = tmp_path / "out"
    _kill_at(cfg, out, 4, KeyboardInterrupt)
    with pytest.raises(ConfigError, match="other settings"):
        distill(other, out, resume=True, progress=False)
    distill(other, out, resume="auto", progress=False)  # what compress passes: start over
    a, b = load_file(fresh / "model.safetensors"), load_file(out / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_finetune_twice_with_one_seed_gives_identical_weights(tmp_path, tiny_encoder, tiny_data):
    """The classifier head is initialised from the run's seed, not from whatever the global RNG holds."""

    cfg = FinetuneConfig(model=str(tiny_encoder), data=DataConfig(data=str(tiny_data), max_length=32),
                         train=TrainConfig(max_steps=6, batch_size=32, lr=3e-3, seed=7))
    finetune(cfg, tmp_path / "a", progress=False)
    torch.rand(123)  # the global RNG moves on between runs, as it does in any longer session
    finetune(cfg, tmp_path / "b", progress=False)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_relation_distillation_trains_a_narrow_student_without_projections(tmp_path, tiny_teacher, tiny_data):
    cfg = _cfg(tiny_teacher, tiny_data, student="layers=2,hidden=16,heads=2,intermediate=32",
               relation_weight=1.0, stages=("intermediate", "prediction"),
               train=TrainConfig(max_steps=60, batch_size=32, lr=3e-3, log_every=20))
    man = distill(cfg, tmp_path / "rel", progress=False)
    rel = man["relations"]
    assert rel["student_layer"] == 2 and rel["teacher_layer"] == 4 and rel["heads"] == 2
    assert man["student"]["init"] == "teacher-pca" and man["student"]["init_asked"] == "auto"
    assert man["projections"] == [] and man["layer_matches"] == []  # relations replace the layer losses
    inter = man["stages"][0]
    assert inter["name"] == "intermediate" and list(inter["weights"]) == [rel["term"]]
    first = [h for h in _history(tmp_path / "rel") if h["stage"] == "intermediate"]
    assert first[-1][rel["term"]] < first[0][rel["term"]]  # the student's relations move towards the teacher's


def test_small_data_holds_out_a_slice_and_stops_early_resumably(tmp_path, tiny_encoder, tiny_data, monkeypatch):
    """640 rows at batch 32 are 20 steps an epoch: the default schedule lengthens the run (min steps, within 10
    epochs), holds out 10% of the rows and stops when their loss stops falling, keeping the best step; a run
    killed after the best step and resumed ends at the same weights.

    The held-out loss is planted (lowest at step 40, rising after it), so the stop does not hang on one machine's
    floating-point path: the judge still runs on the held-out rows, but the curve it reports is the test's."""

    cfg = FinetuneConfig(model=str(tiny_encoder), data=DataConfig(data=str(tiny_data), max_length=32),
                         train=TrainConfig(epochs=1, batch_size=32, lr=3e-3, patience=2, checkpoint_every=7))
    keep, held = holdout_split(640, cfg.train)
    assert len(held) == 64 and not set(keep) & set(held) and holdout_split(640, cfg.train) == (keep, held)
    assert holdout_split(64_000, cfg.train)[1] == []  # big data: its epochs decide, every row trains

    last_step = [0]  # the optimiser step before the judge is asked (on_step runs after the evaluation)
    weights_at: dict[int, dict[str, torch.Tensor]] = {}
    real_judge, real_train = run_mod._holdout_judge, run_mod.train

    def planted_judge(model, ids, *a, **k):
        judge = real_judge(model, ids, *a, **k)

        def loss():
            step = last_step[0] + 1
            assert len(ids) == 64 and np.isfinite(judge())  # the real judge reads the held-out rows
            weights_at[step] = {n: v.detach().clone() for n, v in model.state_dict().items()}
            return 1.0 + abs(step - 40) / 100  # 20: 1.2, 40: 1.0 (best), 60: 1.2, 80: 1.4 -> stop at 80
        return loss

    def run_train(kill_at=None):
        def on_step(step):
            last_step[0] = step
            if step == kill_at:
                raise Killed
        return lambda *a, **k: real_train(*a, **{**k, "on_step": on_step})

    monkeypatch.setattr(run_mod, "_holdout_judge", planted_judge)
    monkeypatch.setattr(run_mod, "train", run_train())
    man = finetune(cfg, tmp_path / "full", progress=False)
    tr = man["train"]
    assert tr["steps"] == 200 and tr["holdout_rows"] == 64
    losses = [(h["step"], h["holdout_loss"]) for h in _history(tmp_path / "full") if "holdout_loss" in h]
    assert losses == [(20, 1.2), (40, 1.0), (60, 1.2), (80, 1.4)]  # evaluated every 20 steps, then stopped
    assert tr["early_stops"] == [{"stage": "finetune", "stopped_at": 80, "kept_step": 40, "holdout_loss": 1.0}]
    full = load_file(tmp_path / "full" / "model.safetensors")
    best, last = weights_at[40], weights_at[80]
    assert set(full) <= set(best) and any(not torch.equal(best[k], last[k]) for k in full)
    assert all(torch.equal(full[k], best[k]) for k in full)  # the kept weights are step 40's, not step 80's

    # killed at step 50 (after the best step: its weights live only in the checkpoint), then resumed
    monkeypatch.setattr(run_mod, "train", run_train(kill_at=50))
    with pytest.raises(Killed):
        finetune(cfg, tmp_path / "part", progress=False)
    monkeypatch.setattr(run_mod, "train", run_train())
    finetune(cfg, tmp_path / "part", resume=True, progress=False)
    part = load_file(tmp_path / "part" / "model.safetensors")
    assert all(torch.equal(full[k], part[k]) for k in full)
    assert _history(tmp_path / "full") == _history(tmp_path / "part")


def test_augmented_distillation_labels_variants_with_the_teacher(tmp_path, tiny_teacher, tiny_data):
    cfg = _cfg(tiny_teacher, tiny_data, student="layers=2,hidden=16,heads=2,intermediate=32", augment=2,
               train=TrainConfig(max_steps=12, batch_size=32, lr=2e-3, log_every=6))
    man = distill(cfg, tmp_path / "aug", progress=False)
    aug = man["augmentation"]
    assert aug["rows"] == 640 and aug["variant_rows"] == 1280 and aug["source"] == "teacher input embeddings"
    assert aug["variants_changed"] > 640 and aug["teacher_rows_labelled"] == 1920  # cached once, all rows
    assert all(np.isfinite(h["hard_ce"]) for h in _history(tmp_path / "aug") if "hard_ce" in h)
    with pytest.raises(ConfigError, match="augment-prob"):
        _cfg(tiny_teacher, tiny_data, augment=1, augment_prob=0.0)


def test_augmentation_from_a_masked_lm_on_the_teachers_vocabulary(tmp_path, tiny_teacher, tiny_data, capsys):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(tiny_teacher)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64))
    mlm.save_pretrained(tmp_path / "mlm")
    tok.save_pretrained(tmp_path / "mlm")
    out = tmp_path / "aug_mlm"
    assert main(["distill", "--teacher", str(tiny_teacher), "--student", "layers=2,hidden=16,heads=2,intermediate=32",
                 "--data", str(tiny_data), "--max-length", "32", "--max-steps", "8", "--min-steps", "0",
                 "--augment", "1", "--augment-mlm", str(tmp_path / "mlm"), "--out", str(out)]) == 0
    aug = json.loads((out / "manifest.json").read_text())["augmentation"]
    assert aug["source"].startswith("masked LM") and aug["variant_rows"] == 640 and aug["variants_changed"] > 320
    # an encoder without its masked-LM head (the packaged MiniLM): one line, exit 2, nothing written
    capsys.readouterr()
    assert main(["distill", "--teacher", str(tiny_teacher), "--data", str(tiny_data), "--augment", "1",
                 "--augment-mlm", "minilm", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no masked-LM head" in err[0] and not (tmp_path / "bad").exists()


def test_bf16_autocast_training_runs_and_resumes_exactly(tmp_path, tiny_teacher, tiny_data):
    """--precision bf16 (the GPU recipe; CPUs run bfloat16 autocast too): losses fall, and a killed run resumes
    to the same weights as an uninterrupted one."""
    cfg = _cfg(tiny_teacher, tiny_data, student="layers=2,hidden=16,heads=2,intermediate=32",
               train=TrainConfig(max_steps=16, batch_size=32, lr=3e-3, log_every=4, checkpoint_every=5,
                                 min_steps=0, precision="bf16"))
    man = distill(cfg, tmp_path / "full", progress=False)
    hist = [h for h in _history(tmp_path / "full") if "kd_kl" in h]
    assert hist[-1]["kd_kl"] < hist[0]["kd_kl"] and man["config"]["train"]["precision"] == "bf16"

    _kill_at(cfg, tmp_path / "part", 7)
    distill(cfg, tmp_path / "part", resume=True, progress=False)
    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "part" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_on_a_missing_gpu_is_one_line(tmp_path, tiny_teacher, tiny_data, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["distill", "--teacher", str(tiny_teacher), "--data", str(tiny_data), "--device", "cuda",
                 "--max-steps", "2", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch sees no CUDA GPU" in err[0] and not (tmp_path / "g").exists()


def test_a_student_carved_from_the_teacher_starts_close_and_maps_to_its_layers(tmp_path, tiny_teacher, tiny_data):
    """``--student prune:2x16``: the teacher's two most important layers at half width, measured on the data;
    the intermediate losses pair each carved layer with the teacher layer it came from."""
    out = tmp_path / "pruned"
    man = distill(_cfg(tiny_teacher, tiny_data, student="prune:2x16", hidden_weight=1.0), out, progress=False)
    st, pr = man["student"], man["pruning"]
    assert st["init"] == "teacher-pruned" and st["spec"]["pruned"] and (st["layers"], st["hidden"]) == (2, 16)
    assert st["heads"] == 2  # the teacher's heads are 8 wide: 16 = 2 whole heads
    kept = pr["kept"]["layers"]
    assert len(kept) == 2 and len(pr["importance"]["layers"]) == 4 and pr["importance"]["rows"] > 0
    hidden = {(m["student"], m["teacher"]) for m in man["layer_matches"] if m["feature"] == "hidden"}
    assert hidden == {(1, kept[0] + 1), (2, kept[1] + 1)}
    assert man["config"]["layer_map"] == "uniform"  # what was asked: a rerun with the same config is recognised
    assert man["metrics"]["validation"]["accuracy"] > 0.75
    model, _, _ = load_classifier(str(out))  # plain transformers loading, nothing custom
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (2, 16)
    # the hidden-state projections start as the placement of the kept channels, not a random map
    (lin,) = _projections([LayerMatch(1, kept[0] + 1)], 16, 32, 0, pr["kept"]["channels"]).values()
    want = torch.zeros(32, 16)
    want[pr["kept"]["channels"], torch.arange(16)] = 1
    assert torch.equal(lin.weight.detach(), want) and not lin.bias.detach().any()


@pytest.mark.parametrize(("spec", "words"), [("prune:9x16", "larger than the teacher"),
                                             ("prune:2x30", "no head count up to the teacher's 4 divides"),
                                             ("prune:2x16,heads=3", "not divisible by heads 3"),
                                             ("prune:2", "use prune:LAYERSxHIDDEN")])
def test_a_shape_the_teacher_cannot_be_carved_into_is_one_line(tmp_path, tiny_teacher, tiny_data, capsys, spec,
                                                              words):
    out = tmp_path / "s"
    assert main(["distill", "--teacher", str(tiny_teacher), "--data", str(tiny_data), "--student", spec,
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and not out.exists()


def test_student_latency_picks_the_shape_with_most_compute_that_fits():
    """Forced latencies (0.5 ms a layer-head): the search finds the most heads per layer count that fit and
    keeps the shape with the most FLOPs; measured shapes are reported; nothing fitting is one line."""
    from transformers import BertConfig


    teacher = type("T", (), {"config": BertConfig(hidden_size=64, num_hidden_layers=6, num_attention_heads=8,
                                                  intermediate_size=256)})()
    calls = []

    def fake(layers, heads):
        calls.append((layers, heads))
        return 0.5 * layers * heads

    spec, rep = fit_latency(teacher, None, None, ["a"], 6.0, 32, measure=fake)  # layers × heads ≤ 12
    assert spec.pruned and spec.hidden == spec.heads * 8 and spec.layers * spec.heads <= 12
    assert (spec.layers, spec.heads) == (2, 6)  # of 6×2, 4×3, 3×4, 2×6, 1×8: the most FLOPs per token
    assert rep["chosen"]["ms"] <= 6.0 and len(calls) == len(set(calls)) < 6 * 8  # each shape timed once, not all
    assert spec.intermediate == spec.hidden * 4
    with pytest.raises(ConfigError, match="even the smallest carved student .* takes 0.50 ms"):
        fit_latency(teacher, None, None, ["a"], 0.1, 32, measure=fake)


def test_student_latency_measures_real_exports_and_carves_that_shape(tmp_path, tiny_teacher, tiny_data):
    out = tmp_path / "fast"
    man = distill(_cfg(tiny_teacher, tiny_data, student_latency=1e4), out, progress=False)  # everything fits
    lat = man["pruning"]["latency"]
    assert lat["chosen"] == {**lat["chosen"], "layers": 4, "heads": 4} and lat["measured"][0]["ms"] > 0
    st = man["student"]
    assert st["init"] == "teacher-pruned" and (st["layers"], st["hidden"]) == (4, 32)
