"""Triangulation (Lee × Wang × Tak): chance overlap by hand, matched controls, the neuron mappings checked
against the model's own sites, the masking protocol, the generated reading, and the job end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.units import NeuronSet
from emocircuits.methods import triangulate as T

# ----------------------------------------------------------------------------- chance, by hand


def test_chance_overlap_matches_the_hypergeometric_by_hand():
    # N = 10, sets of 3 and 4: P(X = x) = C(3, x) C(7, 4 - x) / C(10, 4), C(10, 4) = 210
    # P(X=0) = 35/210, P(X=1) = 3*35/210 = 105/210, P(X=2) = 3*21/210 = 63/210, P(X=3) = 7/210
    assert T.chance_overlap(10, 3, 4, 0) == (pytest.approx(1.2), 1.0)
    expected, p1 = T.chance_overlap(10, 3, 4, 1)
    assert expected == pytest.approx(3 * 4 / 10)
    assert p1 == pytest.approx(1 - 35 / 210)
    assert T.chance_overlap(10, 3, 4, 2)[1] == pytest.approx((63 + 7) / 210)
    assert T.chance_overlap(10, 3, 4, 3)[1] == pytest.approx(7 / 210)
    assert T.chance_overlap(10, 3, 4, 4)[1] == pytest.approx(0.0)
    with pytest.raises(EmocircuitsError, match="0..10"):
        T.chance_overlap(10, 11, 4, 1)


def test_layer_matched_chance_by_hand():
    # d_mlp = 5; layer 0: sets of 2 and 2, X0 ~ H(5, 2, 2): P(0) = 3/10, P(1) = 6/10, P(2) = 1/10;
    # layer 1: sets of 1 and 1, X1 ~ H(5, 1, 1): P(1) = 1/5. Mean 4/5 + 1/5 = 1.
    assert T.layer_matched_chance(5, [2, 1], [2, 1], 0) == (pytest.approx(1.0), 1.0)
    assert T.layer_matched_chance(5, [2, 1], [2, 1], 2)[1] == pytest.approx(0.1 + 0.6 * 0.2)
    assert T.layer_matched_chance(5, [2, 1], [2, 1], 3)[1] == pytest.approx(0.1 * 0.2)
    assert T.layer_matched_chance(5, [2, 1], [2, 1], 4)[1] == pytest.approx(0.0)
    # one layer: the plain hypergeometric
    assert T.layer_matched_chance(10, [3], [4], 2)[1] == pytest.approx(T.chance_overlap(10, 3, 4, 2)[1])
    # sets in different layers never meet
    assert T.layer_matched_chance(5, [2, 0], [0, 2], 1) == (0.0, 0.0)


def test_agreement_counts_jaccard_and_chance():
    a = NeuronSet.from_pairs([(0, 0), (0, 1), (1, 2)])
    b = NeuronSet.from_pairs([(0, 1), (1, 2), (1, 3), (2, 0)])
    c = NeuronSet.from_pairs([(2, 5), (2, 6), (2, 7)])
    t = T.agreement({"anger": {"lee": a, "wang": b, "tak": c}}, n_pool=10)
    row = t[(t.a == "lee") & (t.b == "wang")].iloc[0]
    assert (row.n_a, row.n_b, row.n_shared) == (3, 4, 2)
    assert row.jaccard == pytest.approx(2 / 5)
    assert row.expected == pytest.approx(1.2) and row.p_value == pytest.approx(70 / 210)
    assert not row.beyond_chance
    row = t[(t.a == "lee") & (t.b == "tak")].iloc[0]
    assert row.n_shared == 0 and row.p_value == 1.0
    assert list(zip(t.a, t.b, strict=True)) == [("lee", "wang"), ("lee", "tak"), ("wang", "tak")]
    t = T.agreement({"anger": {"lee": a, "wang": b, "tak": c}}, n_pool=30, d_mlp=10)
    row = t[(t.a == "lee") & (t.b == "wang")].iloc[0]
    # per layer: layer 0 sets of 2 and 1, layer 1 of 1 and 2, layer 2 of 0 and 1: mean 2/10 + 2/10
    assert row.expected_layer == pytest.approx(0.4) and row.expected == pytest.approx(3 * 4 / 30)


def test_combined_sets_and_layer_profiles():
    sets = T.combined_sets({"lee": NeuronSet.from_pairs([(0, 1), (2, 3)]),
                            "wang": NeuronSet.from_pairs([(0, 1), (1, 0)]),
                            "tak": NeuronSet.from_pairs([(0, 1), (2, 3), (2, 4)])})
    assert sets["union"].pairs() == [[0, 1], [1, 0], [2, 3], [2, 4]]
    assert sets["intersection"].pairs() == [[0, 1]]
    prof = T.layer_profiles({"fear": sets}, n_layers=3)
    lee = prof[(prof.method == "lee")].sort_values("layer")
    assert lee["count"].tolist() == [1, 0, 1] and lee["share"].tolist() == [0.5, 0.0, 0.5]
    corr = T.profile_correlations(prof, probe_accuracy=[0.2, 0.5, 0.9])
    lw = corr[(corr.a == "lee") & (corr.b == "tak")].iloc[0]
    # lee [.5, 0, .5] vs tak [1/3, 0, 2/3]: ranks [2.5, 1, 2.5] vs [2, 1, 3]
    x, y = np.array([2.5, 1, 2.5]), np.array([2.0, 1, 3])
    assert lw.spearman == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert set(corr.b) >= {"probe_accuracy"}


def test_top_neurons_orders_by_score_then_position():
    s = torch.tensor([[0.5, 2.0, 1.0], [2.0, -1.0, 0.1]])
    assert T.top_neurons(s, 2).pairs() == [[0, 1], [1, 0]]  # the tie at 2.0: lower (layer, index) first
    assert T.top_neurons(s, 3).pairs() == [[0, 1], [0, 2], [1, 0]]
    assert len(T.top_neurons(s, 0)) == 0


# ----------------------------------------------------------------------------- matched controls


def test_controls_have_the_same_layers_and_counts_and_are_disjoint():
    s = NeuronSet.from_pairs([(0, 1), (0, 5), (2, 7), (2, 8), (2, 9), (4, 0)])
    ctrl = T.control_sets(s, 20, 5, 3, "anger", "lee")
    assert len(ctrl) == 5
    for c in ctrl:
        assert c.counts(5) == s.counts(5)
        assert len(c.intersection(s)) == 0
    assert len({tuple(map(tuple, c.pairs())) for c in ctrl}) == 5  # five different draws
    again = T.control_sets(s, 20, 5, 3, "anger", "lee")
    assert [c.pairs() for c in again] == [c.pairs() for c in ctrl]
    other = T.control_sets(s, 20, 5, 3, "anger", "wang")
    assert [c.pairs() for c in other] != [c.pairs() for c in ctrl]


# ----------------------------------------------------------------------------- the mappings on a tiny model


@pytest.fixture(scope="module")
def tiny_data():
    from emocircuits.data import load_data

    train = load_data("builtin:events", split="train", limit_per_label=3, seed=0)
    test = load_data("builtin:events", split="test", limit_per_label=2, seed=0)
    return train, test


def _captures(model, train):
    from emocircuits.core.readout import LabelReadout
    from emocircuits.core.sites import weight

    n_layers = model.cfg.n_layers
    layers = list(range(n_layers))
    ro = LabelReadout(model, train.labels, "chat_short")
    got = ro.runner.capture_last(ro.encode(list(train)), {"neuron.gated": layers, "resid.post": layers,
                                                          "mlp.out": layers})
    w = {layer: weight(model, "mlp.down", layer).detach().float() for layer in layers}
    y = np.array([train.labels.index(ex.label) for ex in train])
    return got, w, y


def test_wang_scores_equal_the_formula(tiny_llama, tiny_data):
    model, _ = tiny_llama
    got, w, y = _captures(model, tiny_data[0])
    scores = T.wang_scores(got["neuron.gated"], got["resid.post"], y, w)
    layer, e = 1, 2
    r = got["resid.post"][layer].double()
    mu = torch.stack([r[torch.from_numpy(y == k)].mean(0) for k in range(6)])
    c = mu - mu.mean(0)
    v = c[e] / c[e].norm()
    a = got["neuron.gated"][layer][torch.from_numpy(y == e)].double()
    want = (a * (w[layer].double() @ v)[None, :]).mean(0)
    assert torch.allclose(scores[e, layer].double(), want, atol=1e-5)


def test_tak_scores_add_up_to_the_probe_logit_of_the_mlp_output(tiny_llama, tiny_data):
    """Σ_n (a_n − ā_n)(W_down[n] · w_e) = (mlp.out − mean mlp.out) · w_e: the neuron mapping splits the probe's
    logit (less its intercept) over the neurons exactly."""
    model, _ = tiny_llama
    got, w, y = _captures(model, tiny_data[0])
    gen = torch.Generator().manual_seed(0)
    probe_w = {layer: torch.randn(6, w[layer].shape[1], generator=gen) for layer in w}
    scores = T.tak_scores(got["neuron.gated"], probe_w, y, w)
    for layer in w:
        wc = probe_w[layer] - probe_w[layer].mean(0, keepdim=True)
        for e in range(6):
            x = got["mlp.out"][layer]
            logit = ((x - x.mean(0, keepdim=True))[torch.from_numpy(y == e)] @ wc[e]).mean()
            assert float(scores[e, layer].sum()) == pytest.approx(float(logit), rel=1e-3, abs=1e-4)


def test_triangulate_sets_have_lee_sizes_and_masking_matches_the_engine(tiny_llama, tiny_data):
    from emocircuits.methods.neurons import MaskingEngine

    model, spec = tiny_llama
    train, test = tiny_data
    res = T.triangulate(model, train, test=test, top_rate=0.05, controls=5, n_boot=200, progress=False)
    for e, by in res.sets.items():
        assert len(by["wang"]) == len(by["tak"]) == len(by["lee"]), e
    assert res.agreement.pool.iloc[0] == spec.n_layers * spec.d_mlp
    eff = res.effects
    assert set(eff.target) == {"own", "others"} and (eff.k_controls == 5).all()
    ok = eff.dropna(subset=["acc_masked"])
    assert len(ok) and ((ok.masked_low >= 0) & (ok.masked_high <= 1)).all()
    assert ((ok.masked_low <= ok.acc_masked) & (ok.acc_masked <= ok.masked_high)).all()
    # the masked accuracy of one set, recomputed with the masking engine directly
    row = ok[(ok.method == "lee") & (ok.target == "others")].iloc[0]
    engine = MaskingEngine(model, test, labels=train.labels, progress=False)
    pred = engine.predict(res.sets[row.emotion]["lee"])
    keep = engine.y != train.labels.index(row.emotion)
    assert row.acc_masked == pytest.approx(float((pred == engine.y)[keep].mean()))
    # seeded: the same call gives the same table
    again = T.triangulate(model, train, test=test, top_rate=0.05, controls=5, n_boot=200, progress=False)
    pd.testing.assert_frame_equal(again.effects, eff)


# ----------------------------------------------------------------------------- the generated reading


def _agreement(p: float) -> pd.DataFrame:
    return pd.DataFrame([{"emotion": "fear", "a": "lee", "b": "wang", "n_a": 10, "n_b": 10, "n_shared": 2,
                          "jaccard": 0.1, "expected": 0.2, "p_value": p}])


def _effects(ci: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"emotion": "fear", "method": m, "target": "own", "diff": d, "ci_low": lo, "ci_high": hi,
                          "floor": False} for m, (d, lo, hi) in ci.items()])


def test_reading_says_agree_beyond_chance_only_below_the_level():
    from emocircuits.viz.triangulate import reading

    assert "agree beyond chance" in reading(_agreement(0.01))
    assert "agree beyond chance" not in reading(_agreement(0.2)).replace("do not agree beyond chance", "")
    assert "No pair of methods shares more neurons than chance" in reading(_agreement(0.2))


def test_reading_never_ranks_methods_whose_intervals_overlap():
    from emocircuits.viz.triangulate import reading

    text = reading(_agreement(0.5), _effects({"lee": (-0.2, -0.3, -0.05), "wang": (-0.1, -0.25, 0.05),
                                              "tak": (0.0, -0.1, 0.1)}))
    assert "no difference beyond the controls" in text and "lowers its own label more" not in text
    text = reading(_agreement(0.5), _effects({"lee": (-0.4, -0.5, -0.3), "wang": (0.0, -0.05, 0.05),
                                              "tak": (0.0, -0.05, 0.05)}))
    assert "masking lee's neurons lowers its own label more than masking wang's" in text
    assert "wang's neurons lowers" not in text and "tak's neurons lowers" not in text


# ----------------------------------------------------------------------------- the job, rerun, report


def test_job_writes_its_tables_reruns_and_reports(tmp_path):
    from emocircuits.jobs.registry import JOBS
    from emocircuits.jobs.triangulate import FILES, run_triangulate
    from emocircuits.viz.report import build_report

    out = tmp_path / "tri"
    cfg = {"model": "tiny-llama", "data": "builtin:events", "train_per_label": 3, "test_per_label": 2,
           "top_rate": 0.05, "n_boot": 100}
    run_triangulate(cfg, out, quiet=True)
    names = {p.name for p in out.iterdir()}
    assert {"sets.json", "manifest.json"} | {f"{n}.parquet" for n in FILES if n != "sets"} <= names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "triangulate" and manifest["status"] == "complete"
    again = tmp_path / "again"
    JOBS["triangulate"](manifest["config"], again)
    for name in ("agreement", "layer_profiles", "triangulation_effects", "probes"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{name}.parquet"),
                                      pd.read_parquet(again / f"{name}.parquet"))
    assert json.loads((out / "sets.json").read_text()) == json.loads((again / "sets.json").read_text())
    report = build_report([out], progress=False)
    titles = [i.title for i in report.runs[0].items]
    assert {"Triangulation: where the three methods agree", "Layer profiles of the three methods",
            "Masking each method's neurons"} <= set(titles), (titles, report.runs[0].skipped)


def test_job_reads_lee_sets_from_a_find_run(tmp_path):
    from emocircuits.jobs.neurons import run_find
    from emocircuits.jobs.triangulate import run_triangulate

    find = tmp_path / "find"
    run_find({"model": "tiny-llama", "data": "builtin:events", "split": "train", "limit_per_label": 3,
              "template": "chat_short", "activation": "gated", "tokens": "all", "top_rate": 0.05, "assign": "argmax",
              "seed": 0, "stability": 0}, find, quiet=True)
    found = json.loads((find / "neurons.json").read_text())["neurons"]
    out = tmp_path / "tri"
    res = run_triangulate({"model": "tiny-llama", "data": "builtin:events", "train_per_label": 3,
                           "test_per_label": 1, "top_rate": 0.05, "neurons": str(find), "n_boot": 50}, out, quiet=True)
    assert {e: by["lee"].pairs() for e, by in res.sets.items()} == found


def test_job_refuses_bad_numbers_before_anything_is_written(tmp_path):
    from emocircuits.jobs.triangulate import run_triangulate

    out = tmp_path / "x"
    with pytest.raises(EmocircuitsError, match="--controls"):
        run_triangulate({"model": "tiny-llama", "controls": 0}, out, quiet=True)
    with pytest.raises(EmocircuitsError, match="--train-per-label"):
        run_triangulate({"model": "tiny-llama", "data": "builtin:events", "train_per_label": 1}, out, quiet=True)
    assert not out.exists()


# ----------------------------------------------------------------------------- the embedded model


@pytest.mark.slow
def test_triangulate_on_the_embedded_model_small(smol):
    from emocircuits.data import load_data

    model, spec = smol
    train = load_data("builtin:dialogues", split="train", limit_per_label=2, seed=0)
    test = load_data("builtin:dialogues", split="test", limit_per_label=1, seed=0)
    res = T.triangulate(model, train, top_rate=0.002, progress=False)
    assert res.agreement.pool.iloc[0] == 30 * 1536
    assert len(res.probes) == spec.n_layers
    e = next(e for e, by in res.sets.items() if len(by["lee"]))
    eff = T.mask_effects(model, test, {e: res.sets[e]}, labels=train.labels, controls=5, n_boot=100, progress=False)
    assert (eff.k_controls == 5).all() and not math.isnan(eff[eff.method == "lee"].acc_masked.iloc[0])


def test_cli_runs_and_prints_the_summary(tmp_path):
    from typer.testing import CliRunner

    from emocircuits.cli.app import app

    out = tmp_path / "tri"
    r = CliRunner().invoke(app, ["triangulate", "--model", "tiny-llama", "--data", "builtin:events",
                                 "--train-per-label", "3", "--test-per-label", "1", "--top-rate", "0.05",
                                 "--n-boot", "50", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "shared: lee-wang" in r.output and (out / "triangulation_effects.parquet").exists()
    assert json.loads((out / "manifest.json").read_text())["config"]["test_per_label"] == 1


def test_reading_claims_nothing_from_a_handful_of_texts():
    from emocircuits.viz.triangulate import reading

    eff = _effects({"lee": (0.0, 0.0, 0.0), "wang": (-1.0, -1.0, -1.0), "tak": (0.0, 0.0, 0.0)}).assign(n=2)
    text = reading(_agreement(0.5), eff)
    assert "neither claimed nor ranked" in text
    assert "lowers its own label more" not in text and "wang -1.000" not in text
    text = reading(_agreement(0.5), eff.assign(n=40))
    assert "wang -1.000" in text and "masking wang's neurons lowers its own label more than masking lee's" in text
