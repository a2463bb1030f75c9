"""Run a worker snippet on this tree and on an earlier revision of the package, each in a fresh process.

The earlier revision's ``emocircuits`` folder is unpacked with ``git archive`` into a temporary folder and put
first on ``PYTHONPATH``; both sides use this environment's libraries and the same inputs (this tree's
``data/``). Workers print one JSON line last; ``run_side`` returns it with the process's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


BASELINE = "5f46ae0"
"""The revision the Speed III targets are measured against."""


def unpack(revision: str, into: Path) -> Path:
    """``git archive`` the revision's package into ``into``; returns the folder to put on PYTHONPATH."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "emocircuits"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


ONLY_PYTHONPATH = (
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in repr(f)]\n"
)
"""A worker's first lines: drop the editable install's import finder, which would otherwise fill in the
sub-packages an older revision lacks (``emocircuits.core``...) from this tree and run a mix of the two."""


def run_side(snippet: str, args: list[str], pythonpath: Path, threads: int) -> dict:
    """Run ``snippet`` with ``args`` in a fresh interpreter whose package comes from ``pythonpath`` only."""
    env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS=str(threads),
               EMOCIRCUITS_DATA_DIR=str(ROOT / "data"), TOKENIZERS_PARALLELISM="false")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(ONLY_PYTHONPATH + snippet)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, f.name, *args], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    os.unlink(f.name)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed ({proc.returncode}) with {pythonpath}:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = round(wall, 2)
    return out


def readme_neurons(path: str | None, tmp: Path) -> str:
    """``path``, or the README's RQ1 selection (``neurons find`` on 60 train dialogues per emotion) found in
    ``tmp`` with this tree (not timed)."""
    if path:
        return path
    out = tmp / "find"
    subprocess.run([sys.executable, "-m", "emocircuits.cli", "neurons", "find", "--data", "builtin:dialogues",
                    "--split", "train", "--limit-per-label", "60", "--out", str(out)], check=True,
                   capture_output=True, cwd=ROOT)
    return str(out / "neurons.json")


def baseline_args(doc: str) -> argparse.ArgumentParser:
    """The options every benchmark against the baseline takes: data size, neurons, revision, threads."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--per-label", type=int, default=4, help="test dialogues per emotion (0 = the whole split)")
    ap.add_argument("--neurons", default=None, help="a neurons.json (default: found here, not timed)")
    ap.add_argument("--baseline", default=BASELINE)
    ap.add_argument("--threads", type=int, default=2)
    return ap
