"""The sweep engine on the tiny random Llama: run directory, cell records, failures, resume rules, rerun."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import pytest
from test_sweep_helpers import write_config

from emocircuits.base.errors import EmocircuitsError
from emocircuits.jobs.registry import JOBS
from emocircuits.runs.rundir import read_manifest
from emocircuits.sweeps import Analysis, expand, from_dict, load_config, plan_tasks, run_sweep
from emocircuits.sweeps.registry import register_analysis
from emocircuits.sweeps.rerun import rerun
from emocircuits.sweeps.store import CellStore


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = write_config(tmp, layers='["0", "all", "7"]', factors="[0.0, 1.0]")
    return cfg, run_sweep(cfg, tmp / "out", progress=False)


def test_run_directory_layout_and_manifest(swept):
    cfg, res = swept
    out = res.out
    man = read_manifest(out)
    assert man["command"] == "sweep" and man["status"] == "complete"
    assert man["config"] == load_config(cfg).to_dict(with_executor=False)
    assert man["model"]["weights_hash"] and man["model"]["n_layers"] == 3
    assert man["dtype"] == "float32" and man["device"] == "cpu" and man["seed"] == 0
    assert {"torch", "transformer-lens", "numpy"} <= set(man["versions"])
    assert man["started"] and man["finished"]
    assert man["summary"]["n_cells"] == 6 and man["summary"]["n_failed"] == 2
    table = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(table, res.table)
    assert len(table) == 6 and table["cell_id"].is_unique
    assert list(table["cell_index"]) == list(range(6))
    assert {"layers", "factor", "status", "error", "acc", "clean_acc", "delta", "ci_low", "ci_high", "changed",
            "intervention"} <= set(table)
    assert len(list((out / "cells").glob("*.json"))) == 6
    assert len(list((out / "arrays").glob("*.safetensors"))) == 4  # failed cells have no arrays
    assert load_config(out / "sweep.toml").to_dict(with_executor=False) == man["config"]


def test_identity_scaling_changes_nothing_and_ablation_does(swept):
    t = swept[1].table.set_index(["layers", "factor"])
    same = t.loc[("all", 1.0)]
    assert same["changed"] == 0.0 and same["delta"] == 0.0 and same["acc"] == same["clean_acc"]
    ablated = t.loc[("all", 0.0)]
    assert ablated["n_heads"] == 12
    assert ablated["true_logp"] != same["true_logp"] and ablated["clean_true_logp"] == same["true_logp"]


def test_failed_cells_are_recorded_and_the_sweep_goes_on(swept):
    t = swept[1].table
    bad = t[t["layers"] == "7"]
    assert list(bad["status"]) == ["failed", "failed"]
    assert all("out of range" in e and "analysis.intervention.heads" in e for e in bad["error"])
    assert (t[t["layers"] != "7"]["status"] == "ok").all()
    rec = json.loads(next((swept[1].out / "cells").glob(f"{bad.iloc[0]['cell_id']}.json")).read_text())
    assert "Traceback" in rec["traceback"]


def test_existing_run_needs_resume_and_a_compatible_config(swept, tmp_path):
    cfg, res = swept
    with pytest.raises(EmocircuitsError, match="--resume"):
        run_sweep(cfg, res.out, progress=False)
    other = write_config(tmp_path, layers='["0", "all", "7"]', factors="[0.0, 1.0]", seed=5)
    with pytest.raises(EmocircuitsError, match="sweep.seed|'seed' was 0"):
        run_sweep(other, res.out, resume=True, progress=False)
    changed_data = load_config(cfg).to_dict()
    changed_data["data"]["limit_per_label"] = 2
    with pytest.raises(EmocircuitsError, match="data.limit_per_label"):
        run_sweep(from_dict(changed_data), res.out, resume=True, progress=False)


def test_resume_of_finished_sweep_retries_only_failed_cells(swept, tmp_path):
    import shutil

    cfg, res = swept
    copy = tmp_path / "copy"
    shutil.copytree(res.out, copy)
    again = run_sweep(cfg, copy, resume=True, progress=False)
    assert again.n_run == 2 and again.n_failed == 2  # the two failed cells, nothing else
    pd.testing.assert_frame_equal(again.table, res.table)
    man = read_manifest(copy)
    assert man["resumed"] and man["started"] == read_manifest(res.out)["started"]


def test_grid_may_grow_on_resume(swept, tmp_path):
    import shutil

    cfg, res = swept
    copy = tmp_path / "grow"
    shutil.copytree(res.out, copy)
    bigger = write_config(tmp_path, layers='["0", "all", "7"]', factors="[0.0, 1.0, 0.5]")
    grown = run_sweep(bigger, copy, resume=True, progress=False)
    assert grown.n_cells == 9 and grown.n_run == 3 + 2
    old = res.table.set_index("cell_id").drop(columns=["cell_index"])
    new = grown.table.set_index("cell_id").drop(columns=["cell_index"]).loc[old.index]
    pd.testing.assert_frame_equal(new[new.status == "ok"], old[old.status == "ok"])


def test_rerun_recreates_the_sweep_from_its_manifest(swept, tmp_path):
    _, res = swept
    again = rerun(res.out, tmp_path / "again")
    pd.testing.assert_frame_equal(again.table, res.table)
    with pytest.raises(EmocircuitsError, match="new --out"):
        rerun(res.out, res.out)


def test_rerun_registry_dispatches_and_names_known_commands(tmp_path, monkeypatch):
    from emocircuits.runs.rundir import RunDir

    seen = {}
    monkeypatch.setitem(JOBS, "test-echo", lambda config, out: seen.update(config=config, out=out))
    with RunDir.create(tmp_path / "a", command="test-echo", config={"x": 1}, seed=0):
        pass
    rerun(tmp_path / "a", tmp_path / "b")
    assert seen == {"config": {"x": 1}, "out": tmp_path / "b"}
    with RunDir.create(tmp_path / "c", command="no-such-command", config={}, seed=0):
        pass
    with pytest.raises(EmocircuitsError, match="re-runnable commands: .*sweep"):
        rerun(tmp_path / "c", tmp_path / "d")


def test_store_ignores_and_cleans_torn_temporaries(tmp_path):
    store = CellStore(tmp_path)
    store.write({"cell_id": "abc", "index": 0, "cell": {"x": 1}, "status": "ok", "metrics": {"m": 1.0}})
    (tmp_path / "cells" / ".def.json.XYZ.tmp").write_text('{"cell_id": "def", "ind')  # a killed write
    assert set(store.load()) == {"abc"}
    assert store.clean_temporaries() == 1
    assert not list((tmp_path / "cells").glob(".*"))


# ----------------------------------------------------------------------------- a model-free analysis


@dataclass(frozen=True)
class _EchoCell:
    x: int
    fail: bool = False


@dataclass(frozen=True)
class _EchoParams:
    scale: float = 1.0


@register_analysis
class _Echo(Analysis):
    name = "test_echo"
    Params = _EchoParams
    Cell = _EchoCell
    default_cells_per_task = 2
    batches: ClassVar[list[list[int]]] = []

    def prepare(self, cfg, shared, *, progress=False):
        return {"scale": cfg.params.scale, "spec": {"model_id": "none", "dtype": "float32", "device": "cpu"}}

    def check_cell(self, cfg, spec, cell):
        if cell.x < 0:
            raise EmocircuitsError(f"x = {cell.x} is negative; use x >= 0.")

    def run(self, state, cells):
        _Echo.batches.append([c.x for c in cells])
        return [ValueError(f"cell {c.x} asked to fail") if c.fail else {"y": c.x * state["scale"]} for c in cells]


def test_tasks_chunk_only_the_missing_cells(tmp_path):
    cfg = from_dict({"sweep": {"analysis": "test_echo"}, "analysis": {"scale": 2.0},
                     "grid": {"x": [1, 2, 3, 4, 5], "fail": [False]}})
    from emocircuits.sweeps import cell_id

    cells = expand(cfg)
    ids = [cell_id(cfg.identity_hash(), c) for c in cells]
    tasks = plan_tasks(cfg, cells, ids, done={ids[0], ids[2], ids[3]})
    assert [[e["index"] for e in t] for t in tasks] == [[1, 4]]
    _Echo.batches.clear()
    res = run_sweep(cfg, tmp_path / "e", progress=False)
    assert _Echo.batches == [[1, 2], [3, 4], [5]]
    assert list(res.table["y"]) == [2.0, 4.0, 6.0, 8.0, 10.0]


def test_a_failing_cell_in_a_task_is_pinned_to_its_cell(tmp_path):
    cfg = from_dict({"sweep": {"analysis": "test_echo"}, "grid": {"x": [1, 2], "fail": [False, True]}})
    res = run_sweep(cfg, tmp_path / "f", progress=False)
    assert list(res.table["status"]) == ["ok", "failed", "ok", "failed"]
    assert res.table["error"].iloc[1] == "ValueError: cell 1 asked to fail"


def test_cells_the_model_rejects_fail_before_running_and_are_listed(tmp_path):
    from emocircuits.sweeps import failed_cells_text

    cfg = from_dict({"sweep": {"analysis": "test_echo"}, "grid": {"x": [-1, 3]}})
    _Echo.batches.clear()
    res = run_sweep(cfg, tmp_path / "g", progress=False)
    assert _Echo.batches == [[3]]  # the rejected cell never reached the worker
    assert list(res.table["status"]) == ["failed", "ok"] and res.n_failed_total == 1
    text = failed_cells_text(res.table)
    assert text.splitlines()[0] == "1 of 2 cells failed:"
    assert "x=-1" in text and "x = -1 is negative" in text


def test_sweep_cli_prints_failed_cells_with_reasons(tmp_path):
    from typer.testing import CliRunner

    from emocircuits.cli.app import app

    cfg = write_config(tmp_path, layers='["0", "7"]', factors="[0.0]")
    result = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "cli"), "--quiet"])
    # cells that failed make the sweep exit non-zero with a summary line (issue 29, class 8)
    assert result.exit_code == 1 and isinstance(result.exception, EmocircuitsError), result.output
    assert "1 of 2 cells failed; see" in str(result.exception) and "results.parquet" in str(result.exception)
    assert '"n_failed": 1' in result.output
    assert "1 of 2 cells failed" in result.output and "layers='7'" in result.output and "out of range" in result.output


@pytest.mark.slow
def test_local_worker_processes_equal_in_process(swept, tmp_path):
    cfg, res = swept
    pooled = run_sweep(cfg, tmp_path / "pool", workers=2, progress=False)
    pd.testing.assert_frame_equal(pooled.table, res.table)
    workers = {json.loads(p.read_text())["worker"] for p in (tmp_path / "pool" / "cells").glob("*.json")}
    assert "precheck" in workers  # layer 7 was refused before any worker saw it
    workers.discard("precheck")
    # cells ran in worker processes, never in this one; which of the 2 workers takes a task is a race
    assert 1 <= len(workers) <= 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
