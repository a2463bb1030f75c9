"""The README's benchmark table is what the saved benchmark JSON gives (``scripts/bench_table.py``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_benchmark_table_matches_the_saved_json():
    proc = subprocess.run([sys.executable, "scripts/bench_table.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, "README.md's benchmark table is stale; run python scripts/bench_table.py"


def test_every_saved_json_belongs_to_a_benchmark_script():
    saved = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")}
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("bench_*.py")}
    assert saved <= scripts, f"results without a script: {sorted(saved - scripts)}"
