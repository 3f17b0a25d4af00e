"""benchmarks/RESULTS.md opens with one current table: a script's new run rewrites its own row, nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from _results import update_current  # noqa: E402

TABLE = """# Benchmark results

<!-- current:begin -->
| benchmark (command) | latest headline | date | machine |
|---|---|---|---|
| `benchmarks/a.py` (`make bench-a`) | old a | 2026-01-01 | m |
| `benchmarks/b.py` | old b | 2026-01-01 | m |
<!-- current:end -->

# History

## a — 2026-01-01
"""


def test_a_new_run_rewrites_only_its_own_row_and_adds_unknown_ones(tmp_path):
    f = tmp_path / "RESULTS.md"
    f.write_text(TABLE)
    update_current(f, "a.py", "new a")
    rows = [line for line in f.read_text().splitlines() if line.startswith("| `benchmarks/")]
    assert rows[0].startswith("| `benchmarks/a.py` (`make bench-a`) | new a | ") and "2026-01-01" not in rows[0]
    assert rows[1] == "| `benchmarks/b.py` | old b | 2026-01-01 | m |"
    update_current(f, "c.py")
    rows = [line for line in f.read_text().splitlines() if line.startswith("| `benchmarks/")]
    assert len(rows) == 3 and rows[2].startswith("| `benchmarks/c.py` | new run: see its section below |")
    assert f.read_text().endswith("# History\n\n## a — 2026-01-01\n")  # the history is untouched
    # the real file has the table
    real = (Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md").read_text()
    assert real.index("<!-- current:begin") < real.index("<!-- current:end -->") < real.index("# History")
