"""A model reference: what a model argument points at, as data (see :mod:`nanoify.tasks.resolve`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelRef:
    """A runnable model: the file or folder an engine opens, its task kind's name (``task``: look the kind up
    with :func:`nanoify.tasks.registry.task_kind`), labels and preprocessing (as data), and the files that travel
    with it (``assets``: tokenizer folder, ``preprocess.json``, ``label_map.json``)."""

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
