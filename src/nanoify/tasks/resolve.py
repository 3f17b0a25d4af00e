"""What a model argument points at, as data: the file an engine opens, the engine, the task, the labels and the
preprocessing — from a Hugging Face classifier folder, a nanoify torch-module folder (``module.json``), an
export or quantize output folder, an ``.onnx`` file, or a TensorRT engine file.

An ``.onnx`` file needs nothing beside it when its task can be told from its inputs: ``input_ids`` (with a
tokenizer in ``hf/`` near it) is text classification; one float rank-4 input with a 2-D output is image
classification, preprocessed by ``preprocess.json`` beside it (or ``--preprocess``), or by the defaults with
the model's own input size. Each task kind says whether a graph is its own and builds its reference
(:mod:`nanoify.tasks.kinds`); a reference carries its kind (``ref.kind``).
"""

from __future__ import annotations

from pathlib import Path

from ..artifacts import read_manifest
from ..errors import ModelError
from ..models.files import IR_SUFFIXES, MODULE_FILE, ONNX_SUFFIXES, TRT_SUFFIXES, ir_io, onnx_io, read_module_json
from .image import ImageKind
from .kinds import ModelRef
from .registry import recognition_order, task_kind, task_names


def _tokenizer_near(f: Path) -> Path | None:
    for cand in (f.parent / "hf", f.parent.parent / "hf", f.parent):
        if (cand / "tokenizer.json").is_file() or (cand / "vocab.txt").is_file():
            return cand
    return None


def _onnx_ref(p: Path, engine: str | None, task: str | None, preprocess: str | Path | None,
              decoder: str | None = None) -> ModelRef:
    ins, outs, _ = ir_io(p) if p.suffix.lower() in IR_SUFFIXES else onnx_io(p)
    tok = _tokenizer_near(p)
    if task is None:
        kind = next((k for k in recognition_order() if k.recognise(ins, outs, tok)), None)
        if kind is None:
            desc = ", ".join(f"{k} {d}{s}" for k, (d, s) in ins.items())
            raise ModelError(f"cannot tell the task of {p} from its inputs ({desc}); pass --task "
                             f"{' or '.join(task_names())}")
    else:
        kind = task_kind(task)
    suffix = p.suffix.lower()
    default_engine = engine or ("onnxruntime" if suffix in ONNX_SUFFIXES else "openvino" if suffix in IR_SUFFIXES
                                else "tensorrt")
    return kind.from_onnx(f"{p.parent.name}/{p.name}", p, default_engine, ins, outs, tok, preprocess, decoder)


def resolve(model: str | Path, engine: str | None = None, task: str | None = None,
            preprocess: str | Path | None = None, decoder: str | None = None) -> ModelRef:
    """Resolve a model argument (see module docstring). ``engine``/``task``/``preprocess`` override what is found."""
    p = Path(model).expanduser()
    if not p.exists():
        raise ModelError(f"model {p} does not exist; pass a classifier folder, an export/quantize output folder, "
                         "or an .onnx file")
    if p.is_dir():
        return _folder_ref(p, engine, task, preprocess, decoder)
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES or suffix in IR_SUFFIXES:
        return _onnx_ref(p, engine, task, preprocess, decoder)
    if suffix in TRT_SUFFIXES:
        beside = next(iter(sorted(p.parent.glob("*.onnx"))), None)
        if beside is None:
            raise ModelError(f"{p}: a TensorRT engine needs its ONNX source beside it to know its task and inputs")
        ref = _onnx_ref(beside, engine or "tensorrt", task, preprocess, decoder)
        ref.path, ref.name = p, f"{p.parent.name}/{p.name}"
        return ref
    raise ModelError(f"{p}: unknown model file type {suffix or '(none)'}; expected .onnx, an OpenVINO IR (.xml), "
                     "a TensorRT engine (.plan/.engine) or a classifier folder")


def _folder_ref(p: Path, engine: str | None, task: str | None, preprocess: str | Path | None,
                decoder: str | None) -> ModelRef:
    """A nanoify output folder (its manifest says which file), a kind's own folder format (a Hugging Face
    classifier), a torch-module folder, or a folder holding one ONNX file."""
    man = read_manifest(p)
    made_by = man.get("kind")
    if made_by == "quantize" and man.get("model_file"):  # the ONNX targets' outputs name their model file
        f = p / man["model_file"]
    elif made_by == "export" or ((p / "hf").is_dir() and not (p / "config.json").is_file()):
        f = p / "model.fused.onnx" if (p / "model.fused.onnx").is_file() else p / "model.onnx"
    elif (own := _own_format(p, engine)) is not None:
        return own
    elif (p / MODULE_FILE).is_file():
        return _module_ref(p, engine, preprocess, decoder)
    else:
        onnx_files = sorted(p.glob("*.onnx"))
        if len(onnx_files) != 1:
            raise ModelError(f"{p} is neither a classifier folder (config.json), a torch module folder "
                             "(module.json) nor a nanoify output folder")
        f = onnx_files[0]
    if not f.is_file():
        raise ModelError(f"{p} has no {f.name}; re-run the command that wrote it")
    if made_by == "quantize":  # a quantize output says which engine runs it (--target cuda: torch); older ones
        engine = engine or man.get("engine") or ("torch" if man.get("config", {}).get("target") == "cuda" else None)
    return resolve(f, engine, task or man.get("task"), preprocess, decoder)


def _own_format(folder: Path, engine: str | None) -> ModelRef | None:
    for kind in recognition_order():
        ref = kind.from_folder(folder, engine)
        if ref is not None:
            return ref
    return None


def _module_ref(folder: Path, engine: str | None, preprocess: str | Path | None,
                decoder: str | None = None) -> ModelRef:
    d = read_module_json(folder)
    (input_name, (_, shape)), = ((k, tuple(v)) for k, v in d["inputs"].items())
    kind = task_kind(d.get("task", ImageKind.name))  # module.json files before tasks were named: classifiers
    return kind.from_module(folder, engine or "torch", input_name, list(shape), preprocess, decoder)
