"""Run directories written before the Layers redesign (main at 5f46ae0) still report and re-run.

tests/fixtures/runs_5f46ae0 holds `classify`, `neurons find` and `neurons mask` runs on tiny-llama, written
by the code of 5f46ae0 (before the package became layer folders).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from emocircuits.sweeps.rerun import rerun
from emocircuits.viz.report import write_report

OLD = Path(__file__).parent / "fixtures" / "runs_5f46ae0"


@pytest.fixture
def old(tmp_path):
    """A copy of the stored runs; the mask run's neurons path points at the copied find run."""
    dst = tmp_path / "old"
    shutil.copytree(OLD, dst)
    manifest = dst / "mask" / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["config"]["neurons"] = str(dst / "find")
    manifest.write_text(json.dumps(doc))
    return dst


def test_old_runs_report(old, tmp_path):
    report = write_report([old / "classify", old / "find", old / "mask"], tmp_path / "r.html", progress=False)
    assert report.n_figures > 0 and (tmp_path / "r.html").stat().st_size > 10_000


def test_old_runs_rerun_to_the_same_results(old, tmp_path):
    metrics = rerun(old / "classify", tmp_path / "classify")
    assert metrics["accuracy"] == json.loads((old / "classify" / "metrics.json").read_text())["accuracy"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "classify" / "predictions.parquet"),
                                  pd.read_parquet(old / "classify" / "predictions.parquet"))
    rerun(old / "find", tmp_path / "find")
    assert (json.loads((tmp_path / "find" / "neurons.json").read_text())["neurons"]
            == json.loads((old / "find" / "neurons.json").read_text())["neurons"])
    rerun(old / "mask", tmp_path / "mask")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "mask" / "mask_effects.parquet"),
                                  pd.read_parquet(old / "mask" / "mask_effects.parquet"), check_exact=False, atol=1e-9)
