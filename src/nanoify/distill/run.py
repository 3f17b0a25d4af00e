"""Public entry points: fine-tune a classifier, distil a student, evaluate a model.

Each writes a self-describing folder atomically; training checkpoints live beside it in ``OUT.ckpt/``
until the run completes, so ``resume=True`` continues a killed run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..artifacts import MANIFEST, atomic_dir, file_sha256, manifest, write_json
from ..config import DataConfig, DistillConfig, FinetuneConfig, config_hash, to_dict
from ..data.splits import pick_split
from ..data.text import LabelMap, TextData, available_splits, encode_texts, load_text_data
from ..errors import ConfigError, DataError, ModelError
from ..models.load import count_parameters, encoder_flops_per_token, load_classifier, load_masked_lm, save_classifier
from ..models.student import INITS, StudentSpec, build_student, parse_student_spec, resolve_init, teacher_layer_choice
from ..tasks.classify import agreement_table as agreement
from ..tasks.classify import classification_metrics
from ..tasks.text import predict_logits
from . import losses as L
from . import parallel
from .augment import IGNORE, augment
from .mapping import LayerMatch, build_matches, features
from .relations import QKVCapture, relation_heads, relation_kl
from .shape import fit_latency
from .trainer import Stage, holdout_split, require_device, steps_for, train

log = logging.getLogger(__name__)

# Diagnostics thresholds (see distill()): made visible, never silently acted on.
UNDERFIT_GAP = 0.05  # student train accuracy this far below the teacher's → "student too small"
COPY_RATE = 0.9  # share of the teacher's validation mistakes the student repeats (binary tasks: ~0.8 is usual)
SMOOTH_ENTROPY = 0.9
LOGIT_TERMS = ("kd_kl", "hard_ce")  # mean normalised entropy of the softened teacher targets


def _ckpt_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.ckpt"


def _train_split(data: TextData) -> Any:
    tr = data.split("train")
    if not tr.texts:
        raise DataError(f"the train split of {data.spec} is empty")
    return tr


def _pad_id(tok: Any) -> int:
    return int(tok.pad_token_id if tok.pad_token_id is not None else 0)


def _predict(model: Any, tok: Any, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Logits of ``model`` on raw texts with its own tokenizer."""
    return predict_logits(model, encode_texts(tok, texts, max_length), _pad_id(tok), batch_size)


def _eval_split(model: Any, tok: Any, label_map: LabelMap, data: TextData, split: str,
                max_length: int, batch_size: int) -> tuple[dict[str, Any], np.ndarray, np.ndarray] | None:
    if split not in data.splits:
        return None
    sp = data.splits[split]
    gold = np.array(label_map.encode(sp.labels, f"{split} split of {data.spec}"))
    pred = _predict(model, tok, sp.texts, max_length, batch_size).argmax(-1)
    return classification_metrics(pred, gold, len(label_map)), pred, gold


def _finish(out: Path, model: Any, tok: Any, label_map: LabelMap, man: dict[str, Any],
            history: list[dict[str, Any]]) -> None:
    with atomic_dir(out) as tmp:
        save_classifier(model, tok, label_map, tmp)
        with open(tmp / "train_log.jsonl", "w") as f:
            for rec in history:
                f.write(json.dumps(rec) + "\n")
        write_json(tmp / MANIFEST, man)
    shutil.rmtree(_ckpt_dir(out), ignore_errors=True)


