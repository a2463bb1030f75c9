"""The generic `intervention` analysis on the tiny random Llama: templates, artifacts, readouts, examples."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from emocircuits.base.errors import EmocircuitsError
from emocircuits.sweeps import from_dict, load_config, run_sweep

EXAMPLES = sorted(Path(__file__).resolve().parents[1].joinpath("examples", "sweeps").glob("*.toml"))

STEER = {
    "sweep": {"analysis": "intervention", "seed": 1},
    "model": {"spec": "tiny-llama"},
    "data": {"limit_per_label": 1},
    "analysis": {
        "readout": "projection", "n_boot": 50,
        "intervention": {"type": "AddDirection", "direction": "@dirs:{emotion}", "site": "resid.post",
                         "layers": "1-2", "scale": "{scale}"},
        "projection": {"direction": "@dirs:{emotion}", "layer": -1},
        "artifacts": {"dirs": {"kind": "direction", "limit_per_label": 2, "layers": "1-2"}},
    },
    "grid": {"emotion": ["anger"], "scale": [0.0, 4.0]},
}


def _fake_circuit_runs(root: Path) -> None:
    """The files `component_validation` and `circuit_steering` check: a `circuits components` run whose
    directions run has prompts, and a `circuits assemble` run."""
    import json

    from emocircuits.base.constants import EKMAN6

    comp, dirs = root / "runs" / "components", root / "runs" / "directions"
    (dirs / "directions").mkdir(parents=True)
    comp.mkdir(parents=True)
    for e in EKMAN6:
        (dirs / "directions" / f"{e}.json").write_text("{}")
    (dirs / "prompts.parquet").write_bytes(b"")
    (comp / "neuron_scores.parquet").write_bytes(b"")
    (dirs / "manifest.json").write_text(json.dumps({"command": "circuits directions", "config": {}}))
    (comp / "manifest.json").write_text(json.dumps({"command": "circuits components", "config": {"from": str(dirs)}}))
    circuits = root / "runs" / "circuits"
    circuits.mkdir()
    (circuits / "allocation.parquet").write_bytes(b"")
    (circuits / "manifest.json").write_text(json.dumps({
        "command": "circuits assemble", "config": {}, "summary": {"directions": str(dirs)},
        "circuits": {e: f"circuits/{e}.json" for e in EKMAN6}}))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_validates_without_a_model(path, monkeypatch, tmp_path):
    import emocircuits.core.models as models

    monkeypatch.setattr(models, "_boot", lambda *a, **k: pytest.fail("validation loaded a model"))
    if "runs/c" in path.read_text():  # it names the run directories of earlier circuits steps
        _fake_circuit_runs(tmp_path)
        monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert cfg.sweep.description


def test_examples_include_head_ablation_and_knockout_windows():
    names = {p.name for p in EXAMPLES}
    assert {"head_ablation.toml", "knockout_window.toml"} <= names
    knock = load_config(EXAMPLES[[p.name for p in EXAMPLES].index("knockout_window.toml")])
    assert knock.params.intervention["type"] == "ScaleSite" and set(knock.grid) == {"site", "window"}


@pytest.fixture(scope="module")
def steered(tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "run"
    return run_sweep(from_dict(STEER), out, progress=False)


def test_steering_scale_moves_the_projection_and_zero_does_not(steered):
    t = steered.table.set_index("scale")
    assert (t["status"] == "ok").all(), t["error"].tolist()
    assert t.loc[0.0, "delta_proj"] == pytest.approx(0.0, abs=1e-5)
    assert t.loc[4.0, "delta_proj"] > 1.0 and t.loc[4.0, "ci_low"] > 0
    assert t.loc[4.0, "n_sites"] == 2 and "AddDirection" in t.loc[4.0, "intervention"]
    assert {"clean_proj_anger", "proj_fear"} <= set(t.columns)


def test_artifacts_are_stored_by_hash_and_reused(steered, tmp_path):
    import shutil

    (folder,) = list((steered.out / "artifacts").iterdir())
    assert folder.name.startswith("dirs-") and (folder / "artifact.json").is_file() and (folder / "anger.json").is_file()
    copy_dir = tmp_path / "grown"
    shutil.copytree(steered.out, copy_dir)
    stamp = (copy_dir / "artifacts" / folder.name / "anger.safetensors").stat().st_mtime_ns
    grown = copy.deepcopy(STEER)
    grown["grid"]["scale"] = [0.0, 4.0, 8.0]
    again = run_sweep(from_dict(grown), copy_dir, resume=True, progress=False)
    assert again.n_run == 1 and [p.name for p in (copy_dir / "artifacts").iterdir()] == [folder.name]
    assert (copy_dir / "artifacts" / folder.name / "anger.safetensors").stat().st_mtime_ns == stamp
    other = copy.deepcopy(STEER)
    other["analysis"]["artifacts"]["dirs"]["unit"] = False
    from emocircuits.sweeps.artifacts import artifact_hash, parse_artifacts

    a, b = (from_dict(c) for c in (STEER, other))
    assert artifact_hash("dirs", parse_artifacts(a.params.artifacts)["dirs"], a) == folder.name.removeprefix("dirs-")
    assert artifact_hash("dirs", parse_artifacts(b.params.artifacts)["dirs"], b) != folder.name.removeprefix("dirs-")


def test_patching_the_last_layer_hands_over_the_partner_prediction(tmp_path):
    from safetensors.numpy import load_file

    cfg = {"sweep": {"analysis": "intervention"}, "model": {"spec": "tiny-llama"}, "data": {"limit_per_label": 1},
           "analysis": {"n_boot": 50,
                        "intervention": {"type": "PatchFrom", "source": "@partner", "layers": "{window}"},
                        "artifacts": {"partner": {"kind": "activations", "layers": "all"}}},
           "grid": {"window": ["2", "0-1"]}}
    res = run_sweep(from_dict(cfg), tmp_path / "patch", progress=False)
    t = res.table
    assert (t["status"] == "ok").all(), t["error"].tolist()
    (folder,) = list((tmp_path / "patch" / "artifacts").iterdir())
    acts = load_file(str(folder / "activations.safetensors"))
    pair, source_label = acts["pair"], acts["source_label"]
    last = load_file(str(tmp_path / "patch" / "arrays" / f"{t.iloc[0]['cell_id']}.safetensors"))
    assert last["scores"].shape == (6, 6)
    # the final residual is the partner's, so the patched prediction is the partner's clean prediction
    from emocircuits.methods.heads import Evaluator
    from emocircuits.sweeps.shared import cached_model

    model, _ = cached_model(from_dict(cfg).model)
    data = from_dict(cfg).data.load(seed=0)
    ev = Evaluator(model, data, labels=data.labels)
    assert all(data[int(j)].label != data[i].label for i, j in enumerate(pair))  # partners of another emotion
    assert np.array_equal(last["predicted"], ev.clean_pred[pair])
    assert t.iloc[0]["source_acc"] == pytest.approx(float((ev.clean_pred[pair] == source_label).mean()))
    assert t.iloc[0]["n_sites"] == 1 and t.iloc[1]["n_sites"] == 2


def test_component_templates_and_knockout_windows(tmp_path):
    cfg = {"sweep": {"analysis": "intervention"}, "model": {"spec": "tiny-llama"}, "data": {"limit_per_label": 1},
           "analysis": {"n_boot": 50, "save_predictions": False,
                        "intervention": {"type": "Compose", "items": [
                            {"component": "@found:{emotion}", "kind": "zero"},
                            {"type": "ScaleSite", "site": "{site}", "layers": "{window}", "factor": 0.0}]},
                        "artifacts": {"found": {"kind": "neurons", "limit_per_label": 1, "top_rate": 0.05}}},
           "grid": {"emotion": ["fear"], "site": ["attn.out", "mlp.out"], "window": ["0-1", [2]]}}
    res = run_sweep(from_dict(cfg), tmp_path / "k", progress=False)
    t = res.table
    assert (t["status"] == "ok").all(), t["error"].tolist()
    assert list(t["n_sites"]) == [2, 1, 2, 1] and (t["n_neurons"] > 0).all()
    assert not list((tmp_path / "k" / "arrays").glob("*"))  # save_predictions = false


def test_heads_library_matches_a_sweep_cell(tmp_path):
    from test_sweep_helpers import write_config

    from emocircuits.methods import heads
    from emocircuits.sweeps.shared import cached_model

    res = run_sweep(write_config(tmp_path, layers='["1-2"]', factors="[0.0]"), tmp_path / "h", progress=False)
    row = res.table.iloc[0]
    cfg = load_config(tmp_path / "cfg.toml")
    model, _ = cached_model(cfg.model)
    table = heads.scale_heads(model, cfg.data.load(seed=0), "1-2:all", 0.0, n_boot=50)
    pooled = table.iloc[0]
    assert list(table["true_label"])[:2] == ["all", "anger"]
    for k in ("clean_acc", "acc", "delta", "changed", "true_logp"):
        assert row[k] == pytest.approx(pooled[k])
    assert table.attrs["heads"][0] == [1, 0] and len(table.attrs["heads"]) == 8
    same = heads.scale_heads(model, cfg.data.load(seed=0), [[0, 1]], 1.0, n_boot=50)
    assert (same["delta"] == 0).all() and (same["changed"] == 0).all()
    with pytest.raises(EmocircuitsError, match="out of range"):
        heads.head_set(model, "0:9")


def test_templates_fill_keep_types_and_name_missing_artifacts():
    from emocircuits.sweeps.templates import check, fill, placeholders

    t = {"type": "ScaleHeads", "heads": "{layers}:all", "factor": "{factor}"}
    assert placeholders(t) == {"layers", "factor"}
    assert fill(t, {"layers": "top", "factor": 0.5}) == {"type": "ScaleHeads", "heads": "top:all", "factor": 0.5}
    with pytest.raises(EmocircuitsError, match="'@nope'.*declared: none"):
        check({"type": "ZeroNeurons", "neurons": "@nope:fear"}, {})
    with pytest.raises(EmocircuitsError, match="name the emotion"):
        from emocircuits.sweeps.artifacts import parse_artifacts

        check({"type": "ZeroNeurons", "neurons": "@found"}, parse_artifacts({"found": {"kind": "neurons"}}))
    with pytest.raises(EmocircuitsError, match="Circuit"):
        check({"type": "AddToNeurons", "neurons": [[0, 1]], "shift": {}}, {})
