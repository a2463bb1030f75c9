"""The neuron_masking analysis: its cells reproduce emocircuits.methods.neurons.mask, found neurons are reused."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from emocircuits.sweeps import from_dict, run_sweep

CFG = {
    "sweep": {"analysis": "neuron_masking", "seed": 3},
    "model": {"spec": "tiny-llama"},
    "data": {"limit_per_label": 1},
    "analysis": {"controls": 1, "n_boot": 100, "find": {"limit_per_label": 1, "top_rate": 0.05}},
    "grid": {"emotion": ["fear"], "layers": ["all"], "ratio": [0.05, 0.1], "ratio_mode": ["truncate", "reselect"]},
}


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    out = tmp_path_factory.mktemp("mask") / "run"
    return run_sweep(from_dict(CFG), out, progress=False)


def _found(out):
    """(selection, stats) of the neurons artifact the sweep found and stored."""
    from emocircuits.sweeps.artifacts import Artifacts, read_artifact_path

    (folder,) = list((out / "artifacts").glob("neurons-*"))
    return Artifacts({"n": read_artifact_path(folder)}).load("n")


def test_cells_equal_the_library_mask_call(masked):
    from emocircuits.methods.neurons.masking import MASK_METRICS, mask
    from emocircuits.sweeps.shared import cached_model

    t = masked.table
    assert (t["status"] == "ok").all(), t["error"].tolist()
    model, _ = cached_model(from_dict(CFG).model)
    sel, stats = _found(masked.out)
    assert stats is not None and stats.labels == sel.labels
    data = from_dict(CFG).data.load(seed=3)
    for _, row in t.iterrows():
        ref = mask(model, data, sel, emotions=["fear"], layers="all", ratio=row["ratio"], ratio_mode=row["ratio_mode"],
                   stats=stats, controls=1, seed=int(row["seed"]), n_boot=100, progress=False).effects
        overall = ref[ref.true_label == "all"].iloc[0]
        own = ref[ref.true_label == "fear"].iloc[0]
        assert row["n_neurons"] == overall["n_neurons"]
        for k in MASK_METRICS:
            assert row[f"all_{k}"] == pytest.approx(overall[k], nan_ok=True)
            assert row[f"own_{k}"] == pytest.approx(own[k], nan_ok=True)
    assert (t["layer_first"] == 0).all() and (t["layer_last"] == 2).all()
    assert (t["k_controls"] == 1).all() and t["own_rank_p"].isin([0.5, 1.0]).all()
    assert (t["own_floor"] == (t["own_acc_normal"] < 0.2)).all() and (t["all_floor"] == (t["all_acc_normal"] < 0.2)).all()
    # a bigger ratio masks more neurons; reselect and truncate read "ratio" differently
    tr = t[t.ratio_mode == "truncate"].set_index("ratio")["n_neurons"]
    assert tr[0.1] > tr[0.05] > 0
    assert not math.isnan(t["acc_masked_fear"].iloc[0])


def test_library_sweep_writes_the_engine_schema_and_numbers(masked):
    """One RQ3 schema: emocircuits.methods.neurons.sweep equals the neuron_masking cells, column for column."""
    from emocircuits.methods.neurons.masking import sweep
    from emocircuits.sweeps.shared import cached_model
    from emocircuits.sweeps.store import RESERVED

    model, _ = cached_model(from_dict(CFG).model)
    sel, stats = _found(masked.out)
    data = from_dict(CFG).data.load(seed=3)
    lib = sweep(model, data, sel, emotions=["fear"], ratios=[0.05, 0.1], layer_ranges=["all"], ratio_mode="reselect",
                stats=stats, controls=1, seed=0, n_boot=100, progress=False)
    engine = masked.table[masked.table.ratio_mode == "reselect"].drop(columns=list(RESERVED)).reset_index(drop=True)
    assert list(lib.columns) == list(engine.columns)
    pd.testing.assert_frame_equal(lib, engine, check_dtype=False)


def test_resume_reuses_the_found_neurons(masked, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(masked.out, copy)
    (copy / "cells" / f"{masked.table['cell_id'].iloc[0]}.json").unlink()
    (found,) = list((copy / "artifacts").glob("neurons-*"))
    stamp = (found / "neurons.json").stat().st_mtime_ns
    again = run_sweep(from_dict(CFG), copy, resume=True, progress=False)
    assert again.n_run == 1 and (found / "neurons.json").stat().st_mtime_ns == stamp
    assert len(list((copy / "artifacts").iterdir())) == 1
    pd.testing.assert_frame_equal(again.table, masked.table)


def test_neurons_sweep_command_is_a_resumable_engine_sweep(masked, tmp_path):
    from typer.testing import CliRunner

    from emocircuits.cli.app import app
    from emocircuits.runs.rundir import read_manifest

    (folder,) = list((masked.out / "artifacts").glob("neurons-*"))
    out = tmp_path / "rq3"
    args = ["neurons", "sweep", "--neurons", str(folder / "neurons.json"), "--model", "tiny-llama",
            "--limit-per-label", "1", "--ratios", "0.05", "--layer-ranges", "all,7", "--controls", "1",
            "--emotion", "fear", "--out", str(out), "--quiet"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "1 of 2 cells failed" in first.output and "layers='7'" in first.output
    man = read_manifest(out)
    assert man["command"] == "sweep" and man["config"]["sweep"]["analysis"] == "neuron_masking"
    table = pd.read_parquet(out / "results.parquet")
    assert list(table["status"]) == ["ok", "failed"] and table["own_acc_masked"].notna().iloc[0]
    assert CliRunner().invoke(app, args).exit_code != 0  # an existing sweep needs --resume
    again = CliRunner().invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    assert read_manifest(out)["summary"]["n_run_this_time"] == 1  # only the failed cell is retried


@pytest.mark.slow
def test_quick_example_on_the_embedded_model(tmp_path):
    from emocircuits.sweeps import load_config

    res = run_sweep(load_config("examples/sweeps/quick.toml"), tmp_path / "quick", progress=False)
    t = res.table
    assert len(t) == 4 and (t["status"] == "ok").all()
    assert (t["n_neurons"] > 0).all()
    assert t.set_index(["emotion", "layers"]).loc[("disgust", "all"), "n_neurons"] >= \
        t.set_index(["emotion", "layers"]).loc[("disgust", "middle"), "n_neurons"]


def test_controls_default_to_five_everywhere(tmp_path):
    """K >= 5 random control sets by default: library, sweep analysis, RQ3 config and both commands."""
    import inspect

    from typer.testing import CliRunner

    from emocircuits.base.constants import DEFAULT_CONTROLS
    from emocircuits.cli.app import app
    from emocircuits.cli.neurons import mask_cmd, sweep_cmd
    from emocircuits.methods.neurons.find import Selection
    from emocircuits.methods.neurons.masking import mask, sweep
    from emocircuits.sweeps import from_dict
    from emocircuits.sweeps.analyses.neuron_masking import MaskingState, NeuronMaskingParams, rq3_config

    assert DEFAULT_CONTROLS == 5
    assert NeuronMaskingParams().controls == DEFAULT_CONTROLS
    assert MaskingState.__dataclass_fields__["controls"].default == DEFAULT_CONTROLS
    for fn in (mask, sweep, rq3_config):
        assert inspect.signature(fn).parameters["controls"].default == DEFAULT_CONTROLS
    for cmd in (mask_cmd, sweep_cmd):
        assert inspect.signature(cmd).parameters["controls"].default.default == DEFAULT_CONTROLS
    ekman = ["anger", "disgust", "fear", "happiness", "sadness", "surprise"]  # the labels of the sweep's data
    sel = Selection.from_json({"neurons": {"fear": [[0, 1]]}, "labels": ekman, "n_layers": 3,
                               "d_mlp": 96})  # one neuron: a file whose sets are all empty is refused (issue 29)
    (tmp_path / "neurons.json").write_text(__import__("json").dumps(sel.to_json()))
    assert from_dict(rq3_config(neurons=str(tmp_path / "neurons.json"))).params.controls == DEFAULT_CONTROLS
    assert "--controls" in CliRunner().invoke(app, ["neurons", "mask", "--help"]).output
