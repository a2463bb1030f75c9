"""Sweep configs: parsing, validation before any model loads, grid expansion, round trips, cell ids."""

from __future__ import annotations

import tomllib

import pytest

from emocircuits.base.errors import EmocircuitsError
from emocircuits.sweeps import cell_id, dumps_toml, expand, from_dict, load_config, plan_tasks
from emocircuits.sweeps.analyses.neuron_masking import NeuronMaskingCell

HEADS = {"type": "ScaleHeads", "heads": "{layers}:all", "factor": "{factor}"}
BASE = {"sweep": {"analysis": "intervention"}, "model": {"spec": "tiny-llama"}, "analysis": {"intervention": HEADS},
        "grid": {"layers": ["0", "all"], "factor": [0.0, 0.5]}}


def _with(**changes):
    import copy

    d = copy.deepcopy(BASE)
    for path, value in changes.items():
        table, _, key = path.partition("__")
        d.setdefault(table, {})[key] = value
    return d


@pytest.fixture(autouse=True)
def _no_model_load(monkeypatch):
    """Validation must never load a model."""
    import emocircuits.core.models as models

    def boom(*a, **k):
        raise AssertionError("a model was loaded during config validation")

    monkeypatch.setattr(models, "_boot", boom)  # every model, real or tiny, is built here


@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"grid__layers": ["0", "sideways"]}, ["analysis.intervention.heads", "sideways", "bottom, middle, top, all"]),
        ({"grid__colour": ["red"]}, ["grid.colour", "fills no placeholder", "factor, layers"]),
        ({"grid__Colour": ["red"]}, ["grid.Colour", "lower-case"]),
        ({"grid__factor": [{"a": 1}]}, ["grid.factor", "a list of an integer"]),
        ({"grid__factor": ["big"]}, ["analysis.intervention.factor", "a number"]),
        ({"grid__factor": [1.0, 1]}, ["grid.factor", "repeats"]),
        ({"grid__factor": []}, ["grid.factor", "empty"]),
        ({"model__dtype": "float8"}, ["model.dtype", "float32, bfloat16, float16"]),
        ({"model__weights": "x"}, ["model.weights", "spec, dtype, device, device_map"]),
        ({"data__split": "dev"}, ["data.split", "train, test, all"]),
        ({"data__template": "nonsense"}, ["data.template", "chat"]),
        ({"sweep__analysis": "telepathy"}, ["sweep.analysis", "intervention", "neuron_masking"]),
        ({"executor__kind": "slurm"}, ["executor.kind", "local, ray"]),
        ({"executor__workers": 0}, ["executor.workers", ">= 1"]),
        ({"analysis__scoring": "vibes"}, ["analysis.scoring", "first_token, full_label"]),
        ({"analysis__readout": "vibes"}, ["analysis.readout", "accuracy, projection"]),
        ({"analysis__colour": "red"}, ["analysis.colour", "intervention, readout"]),
        ({"sweep__seed": "zero"}, ["sweep.seed", "an integer"]),
        ({"analysis__intervention": {**HEADS, "type": "ScaleHedas"}}, ["analysis.intervention.type", "ScaleHeads"]),
        ({"analysis__intervention": {**HEADS, "facter": 1}}, ["analysis.intervention.facter", "heads, factor"]),
        ({"analysis__intervention": {**HEADS, "heads": "{layers}:0;1"}}, ["analysis.intervention.heads", "'0,3'"]),
        ({"analysis__intervention": {**HEADS, "heads": "{layers}"}}, ["analysis.intervention.heads", "'top:all'"]),
        ({"analysis__intervention": {**HEADS, "positions": "middle"}}, ["analysis.intervention", "positions"]),
        ({"analysis__intervention": {**HEADS, "factor": "{size}"}}, ["{size}", "grid.size"]),
        ({"analysis__intervention": {}}, ["[analysis.intervention]", "ScaleHeads"]),
        ({"analysis__intervention": {"type": "ScaleSite", "site": "attn.outt", "layers": "{layers}",
                                     "factor": "{factor}"}}, ["analysis.intervention.site", "attn.out"]),
        ({"analysis__intervention": {"type": "ZeroNeurons", "neurons": "@found:{layers}", "factor": "{factor}"}},
         ["analysis.intervention.neurons", "'@found'", "declared: none"]),
        ({"analysis__intervention": {"type": "Compose", "items": [
            HEADS, {"type": "ZeroNeurons", "neurons": [[0, 1]], "factor": "{factor}"}]}},
         ["analysis.intervention.items[1]", "ZeroNeurons always uses factor 0"]),
        ({"analysis__artifacts": {"d": {"kind": "vector"}}}, ["analysis.artifacts.d.kind", "neurons, direction"]),
        ({"analysis__artifacts": {"d": {"kind": "direction", "layers": "{layers}"}}}, ["placeholders"]),
        ({"analysis__artifacts": {"d": {"kind": "direction", "sites": "x"}}}, ["analysis.artifacts.d.sites", "site"]),
        ({"analysis__artifacts": {"d": {"kind": "direction"}}}, ["[analysis.artifacts.d] is used by no template"]),
    ],
)
def test_invalid_configs_name_the_key_and_allowed_values(changes, needles):
    with pytest.raises(EmocircuitsError) as info:
        from_dict(_with(**changes))
    msg = str(info.value)
    for needle in needles:
        assert needle in msg, msg
    assert "\n" not in msg


