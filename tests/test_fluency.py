"""Replies that finish (sentence stop), the fluency rule, auto strength, and the dose-response table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction
from emocircuits.core.generation import count_sentences, generate
from emocircuits.data import load_data
from emocircuits.methods import circuits as C
from emocircuits.methods import fluency as F
from emocircuits.methods.circuits import steer as S

PROMPTS = ["The weather today", "My favourite food is", "Once upon a time", "The meeting was", "He said that",
           "In the morning I", "Numbers: 1, 2,", "She wrote a letter"]


@pytest.mark.parametrize("text, n", [
    ("Hi.", 1), ("Hi. There", 1), ("It costs 3.", 0), ("It costs 3. Then", 1), ("Pi is 3.14 ok", 0),
    ('Wow!! "Yes." ', 2), ("No", 0), ("Really?) and", 1), ('He said "stop."', 1), ("Done…", 1), ("at 5!", 1),
    ("www.example.com is", 0), ("", 0),
])
def test_count_sentences_by_hand(text, n):
    assert count_sentences(text) == n


def test_sentence_stop_is_the_first_prefix_with_enough_sentences(tiny_llama):
    """With ``sentences=k`` a reply is the unrestricted greedy reply cut at the first token where the text holds
    k sentences; replies that never get there are unchanged."""
    model, _ = tiny_llama
    kw = dict(max_new_tokens=60, do_sample=True, temperature=2.0, seed=3)  # sampled: varied tokens, seeded per prompt
    free = generate(model, PROMPTS, **kw)
    stopped = generate(model, PROMPTS, sentences=1, **kw)
    hits = 0
    for toks, got, fin in zip(free.token_ids, stopped.token_ids, stopped.finish, strict=True):
        cut = next((i for i in range(1, len(toks) + 1)
                    if count_sentences(model.tokenizer.decode(toks[:i], skip_special_tokens=True)) >= 1), None)
        if cut is None:
            assert got == toks and fin != "sentence"
        else:
            hits += 1
            assert got == toks[:cut] and fin == "sentence"
    assert hits >= 1, "no reply of the tiny model ended a sentence; the check would be empty"
    with pytest.raises(EmocircuitsError):
        generate(model, PROMPTS[:1], sentences=-1)


def test_fluency_rule_by_hand():
    rule = F.FluencyRule()
    assert rule.holds(1.5, 0.9, 0.1) and not rule.holds(1.51, 0.95, 0.0) and not rule.holds(1.0, 0.89, 0.0)
    assert not rule.holds(1.0, 1.0, 0.2) and not rule.holds(math.nan, 1.0, 0.0)
    assert F.geometric_mean([1.0, 4.0, math.nan]) == pytest.approx(2.0)
    ref = F.Fluency(ppl=2.0, distinct2=0.8, empty=0.0, cut_off=0.0, n=4)
    row = F.curve_row(3.0, F.Fluency(ppl=2.9, distinct2=0.76, empty=0.0, cut_off=0.25, n=8), ref, rule)
    assert row["ppl_ratio"] == pytest.approx(1.45) and row["distinct2_ratio"] == pytest.approx(0.95) and row["fluent"]


def test_calibrate_strength_keeps_the_strongest_before_the_first_break(tiny_llama, monkeypatch):
    """The search logic on a scripted fluency curve: fluent up to 2, broken at 4 (8 is never tried)."""
    model, _ = tiny_llama
    ppl_at = {0.0: 2.0, 0.5: 2.1, 1.0: 2.4, 2.0: 2.9, 4.0: 5.0, 8.0: 2.0}
    tried = []

    class Marker:
        def __init__(self, s):
            self.s = s

        def apply(self, _model):
            tried.append(self.s)
            import contextlib
            return contextlib.nullcontext()

    state = {"s": 0.0}

    def fake_measure(_model, _ids, gens, max_tokens=0):
        return F.Fluency(ppl=ppl_at[state["s"]], distinct2=0.8, empty=0.0, cut_off=0.0, n=len(gens))

    def at(s):
        state["s"] = s
        return [Marker(s), Marker(s)]

    monkeypatch.setattr(F, "measure", fake_measure)
    ch = F.calibrate_strength(model, PROMPTS[:2], at, grid=[8, 1, 0.5, 4, 2], name="alpha",
                              generate_kw={"max_new_tokens": 1})
    assert ch.chosen == 2.0 and ch.fluent
    assert list(ch.curve.strength) == [0.0, 0.5, 1.0, 2.0, 4.0] and list(ch.curve.fluent) == [True] * 4 + [False]
    assert ch.curve.ppl_ratio.iloc[-1] == pytest.approx(2.5) and sorted(set(tried)) == [0.5, 1.0, 2.0, 4.0]
    ppl_at[0.5] = 9.0  # nothing fluent: the weakest, flagged
    ch = F.calibrate_strength(model, PROMPTS[:2], at, grid=[0.5, 1], name="alpha", generate_kw={"max_new_tokens": 1})
    assert ch.chosen == 0.5 and not ch.fluent and "no strength tried" in ch.line()
    with pytest.raises(EmocircuitsError):
        F.calibrate_strength(model, PROMPTS[:2], at, grid=[0, 1])


def test_quality_ratios_by_hand():
    rows = []
    for method, emotion, reply, ppl in [
        ("none", "anger", "a b c", 2.0), ("none", "anger", "d e f", 8.0),
        ("residual", "anger", "a b a b", 4.0), ("residual", "anger", "x y", 16.0),
        ("residual", "fear", "p q r", 8.0), ("residual", "fear", "s t u", 8.0),
    ]:
        rows.append({"method": method, "emotion": emotion, "skeleton": reply, "valence": "", "user": reply,
                     "reply": reply, "ppl": ppl, "empty": False, "cut_off": False})
    q = S.steer_quality(pd.DataFrame(rows)).set_index(["method", "emotion"])
    # reference: geometric mean ppl 4, each reply's distinct-2 1.0
    assert q.loc[("residual", "anger"), "ppl_ratio"] == pytest.approx(2.0)  # sqrt(4*16) = 8
    assert q.loc[("residual", "anger"), "distinct2_ratio"] == pytest.approx((2 / 3 + 1) / 2)  # "a b a b": 2 of 3
    assert q.loc[("residual", "all"), "ppl_ratio"] == pytest.approx(2.0)  # (4*16*8*8)^(1/4) = 8
    assert q.loc[("residual", "all"), "distinct2_ratio"] == pytest.approx((2 / 3 + 1 + 1 + 1) / 4)
    assert F.reply_distinct_n(["a b a b", "x y", "one"]) == pytest.approx((2 / 3 + 1) / 2)  # "one": no bigram
    assert not q.loc[("residual", "all"), "fluent"] and q.loc[("none", "all"), "fluent"]  # ppl ×2 > 1.5


def _direction(spec, emotion, seed=0):
    g = torch.Generator().manual_seed(seed + 10)
    return Direction({"resid.post": {layer: torch.randn(spec.d_model, generator=g) for layer in range(spec.n_layers)}},
                     emotion)


def test_steer_compare_auto_strength_and_dose(tiny_llama):
    model, spec = tiny_llama
    items = C.elicitation_items(load_data("builtin:sev"), limit=1, emotions=["anger"])
    dirs = {"anger": _direction(spec, "anger")}
    kw = dict(emotions=["anger"], methods=["residual", "prompt"], directions=dirs, max_new_tokens=3, n_boot=20,
              sentences=0)
    res = S.steer_compare(model, items, doses=[0.5, 2], calibration_prompts=2, **kw)
    ch = res.strengths["alpha"]
    assert res.config["alpha"] == ch.chosen and res.config["auto"] == ["alpha"]
    assert ch.curve.strength.iloc[0] == 0.0 and len(ch.curve) >= 2
    # the evaluation runs at the chosen strength; the dose table at 0.5x, 1x and 2x of it
    main = res.replies[res.replies.method == "residual"]
    assert set(main.dose) == {0.5, 1.0, 2.0}
    d = res.dose.set_index("dose")
    assert list(d.index) == [0.5, 1.0, 2.0]
    assert d.loc[2.0, "strength"] == pytest.approx(2 * ch.chosen)
    assert d.loc[1.0, "accuracy"] == pytest.approx(res.accuracy.set_index(["method", "emotion", "valence"])
                                                   .loc[("residual", "all", "all"), "accuracy"])
    q = res.quality.set_index(["method", "emotion"])
    assert d.loc[1.0, "ppl_ratio"] == pytest.approx(q.loc[("residual", "all"), "ppl_ratio"])
    assert len(res.accuracy[res.accuracy.method == "residual"]) == len(res.accuracy[res.accuracy.method == "prompt"])
    # the same inputs and seed give the same choice
    again = S.steer_compare(model, items, doses=[], calibration_prompts=2, **kw)
    assert again.strengths["alpha"].chosen == ch.chosen
    # an explicit strength that breaks the rule is flagged, with a note
    loud = S.steer_compare(model, items, alpha=500.0, **kw)
    qr = loud.quality.set_index(["method", "emotion"]).loc[("residual", "all")]
    assert (not qr.fluent) == any("residual" in n for n in loud.notes)
    with pytest.raises(EmocircuitsError):
        S.steer_compare(model, items, alpha="loud", **kw)
    with pytest.raises(EmocircuitsError):
        S.steer_compare(model, items, alpha=float("nan"), **kw)


def test_check_strength():
    assert S.check_strength("auto", "--alpha") is None and S.check_strength(None, "--alpha") is None
    assert S.check_strength("2", "--alpha") == 2.0 and S.check_strength(0, "--scale") == 0.0
    for bad in ("-1", "inf", "nan", "strong"):
        with pytest.raises(EmocircuitsError, match="--alpha"):
            S.check_strength(bad, "--alpha")
    assert np.isnan(F.distinct_n([""]))


def test_dose_and_strength_figures():
    from emocircuits.viz.circuit_view import steering_dose_response, strength_calibration

    dose = pd.DataFrame([
        {"method": m, "dose": x, "strength": x * s, "judge": "lexicon", "n": 10, "accuracy": a, "ci_low": a - 0.1,
         "ci_high": a + 0.1, "ppl_ratio": p, "distinct2_ratio": 1.0, "fluent": p <= 1.5}
        for m, s in (("circuit", 1.0), ("residual", 0.5))
        for x, a, p in ((0.5, 0.2, 1.1), (1.0, 0.3, 1.3), (2.0, 0.5, 2.0))])
    fig = steering_dose_response(dose)
    assert len(fig.data) == 4  # two methods x two panels
    right = [t for t in fig.data if t.xaxis == "x2"]
    assert list(right[0].x) == [1.1, 1.3, 2.0] and list(right[0].marker.symbol) == ["circle", "circle", "circle-open"]
    curve = pd.DataFrame({"name": ["alpha"] * 3, "strength": [0.0, 0.5, 1.0], "ppl_ratio": [1.0, 1.2, 1.6],
                          "distinct2_ratio": [1.0, 0.95, 0.8], "fluent": [True, True, False]})
    fig = strength_calibration(curve)
    assert len(fig.data) == 2 and list(fig.data[0].x) == [0.5, 1.0] and list(fig.data[0].marker.symbol) == ["circle", "x"]
    with pytest.raises(EmocircuitsError):
        steering_dose_response(dose.drop(columns=["ppl_ratio"]))


def test_inference_promote_and_appraisal_auto_beta(tiny_llama, tmp_path):
    from emocircuits.jobs.inference import run_inference

    cfg = {"model": "tiny", "data": "builtin:appraisal_events", "split": "all", "limit_per_label": 2,
           "template": "fewshot", "all_examples": True, "seed": 0, "dtype": "float32", "layers": "1-2",
           "betas": "auto", "n_random": 2, "rms_scaled": False}
    summary = run_inference("promote", cfg, tmp_path / "pr", quiet=True, model_pair=tiny_llama)
    chosen = summary["strength_choice"]["chosen"]
    promo = pd.read_parquet(tmp_path / "pr" / "promotion.parquet")
    assert sorted(set(promo.beta)) == pytest.approx([chosen / 4, chosen / 2, chosen])
    curve = pd.read_parquet(tmp_path / "pr" / "strength.parquet")
    assert curve.strength.iloc[0] == 0 and set(curve.name) == {"beta"}
    cfg_a = {**cfg, "settings": "anger", "beta": "auto"}
    cfg_a.pop("betas")
    summary = run_inference("appraisal", cfg_a, tmp_path / "ap", quiet=True, model_pair=tiny_llama)
    steer = pd.read_parquet(tmp_path / "ap" / "appraisal_steering.parquet")
    assert steer.beta.iloc[0] == summary["strength_choice"]["chosen"]


def test_sentence_stop_batched_equals_one_at_a_time(tiny_llama):
    """The sentence stop ends each row on its own: a batch gives every prompt the reply it gets alone."""
    model, _ = tiny_llama
    kw = dict(max_new_tokens=40, do_sample=True, temperature=2.0, seed=3, sentences=1)
    batched = generate(model, PROMPTS, **kw)
    for i, p in enumerate(PROMPTS):
        one = generate(model, [p], **kw)
        assert one.token_ids[0] == batched.token_ids[i] and one.finish[0] == batched.finish[i]
    assert "sentence" in batched.finish and "length" in batched.finish  # both ways of ending are covered
