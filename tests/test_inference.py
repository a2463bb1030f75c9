"""Emotion inference analyses (probes, knockout, patching, attribution, promotion, appraisal steering)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emocircuits.base.constants import PROBE_SITES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.interventions import PatchFrom, ScaleSite
from emocircuits.core.readout import LabelReadout
from emocircuits.data import load_data
from emocircuits.methods import inference as inf
from emocircuits.methods.inference.appraisal_theory import THEORY, get_setting, theory_table


@pytest.fixture(scope="module")
def events():
    return load_data("builtin:appraisal_events", limit_per_label=2, seed=0)


@pytest.fixture(scope="module")
def prep(tiny_llama, events):
    torch.set_num_threads(1)
    model, _ = tiny_llama
    return inf.prepare(model, events, template="fewshot", only_correct=False)


def test_prepare_counts_and_filter(tiny_llama, events):
    model, _ = tiny_llama
    allp = inf.prepare(model, events, template="fewshot", only_correct=False)
    assert len(allp) == allp.n_total == len(events)
    assert allp.scores.shape == (len(events), 6)
    n_correct = int((allp.pred == allp.true).sum())
    if n_correct:
        kept = inf.prepare(model, events, template="fewshot", only_correct=True)
        assert len(kept) == n_correct and (kept.pred == kept.true).all()
        assert kept.summary()["n_kept"] == n_correct
    else:
        with pytest.raises(EmocircuitsError):
            inf.prepare(model, events, template="fewshot", only_correct=True)


def test_prepare_calibrates_with_a_train_prior(tiny_llama, events):
    """Default readout: label log-probs minus a prior fitted on other (train/reference) examples; the prior is a
    constant per label, so predict() under no intervention reproduces the clean scores and raw differences."""
    from emocircuits.core.readout import reference_prior_examples

    model, _ = tiny_llama
    cal = inf.prepare(model, events, only_correct=False)
    raw = inf.prepare(model, events, only_correct=False, calibrate=False)
    assert cal.summary()["calibration"] == "prior" and raw.summary()["calibration"] == "none"
    prior = cal.readout.prior_logp
    ref = LabelReadout(model, cal.labels, "chat_short", calibrate="prior").fit_prior(reference_prior_examples(cal.labels))
    torch.testing.assert_close(prior, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(cal.scores, torch.log_softmax(raw.scores, -1) - prior, atol=1e-5, rtol=0)
    torch.testing.assert_close(cal.predict(), cal.scores, atol=1e-5, rtol=0)
    assert (cal.pred == (torch.log_softmax(raw.scores, -1) - prior).argmax(-1).numpy()).all()


def test_probe_on_too_few_examples_is_one_sentence(prep):
    import dataclasses

    few = dataclasses.replace(prep, examples=prep.examples[:6], token_ids=prep.token_ids[:6], scores=prep.scores[:6],
                              pred=prep.pred[:6], true=prep.true[:6])
    with pytest.raises(EmocircuitsError, match="6 are left"):
        inf.probe(few, sites=["resid.post"], layers=[0])
    with pytest.raises(EmocircuitsError, match="folds >= 2"):
        inf.probe(prep, sites=["resid.post"], layers=[0], folds=1)


def test_probe_recovers_separable_labels():
    rng = np.random.default_rng(0)
    n, d = 120, 16
    y = np.repeat(np.arange(3), n // 3)
    means = rng.normal(size=(3, d)) * 4
    x = torch.tensor(means[y] + rng.normal(size=(n, d)), dtype=torch.float32)
    app = (x[:, :2].numpy() @ np.array([[1.0, 0.0], [0.5, 1.0]])) + 0.01 * rng.normal(size=(n, 2))
    res = inf.probe_activations({"resid.post": {0: x}}, y, ["a", "b", "c"], app, ["pleasantness", "urgency"])
    emo = res.table[res.table.target == "emotion"].iloc[0]
    assert emo.value == 1.0 and emo.cv_mean > 0.95 and emo.ci_low <= emo.cv_mean <= emo.ci_high
    assert emo.control < 0.7 and emo.selectivity > 0.3
    r2 = res.table[res.table.metric == "r2"]
    assert (r2.value > 0.95).all() and (r2.control < 0.5).all()
    assert set(res.emotion_directions) == {"a", "b", "c"}
    w = res.emotion_directions["a"].vector("resid.post", 0)
    assert w.shape == (d,)
    # the class-a weight points towards class a's mean
    assert float((x[y == 0].mean(0) - x.mean(0)) @ w) > 0
    assert res.appraisal_directions["pleasantness"].vector("resid.post", 0).shape == (d,)


def test_probe_on_tiny_model_one_pass(prep):
    res = inf.probe(prep, layers=[0, 2], folds=2)
    t = res.table
    assert set(t.site) == set(PROBE_SITES) and set(t.layer) == {0, 2}
    assert {"emotion", "pleasantness"} <= set(t.target)
    for col in ("site", "layer", "target", "metric", "value", "ci_low", "ci_high", "control"):
        assert col in t.columns


def test_capture_sites_matches_runner_capture(prep):
    from emocircuits.core.runner import Runner

    got = inf.capture_sites(prep.model, prep.token_ids, ["mlp.out", "resid.post"], [0, 1])
    ref = Runner(prep.model).capture(prep.token_ids, "mlp.out", [0, 1])
    assert torch.allclose(got["mlp.out"][1], ref[1], atol=1e-5)


def test_knockout_zero_changes_exactly_the_window(prep):
    model = prep.model
    w = (1,)
    clean = inf.capture_sites(model, prep.token_ids, ["attn.out"], [0, 1, 2])
    with ScaleSite("attn.out", w, 0.0, positions="last").apply(model):
        ko = inf.capture_sites(model, prep.token_ids, ["attn.out"], [0, 1, 2])
    assert torch.equal(ko["attn.out"][0], clean["attn.out"][0])  # before the window: untouched
    assert torch.count_nonzero(ko["attn.out"][1]) == 0  # in the window: zero at the last token
    assert not torch.allclose(ko["attn.out"][2], clean["attn.out"][2])  # after: changed downstream
    table = inf.knockout(prep, sites=["attn.out"], span=1, mode="zero", n_boot=50)
    assert list(table.start) == [0, 1, 2]
    manual = prep.predict(ScaleSite("attn.out", w, 0.0, positions="last")).argmax(-1).numpy()
    row = table[table.start == 1].iloc[0]
    assert row.unchanged == pytest.approx(float((manual == prep.pred).mean()))
    assert row.ci_low <= row.unchanged <= row.ci_high
    noise = inf.knockout(prep, sites=["mlp.out"], span=3, mode="noise", seed=1, n_boot=50)
    assert len(noise) == 1 and noise.iloc[0]["mode"] == "noise"


def test_patch_self_is_identity_and_last_layer_copies_prediction(prep):
    n = len(prep)
    self_pairs = np.stack([np.arange(n), np.arange(n)], 1)
    t = inf.patch(prep, sites=["resid.post", "attn.out"], span=1, pairs=self_pairs, n_boot=50)
    assert np.allclose(t.logit_diff_change, 0.0, atol=1e-4)
    assert (t.stay == 1.0).all()
    pairs = inf.make_pairs(prep.pred, 8, seed=3) if len(set(prep.pred)) > 1 else None
    if pairs is None:
        pytest.skip("tiny model predicts a single label")
    last = 2
    src_acts = inf.capture_sites(prep.model, prep.token_ids, ["resid.post"], [last])["resid.post"]
    sc = prep.predict(PatchFrom("resid.post", {last: src_acts[last][pairs[:, 0]]}), rows=pairs[:, 1].tolist())
    assert (sc.argmax(-1).numpy() == prep.pred[pairs[:, 0]]).all()
    t2 = inf.patch(prep, sites=["resid.post"], span=1, pairs=pairs, n_boot=50)
    assert t2[t2.start == last].iloc[0].flip == 1.0
    assert np.allclose(t2[["flip", "stay", "other"]].sum(axis=1), 1.0)


def test_make_pairs_differ_and_are_seeded():
    labels = np.array([0, 0, 1, 2, 2])
    a = inf.make_pairs(labels, 20, seed=1)
    assert a.shape == (20, 2) and (labels[a[:, 0]] != labels[a[:, 1]]).all()
    assert np.array_equal(a, inf.make_pairs(labels, 20, seed=1))
    with pytest.raises(EmocircuitsError):
        inf.make_pairs(np.zeros(4, dtype=int), 3)


@pytest.mark.parametrize("site,layer", [("mlp.out", 1), ("attn.out", 0), ("resid.post", 1)])
def test_attribution_first_order_matches_tiny_patch(prep, site, layer):
    """For a tiny activation difference, grad·Δa equals the real change of the logit difference."""
    if len(set(prep.pred)) < 2:
        pytest.skip("tiny model predicts a single label")
    pairs = inf.make_pairs(prep.pred, 6, seed=0)
    clean = inf.capture_sites(prep.model, prep.token_ids, [site])[site]
    g = torch.Generator().manual_seed(0)
    acts = {site: {k: v.clone() for k, v in clean.items()}}
    for s, t in pairs:  # source activation = target's own + a tiny nudge (only at `layer`)
        delta = torch.randn(clean[layer].shape[1], generator=g)
        acts[site][layer][s] = clean[layer][t] + 1e-2 * delta / delta.norm() * clean[layer][t].norm()
    # every pair gets its own source row
    uniq = np.unique(pairs[:, 0])
    if len(uniq) < len(pairs):
        pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
    est = inf.attribute(prep, sites=[site], heads=False, pairs=pairs, acts=acts)
    real = prep.predict(PatchFrom(site, {layer: acts[site][layer][pairs[:, 0]]}), rows=pairs[:, 1].tolist())
    base = prep.scores[pairs[:, 1]]
    ar = np.arange(len(pairs))
    s_lab, t_lab = prep.pred[pairs[:, 0]], prep.pred[pairs[:, 1]]
    d_real = ((real[ar, t_lab] - real[ar, s_lab]) - (base[ar, t_lab] - base[ar, s_lab])).numpy()
    d_est = est.per_pair[site][:, layer]
    assert np.abs(d_real).max() > 1e-5
    assert np.allclose(d_est, d_real, rtol=0.1, atol=2e-4 + 0.05 * np.abs(d_real).max())


def test_attribution_heads_and_windows(prep):
    if len(set(prep.pred)) < 2:
        pytest.skip("tiny model predicts a single label")
    res = inf.attribute(prep, sites=["attn.out", "mlp.out"], n_pairs=5, seed=0)
    assert set(res.layers.site) == {"attn.out", "mlp.out", "head.z"}
    assert len(res.heads) == 3 * 4 and res.per_pair["head.z"].shape == (5, 3)
    # heads sum to the attention output's estimate (W_O is linear)
    assert np.allclose(res.per_pair["head.z"], res.per_pair["attn.out"], rtol=1e-3, atol=1e-4)
    w = res.windows(2)
    assert len(w) == 3 * 2
    real = inf.patch(prep, sites=["attn.out", "mlp.out"], span=2, pairs=res.pairs, n_boot=20)
    cmp_ = inf.compare_attribution(w, real)
    assert set(cmp_.columns) == {"site", "spearman", "pvalue", "n_windows"}


def test_appraisal_direction_orthogonal_to_fixed():
    g = torch.Generator().manual_seed(0)
    names = ["pleasantness", "unpleasantness", "other_responsblt", "self_responsblt", "suddenness"]
    w = {a: torch.randn(32, generator=g) for a in names}
    v = inf.appraisal_direction(w, {"other_responsblt": 1, "unpleasantness": 1}, ["self_responsblt", "suddenness"])
    assert v.norm() == pytest.approx(1.0, abs=1e-5)
    for a in ("self_responsblt", "suddenness"):
        assert abs(float(v @ w[a])) < 1e-5
    assert float(v @ (w["other_responsblt"] + w["unpleasantness"])) > 0
    with pytest.raises(EmocircuitsError):
        inf.appraisal_direction(w, {"effort": 1})


def test_theory_table():
    t = theory_table()
    assert len(t) == len(THEORY) >= 5 and t.source.str.len().min() > 10
    assert get_setting("anger").expected == ("anger",)
    with pytest.raises(EmocircuitsError):
        get_setting("nope")


def test_promote_and_steer_shapes(prep):
    res = inf.probe(prep, sites=["resid.post"], layers=[1], folds=2)
    table, controls = inf.promote(prep, res.emotion_directions, layers=[1], betas=(1.0, 4.0), n_random=3)
    n_e = len(res.emotion_directions)
    assert len(table) == n_e * 2 and len(controls) == 6 * 2 * 3
    assert table.success.between(-1, 1).all() and table.percentile.between(0, 100).all()
    weights = {a: d.vector("resid.post", 1) for a, d in res.appraisal_directions.items()}
    summary, trans = inf.steer_appraisal(prep, weights, THEORY[:2], layers=[1], beta=2.0, n_random=4)
    assert list(summary.setting) == ["anger", "surprise"]
    assert trans.groupby("setting")["count"].sum().eq(len(prep)).all()
    assert summary.percentile.between(0, 100).all()


def test_windows_validation():
    assert inf.windows(4, 3) == [(0, 1, 2), (1, 2, 3)]
    assert inf.windows(8, 3, stride=3) == [(0, 1, 2), (3, 4, 5), (5, 6, 7)]
    assert inf.windows(6, 3, stride=3) == [(0, 1, 2), (3, 4, 5)]
    with pytest.raises(EmocircuitsError, match="stride"):
        inf.windows(6, 3, stride=0)
    with pytest.raises(EmocircuitsError):
        inf.windows(4, 5)


# ------------------------------------------------------------------------------------------- figures
def test_figures_from_tables(prep):
    import plotly.graph_objects as go

    from emocircuits.viz import inference as viz

    res = inf.probe(prep, sites=["attn.out", "resid.post"], layers=[0, 1], folds=2)
    assert isinstance(viz.probe_by_layer(res.table), go.Figure)
    assert isinstance(viz.probe_by_layer(res.table, "pleasantness"), go.Figure)
    ko = inf.knockout(prep, sites=["attn.out", "mlp.out"], span=2, n_boot=20)
    assert isinstance(viz.window_heatmap(ko, "unchanged"), go.Figure)
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    real = inf.patch(prep, sites=["attn.out", "mlp.out"], span=1, pairs=pairs, n_boot=20)
    assert isinstance(viz.window_heatmap(real, "flip"), go.Figure)
    att = inf.attribute(prep, sites=["attn.out", "mlp.out"], heads=False, pairs=pairs)
    assert isinstance(viz.attribution_scatter(att.windows(1), real), go.Figure)
    table, controls = inf.promote(prep, res.emotion_directions, layers=[1], betas=(1.0, 2.0), n_random=2)
    assert isinstance(viz.promotion_vs_beta(table, controls), go.Figure)
    with pytest.raises(EmocircuitsError):
        viz.window_heatmap(ko.drop(columns=["unchanged"]), "unchanged")


def test_appraisal_sankey_links_follow_the_table():
    from emocircuits.viz import inference as viz

    t = pd.DataFrame({"setting": ["a", "a", "b"], "clean": ["anger", "fear", "fear"],
                      "steered": ["fear", "fear", "anger"], "count": [3, 2, 5]})
    fig = viz.appraisal_sankey(t)
    first, second = fig.data
    assert first.visible and not second.visible
    labels = list(first.node.label)
    links = sorted((labels[s], labels[d], v) for s, d, v in zip(first.link.source, first.link.target,
                                                                 first.link.value, strict=True))
    assert links == [("anger (clean)", "fear (steered)", 3), ("fear (clean)", "fear (steered)", 2)]
    assert viz.appraisal_sankey(t, setting="b").data[1].visible
    with pytest.raises(EmocircuitsError, match="setting"):
        viz.appraisal_sankey(t, setting="c")


# ------------------------------------------------------------------------------------------- CLI
def test_cli_help_and_errors_before_model_loads():
    from typer.testing import CliRunner

    from emocircuits.cli.app import app

    runner = CliRunner()
    for cmd in ("probe", "knockout", "patch", "attribute", "promote", "appraisal"):
        r = runner.invoke(app, ["inference", cmd, "--help"])
        assert r.exit_code == 0, r.output
    from emocircuits.jobs.inference import validate

    base = {"model": "nope", "data": "builtin:appraisal_events", "split": "all", "limit_per_label": 1,
            "template": "fewshot", "all_examples": True, "seed": 0, "dtype": "float32"}
    for cmd, extra, msg in [("knockout", {"sites": "attn.out", "span": 3, "mode": "blur"}, "--mode"),
                            ("knockout", {"sites": "resid.post", "span": 3, "mode": "zero"}, "--sites"),
                            ("patch", {"sites": "attn.out", "span": 0, "n_pairs": 3}, "--span"),
                            ("patch", {"sites": "attn.out", "span": 2, "stride": 0, "n_pairs": 3}, "--stride"),
                            ("promote", {"layers": None, "betas": "1,x", "n_random": 2, "rms_scaled": False}, "--betas"),
                            ("appraisal", {"layers": "9-2", "settings": "anger", "beta": 1.0, "n_random": 1}, "layers"),
                            ("appraisal", {"layers": None, "settings": "joyful", "beta": 1.0, "n_random": 1}, "joyful")]:
        with pytest.raises(EmocircuitsError, match=msg):
            validate(cmd, {**base, **extra})
    r = runner.invoke(app, ["inference", "knockout", "--mode", "blur", "--model", "nope", "--out", "/tmp/x"])
    assert r.exit_code != 0


def test_run_inference_writes_run_dir(tmp_path, tiny_llama):
    import json

    import pandas as pd

    from emocircuits.jobs.inference import run_inference

    cfg = {"model": "tiny", "data": "builtin:appraisal_events", "split": "all", "limit_per_label": 2,
           "template": "fewshot", "all_examples": True, "seed": 0, "dtype": "float32", "sites": "attn.out,mlp.out",
           "span": 3, "n_pairs": 4, "compare": True}
    summary = run_inference("attribute", cfg, tmp_path / "att", quiet=True, model_pair=tiny_llama)
    assert summary["examples"]["n_kept"] == 12
    man = json.loads((tmp_path / "att" / "manifest.json").read_text())
    assert man["status"] == "complete" and "attribution_vs_patching.parquet" in man["files"]
    assert set(pd.read_parquet(tmp_path / "att" / "patching.parquet").columns) >= {"flip", "stay", "other"}
    cfg_k = {**cfg, "sites": "attn.out", "span": 1, "stride": 2, "mode": "zero"}
    run_inference("knockout", cfg_k, tmp_path / "ko", quiet=True, model_pair=tiny_llama)
    assert pd.read_parquet(tmp_path / "ko" / "knockout.parquet")["start"].tolist() == [0, 2]  # stride 2 of 3 layers
    cfg_p = {**cfg, "sites": "resid.post", "layers": "1-2", "folds": 2}
    run_inference("probe", cfg_p, tmp_path / "probe", quiet=True, model_pair=tiny_llama)
    assert (tmp_path / "probe" / "directions" / "emotion_anger.json").exists() or \
        (tmp_path / "probe" / "probes.parquet").exists()
    from emocircuits.viz import build_report

    report = build_report([tmp_path / "att", tmp_path / "probe"], progress=False)
    titles = [i.title for run in report.runs for i in run.items]
    assert {"Attribution patching vs real patching", "Activation patching windows",
            "Emotion probe accuracy by layer"} <= set(titles), (titles, [r.skipped for r in report.runs])


@pytest.mark.slow
def test_real_model_attribution_tracks_patching(smol):
    """SmolLM2: attribution runs on real pairs and its window sums correlate with real mlp.out patching."""
    model, _ = smol
    data = load_data("builtin:appraisal_events", limit_per_label=2, seed=0)
    prep = inf.prepare(model, data, template="fewshot", only_correct=False)
    pairs = inf.make_pairs(prep.pred, 4, seed=0) if len(set(prep.pred)) > 1 else None
    if pairs is None:
        pytest.skip("model predicts a single label on this sample")
    att = inf.attribute(prep, sites=["mlp.out"], heads=False, pairs=pairs)
    assert np.isfinite(att.per_pair["mlp.out"]).all()
    real = inf.patch(prep, sites=["mlp.out"], span=10, pairs=pairs, n_boot=50)
    assert len(real) == 21
