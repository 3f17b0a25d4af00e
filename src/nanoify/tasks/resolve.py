"""What a model argument points at, as data: the file an engine opens, the engine, the task, the labels and the
preprocessing — from a Hugging Face classifier folder, a nanoify torch-module folder (``module.json``), an
export or quantize output folder, an ``.onnx`` file, or a TensorRT engine file.

An ``.onnx`` file needs nothing beside it when its task can be told from its inputs: ``input_ids`` (with a
tokenizer in ``hf/`` near it) is text classification; one float rank-4 input with a 2-D output is image
classification, preprocessed by ``preprocess.json`` beside it (or ``--preprocess``), or by the defaults with
the model's own input size. A reference names its task; it does not import it (:mod:`nanoify.tasks` does).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..artifacts import read_manifest
from ..data.images import Preprocess
from ..errors import DataError, ModelError
from ..models.files import (
    LABEL_MAP_FILE,
    MODULE_FILE,
    ONNX_SUFFIXES,
    PREPROCESS_FILE,
    TRT_SUFFIXES,
    onnx_io,
    read_module_json,
)
from ..models.load import max_tokens, read_labels
from .decoders import guess_decoder
from .text import TEXT_INPUTS

log = logging.getLogger(__name__)

TEXT = "text-classification"
IMAGE = "image-classification"
DETECT = "detection"
TASK_NAMES = (TEXT, IMAGE, DETECT)
DETECTION_FILE = "detection.json"  # decoder and thresholds of a detector, beside it


@dataclass
class ModelRef:
    """A runnable model: the file or folder an engine opens, its task, labels and preprocessing (as data), and
    the files that travel with it (``assets``: tokenizer folder, ``preprocess.json``, ``label_map.json``)."""

    name: str
    path: Path
    engine: str
    task: str
    labels: list[str] | None
    preprocess: dict[str, Any]
    assets: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """The weight files (for the size column)."""
        if self.path.is_file():
            extra = [p for p in self.path.parent.glob(self.path.name + ".data") if p.is_file()]
            return [self.path, *extra]
        return sorted(p for p in self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    @property
    def max_sequence(self) -> int | None:
        return self.preprocess.get("max_sequence")


def _max_seq(folder: Path, default: int = 512) -> int:
    cfg = folder / "config.json"
    if cfg.is_file():
        return max_tokens(json.loads(cfg.read_text()), default)
    return default


def _tokenizer_near(f: Path) -> Path | None:
    for cand in (f.parent / "hf", f.parent.parent / "hf", f.parent):
        if (cand / "tokenizer.json").is_file() or (cand / "vocab.txt").is_file():
            return cand
    return None


def _text_ref(name: str, p: Path, engine: str, tok: Path, inputs: list[str] | None = None) -> ModelRef:
    labels = read_labels(tok)
    if labels is None:
        raise ModelError(f"{tok} has no label_map.json or id2label in config.json; save the classifier with nanoify")
    pre = {"tokenizer": str(tok), "max_sequence": _max_seq(tok), "inputs": list(inputs or TEXT_INPUTS)}
    info = {}
    cfg = tok / "config.json"
    if cfg.is_file():
        info["layers"] = json.loads(cfg.read_text()).get("num_hidden_layers")
    assets = [tok] if tok != p else []
    return ModelRef(name, p, engine, TEXT, labels, pre, assets, info)


def _image_ref(name: str, p: Path, engine: str, input_name: str, shape: list[Any], folder: Path,
               preprocess: str | Path | None, task: str = IMAGE, detection: dict[str, Any] | None = None) -> ModelRef:
    assets = []
    found = None
    if isinstance(preprocess, dict):
        pre = Preprocess.from_dict(preprocess, "preprocess")
    elif preprocess is not None:
        pre = Preprocess.load(preprocess)
    else:
        found = next((c / PREPROCESS_FILE for c in (folder, folder.parent) if (c / PREPROCESS_FILE).is_file()), None)
        pre = Preprocess.load(found) if found else Preprocess()
        if found:
            assets.append(found)
        else:  # defaults are a guess about how the model was trained: say so wherever the model is used
            log.warning("%s has no preprocess.json beside it: using the defaults (stretch to the model's size, RGB, "
                        "pixels/255, no mean/std); write one or pass --preprocess if the model was trained otherwise",
                        p)
    if len(shape) != 4:
        raise ModelError(f"{p} takes {input_name!r} of rank {len(shape)} ({shape}); an image model takes one "
                         "rank-4 image batch (N×C×H×W or N×H×W×C)")
    layout = pre.layout
    if isinstance(shape[1], int) and shape[1] == 3 and not (isinstance(shape[3], int) and shape[3] == 3):
        layout = "nchw"
    elif isinstance(shape[3], int) and shape[3] == 3 and not (isinstance(shape[1], int) and shape[1] == 3):
        layout = "nhwc"
    hw = shape[2:4] if layout == "nchw" else shape[1:3]
    fixed = tuple(hw) if all(isinstance(d, int) and d > 0 for d in hw) else None
    size = pre.size or fixed
    if size is None:
        raise DataError(f"{p} takes images of any size and no preprocess.json says which; write one with "
                        "\"size\": [H, W] beside the model or pass --preprocess FILE (for a detector: the largest "
                        "input it should get)")
    if fixed and tuple(size) != fixed and task != DETECT:
        raise DataError(f"preprocess size {list(size)} does not match the model's fixed input {list(fixed)}; fix "
                        "\"size\" in preprocess.json")

    pre = replace(pre, size=tuple(size), layout=layout)
    labels = None
    for c in (folder, folder.parent):
        if (c / LABEL_MAP_FILE).is_file():
            labels = read_labels(c)
            assets.append(c / LABEL_MAP_FILE)
            break
    if fixed and tuple(size) != fixed:
        raise DataError(f"preprocess size {list(size)} does not match the detector's fixed input {list(fixed)}; fix "
                        "\"size\" in preprocess.json")
    d = {**pre.to_dict(), "input": input_name}
    if task == DETECT:
        d.update(detection or {})
        d["dynamic_hw"] = fixed is None
    source = ("given" if isinstance(preprocess, dict) else str(preprocess)) if preprocess is not None else (
        str(found) if found else "defaults")
    info: dict[str, Any] = {"preprocess_source": source}
    if isinstance(shape[0], int) and shape[0] > 0:
        info["max_batch"] = shape[0]  # exported with a fixed batch: feeds never exceed it
    for c in (folder, folder.parent):
        if task == DETECT and (c / DETECTION_FILE).is_file():
            assets.append(c / DETECTION_FILE)
            break
    return ModelRef(name, p, engine, task, labels, d, assets, info)


def detection_settings(folder: Path, decoder: str | None, output_shapes: list[list[Any]]) -> dict[str, Any]:
    """Decoder and thresholds of a detector: ``--decoder``, else ``detection.json`` beside it, else the decoder its
    output shape implies; none of these is a one-line error."""
    d: dict[str, Any] = {}
    for c in (folder, folder.parent):
        f = c / DETECTION_FILE
        if f.is_file():
            try:
                d = json.loads(f.read_text())
            except json.JSONDecodeError as e:
                raise DataError(f"{f} is not valid JSON ({e.msg})") from None
            unknown = set(d) - {"decoder", "conf", "iou", "max_det", "stride"}
            if unknown:
                raise DataError(f"{f}: unknown key(s) {', '.join(sorted(unknown))}; allowed: decoder, conf, iou, "
                                "max_det, stride")
            break
    if decoder:
        d["decoder"] = decoder
    if not d.get("decoder"):
        d["decoder"] = guess_decoder(output_shapes)
    if not d.get("decoder"):
        raise ModelError(f"cannot tell how to decode outputs of shape {output_shapes}; pass --decoder yolov8|yolov5|"
                         "fastestdet or package.module:function")
    return d


def _onnx_ref(p: Path, engine: str | None, task: str | None, preprocess: str | Path | None,
              decoder: str | None = None) -> ModelRef:
    ins, outs, ops = onnx_io(p)
    name = f"{p.parent.name}/{p.name}"
    default_engine = engine or ("onnxruntime" if p.suffix.lower() in ONNX_SUFFIXES else "tensorrt")
    tok = _tokenizer_near(p)
    if task is None:
        if "input_ids" in ins or (tok is not None and not any(len(s) == 4 for _, s in ins.values())):
            task = TEXT
        elif len(ins) == 1 and len(next(iter(ins.values()))[1]) == 4:
            out_rank = {len(s) for _, s in outs.values()}
            task = IMAGE if out_rank == {2} else DETECT
        else:
            desc = ", ".join(f"{k} {d}{s}" for k, (d, s) in ins.items())
            raise ModelError(f"cannot tell the task of {p} from its inputs ({desc}); pass --task "
                             f"{' or '.join(TASK_NAMES)}")
    if task == TEXT:
        if tok is None:
            raise ModelError(f"no tokenizer next to {p} (looked for hf/tokenizer.json); export with `nanoify export` "
                             "or put the tokenizer files in an hf/ folder beside the model")
        if "input_ids" not in ins:
            raise ModelError(f"{p} takes {', '.join(ins)}, not input_ids: it is not a text classifier")
        return _text_ref(name, p, default_engine, tok, list(ins))
    if task in (IMAGE, DETECT):
        floats = [k for k, (d, _) in ins.items() if d.startswith("float")]
        if len(ins) != 1 or not floats:
            desc = ", ".join(f"{k} {d}{s}" for k, (d, s) in ins.items())
            kind = "an image classifier" if task == IMAGE else "a detector"
            raise ModelError(f"{p} takes {desc}; {kind} takes one float image input")
        det = detection_settings(p.parent, decoder, [s for _, s in outs.values()]) if task == DETECT else None
        return _image_ref(name, p, default_engine, floats[0], ins[floats[0]][1], p.parent, preprocess, task, det)
    raise ModelError(f"unknown task {task!r}; choose {' or '.join(TASK_NAMES)}")


def resolve(model: str | Path, engine: str | None = None, task: str | None = None,
            preprocess: str | Path | None = None, decoder: str | None = None) -> ModelRef:
    """Resolve a model argument (see module docstring). ``engine``/``task``/``preprocess`` override what is found."""
    p = Path(model).expanduser()
    if not p.exists():
        raise ModelError(f"model {p} does not exist; pass a classifier folder, an export/quantize output folder, "
                         "or an .onnx file")
    if p.is_dir():
        man = read_manifest(p)
        kind = man.get("kind")
        if kind == "quantize" and man.get("config", {}).get("target") != "cuda":
            f = p / man.get("model_file", "model.int8.onnx")
        elif kind == "export" or ((p / "hf").is_dir() and not (p / "config.json").is_file()):
            f = p / "model.fused.onnx" if (p / "model.fused.onnx").is_file() else p / "model.onnx"
        elif (p / "config.json").is_file():
            ref = _text_ref(p.name, p, engine or "torch", p)
            ref.preprocess["inputs"] = _hf_inputs(p)
            return ref
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
        if kind == "quantize" and man.get("config", {}).get("target") == "cuda":
            engine = engine or "torch"  # quantize --target cuda chose a precision for the torch engine on a GPU
        return resolve(f, engine, task or man.get("task"), preprocess, decoder)
    suffix = p.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return _onnx_ref(p, engine, task, preprocess, decoder)
    if suffix in TRT_SUFFIXES:
        beside = next(iter(sorted(p.parent.glob("*.onnx"))), None)
        if beside is None:
            raise ModelError(f"{p}: a TensorRT engine needs its ONNX source beside it to know its task and inputs")
        ref = _onnx_ref(beside, engine or "tensorrt", task, preprocess, decoder)
        ref.path, ref.name = p, f"{p.parent.name}/{p.name}"
        return ref
    raise ModelError(f"{p}: unknown model file type {suffix or '(none)'}; expected .onnx, a TensorRT engine "
                     "(.plan/.engine) or a classifier folder")


def _hf_inputs(folder: Path) -> list[str]:
    """The text inputs a Hugging Face classifier takes (MPNet and DistilBERT have no token_type_ids)."""
    cfg = folder / "config.json"
    model_type = json.loads(cfg.read_text()).get("model_type", "bert") if cfg.is_file() else "bert"
    if model_type in ("mpnet", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "deberta"):
        return [k for k in TEXT_INPUTS if k != "token_type_ids"]
    return list(TEXT_INPUTS)


def _module_ref(folder: Path, engine: str | None, preprocess: str | Path | None,
                decoder: str | None = None) -> ModelRef:
    d = read_module_json(folder)
    task = d.get("task", IMAGE)
    if task not in (IMAGE, DETECT):
        raise ModelError(f"{folder}: torch modules of task {task!r} are not supported")
    (input_name, (_, shape)), = ((k, tuple(v)) for k, v in d["inputs"].items())
    det = detection_settings(folder, decoder, [["batch", "?", "?"]]) if task == DETECT else None
    return _image_ref(folder.name, folder, engine or "torch", input_name, list(shape), folder, preprocess, task, det)
