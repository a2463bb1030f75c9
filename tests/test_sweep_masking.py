"""The neuron_masking analysis: its cells reproduce emocircuits.neurons.mask, found neurons are reused."""

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


def test_cells_equal_the_library_mask_call(masked):
    from emocircuits.neurons import NeuronStats, Selection, mask
    from emocircuits.sweeps.analyses.neuron_masking import _read_stats
    from emocircuits.sweeps.shared import cached_model

    t = masked.table
    assert (t["status"] == "ok").all(), t["error"].tolist()
    model, _ = cached_model(from_dict(CFG).model)
    sel = Selection.load(masked.out / "neurons.json")
    s = _read_stats(masked.out / "neuron_stats.safetensors")
    import torch

    stats = NeuronStats(torch.as_tensor(s["counts"]), torch.as_tensor(s["totals"]), tuple(s["labels"]))
    data = from_dict(CFG).data.load(seed=3)
    for _, row in t.iterrows():
        ref = mask(model, data, sel, emotions=["fear"], layers="all", ratio=row["ratio"], ratio_mode=row["ratio_mode"],
                   stats=stats, controls=1, seed=3, n_boot=100, progress=False).effects
        overall = ref[ref.true_label == "all"].iloc[0]
        own = ref[ref.true_label == "fear"].iloc[0]
        assert row["n_neurons"] == overall["n_neurons"]
        for k in ("acc_normal", "acc_masked", "acc_control", "diff", "ci_low", "ci_high"):
            assert row[k] == pytest.approx(overall[k]) and row[f"own_{k}"] == pytest.approx(own[k])
    # a bigger ratio masks more neurons; reselect and truncate read "ratio" differently
    tr = t[t.ratio_mode == "truncate"].set_index("ratio")["n_neurons"]
    assert tr[0.1] > tr[0.05] > 0
    assert not math.isnan(t["acc_masked_fear"].iloc[0])


def test_resume_reuses_the_found_neurons(masked, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(masked.out, copy)
    (copy / "cells" / f"{masked.table['cell_id'].iloc[0]}.json").unlink()
    stamp = (copy / "neurons.json").stat().st_mtime_ns
    again = run_sweep(from_dict(CFG), copy, resume=True, progress=False)
    assert again.n_run == 1 and (copy / "neurons.json").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.table, masked.table)


@pytest.mark.slow
def test_quick_example_on_the_embedded_model(tmp_path):
    from emocircuits.sweeps import load_config

    res = run_sweep(load_config("examples/sweeps/quick.toml"), tmp_path / "quick", progress=False)
    t = res.table
    assert len(t) == 4 and (t["status"] == "ok").all()
    assert (t["n_neurons"] > 0).all()
    assert t.set_index(["emotion", "layers"]).loc[("disgust", "all"), "n_neurons"] >= \
        t.set_index(["emotion", "layers"]).loc[("disgust", "middle"), "n_neurons"]
