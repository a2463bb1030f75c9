"""Intervals that stay in range (:mod:`emocircuits.base.stats`) and probe controls with their own noise:
Wilson by hand, every proportion interval inside [0, 1], probes on random features at chance, K distinct
seeded label permutations, and report words that follow the intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import emocircuits.methods.inference as inf
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.stats import (
    bootstrap_proportion,
    bootstrap_versus_controls,
    clip_interval,
    mean_ci,
    wilson_interval,
)
from emocircuits.jobs.inference import validate
from emocircuits.methods.inference.probes import _oof_correct


# ----------------------------------------------------------------------------- Wilson and bootstrap
def test_wilson_matches_a_hand_computed_case():
    # k = 8, n = 10, z = 1.959964: p = 0.8, z²/n = 0.384146, centre = (0.8 + 0.192073) / 1.384146 = 0.716740,
    # half = z · sqrt(0.8·0.2/10 + z²/400) / 1.384146 = 1.959964 · 0.160011 / 1.384146 = 0.226577
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.716740 - 0.226577, abs=1e-5) and hi == pytest.approx(0.716740 + 0.226577, abs=1e-5)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    # 0 of 10: low end exactly 0, high end z²/n / (1 + z²/n) = 0.384146 / 1.384146
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.384146 / 1.384146, abs=1e-5))
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] < 1.0  # never of zero width
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    lo_a, hi_a = wilson_interval(np.array([0, 8, 10]), np.array([10, 10, 10]))
    assert lo_a.shape == (3,) and lo_a[1] == pytest.approx(lo) and hi_a[2] == 1.0
    with pytest.raises(EmocircuitsError, match="0 <= k <= n"):
        wilson_interval(11, 10)
    with pytest.raises(EmocircuitsError, match="level"):
        wilson_interval(1, 10, level=1.5)


def test_every_proportion_interval_lies_in_the_unit_interval():
    """Property test as a seeded loop (hypothesis is in the dev extra but not required here)."""
    rng = np.random.default_rng(2025)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        p = float(rng.choice([0.0, 1.0, rng.uniform()]))  # all wrong, all right, or in between
        x = (rng.uniform(size=n) < p).astype(float)
        k = int(x.sum())
        level = float(rng.choice([0.5, 0.9, 0.95, 0.99]))
        lo, hi = wilson_interval(k, n, level)
        assert 0.0 <= lo <= k / n <= hi <= 1.0, (k, n, level)
        assert hi > lo  # never of zero width
        m, blo, bhi = bootstrap_proportion(x, n_boot=200, seed=trial, level=level)
        assert 0.0 <= blo <= m <= bhi <= 1.0
        mm, mlo, mhi = mean_ci(x, n_boot=200, seed=trial)  # knockout / patching shares
        assert 0.0 <= mlo <= mm <= mhi <= 1.0
        K = int(rng.integers(1, 6))
        ctrl = (rng.uniform(size=(K, n)) < rng.uniform()).astype(float)
        vs = bootstrap_versus_controls(x, ctrl, n_boot=200, seed=trial, level=level)
        assert 0.0 <= vs["control_low"] <= vs["control_high"] <= 1.0
        assert -1.0 <= vs["diff_low"] <= vs["diff_high"] <= 1.0
        assert vs["diff"] == pytest.approx(x.mean() - ctrl.mean(1).mean())


def test_bootstrap_is_seeded_and_clip_notes_clipping():
    x = (np.arange(40) % 3 == 0).astype(float)
    assert bootstrap_proportion(x, seed=3) == bootstrap_proportion(x, seed=3)
    assert bootstrap_proportion(x, seed=3) != bootstrap_proportion(x, seed=4)
    with pytest.raises(EmocircuitsError, match="in \\[0, 1\\]"):
        bootstrap_proportion(np.array([0.5, 2.0]))
    assert clip_interval(0.41, 1.04) == (0.41, 1.0, True)
    assert clip_interval(-0.2, 0.7, -math.inf, 1.0) == (-0.2, 0.7, False)


# ----------------------------------------------------------------------------- probes and their controls
def _probe(x: np.ndarray, y: np.ndarray, **kw) -> pd.Series:
    res = inf.probe_activations({"resid.post": {0: torch.tensor(x)}}, y, [f"e{i}" for i in range(y.max() + 1)],
                                folds=kw.pop("folds", 3), **kw)
    return res.table.iloc[0]


def test_probe_on_gaussian_features_sits_at_chance_with_its_control():
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(6), 12)  # balanced: chance 1/6
    x = rng.standard_normal((len(y), 64))
    r = _probe(x, y, controls=5, random_features=True, seed=1)
    chance = 1 / 6
    assert r.ci_low <= chance <= r.ci_high, r
    assert r.control_low <= chance <= r.control_high, r
    assert r.random_features_low <= chance <= r.random_features_high, r
    assert r.selectivity_low <= 0.0 <= r.selectivity_high  # no effect beyond the controls
    assert r.k_controls == 5 and r.control_std > 0 and r.n_oof == len(y)
    for lo, hi in (("ci_low", "ci_high"), ("value_low", "value_high"), ("control_low", "control_high"),
                   ("random_features_low", "random_features_high")):
        assert 0.0 <= r[lo] <= r[hi] <= 1.0
    assert r.selectivity == pytest.approx(r.cv_mean - r.control)


def test_probe_on_separable_features_beats_its_controls():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = rng.normal(size=(3, 16))[y] * 4 + rng.normal(size=(len(y), 16))
    r = _probe(x, y, controls=5)
    assert r.cv_mean == 1.0 and r.ci_high == 1.0 and r.ci_low < 1.0  # Wilson: not [1.00, 1.00]
    assert r.selectivity_low > 0.4 and r.control < 0.6
    assert math.isnan(r.random_features)  # off by default


def test_k_label_permutations_are_distinct_and_seeded():
    p = inf.label_permutations(30, 5, seed=0)
    assert p.shape == (5, 30) and all(sorted(row) == list(range(30)) for row in p)
    assert len({row.tobytes() for row in p}) == 5
    assert np.array_equal(p, inf.label_permutations(30, 5, seed=0))
    assert not np.array_equal(p, inf.label_permutations(30, 5, seed=1))
    assert np.array_equal(inf.label_permutations(30, 3, seed=0), p[:3])  # draw i does not depend on K
    tiny = inf.label_permutations(3, 6, seed=0)  # all 3! = 6 permutations: still distinct
    assert len({row.tobytes() for row in tiny}) == 6


def test_probe_controls_are_reproducible_and_k_draws_differ():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(4), 10)
    x = rng.standard_normal((len(y), 24))
    a, b = _probe(x, y, controls=5, seed=11), _probe(x, y, controls=5, seed=11)
    pd.testing.assert_series_equal(a, b)
    assert _probe(x, y, controls=5, seed=12).control != a.control
    # the K control draws are K different probes: their accuracies are not all equal
    splits = [(np.setdiff1d(np.arange(len(y)), te), te) for te in np.array_split(np.arange(len(y)), 4)]
    accs = {float(_oof_correct(x, y, splits, y[p], 1.0, 0).mean())
            for p in inf.label_permutations(len(y), 5, seed=11)}
    assert len(accs) > 1
    with pytest.raises(EmocircuitsError, match="at least 1 label permutation"):
        _probe(x, y, controls=0)
    with pytest.raises(EmocircuitsError, match="--controls must be at least 1"):
        validate("probe", {"controls": 0})


def test_ridge_rows_keep_r2_range_and_get_controls():
    rng = np.random.default_rng(5)
    y = np.repeat(np.arange(3), 15)
    x = rng.standard_normal((len(y), 8))
    app = np.stack([x[:, 0] * 2 + 0.1 * rng.standard_normal(len(y)), rng.standard_normal(len(y))], 1)
    res = inf.probe_activations({"resid.post": {0: torch.tensor(x)}}, y, ["a", "b", "c"], app, ["p", "q"], folds=3)
    r2 = res.table[res.table.metric == "r2"].set_index("target")
    assert (r2.ci_high <= 1.0).all() and (r2.k_controls == 5).all()
    assert r2.loc["p", "selectivity_low"] > 0 and r2.loc["q", "selectivity_low"] <= 0 <= r2.loc["q", "selectivity_high"]


# ----------------------------------------------------------------------------- figures and words
def test_probe_band_is_clipped_for_old_fold_intervals():
    from emocircuits.viz.inference import probe_by_layer

    old = pd.DataFrame({"site": "resid.post", "layer": [0, 1], "target": "emotion", "metric": "accuracy",
                        "value": [0.7, 0.8], "cv_mean": [0.72, 0.9], "ci_low": [0.41, 0.7], "ci_high": [1.04, 1.1],
                        "control": [0.0, 0.2]})
    fig = probe_by_layer(old)
    band = fig.data[0]
    assert max(band.y) <= 1.0 and min(band.y) >= 0.0 and "clipped" in fig.layout.title.text


def _emo_rows(cv, lo, hi, sel_lo, sel_hi):
    return pd.DataFrame({"site": "resid.post", "layer": range(len(cv)), "cv_mean": cv, "ci_low": lo, "ci_high": hi,
                         "control": 0.17, "control_std": 0.03, "control_low": 0.12, "control_high": 0.22,
                         "k_controls": 5, "selectivity": np.array(cv) - 0.17, "selectivity_low": sel_lo,
                         "selectivity_high": sel_hi, "random_features": np.nan})


def test_reading_says_no_effect_beyond_controls_and_does_not_rank_overlapping_layers():
    from emocircuits.jobs.demo import _inference_reading, _probe_line

    cfg = {"all_examples": False, "events_per_label": 12, "span": 3, "stride": 4}
    ex = {"n_kept": 30, "n_total": 72}
    emo = _emo_rows([0.2, 0.3, 0.25], [0.1, 0.17, 0.13], [0.37, 0.48, 0.43], [-0.1, -0.05, -0.08], [0.2, 0.3, 0.25])
    best = {"resid.post": emo.iloc[1]}
    text = _inference_reading(cfg, ex, emo, best, {}, 8)
    assert "no effect beyond the controls" in text and "not ranked" in text and "most accurate" not in text
    line = _probe_line("resid.post", emo.iloc[1])
    assert "control 0.17 ± 0.03 sd [0.12, 0.22] (5 permutations)" in line and "selectivity +0.13" in line
    emo2 = _emo_rows([0.2, 0.95, 0.25], [0.1, 0.85, 0.13], [0.37, 0.99, 0.43], [-0.1, 0.7, -0.08], [0.2, 0.85, 0.25])
    text2 = _inference_reading(cfg, ex, emo2, {"resid.post": emo2.iloc[1]}, {}, 8)
    assert "most accurate at layer 1" in text2 and "above its 5 label-permutation controls" in text2
    assert "no effect beyond the controls" not in text2


def test_steering_reading_does_not_rank_overlapping_methods():
    from emocircuits.jobs.demo import _circuits_reading

    cfg = {"max_new_tokens": 16, "skeletons": 1, "steer_emotions": ["anger"]}
    acc = pd.Series({"n": 18, "accuracy": 0.5, "ci_low": 0.3, "ci_high": 0.7})
    dr = type("D", (), {"summary": {"n_groups": 3}})()
    overlapping = {"circuit": (0.5, 0.2, 0.8, 6), "residual": (0.33, 0.1, 0.7, 6), "none": (0.17, 0.0, 0.5, 6)}
    text = _circuits_reading(cfg, acc, dr, 1, 2, {"anger": ["L1H0"]}, overlapping)
    assert "does not rank them" in text and "most often" not in text
    apart = {"circuit": (0.9, 0.75, 1.0, 40), "residual": (0.3, 0.15, 0.45, 40), "none": (0.1, 0.02, 0.2, 40)}
    assert "circuit expresses the target most often" in _circuits_reading(cfg, acc, dr, 1, 2, {"anger": ["L1H0"]}, apart)


def test_tiny_model_tables_keep_shares_in_range(tiny_llama):
    """Probe, knockout and promotion on the tiny model: every share and accuracy interval inside [0, 1]."""
    from emocircuits.data import load_data

    torch.set_num_threads(1)
    prep = inf.prepare(tiny_llama[0], load_data("builtin:appraisal_events", limit_per_label=2, seed=0),
                       template="fewshot", only_correct=False)
    pr = inf.probe(prep, sites=["resid.post"], layers=[0, 1], folds=2, controls=3)
    emo = pr.table[pr.table.target == "emotion"]
    for lo, hi in (("ci_low", "ci_high"), ("value_low", "value_high"), ("control_low", "control_high")):
        assert ((0 <= emo[lo]) & (emo[lo] <= emo[hi]) & (emo[hi] <= 1)).all(), emo[[lo, hi]]
    assert (emo.k_controls == 3).all() and pr.config["controls"] == 3
    ko = inf.knockout(prep, sites=["attn.out"], span=2, n_boot=50)
    for lo, hi in (("ci_low", "ci_high"), ("accuracy_low", "accuracy_high")):
        assert ((0 <= ko[lo]) & (ko[lo] <= ko[hi]) & (ko[hi] <= 1)).all()
    table, _ = inf.promote(prep, pr.emotion_directions, layers=[1], betas=(2.0,), n_random=1)
    for col in ("base_share", "steered_share"):
        assert ((table[f"{col}_low"] <= table[col]) & (table[col] <= table[f"{col}_high"])).all()
        assert table[f"{col}_low"].between(0, 1).all() and table[f"{col}_high"].between(0, 1).all()


def test_accuracy_ci_has_width_when_every_reply_agrees():
    """0 of 18 is not certainty: the Wilson interval, not the bootstrap's zero width, by hand (z = 1.96)."""
    from emocircuits.base.stats import accuracy_ci

    lo, hi = accuracy_ci(np.zeros(18))
    z2 = 1.959963984540054 ** 2
    assert lo == 0.0 and hi == pytest.approx(z2 / (18 + z2), rel=1e-9)  # k = 0: (0, z²/(n+z²))
    lo, hi = accuracy_ci(np.ones(5))
    assert hi == pytest.approx(1.0) and lo == pytest.approx(5 / (5 + z2), rel=1e-9)
    lo, hi = accuracy_ci(np.array([0, 1, 1, 0.0]))
    assert 0 <= lo < 0.5 < hi <= 1