def finetune(config: FinetuneConfig, out: str | Path, resume: bool | str = False,
             progress: bool = True) -> dict[str, Any]:
    """Turn a pretrained encoder into a classifier on ``config.data``; returns the manifest.

    Writes Hugging Face format (config, safetensors, tokenizer), ``label_map.json``, ``train_log.jsonl``
    and ``manifest.json`` to ``out``.
    """
    t0 = time.time()
    out = Path(out)
    cfg = config
    group, device = parallel.setup(cfg.train.device)
    require_device(device)
    data = load_text_data(cfg.data, seed=cfg.train.seed)
    tr = _train_split(data)
    label_map = LabelMap.from_values(tr.labels)
    if len(label_map) < 2:
        raise DataError(f"the train split of {data.spec} has a single label {label_map.names}; need two or more")
    # a new classification head is drawn from torch's global RNG: seed it from the run, or two runs with one
    # seed start from different heads and end with different weights (tests/e2e/test_distill.py)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        model, tok, _ = load_classifier(cfg.model, label_map=label_map)
    all_ids = encode_texts(tok, tr.texts, cfg.data.max_length)
    all_y = torch.tensor(label_map.encode(tr.labels, "train split"))
    keep, held = holdout_split(len(all_ids), cfg.train)
    ids, y = [all_ids[i] for i in keep], all_y[keep]

    def loss_fn(stage: Stage, batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        logits = model(**batch).logits
        return {"hard_ce": L.hard_ce(logits, y[rows].to(logits.device))}

    stage = Stage("finetune", {"hard_ce": 1.0}, steps_for(len(all_ids), cfg.train), early_stop=bool(held))
    run_key = config_hash({"cfg": to_dict(cfg), "data": data.provenance})
    t_loop = time.time()
    history = train(model, torch.nn.ModuleDict(), ids, _pad_id(tok), [stage], cfg.train, loss_fn,
                    _ckpt_dir(out), resume, run_key, progress=progress,
                    evaluate=_holdout_judge(model, [all_ids[i] for i in held], all_y[held], _pad_id(tok),
                                            cfg.train.eval_batch_size) if held else None)
    loop_s = round(time.time() - t_loop, 1)
    if not group.main:  # one of several training processes: process 0 evaluates and writes
        return {}
    metrics: dict[str, Any] = {}
    for split in ("validation", "test"):
        res = _eval_split(model, tok, label_map, data, split, cfg.data.max_length, cfg.train.eval_batch_size)
        if res:
            metrics[split] = res[0]
    man = manifest("finetune", to_dict(cfg), data=data.provenance, labels=label_map.names,
                   model={"source": cfg.model, "parameters": count_parameters(model),
                          "layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size},
                   train={"steps": stage.steps, "seconds": round(time.time() - t0, 1), "loop_seconds": loop_s,
                          "processes": group.world,
                          **_early_summary(history, len(held)),
                          "first": history[0] if history else None, "last": history[-1] if history else None},
                   metrics=metrics, run_key=run_key)
    _finish(out, model, tok, label_map, man, history)
    return man


def _holdout_judge(model: Any, ids: list[Any], y: torch.Tensor, pad_id: int, batch_size: int,
                   soft: tuple[torch.Tensor, float, float, float] | None = None) -> Any:
    """The early-stopping judge: the logit objective on held-out training rows — gold CE (fine-tuning), or with
    ``soft`` = (teacher logits, alpha_soft, alpha_hard, T) distillation's alpha_soft · soft KL + alpha_hard · CE.
    Gold CE alone stopped distilled students too early in benchmarks/distill_small.py: it rises as a student
    grows confident while its accuracy still improves."""
    def loss() -> float:
        logits = torch.from_numpy(predict_logits(model, ids, pad_id, batch_size))
        if soft is None:
            return float(L.hard_ce(logits, y))
        t_logits, a_soft, a_hard, temp = soft
        return float(a_soft * L.kd_kl(logits, t_logits, temp) + a_hard * L.hard_ce(logits, y))
    return loss


def _early_summary(history: list[dict[str, Any]], held: int) -> dict[str, Any]:
    """What the manifest says about the held-out slice: its size, and where each early-stopped stage ended."""
    stops = [h for h in history if h.get("early_stop")]
    return {"holdout_rows": held,
            "early_stops": [{"stage": h["stage"], "stopped_at": h["step"], "kept_step": h["best_step"],
                             "holdout_loss": h["holdout_loss_best"]} for h in stops]}


def _same_tokenizer(a: Any, b: Any) -> bool:
    return type(a).__name__ == type(b).__name__ and a.get_vocab() == b.get_vocab()


def _stages(cfg: DistillConfig, matches: list[LayerMatch], steps: int, rel_key: str | None = None) -> list[Stage]:
    logit_w = {"kd_kl": cfg.alpha_soft, "hard_ce": cfg.alpha_hard}
    inter_w = {_term(m): m.weight for m in matches}
    if rel_key:
        inter_w[rel_key] = cfg.relation_weight
    out = []
    for name in cfg.stages:
        w = {"joint": {**logit_w, **inter_w}, "intermediate": inter_w, "prediction": logit_w}[name]
        out.append(Stage(name, {k: v for k, v in w.items() if v > 0}, steps))
    return out


def _term(m: LayerMatch) -> str:
    return "embedding_mse" if m.feature == "embedding" else f"{m.feature}_mse_s{m.student}_t{m.teacher}"


def cache_dir() -> Path:
    """Where reusable intermediate results live: ``$NANOIFY_CACHE`` or ``~/.cache/nanoify``."""
    return Path(os.environ.get("NANOIFY_CACHE", Path.home() / ".cache" / "nanoify"))


def _teacher_logits(teacher: Any, teacher_dir: str, ids: list[list[int]], pad_id: int, batch_size: int,
                    progress: bool) -> torch.Tensor:
    """Teacher logits for every training row, computed once and kept in the cache across runs.

    The key hashes the teacher's weights and the exact token ids, so another student distilled from the
    same teacher on the same data (an ablation, a resumed run) reuses them.
    """
    h = hashlib.sha256()
    weights = Path(teacher_dir) / "model.safetensors"
    h.update(file_sha256(weights).encode() if weights.is_file() else teacher_dir.encode())
    for row in ids:
        h.update(np.asarray(row, dtype=np.int32).tobytes() + b"|")
    path = cache_dir() / "teacher_logits" / f"{h.hexdigest()[:24]}.pt"
    group = parallel.current()
    if group.active and not group.main:  # process 0 computes and writes them; the others read its file
        parallel.barrier()
        return torch.load(path, weights_only=True)
    if path.is_file():
        parallel.barrier()
        log.info("teacher logits from cache %s", path)
        return torch.load(path, weights_only=True)
    logits = torch.from_numpy(predict_logits(teacher, ids, pad_id, batch_size, progress, "teacher logits"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(logits, tmp)
    os.replace(tmp, path)
    parallel.barrier()
    return logits


@dataclasses.dataclass
class _Rows:
    """The training rows as token ids: every row for student and teacher (``all_s``, ``all_t``), the rows that
    train (augmented when asked; ``s_ids``, ``t_ids``, labels ``y``) and the held-out row indices."""

    all_s: list[list[int]]
    all_t: list[list[int]]
    s_ids: list[list[int]]
    t_ids: list[list[int]]
    y: torch.Tensor
    held: list[int]
    aug: dict[str, Any] | None

    @classmethod
    def of(cls, cfg: DistillConfig, texts: Sequence[str], y: torch.Tensor, s_tok: Any, t_tok: Any,
           same_tok: bool, teacher: Any) -> _Rows:
        all_s = encode_texts(s_tok, texts, cfg.data.max_length)
        all_t = all_s if same_tok else encode_texts(t_tok, texts, cfg.data.max_length)
        keep, held = holdout_split(len(all_s), cfg.train)  # small data: a held-out slice stops the logit stages
        s_ids, t_ids, y = [all_s[i] for i in keep], [all_t[i] for i in keep], y[keep]
        aug = None
        if cfg.augment:
            if not same_tok:
                raise ConfigError("--augment rewrites token ids, so teacher and student must share a tokenizer")
            s_ids, y, aug = _augmented(cfg, s_ids, s_tok, teacher, y)
            t_ids = s_ids
        return cls(all_s, all_t, s_ids, t_ids, y, held, aug)


def _held_out_judge(cfg: DistillConfig, rows: _Rows, y_all: torch.Tensor, student: Any, s_tok: Any, teacher: Any,
                    t_tok: Any) -> Callable[[], float] | None:
    """The held-out loss that stops the logit stages early (None without a held-out slice); the teacher's
    held-out logits are computed once here (the teacher is fixed)."""
    if not rows.held:
        return None
    bs, held = cfg.train.eval_batch_size, rows.held
    t_held = torch.from_numpy(predict_logits(teacher, [rows.all_t[i] for i in held], _pad_id(t_tok), bs))
    soft = (t_held, cfg.alpha_soft, cfg.alpha_hard, cfg.temperature)
    return _holdout_judge(student, [rows.all_s[i] for i in held], y_all[held], _pad_id(s_tok), bs, soft)


def distill(config: DistillConfig, out: str | Path, resume: bool | str = False,
            progress: bool = True) -> dict[str, Any]:
    """Distil ``config.teacher`` into a student described by ``config.student``; returns the manifest.

    Logit losses (``kd_kl`` with temperature, ``hard_ce``) and intermediate losses (attention maps,
    hidden states through learned projections when widths differ, embedding output) are combined per
    stage. Teacher logits are computed once and cached when a stage needs no other teacher output.
    """
    t0 = time.time()
    out = Path(out)
    cfg = config
    if not cfg.teacher:
        raise ConfigError("distill needs a teacher: pass --teacher DIR")
    group, device = parallel.setup(cfg.train.device)
    require_device(device)
    teacher, t_tok, label_map = load_classifier(cfg.teacher)
    data = load_text_data(cfg.data, seed=cfg.train.seed)
    tr = _train_split(data)
    y = torch.tensor(label_map.encode(tr.labels, f"train split of {data.spec}"))
    student, s_tok, spec, init = _student_for(cfg, teacher, t_tok, label_map, tr.texts)
    same_tok = s_tok is t_tok or _same_tokenizer(s_tok, t_tok)
    if not same_tok and cfg.uses_intermediate:
        raise ConfigError("teacher and student tokenizers differ, so their layers cannot be matched token by "
                          "token; use logits-only distillation (--attention-weight 0 --hidden-weight 0 "
                          "--embedding-weight 0, no intermediate stage)")
    pruning = getattr(student, "pruning_info", None)
    # a carved layer learns from the teacher layer it was cut from (the config keeps what was asked: reruns match)
    layer_map = (",".join(f"{j + 1}:{t + 1}" for j, t in enumerate(pruning["kept"]["layers"]))
                 if pruning and cfg.layer_map == "uniform" else cfg.layer_map)
    matches = _layer_matches(cfg, student.config, teacher.config, layer_map)
    proj = _projections(matches, student.config.hidden_size, teacher.config.hidden_size, cfg.train.seed,
                        pruning["kept"]["channels"] if pruning else None)
    rel_key, rel_heads, caps = _relation_setup(cfg, student, teacher)
    rows = _Rows.of(cfg, tr.texts, y, s_tok, t_tok, same_tok, teacher)
    held, aug_info = rows.held, rows.aug
    stages = [dataclasses.replace(st, early_stop=bool(held) and bool(set(LOGIT_TERMS) & set(st.weights)))
              for st in _stages(cfg, matches, steps_for(len(rows.s_ids) + len(held), cfg.train), rel_key)]
    run_key = config_hash({"cfg": to_dict(cfg), "data": data.provenance})
    ckpt = _ckpt_dir(out)
    cached = _fixed_teacher(cfg, teacher, t_tok, rows.t_ids, stages, device, progress)
    if aug_info is not None:  # the cost of the variants: teacher passes over them (once, cached) or every step
        aug_info["teacher_rows_labelled"] = len(rows.t_ids) if cached is not None else None

    loss_fn = _DistillLoss(student, teacher, matches, proj, cached, rows.y, cfg.temperature, rel_key, rel_heads,
                           caps)
    t_loop = time.time()
    history = train(student, proj, rows.s_ids, _pad_id(s_tok), stages, cfg.train, loss_fn, ckpt, resume, run_key,
                    progress=progress, evaluate=_held_out_judge(cfg, rows, y, student, s_tok, teacher, t_tok))
    loop_s = round(time.time() - t_loop, 1)
    for c in caps or ():
        c.remove()
    if not group.main:  # one of several training processes: process 0 evaluates and writes
        return {}
    teacher.to("cpu")
    # the cache covers the rows that trained; with a held-out slice the diagnostics' sample needs every row
    metrics, diagnostics = _diagnose(cfg, student, s_tok, teacher, t_tok, label_map, data,
                                     cached if not held else None, y)
    man = _distill_manifest(cfg, data, label_map, teacher, student, spec, init, matches, aug_info, rel_key,
                            rel_heads, proj, stages, cached, history, len(held), t0, loop_s, group.world, run_key)
    man.update(metrics=metrics, diagnostics=diagnostics)
    _finish(out, student, s_tok, label_map, man, history)
    return man


def _student_for(cfg: DistillConfig, teacher: Any, t_tok: Any, label_map: LabelMap,
                 texts: list[str]) -> tuple[Any, Any, Any, str]:
    """(student, its tokenizer, its spec or None, the init used) built from the teacher as ``cfg`` asks."""
    spec: StudentSpec | None = None
    init = cfg.init
    fitted = None
    if cfg.student_latency is not None:  # the carved shape whose batch-1 latency here fits
        spec, fitted = fit_latency(teacher, t_tok, label_map, texts, cfg.student_latency, cfg.data.max_length)
        init = "teacher-pruned"
    elif init in INITS:
        spec = parse_student_spec(cfg.student, teacher.config)
        init = resolve_init(teacher.config, spec) if init == "auto" else init
    calib = _prune_batches(cfg, teacher, t_tok, texts) if init == "teacher-pruned" else None
    student, s_tok = build_student(teacher, spec, init, label_map, seed=cfg.train.seed, calib=calib)
    if fitted is not None:
        student.pruning_info["latency"] = fitted
    return student, s_tok or t_tok, spec, init


PRUNE_ROWS = 256  # sentences the importance of a pruned student is measured on (Minitron: a few hundred suffice)


def _prune_batches(cfg: DistillConfig, teacher: Any, tok: Any, texts: list[str]) -> list[dict[str, Any]]:
    """The first training sentences, tokenized as the teacher reads them, in batches of 32."""
    texts = texts[:PRUNE_ROWS]
    return [dict(tok(texts[i:i + 32], truncation=True, max_length=cfg.data.max_length, padding=True,
                     return_tensors="pt")) for i in range(0, len(texts), 32)]


def _layer_matches(cfg: DistillConfig, sc: Any, tc: Any, layer_map: str | None = None) -> list[LayerMatch]:
    """The teacher → student layer matches of the intermediate losses (none when no such loss is asked);
    ``layer_map`` replaces ``cfg.layer_map`` (a pruned student's own layers)."""
    if not cfg.uses_intermediate:
        return []
    matches = build_matches(layer_map or cfg.layer_map, sc.num_hidden_layers, tc.num_hidden_layers,
                            cfg.attention_weight, cfg.hidden_weight, cfg.embedding_weight)
    if any(m.feature == "attention" for m in matches) and sc.num_attention_heads != tc.num_attention_heads:
        log.info("head counts differ (student %d, teacher %d): attention maps are averaged over heads before "
                 "the MSE", sc.num_attention_heads, tc.num_attention_heads)
    return matches


def _fixed_teacher(cfg: DistillConfig, teacher: Any, t_tok: Any, t_ids: list[Any], stages: list[Stage],
                   device: str, progress: bool) -> torch.Tensor | None:
    """Move the teacher where training runs (its passes run there), freeze it, and return its cached logits when
    some stage needs no other teacher output (else None)."""
    needs_cache = any("kd_kl" in s.weights and not any(k not in LOGIT_TERMS for k in s.weights) for s in stages)
    cached = None
    teacher.to(device)
    if needs_cache:
        cached = _teacher_logits(teacher, cfg.teacher, t_ids, _pad_id(t_tok), cfg.train.eval_batch_size, progress)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return cached


def _projections(matches: list[Any], s_hidden: int, t_hidden: int, seed: int,
                 channels: list[int] | None = None) -> torch.nn.ModuleDict:
    """A learned projection per hidden/embedding match when the widths differ (seeded: resume draws the same).
    ``channels``: the teacher channel each student channel was carved from (a pruned student) — the projection
    starts as that placement, so the loss starts from what the slicing kept instead of a random map."""
    proj = torch.nn.ModuleDict()
    torch.manual_seed(seed)
    for m in matches:
        if m.feature in ("hidden", "embedding") and s_hidden != t_hidden:
            lin = torch.nn.Linear(s_hidden, t_hidden)
            if channels is not None:
                with torch.no_grad():
                    lin.weight.zero_()
                    lin.bias.zero_()
                    lin.weight[channels, torch.arange(s_hidden)] = 1.0
            proj[_term(m)] = lin
    return proj


def _relation_setup(cfg: DistillConfig, student: Any, teacher: Any) -> tuple[str | None, int, Any]:
    """MiniLM-v2 relations: (the loss term's name, relation heads, the Q/K/V captures), or (None, 0, None)."""
    if cfg.relation_weight <= 0:
        return None, 0, None
    sc, tc = student.config, teacher.config
    n_s, t_layer = sc.num_hidden_layers, cfg.relation_layer or tc.num_hidden_layers
    heads = relation_heads(sc.hidden_size, tc.hidden_size, sc.num_attention_heads, cfg.relation_heads)
    caps = (QKVCapture(student, n_s - 1), QKVCapture(teacher, t_layer - 1))
    log.info("relation distillation: student layer %d ← teacher layer %d, %d relation heads", n_s, t_layer, heads)
    return f"relation_kl_s{n_s}_t{t_layer}", heads, caps


def _augmented(cfg: DistillConfig, s_ids: list[Any], s_tok: Any, teacher: Any,
               y: torch.Tensor) -> tuple[list[Any], torch.Tensor, dict[str, Any]]:
    """The training rows plus ``cfg.augment`` variants of each (no gold label: IGNORE), and what was done."""
    t_aug = time.time()
    mlm = load_masked_lm(cfg.augment_mlm, s_tok) if cfg.augment_mlm else None
    extra, info = augment(s_ids, s_tok, teacher.get_input_embeddings().weight, cfg.augment, cfg.augment_prob,
                          cfg.augment_neighbours, cfg.train.seed, mlm=mlm, mlm_name=cfg.augment_mlm)
    del mlm
    info["seconds"] = round(time.time() - t_aug, 1)
    return s_ids + extra, torch.cat([y, torch.full((len(extra),), IGNORE, dtype=y.dtype)]), info


class _DistillLoss:
    """The trainer's loss function: every term a stage weights, unweighted — soft and hard logit losses, the
    intermediate matches (attention, hidden, embedding; through projections where widths differ) and the
    relation term. Teacher passes run only when a term needs them (cached logits otherwise)."""

    def __init__(self, student: Any, teacher: Any, matches: list[Any], proj: torch.nn.ModuleDict,
                 cached: torch.Tensor | None, y: torch.Tensor, temperature: float, rel_key: str | None,
                 rel_heads: int, caps: Any) -> None:
        self.student, self.teacher, self.matches, self.proj = student, teacher, matches, proj
        self.cached, self.y, self.temperature = cached, y, temperature
        self.rel_key, self.rel_heads, self.caps = rel_key, rel_heads, caps

    def __call__(self, stage: Stage, batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        w = stage.weights
        inter = [m for m in self.matches if _term(m) in w]
        need_att = any(m.feature == "attention" for m in inter)
        need_hid = any(m.feature != "attention" for m in inter)
        s_out = self.student(**batch, output_attentions=need_att, output_hidden_states=need_hid)
        t_out = None
        rel = self.rel_key is not None and self.rel_key in w
        if inter or rel or ("kd_kl" in w and self.cached is None):
            with torch.no_grad():
                t_out = self.teacher(**batch, output_attentions=need_att, output_hidden_states=need_hid)
        terms: dict[str, torch.Tensor] = {}
        mask = batch["attention_mask"]
        dev = s_out.logits.device
        if "kd_kl" in w:
            t_logits = self.cached[rows].to(dev) if self.cached is not None and not inter else t_out.logits
            terms["kd_kl"] = L.kd_kl(s_out.logits, t_logits, self.temperature)
        if "hard_ce" in w:
            terms["hard_ce"] = L.hard_ce(s_out.logits, self.y[rows].to(dev))
        for m in inter:
            terms[_term(m)] = self._match(m, s_out, t_out, mask)
        if self.caps is not None:
            s_qkv, t_qkv = self.caps[0].take(), (self.caps[1].take() if t_out is not None else None)
            if rel and t_qkv is not None:
                terms[self.rel_key] = relation_kl(s_qkv, t_qkv, mask, self.rel_heads)  # type: ignore[index]
        return terms

    def _match(self, m: Any, s_out: Any, t_out: Any, mask: torch.Tensor) -> torch.Tensor:
        key = _term(m)
        p = self.proj[key] if key in self.proj else None
        s_feat, t_feat = features(m, s_out, t_out)
        if m.feature == "attention":
            return L.attention_mse(s_feat, t_feat, mask)
        if m.feature == "embedding":
            return L.embedding_loss(s_feat, t_feat, mask, p)
        return L.hidden_mse(s_feat, t_feat, mask, p)


def _distill_manifest(cfg: DistillConfig, data: Any, label_map: LabelMap, teacher: Any, student: Any,
                      spec: StudentSpec | None, init: str, matches: list[Any], aug_info: dict[str, Any] | None,
                      rel_key: str | None, rel_heads: int, proj: torch.nn.ModuleDict, stages: list[Stage],
                      cached: torch.Tensor | None, history: list[dict[str, Any]], held: int, t0: float,
                      loop_s: float, world: int, run_key: str) -> dict[str, Any]:
    """The distill manifest: teacher, student, matches, augmentation, relations, stages, training (the caller adds
    metrics and diagnostics)."""
    sc, tc = student.config, teacher.config
    n_s, n_t = sc.num_hidden_layers, tc.num_hidden_layers
    return manifest(
        "distill", to_dict(cfg), data=data.provenance, labels=label_map.names,
        teacher={"path": str(Path(cfg.teacher).resolve()) if Path(cfg.teacher).exists() else cfg.teacher,
                 "layers": n_t, "hidden": tc.hidden_size, "parameters": count_parameters(teacher),
                 "encoder_parameters": count_parameters(teacher, encoder_only=True)},
        student={"spec": spec.to_dict() if spec else None, "init": init, "init_asked": cfg.init,
                 "init_teacher_layers": teacher_layer_choice(n_s, n_t) if init == "teacher-layers" else None,
                 "layers": n_s, "hidden": sc.hidden_size, "heads": sc.num_attention_heads,
                 "parameters": count_parameters(student),
                 "encoder_parameters": count_parameters(student, encoder_only=True),
                 "encoder_flops_ratio_vs_teacher": encoder_flops_per_token(tc) / encoder_flops_per_token(sc)},
        layer_matches=[m.to_dict() for m in matches],
        pruning=getattr(student, "pruning_info", None),
        augmentation=aug_info,
        relations=({"term": rel_key, "student_layer": n_s, "teacher_layer": cfg.relation_layer or n_t,
                    "heads": rel_heads, "weight": cfg.relation_weight} if rel_key else None),
        projections=sorted(proj.keys()),
        stages=[{"name": s.name, "weights": s.weights, "steps": s.steps} for s in stages],
        teacher_logits_cached=cached is not None,
        # seconds: the whole command (teacher passes, evaluation included); loop_seconds: the optimiser loop alone
        train={"seconds": round(time.time() - t0, 1), "loop_seconds": loop_s, "processes": world,
               **_early_summary(history, held),
               "first": history[0] if history else None,
               "last": history[-1] if history else None},
        run_key=run_key)


def _diagnose(cfg: DistillConfig, student: Any, s_tok: Any, teacher: Any, t_tok: Any, label_map: LabelMap,
              data: TextData, cached: torch.Tensor | None, y: torch.Tensor) -> tuple[dict, dict]:
    """Validation metrics, agreement, and the three known failure modes made visible."""
    ml, bs = cfg.data.max_length, cfg.train.eval_batch_size
    metrics: dict[str, Any] = {}
    diag: dict[str, Any] = {"warnings": []}
    for split in ("validation", "test"):
        s_res = _eval_split(student, s_tok, label_map, data, split, ml, bs)
        if not s_res:
            continue
        t_res = _eval_split(teacher, t_tok, label_map, data, split, ml, bs)
        assert t_res is not None
        metrics[split] = {**s_res[0], "teacher_accuracy": t_res[0]["accuracy"],
                          "agreement": agreement(s_res[1], t_res[1], s_res[2])}
    tr = data.split("train")
    rng = np.random.default_rng(cfg.train.seed)
    sample = np.sort(rng.choice(len(tr.texts), size=min(2000, len(tr.texts)), replace=False))
    texts = [tr.texts[i] for i in sample]
    gold = y.numpy()[sample]
    s_pred = _predict(student, s_tok, texts, ml, bs).argmax(-1)
    t_logits = cached[sample].numpy() if cached is not None else _predict(teacher, t_tok, texts, ml, bs)
    s_acc, t_acc = float((s_pred == gold).mean()), float((t_logits.argmax(-1) == gold).mean())
    diag["train_sample"] = {"n": len(sample), "student_accuracy": s_acc, "teacher_accuracy": t_acc}
    if t_acc - s_acc > UNDERFIT_GAP:
        diag["warnings"].append(f"underfitting: the student fits the training data {100 * (t_acc - s_acc):.1f} "
                                "points worse than the teacher; a wider/deeper student or more steps may help")
    p = torch.softmax(torch.from_numpy(t_logits) / cfg.temperature, -1)
    ent = float((-(p * p.clamp_min(1e-12).log()).sum(-1) / np.log(p.shape[-1])).mean())
    diag["soft_target_entropy"] = ent
    if ent > SMOOTH_ENTROPY and cfg.alpha_soft > 0:
        diag["warnings"].append(f"over-smoothed targets: softened teacher outputs have normalised entropy {ent:.2f} "
                                f"at T={cfg.temperature}; lower --temperature")
    val = metrics.get("validation") or metrics.get("test")
    if val:
        a = val["agreement"]
        t_wrong = a["student_only_right"] + a["both_wrong"]
        rate = a["copied_mistakes"] / t_wrong if t_wrong else 0.0
        diag["copied_mistake_rate"] = rate
        if rate > COPY_RATE and a["both_wrong"] > 0:
            diag["warnings"].append(f"copied mistakes: the student repeats {100 * rate:.0f}% of the teacher's "
                                    "errors; raise --alpha-hard to lean on the gold labels")
    for w in diag["warnings"]:
        log.warning("%s", w)
    return metrics, diag


def evaluate(model: str | Path, data: DataConfig | str | None = None, split: str | None = None,
             teacher: str | Path | None = None, batch_size: int = 64) -> dict[str, Any]:
    """Accuracy (and macro-F1 beyond two classes) of a saved classifier; with a teacher, the agreement table.
    ``split`` None follows the one rule for evaluation splits: validation, else test.

    Raises:
        DataError: no such split, unknown labels. ModelError: teacher and model label maps differ.
    """

    dcfg = data if isinstance(data, DataConfig) else DataConfig(data=data)
    m, tok, lm = load_classifier(str(model))
    split = pick_split(available_splits(dcfg.data), split, "eval", dcfg.data or "the default data")
    ds = load_text_data(dcfg, splits=(split,))
    sp = ds.split(split)
    if not sp.texts:
        raise DataError(f"the {split} split of {ds.spec} is empty")
    gold = np.array(lm.encode(sp.labels, f"{split} split of {ds.spec}"))
    pred = _predict(m, tok, sp.texts, dcfg.max_length, batch_size).argmax(-1)
    res: dict[str, Any] = {"model": str(model), "split": split, "data": ds.spec,
                           **classification_metrics(pred, gold, len(lm))}
    if teacher is not None:
        t, t_tok, t_lm = load_classifier(str(teacher))
        if t_lm.names != lm.names:
            raise ModelError(f"label maps differ: model {lm.names}, teacher {t_lm.names}")
        t_pred = _predict(t, t_tok, sp.texts, dcfg.max_length, batch_size).argmax(-1)
        res["teacher_accuracy"] = float((t_pred == gold).mean())
        res["agreement"] = agreement(pred, t_pred, gold)
    return res
