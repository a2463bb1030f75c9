"""Crash safety: `kill -9` a sweep subprocess mid-run (twice), resume, and get the uninterrupted table."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from test_sweep_helpers import write_config

from emocircuits.sweeps import run_sweep

N_CELLS = 8


def _start(cfg: Path, out: Path, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "emocircuits.cli", "sweep", str(cfg), "--out", str(out), "--quiet"]
    if resume:
        cmd.append("--resume")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _n_cells(out: Path) -> int:
    d = out / "cells"
    return len([p for p in d.glob("*.json") if not p.name.startswith(".")]) if d.is_dir() else 0


def _kill_after_new_cells(proc: subprocess.Popen, out: Path, before: int, timeout: float = 240) -> int:
    """SIGKILL ``proc`` as soon as one more cell than ``before`` is on disk; returns the count then."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        n = _n_cells(out)
        if n > before:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return _n_cells(out)
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("no cell finished in time")


def test_kill_9_then_resume_equals_uninterrupted_run(tmp_path):
    cfg = write_config(tmp_path, layers='["0", "1", "2", "all"]', factors="[0.0, 2.0]")
    crashed = tmp_path / "crashed"
    n1 = _kill_after_new_cells(_start(cfg, crashed, resume=False), crashed, 0)
    assert 1 <= n1 < N_CELLS, n1
    n2 = _kill_after_new_cells(_start(cfg, crashed, resume=True), crashed, n1)
    assert n1 < n2 < N_CELLS, (n1, n2)
    # the killed runs left a readable table of exactly the finished cells
    partial = pd.read_parquet(crashed / "results.parquet")
    assert len(partial) in (n2 - 1, n2) and partial["cell_id"].is_unique
    finish = _start(cfg, crashed, resume=True)
    assert finish.wait(timeout=300) == 0, finish.stderr.read().decode()[-2000:]

    whole = run_sweep(cfg, tmp_path / "whole", progress=False)
    resumed = pd.read_parquet(crashed / "results.parquet")
    assert len(resumed) == N_CELLS and resumed["cell_id"].is_unique
    assert (resumed["status"] == "ok").all()
    pd.testing.assert_frame_equal(resumed, whole.table)  # cell for cell, bit for bit
    from emocircuits.runs.rundir import read_manifest

    man = read_manifest(crashed)
    assert man["status"] == "complete" and len(man["resumed"]) == 2
    assert man["summary"]["n_run_this_time"] == N_CELLS - n2