def test_unknown_table_and_missing_analysis():
    with pytest.raises(EmocircuitsError, match=r"Unknown table \[grids\].*allowed tables"):
        from_dict({**BASE, "grids": {}})
    with pytest.raises(EmocircuitsError, match="sweep.analysis.*intervention"):
        from_dict({"grid": {}})


def test_masking_validation_names_emotions_and_modes():
    cfg = {"sweep": {"analysis": "neuron_masking"}, "grid": {"emotion": ["anger", "joy"]}}
    with pytest.raises(EmocircuitsError, match="grid.emotion.*'joy'.*anger, disgust, fear"):
        from_dict(cfg)
    cfg["grid"] = {"emotion": ["anger"], "ratio_mode": ["cut"]}
    with pytest.raises(EmocircuitsError, match="grid.ratio_mode.*truncate, reselect"):
        from_dict(cfg)
    cfg["grid"] = {"emotion": ["anger"], "ratio": [1.5]}
    with pytest.raises(EmocircuitsError, match=r"grid.ratio.*\(0, 1\]"):
        from_dict(cfg)
    cfg["grid"] = {"layers": ["all"]}
    with pytest.raises(EmocircuitsError, match="Missing grid axis 'grid.emotion'"):
        from_dict(cfg)
    cfg["grid"] = {"emotion": ["anger"]}
    cfg["analysis"] = {"find": {"assign": "vote"}}
    with pytest.raises(EmocircuitsError, match="analysis.find.assign.*argmax, lape"):
        from_dict(cfg)
    cfg["analysis"] = {"neurons": "/nonexistent/neurons.json"}
    with pytest.raises(EmocircuitsError, match="does not exist"):
        from_dict(cfg)


def test_grid_expansion_order_and_types():
    cfg = from_dict(BASE)
    cells = expand(cfg)
    assert [(c["layers"], c["factor"]) for c in cells] == [("0", 0.0), ("0", 0.5), ("all", 0.0), ("all", 0.5)]
    assert all(isinstance(c["factor"], float) for c in cells)


def test_config_round_trips_through_toml(tmp_path):
    cfg = from_dict(_with(data__limit_per_label=3, executor__workers=2))
    text = dumps_toml(cfg.to_dict())
    assert from_dict(tomllib.loads(text)) == cfg
    (tmp_path / "c.toml").write_text(text)
    assert load_config(tmp_path / "c.toml").to_dict() == cfg.to_dict()
    masking = from_dict({"sweep": {"analysis": "neuron_masking"},
                         "analysis": {"controls": 3, "find": {"top_rate": 0.02}},
                         "grid": {"emotion": ["fear"], "ratio": [0.01, 0.03]}})
    assert from_dict(tomllib.loads(masking.to_toml())) == masking
    assert masking.params.find.top_rate == 0.02


def test_cells_serialise_and_ids_are_stable():
    cfg = from_dict(BASE)
    ident = cfg.identity_hash()
    ids = [cell_id(ident, c) for c in expand(cfg)]
    assert len(set(ids)) == len(ids) and all(len(i) == 16 for i in ids)
    assert ids == [cell_id(from_dict(BASE).identity_hash(), c) for c in expand(from_dict(BASE))]
    # the executor is not part of a cell's identity; the seed and the model are
    assert from_dict(_with(executor__workers=3)).identity_hash() == ident
    assert from_dict(_with(sweep__seed=1)).identity_hash() != ident
    assert from_dict(_with(model__dtype="bfloat16")).identity_hash() != ident
    cell = NeuronMaskingCell("anger", "middle", 0.02, "reselect", 3)
    import dataclasses
    import json

    assert NeuronMaskingCell(**json.loads(json.dumps(dataclasses.asdict(cell)))) == cell


def test_masking_cells_are_checked_against_the_model():
    from emocircuits.sweeps import get_analysis

    cfg = from_dict({"sweep": {"analysis": "neuron_masking"}, "grid": {"emotion": ["fear"], "layers": ["1-2", "4"]}})
    a = get_analysis("neuron_masking")
    first, second = expand(cfg)
    a.check_cell(cfg, {"n_layers": 3}, first)
    with pytest.raises(EmocircuitsError, match="out of range"):
        a.check_cell(cfg, {"n_layers": 3}, second)


def test_plan_tasks_chunks_missing_cells():
    cfg = from_dict(_with(sweep__cells_per_task=3))
    cells = expand(cfg)
    ids = [cell_id(cfg.identity_hash(), c) for c in cells]
    tasks = plan_tasks(cfg, cells, ids, done={ids[1]})
    assert [[e["index"] for e in t] for t in tasks] == [[0, 2, 3]]
    assert plan_tasks(cfg, cells, ids, done=set(ids)) == []
