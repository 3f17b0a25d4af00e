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
