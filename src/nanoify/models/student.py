"""Student construction from a teacher: fewer and/or narrower layers, initialised three ways.

* ``teacher-layers`` (DistilBERT): same width as the teacher; embeddings, pooler and classifier are
  copied, and student layer i takes teacher layer ``round(i·n_t/n_s)`` (0-based: every k-th layer,
  starting with the first so the copied bottom layer still sees the copied embeddings).
* ``random`` (TinyBERT): fresh weights from the architecture's own initialiser.
* ``teacher-pca``: fresh layers, but the embeddings (word, position, token type) are the teacher's
  projected onto the top principal directions of its word-embedding matrix. TinyBERT gives a fresh
  narrow student a general-distillation pass over a large corpus first; with no such corpus, this keeps
  most of what the teacher's vocabulary knows at no training cost (see benchmarks/RESULTS.md).
* ``teacher-pruned`` (``--student prune:LAYERSxHIDDEN[,heads=H,ffn=F]``): carved out of the teacher — its most
  important layers, heads, FFN neurons and hidden channels on the task's data, every tensor sliced
  (:mod:`nanoify.models.prune`, Minitron's recipe): the same architecture, narrower, with the teacher's weights.
* a PATH: a smaller pretrained encoder; the student has that encoder's architecture.

Encoders with a learned relative position bias (MPNet's ``encoder.relative_attention_bias``: one scalar per
distance bucket and head, shared by all layers) keep it: ``teacher-layers`` copies it with the layers, fresh
students (``teacher-pca``) take it too, as a position prior for their heads (the teacher's heads when the head
counts match, else teacher heads spread evenly over the student's), since a random bias would start every
head with arbitrary preferences for distance.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from ..data.text import LabelMap
from ..errors import ConfigError, ModelError
from .load import LABEL_MAP_FILE, encoder_layers, load_classifier
from .prune import carve, check_shape

log = logging.getLogger(__name__)

PRESETS = ("half", "tinybert")


@dataclass(frozen=True)
class StudentSpec:
    """Student shape: transformer layers, hidden width, attention heads, FFN width."""

    layers: int
    hidden: int
    heads: int
    intermediate: int
    pruned: bool = False  # carved out of the teacher (``prune:``), not built fresh

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.pruned:  # the key appears where it says something
            d.pop("pruned")
        return d


def _heads_for(hidden: int, preferred: int) -> int:
    for h in range(min(preferred, hidden), 0, -1):
        if hidden % h == 0:
            return h
    return 1


def parse_student_spec(spec: str, teacher_config: Any) -> StudentSpec:
    """``half``, ``tinybert`` or ``layers=4,hidden=312,heads=12,intermediate=1200`` → StudentSpec.

    ``half`` keeps the teacher's width with half its layers. ``tinybert`` has 4 layers and about a
    quarter of the teacher's width (hidden rounded to a multiple of 4, FFN 4× hidden). Keys left out of
    a key=value spec keep the teacher's value (FFN width follows hidden at the teacher's ratio).
    """
    t = teacher_config
    n, h, a, i = t.num_hidden_layers, t.hidden_size, t.num_attention_heads, t.intermediate_size
    if spec.startswith("prune:"):
        return _pruned_spec(spec, t)
    if spec == "half":
        return StudentSpec(max(1, n // 2), h, a, i)
    if spec == "tinybert":
        hidden = max(16, int(round(h / 4 / 4)) * 4)
        return StudentSpec(min(4, n), hidden, _heads_for(hidden, a), 4 * hidden)
    if not re.fullmatch(r"\s*\w+\s*=\s*\d+\s*(,\s*\w+\s*=\s*\d+\s*)*", spec):
        raise ConfigError(f"--student {spec!r}: use half, tinybert or layers=N,hidden=N,heads=N,intermediate=N")
    vals = {k.strip(): int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    unknown = set(vals) - {"layers", "hidden", "heads", "intermediate"}
    if unknown:
        raise ConfigError(f"--student: unknown key(s) {', '.join(sorted(unknown))}; "
                          "use layers, hidden, heads, intermediate")
    hidden = vals.get("hidden", h)
    heads = vals.get("heads", a if hidden % a == 0 else _heads_for(hidden, a))
    inter = vals.get("intermediate", i if hidden == h else int(round(hidden * i / h)))
    s = StudentSpec(vals.get("layers", n), hidden, heads, inter)
    if min(s.layers, s.hidden, s.heads, s.intermediate) <= 0:
        raise ConfigError(f"--student {spec!r}: every size must be positive")
    if s.hidden % s.heads:
        raise ConfigError(f"--student: hidden {s.hidden} is not divisible by heads {s.heads}")
    return s


def _pruned_spec(spec: str, t: Any) -> StudentSpec:
    """``prune:4x192[,heads=6,ffn=768]``: heads default to the teacher's head size kept (hidden ÷ it) where that
    divides, else the most heads (at most the teacher's) that divide hidden into heads no wider than the
    teacher's; the FFN keeps the teacher's ratio to hidden."""
    m = re.fullmatch(r"prune:(\d+)x(\d+)((?:,\s*\w+\s*=\s*\d+)*)", spec.replace(" ", ""))
    if not m:
        raise ConfigError(f"--student {spec!r}: use prune:LAYERSxHIDDEN[,heads=H,ffn=F], e.g. prune:4x192")
    layers, hidden = int(m.group(1)), int(m.group(2))
    opts = {k: int(v) for k, v in (kv.split("=") for kv in m.group(3).split(",") if kv)}
    unknown = set(opts) - {"heads", "ffn"}
    if unknown:
        raise ConfigError(f"--student prune: unknown key(s) {', '.join(sorted(unknown))}; use heads, ffn")
    d, a = t.hidden_size // t.num_attention_heads, t.num_attention_heads
    if "heads" in opts:
        heads = opts["heads"]
    elif hidden % d == 0 and 0 < hidden // d <= a:
        heads = hidden // d
    else:
        heads = next((k for k in range(a, 0, -1) if hidden % k == 0 and hidden // k <= d), 0)
        if heads == 0:
            raise ConfigError(f"--student {spec!r}: no head count up to the teacher's {a} divides hidden {hidden} "
                              f"into heads of at most {d} dimensions; choose another hidden width")
    ffn = opts.get("ffn", max(1, int(round(hidden * t.intermediate_size / t.hidden_size))))
    check_shape(t, layers, hidden, heads, ffn)
    return StudentSpec(layers, hidden, heads, ffn, pruned=True)


def teacher_layer_choice(n_student: int, n_teacher: int) -> list[int]:
    """0-based teacher layers copied into a ``teacher-layers`` student (every k-th, from the first)."""
    if n_student > n_teacher:
        raise ConfigError(f"a student with {n_student} layers cannot be initialised from a {n_teacher}-layer teacher")
    return [int(round(k * n_teacher / n_student)) for k in range(n_student)]


def _layer_prefix(model: Any) -> str:
    layers = encoder_layers(model)
    for name, mod in model.named_modules():
        if mod is layers:
            return name + "."
    raise ModelError("cannot locate the encoder layers")  # pragma: no cover


def student_config(teacher_config: Any, spec: StudentSpec) -> Any:
    """The teacher's config with the student's sizes (vocabulary, positions, activation kept)."""
    cfg = copy.deepcopy(teacher_config)
    cfg.num_hidden_layers = spec.layers
    cfg.hidden_size = spec.hidden
    cfg.num_attention_heads = spec.heads
    cfg.intermediate_size = spec.intermediate
    cfg._name_or_path = ""
    return cfg


def copy_teacher_layers(teacher: Any, student: Any) -> dict[str, str]:
    """Copy embeddings, pooler, classifier and every k-th teacher layer into ``student`` in place.

    Returns the mapping student tensor name → teacher tensor name that was copied.
    """
    n_s, n_t = len(encoder_layers(student)), len(encoder_layers(teacher))
    chosen = teacher_layer_choice(n_s, n_t)
    prefix = _layer_prefix(teacher)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    mapping: dict[str, str] = {}
    pat = re.compile(re.escape(prefix) + r"(\d+)\.(.*)")
    for s_name in s_sd:
        m = pat.fullmatch(s_name)
        t_name = f"{prefix}{chosen[int(m.group(1))]}.{m.group(2)}" if m else s_name
        if t_name in t_sd and t_sd[t_name].shape == s_sd[s_name].shape:
            mapping[s_name] = t_name
        else:
            raise ModelError(f"cannot copy {t_name} into the student ({s_name}): shapes differ; "
                             "use --init random for a student of another width")
    student.load_state_dict({s: t_sd[t].clone() for s, t in mapping.items()}, strict=True)
    log.info("student initialised from teacher layers %s (0-based)", chosen)
    return mapping


def copy_position_bias(teacher: Any, student: Any) -> list[str]:
    """Copy the teacher's relative position bias tables (bucket × head embeddings) into a fresh student.

    Student head j takes teacher head ``j·H_t // H_s``. Returns the names copied; raises ModelError when the
    student has such a table with another number of buckets (it could not be filled faithfully).
    """

    t_mods = dict(teacher.named_modules())
    copied = []
    for name, mod in student.named_modules():
        if not name.endswith("relative_attention_bias") or not isinstance(mod, torch.nn.Embedding):
            continue
        src = t_mods.get(name)
        if not isinstance(src, torch.nn.Embedding):
            continue
        if src.num_embeddings != mod.num_embeddings:
            raise ModelError(f"{name}: the teacher has {src.num_embeddings} relative-position buckets, the "
                             f"student {mod.num_embeddings}; keep relative_attention_num_buckets unchanged")
        heads = [j * src.embedding_dim // mod.embedding_dim for j in range(mod.embedding_dim)]
        with torch.no_grad():
            mod.weight.copy_(src.weight[:, heads])
        copied.append(name)
    if copied:
        log.info("relative position bias copied from the teacher: %s", ", ".join(copied))
    return copied


def pca_basis(matrix: Any, k: int) -> Any:
    """The top-``k`` principal directions (D × k) of the rows of ``matrix`` (N × D)."""

    x = matrix.double()
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    return vh[:k].T.to(matrix.dtype)


def project_teacher_embeddings(teacher: Any, student: Any) -> Any:
    """Set the student's embedding tables to the teacher's times its word-embedding PCA basis.

    Returns the basis P (D_teacher × D_student).
    """

    t_emb, s_emb = teacher.base_model.embeddings, student.base_model.embeddings
    k = student.config.hidden_size
    if k > teacher.config.hidden_size:
        raise ModelError(f"--init teacher-pca needs a student no wider than the teacher ({k} > "
                         f"{teacher.config.hidden_size})")
    basis = pca_basis(t_emb.word_embeddings.weight.detach(), k)
    with torch.no_grad():
        for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
            src, dst = getattr(t_emb, name, None), getattr(s_emb, name, None)
            if src is not None and dst is not None and src.weight.shape[0] == dst.weight.shape[0]:
                dst.weight.copy_(src.weight @ basis)
    log.info("student embeddings initialised from the teacher's top %d principal directions", k)
    return basis


INITS = ("auto", "teacher-layers", "random", "teacher-pca", "teacher-pruned")


def resolve_init(teacher_config: Any, spec: StudentSpec | None) -> str:
    """``--init auto``: the teacher's layers when the student has the teacher's width (DistilBERT), else the
    teacher's embeddings projected onto the student's width (fresh layers; TinyBERT-shaped students), else —
    a student wider than its teacher — the architecture's own random initialisation."""
    assert spec is not None
    tc = teacher_config
    if spec.pruned:
        return "teacher-pruned"
    if (spec.hidden, spec.heads, spec.intermediate) == (tc.hidden_size, tc.num_attention_heads,
                                                          tc.intermediate_size):
        return "teacher-layers"
    return "teacher-pca" if spec.hidden <= tc.hidden_size else "random"


def build_student(teacher: Any, spec: StudentSpec | None, init: str, label_map: LabelMap,
                  seed: int = 0, calib: Any = None) -> tuple[Any, Any | None]:
    """Create the student classifier. Returns (model, tokenizer or None to use the teacher's). ``calib``: batches
    of the task's data (tokenizer outputs) that ``teacher-pruned`` measures importance on; what it kept and why
    is the student's ``pruning_info``.

    Raises:
        ModelError: width mismatch with ``teacher-layers``, label maps that differ, unreadable PATH.
    """

    tc = teacher.config
    if init == "auto":
        init = resolve_init(tc, spec)
    if init == "teacher-pruned":
        if spec is None or calib is None:
            raise ConfigError("--init teacher-pruned needs a student shape (--student prune:LxH) and data")
        student, kept, imp = carve(teacher, calib, spec.layers, spec.hidden, spec.heads, spec.intermediate)
        student.pruning_info = {"kept": kept.to_dict(), "importance": imp.to_dict()}
        return student, None
    if init in ("teacher-layers", "random", "teacher-pca"):
        assert spec is not None
        if init == "teacher-layers":
            same = (spec.hidden, spec.heads, spec.intermediate) == (tc.hidden_size, tc.num_attention_heads,
                                                                      tc.intermediate_size)
            if not same:
                raise ModelError(
                    f"--init teacher-layers needs the teacher's width (hidden {tc.hidden_size}, heads "
                    f"{tc.num_attention_heads}, intermediate {tc.intermediate_size}); the student has hidden "
                    f"{spec.hidden}, heads {spec.heads}, intermediate {spec.intermediate}: use --init random")
        cfg = student_config(tc, spec)
        cfg._attn_implementation = "eager"
        torch.manual_seed(seed)
        student = AutoModelForSequenceClassification.from_config(cfg, attn_implementation="eager")
        if init == "teacher-layers":
            copy_teacher_layers(teacher, student)
        elif init == "teacher-pca":
            project_teacher_embeddings(teacher, student)
            copy_position_bias(teacher, student)
        return student, None
    path = Path(init).expanduser()
    if not path.exists():
        raise ConfigError(f"--init {init!r} is neither teacher-layers, teacher-pca, random nor an existing folder")
    lm_file = path / LABEL_MAP_FILE
    if lm_file.is_file():
        names = json.loads(lm_file.read_text())["names"]
        if names != label_map.names:
            raise ModelError(f"label maps differ: teacher {label_map.names}, student init {names}; "
                             "distil into a student with the teacher's labels")
        student, tok, _ = load_classifier(str(path))
    else:
        torch.manual_seed(seed)
        student, tok, _ = load_classifier(str(path), label_map=label_map)
    return student, tok
