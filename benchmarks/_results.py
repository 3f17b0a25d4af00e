"""What every benchmark script writes the same way: the machine line and the append to RESULTS.md."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))


def machine_line() -> str:
    """``Machine: CPU, N cores, flags …. Versions: …`` — recorded beside every number."""
    from nanoify.artifacts import machine, versions

    m = machine()
    return (f"Machine: {m['cpu']}, {m['cores']} cores, flags {' '.join(m.get('cpu_flags', [])) or 'unknown'}. "
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))


def append(path: str | Path, text: str) -> None:
    """Print a results section and append it to ``path``."""
    print(text)
    with open(path, "a") as f:
        f.write(text.rstrip("\n") + "\n")


# Config fields added after runs were cached, with the value that reproduces the behaviour from before they
# existed: a stored config without them still matches a config that has them at exactly that value
# ("train.device": the field device of the nested train config).
ADDED_FIELDS = {"augment_mlm": None, "train.device": "cpu", "train.precision": "fp32"}


def _backfill(stored: dict, want: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in stored.items()}
    for path, value in ADDED_FIELDS.items():
        *heads, last = path.split(".")
        s, w = out, want
        for h in heads:
            if not isinstance(s.get(h), dict) or not isinstance(w.get(h), dict):
                break
            s, w = s[h], w[h]
        else:
            if last in w and last not in s:
                s[last] = value
    return out


def cached(out: Path, cfg: object) -> bool:
    """A finished run with exactly this config is already in ``out`` (benchmarks reuse it)."""
    from nanoify.artifacts import read_manifest
    from nanoify.config import to_dict

    man = read_manifest(out)
    if not man or "config" not in man:
        return False
    want = to_dict(cfg)
    return _backfill(man["config"], want) == want


def distil_all(runs: dict, cache: Path) -> dict[str, Path]:
    """Distil every named config into ``cache/student{i}`` (resuming a killed run) unless a finished run with the
    same config is there; the folders by name."""
    import logging

    from nanoify.distill.run import distill

    folders = {}
    for i, (name, cfg) in enumerate(runs.items()):
        out = cache / f"student{i}"
        if not cached(out, cfg):
            logging.info("distilling %s", name)
            distill(cfg, out, resume=True, progress=False)
        folders[name] = out
    return folders
