"""CLI start: `emocircuits --help`, a subcommand's --help and a refusal that needs no model, here vs the baseline.

Each command runs ``--repeats`` times in a fresh interpreter on each side (this tree and the baseline revision
unpacked by ``git archive``), alternating; the JSON gives the median seconds per command and side and the
ratio of the medians of ``--help``.

    python benchmarks/bench_cli_start.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baseline import BASELINE, ONLY_PYTHONPATH, ROOT, unpack  # noqa: E402

TARGET = "--help ≤ 1 s (median of 5)"

COMMANDS = {"help": ["--help"], "neurons mask --help": ["neurons", "mask", "--help"],
            "refusal (--controls -1)": ["neurons", "mask", "--neurons", "missing.json", "--controls", "-1"]}


def _time(args: list[str], pythonpath: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    t0 = time.perf_counter()
    code = ONLY_PYTHONPATH + "import runpy\nrunpy.run_module('emocircuits.cli', run_name='__main__')\n"
    subprocess.run([sys.executable, "-c", code, *args], capture_output=True, env=env, cwd=tempfile.gettempdir())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", default=BASELINE)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        old_tree = unpack(a.baseline, Path(d) / "baseline")
        times: dict[str, dict[str, list[float]]] = {k: {"baseline": [], "this_tree": []} for k in COMMANDS}
        for _ in range(a.repeats):
            for name, args in COMMANDS.items():
                times[name]["baseline"].append(_time(args, old_tree))
                times[name]["this_tree"].append(_time(args, ROOT))
    med = {k: {side: round(statistics.median(v), 3) for side, v in sides.items()} for k, sides in times.items()}
    print(json.dumps({"benchmark": "cli_start", "baseline": a.baseline, "repeats": a.repeats, "medians_s": med,
                      "baseline_s": med["help"]["baseline"], "this_tree_s": med["help"]["this_tree"],
                      "ratio": round(med["help"]["baseline"] / med["help"]["this_tree"], 2)}))


if __name__ == "__main__":
    main()
