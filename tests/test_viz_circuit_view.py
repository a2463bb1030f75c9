"""Figures of Emotion circuits II (emocircuits.viz.circuit_view): influence, circuit view, steering, replies."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Circuit
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.methods import circuits as B
from emocircuits.methods.circuits import steer as S
from emocircuits.runs.circuit_files import save_circuits
from emocircuits.viz import circuit_view as V
from emocircuits.viz.circuit_view import (
    circuit_view,
    example_replies,
    influence_by_layer,
    steering_comparison,
)

L = 4


def _one_sentence(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert msg.endswith(".") and "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- tables in the writers' schemas


def _influence(emotions=("fear", "anger", "joy")) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    raw = pd.DataFrame([{"emotion": e, "layer": layer, "sublayer": p, "alpha": a, "sigma": 1.0 + layer,
                         "value": float(rng.normal())}
                        for e in emotions for layer in range(L) for p in B.SUBLAYERS for a in (0.1, 0.5)])
    return B.influence_table(raw)  # the writer's own aggregation: emotion, layer, sublayer, sigma, raw, influence


def _score_tables(emotion: str, d_mlp: int = 8, n_heads: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    ns = pd.DataFrame([{"emotion": emotion, "layer": layer, "neuron": i, "mean": float(rng.normal()), "sd": 1.0}
                       for layer in range(L) for i in range(d_mlp)])
    hs = pd.DataFrame([{"emotion": emotion, "layer": layer, "head": h, "score": float(rng.normal())}
                       for layer in range(L) for h in range(n_heads)])
    return ns, hs


def _small_circuit(emotion="fear", scores=True) -> Circuit:
    return Circuit(emotion, NeuronSet({0: (3, 7), 2: (5,)}), HeadSet(((1, 0), (1, 2))),
                   {0: torch.tensor([0.5, -2.0]), 2: torch.tensor([3.0])},
                   {1: torch.tensor([[3.0, 4.0], [1.0, 0.0]])},
                   {"neurons": {0: torch.tensor([0.2, 0.9]), 2: torch.tensor([-0.4])},
                    "heads": {1: torch.tensor([0.1, 0.3])}} if scores else None)


def _replies(judge="lexicon") -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(1)
    for method in S.METHODS:
        for variant in ((0, 1) if method == "random" else (-1,)):
            for emo in ("fear", "anger"):
                for sk in ("s1", "s2", "s3"):
                    for val in ("positive", "negative"):
                        reply = f"{method} {emo} {sk} {val} reply words here"
                        if (method, emo, sk, val, variant) == ("circuit", "fear", "s1", "positive", -1):
                            reply = "<script>alert('x')</script> & more"
                        ok = bool(rng.random() < 0.5)
                        rows.append({"method": method, "variant": variant, "emotion": emo, "skeleton": sk,
                                     "valence": val, "user": f"Scenario {sk} <b>{val}</b>", "reply": reply,
                                     "finish": "eos", "n_new_tokens": 7, "empty": False,
                                     "cut_off": sk == "s3", "ppl": float(rng.uniform(2, 30)),
                                     f"pred_{judge}": emo if ok else "sadness", f"correct_{judge}": ok})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- influence_by_layer


def test_influence_by_layer_traces_and_dropdown():
    t = _influence()
    fig = influence_by_layer(t)
    assert isinstance(fig, go.Figure)
    emotions = ["anger", "fear", "joy"]  # Ekman order first, then the rest
    assert len(fig.data) == 2 * len(emotions) and all(isinstance(tr, go.Bar) for tr in fig.data)
    assert [tr.visible for tr in fig.data] == [True, True, False, False, False, False]
    assert [tr.name for tr in fig.data[:2]] == ["attention", "MLP"]
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == emotions
    assert buttons[1].args[0]["visible"] == [False, False, True, True, False, False]
    assert "fear" in buttons[1].args[1]["title.text"]
    # values: the fear MLP bar is exactly the table's influence by layer
    fig = influence_by_layer(t, "fear")
    assert [tr.visible for tr in fig.data] == [False, False, True, True, False, False]
    want = t[(t.emotion == "fear") & (t.sublayer == "mlp")].sort_values("layer").influence
    np.testing.assert_allclose(fig.data[3].y, want)
    assert "fear" in fig.layout.title.text
    np.testing.assert_allclose(influence_by_layer(t, "fear", value="raw").data[3].y,
                               t[(t.emotion == "fear") & (t.sublayer == "mlp")].sort_values("layer").raw)
    assert not influence_by_layer(t[t.emotion == "fear"]).layout.updatemenus  # one emotion: no menu


def test_influence_by_layer_errors():
    t = _influence()
    with pytest.raises(EmocircuitsError, match="influence") as e:
        influence_by_layer(t.drop(columns=["influence"]))
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="'disgust'") as e:
        influence_by_layer(t, "disgust")
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="value"):
        influence_by_layer(t, value="sigma")
    with pytest.raises(EmocircuitsError, match="DataFrame"):
        influence_by_layer({"emotion": []})


# ----------------------------------------------------------------------------- circuit_view


def test_circuit_view_hover_by_hand():
    fig = circuit_view({"fear": _small_circuit("fear"), "anger": _small_circuit("anger")}, "fear")
    assert len(fig.data) == 4 and all(isinstance(tr, go.Scatter) for tr in fig.data)
    assert [tr.visible for tr in fig.data] == [False, False, True, True]  # anger first (Ekman order)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["anger", "fear"]
    heads, neurons = fig.data[2], fig.data[3]
    # heads: x = layer, y = head index; ‖Δμ‖ of (3, 4) is 5 and of (1, 0) is 1
    assert list(heads.x) == [1, 1] and list(heads.y) == [0, 2]
    assert "L1 H0" in heads.text[0] and "score 0.1" in heads.text[0]
    assert heads.text[0].endswith("‖Δμ‖ 5") and heads.text[1].endswith("‖Δμ‖ 1")
    assert "L1 H2" in heads.text[1] and "score 0.3" in heads.text[1]
    # neurons ranked in their layer by score: L0 N7 (0.9) first, then L0 N3 (0.2); |Δμ| = |−2| = 2
    hover = dict(zip(neurons.text, zip(neurons.x, neurons.y, strict=True), strict=True))
    by_id = {re.search(r"L\d+ N\d+", k).group(0): (k, v) for k, v in hover.items()}
    assert by_id["L0 N7"][1] == (0, 1) and by_id["L0 N3"][1] == (0, 2) and by_id["L2 N5"][1] == (2, 1)
    assert by_id["L0 N7"][0].endswith("score 0.9<br>|Δμ| 2")
    assert by_id["L0 N3"][0].endswith("score 0.2<br>|Δμ| 0.5")
    assert by_id["L2 N5"][0].endswith("score -0.4<br>|Δμ| 3")
    # size by |score|: the biggest neuron is the best one; the negative score is an open marker
    sizes = dict(zip(neurons.text, neurons.marker.size, strict=True))
    assert sizes[by_id["L0 N7"][0]] > sizes[by_id["L2 N5"][0]] > sizes[by_id["L0 N3"][0]]
    symbols = dict(zip(neurons.text, neurons.marker.symbol, strict=True))
    assert symbols[by_id["L2 N5"][0]] == "circle-open" and symbols[by_id["L0 N7"][0]] == "circle"
    assert "2 heads, 3 neurons" in fig.layout.title.text
    # whole-number ticks for head index and rank (no fractional ranks)
    assert (fig.layout.yaxis.tick0, fig.layout.yaxis.dtick, fig.layout.yaxis.tickformat) == (0, 1, "d")
    assert (fig.layout.yaxis2.tick0, fig.layout.yaxis2.dtick, fig.layout.yaxis2.autorange) == (1, 1, "reversed")
    assert list(circuit_view(_small_circuit(), n_layers=L).layout.xaxis.range) == [-0.7, L - 1 + 0.7]


def test_circuit_view_scores_from_tables_when_the_circuit_has_none():
    ns, hs = _score_tables("fear")
    c = _small_circuit(scores=False)
    fig = circuit_view({"fear": c}, neuron_scores=ns, head_scores=hs)
    assert not fig.layout.updatemenus  # one emotion: no dropdown
    want = float(hs.set_index(["layer", "head"]).score[(1, 2)])
    assert f"score {want:.4g}" in fig.data[0].text[1]
    want = float(ns.set_index(["layer", "neuron"])["mean"][(2, 5)])
    assert any(t.startswith("<b>L2 N5</b>") and f"score {want:.4g}" in t for t in fig.data[1].text)
    bare = circuit_view(c)  # no scores anywhere: n/a, uniform size
    assert all("score n/a" in t for t in bare.data[1].text) and len(set(bare.data[1].marker.size)) == 1


def test_circuit_view_on_assembled_circuits(tmp_path):
    """Real objects: assemble_circuits on synthetic influence and score tables, saved and loaded back."""
    d_mlp, H, dh = 8, 4, 3
    emotions = ["fear", "anger"]
    ns = pd.concat([_score_tables(e, d_mlp, H, seed=i)[0] for i, e in enumerate(emotions)], ignore_index=True)
    hs = pd.concat([_score_tables(e, d_mlp, H, seed=i)[1] for i, e in enumerate(emotions)], ignore_index=True)
    g = torch.Generator().manual_seed(0)
    shifts = B.Shifts(torch.randn(2, L, d_mlp, generator=g), torch.randn(2, L, H, dh, generator=g), emotions, 5)
    asm = B.assemble_circuits(_influence(emotions), ns, hs, shifts, n_layers=L, k_total=12, min_neurons=1,
                              min_heads=1)
    files = save_circuits(asm.circuits, tmp_path)
    circuits = {e: Circuit.load(f[: -len(".json")]) for e, f in files.items()}
    fig = circuit_view(circuits, n_layers=L)
    assert len(fig.data) == 2 * len(emotions)
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == ["anger", "fear"]
    dn, dh_ = shifts.of("fear")
    c = circuits["fear"]
    heads, neurons = fig.data[2], fig.data[3]
    assert len(heads.x) == len(c.heads) and len(neurons.x) == len(c.neurons)
    for layer, head in c.heads.heads:
        text = next(t for t in heads.text if t.startswith(f"<b>L{layer} H{head}</b>"))
        assert text.endswith(f"‖Δμ‖ {float(dh_[layer, head].double().norm()):.4g}")
        assert f"score {float(hs.set_index(['emotion', 'layer', 'head']).score[('fear', layer, head)]):.4g}" in text
    for layer, idx in c.neurons.layers.items():
        for i in idx:
            text = next(t for t in neurons.text if t.startswith(f"<b>L{layer} N{i}</b>"))
            assert text.endswith(f"|Δμ| {abs(float(dn[layer, i])):.4g}")
    # random control circuits carry no scores: the view still draws them (score n/a)
    rand = S.random_circuit(c, SimpleNamespace(d_mlp=d_mlp, n_heads=H), seed=3)
    assert all("score n/a" in t for t in circuit_view(rand).data[0].text)


def test_circuit_view_errors():
    with pytest.raises(EmocircuitsError, match="'joy'") as e:
        circuit_view({"fear": _small_circuit()}, "joy")
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="Circuit") as e:
        circuit_view({"fear": NeuronSet({0: (1,)})})
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="empty mapping") as e:
        circuit_view({})
    _one_sentence(e)
    ns, _ = _score_tables("fear")
    with pytest.raises(EmocircuitsError, match="mean") as e:
        circuit_view(_small_circuit(scores=False), neuron_scores=ns.drop(columns=["mean"]))
    _one_sentence(e)


# ----------------------------------------------------------------------------- steering_comparison


def test_steering_comparison_pooled_rows():
    rep = _replies()
    acc, qual = S.steer_accuracy(rep, ["lexicon"], n_boot=200), S.steer_quality(rep)
    fig = steering_comparison(acc, qual)
    assert isinstance(fig, go.Figure) and len(fig.data) == 6
    bars = fig.data[0]
    assert list(bars.x) == list(S.METHODS)
    pooled = acc[(acc.emotion == "all") & (acc.valence == "all")].set_index("method").reindex(S.METHODS)
    np.testing.assert_allclose(bars.y, pooled.accuracy)
    np.testing.assert_allclose(bars.error_y.array, pooled.ci_high - pooled.accuracy)
    np.testing.assert_allclose(bars.error_y.arrayminus, pooled.accuracy - pooled.ci_low)
    q = qual[qual.emotion == "all"].set_index("method").reindex(S.METHODS)
    np.testing.assert_allclose(fig.data[1].y, q.ppl_median)
    np.testing.assert_allclose(fig.data[2].y, q.ppl_mean)
    np.testing.assert_allclose(fig.data[3].y, q.distinct2)
    np.testing.assert_allclose(fig.data[4].y, q.empty)
    np.testing.assert_allclose(fig.data[5].y, q.cut_off)
    assert "lexicon" in fig.layout.annotations[0].text
    # one target emotion: its valence-pooled row
    one = steering_comparison(acc, qual, emotion="fear")
    row = acc[(acc.emotion == "fear") & (acc.valence == "all")].set_index("method").reindex(S.METHODS)
    np.testing.assert_allclose(one.data[0].y, row.accuracy)


def test_steering_comparison_without_pooled_rows_weights_by_n():
    rep = _replies()
    acc, qual = S.steer_accuracy(rep, ["lexicon"], n_boot=50), S.steer_quality(rep)
    per = acc[(acc.emotion != "all") & (acc.valence != "all")]
    fig = steering_comparison(per, qual[qual.emotion != "all"])
    c = per[per.method == "circuit"]
    assert fig.data[0].y[0] == pytest.approx(float((c.accuracy * c.n).sum() / c.n.sum()))
    assert not fig.data[0].error_y.visible  # no CI can be pooled by weighting


def test_steering_comparison_errors():
    rep = _replies()
    acc, qual = S.steer_accuracy(rep, ["lexicon"], n_boot=20), S.steer_quality(rep)
    with pytest.raises(EmocircuitsError, match="'gpt'") as e:
        steering_comparison(acc, qual, judge="gpt")
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="distinct2") as e:
        steering_comparison(acc, qual.drop(columns=["distinct2"]))
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="'joy'") as e:
        steering_comparison(acc, qual, emotion="joy")
    _one_sentence(e)


# ----------------------------------------------------------------------------- example_replies


def test_example_replies_escapes_and_selects():
    rep = _replies()
    out = example_replies(rep, n=1)
    assert isinstance(out, str) and out.startswith("<table class='ec-table'>")
    assert "<script>" not in out and "<b>positive</b>" not in out
    assert html.escape("<script>alert('x')</script> & more") in out
    assert "&lt;b&gt;positive&lt;/b&gt;" in out
    # n=1: one prompt per emotion, one row per method, the lowest random seed; cut-off flagged
    assert out.count("<tr>") == 1 + 2 * len(S.METHODS)
    assert "random fear s1 positive" in out and "s2" not in out
    assert out.count("rowspan='5'") == 4
    two = example_replies(rep, n=2, emotions=["anger"])
    assert two.count("<tr>") == 1 + 2 * len(S.METHODS) and "anger" in two and ">fear<" not in two
    assert "[cut off]" in example_replies(rep[rep.skeleton == "s3"], n=1)
    assert "judged (lexicon)" in out and ("✓" in out or "✗" in out)


def test_example_replies_errors():
    rep = _replies()
    with pytest.raises(EmocircuitsError, match="reply") as e:
        example_replies(rep.drop(columns=["reply"]))
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="'joy'") as e:
        example_replies(rep, emotions=["joy"])
    _one_sentence(e)
    with pytest.raises(EmocircuitsError, match="at least 1"):
        example_replies(rep, n=0)


def test_all_names():
    assert sorted(V.__all__) == ["circuit_view", "example_replies", "influence_by_layer", "steering_comparison"]
