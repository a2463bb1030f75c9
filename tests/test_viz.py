"""Figures and token views: titles, units, colours, exact hover values, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch
from test_report import fake_tables

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.units import NeuronSet
from emocircuits.viz import (
    EMOTION_COLORS,
    EMOTIONS,
    FALLBACK_PALETTE,
    TokenView,
    accuracy_change_heatmap,
    attention_heads,
    color_map,
    layer_distribution,
    layer_range_sweep,
    masking_accuracy,
    misclassification_heatmap,
    neuron_set_tokens,
    overlap_heatmap,
    ratio_sweep,
    top_examples,
)

SPANS = {"bottom": (0, 1), "middle": (2, 3), "top": (4, 5), "all": (0, 5)}


@pytest.fixture(scope="module")
def tables():
    return fake_tables()


def _all_figures(t) -> dict[str, go.Figure]:
    return {
        "layer_distribution": layer_distribution(t["layer_counts"], n_layers=6, d_mlp=64),
        "overlap_heatmap": overlap_heatmap(t["overlap"]),
        "masking_accuracy": masking_accuracy(t["mask_effects"]),
        "accuracy_change_heatmap": accuracy_change_heatmap(t["mask_effects"]),
        "ratio_sweep": ratio_sweep(t["results"]),
        "layer_range_sweep": layer_range_sweep(t["results"], spans=SPANS),
        "misclassification_heatmap": misclassification_heatmap(t["mask_errors"]),
    }


def test_every_figure_has_title_axis_units_and_hover(tables):
    for name, fig in _all_figures(tables).items():
        assert fig.layout.title.text, name
        xs = [fig.layout[k].title.text for k in fig.layout if k.startswith("xaxis") and fig.layout[k].title.text]
        ys = [fig.layout[k].title.text for k in fig.layout if k.startswith("yaxis") and fig.layout[k].title.text]
        assert xs and ys, f"{name} lacks axis titles"
        for title in xs + ys:
            # a unit or a categorical axis named by what it holds
            assert any(u in title for u in ("(", "emotion", "label", "range")), f"{name}: {title!r}"
        for trace in fig.data:
            assert trace.hovertemplate, f"{name}: trace {trace.name!r} has no hover template"
        json = fig.to_json()  # serialisable
        assert len(json) > 100


def test_emotion_colours_are_consistent_across_figures(tables):
    figs = _all_figures(tables)
    line_colors = {t.name.split(" ")[0]: t.line.color for t in figs["layer_distribution"].data}
    assert line_colors == {e: EMOTION_COLORS[e] for e in EMOTIONS}
    bars = [t for t in figs["masking_accuracy"].data if isinstance(t, go.Bar) and t.offsetgroup == "masked"]
    assert list(bars[0].marker.color) == [EMOTION_COLORS[e] for e in EMOTIONS]
    range_bars = {t.name: t.marker.color for t in figs["layer_range_sweep"].data if isinstance(t, go.Bar)}
    assert range_bars == {e: EMOTION_COLORS[e] for e in EMOTIONS}
    ratio_lines = {t.name: t.line.color for t in figs["ratio_sweep"].data if t.name in EMOTIONS}
    assert ratio_lines == {e: EMOTION_COLORS[e] for e in EMOTIONS}


def test_fallback_palette_for_other_labels():
    cmap = color_map(["positive", "anger", "negative", "neutral"])
    assert cmap["anger"] == EMOTION_COLORS["anger"]
    assert [cmap[k] for k in ("negative", "neutral", "positive")] == list(FALLBACK_PALETTE[:3])
    assert len(set(cmap.values())) == 4
    fig = layer_distribution({"positive": NeuronSet({0: (1, 2)}), "negative": NeuronSet({1: (3,)})})
    assert {t.line.color for t in fig.data} == {FALLBACK_PALETTE[0], FALLBACK_PALETTE[1]}
    # a report-wide map overrides per-figure defaults
    fig = layer_distribution({"positive": NeuronSet({0: (1,)})}, colors={"positive": "#123456"})
    assert fig.data[0].line.color == "#123456"


def test_layer_distribution_inputs_agree(tables):
    sets = {e: NeuronSet.from_pairs(p) for e, p in tables["neurons"]["neurons"].items()}
    a = layer_distribution(sets, n_layers=6)
    b = layer_distribution(tables["neurons"], n_layers=6)
    c = layer_distribution(tables["layer_counts"], n_layers=6)
    for ta, tb, tc in zip(a.data, b.data, c.data, strict=True):
        assert list(ta.y) == list(tb.y) == list(tc.y)
        assert ta.name == tb.name == tc.name
    total = sum(len(s) for s in sets.values())
    assert sum(sum(t.y) for t in a.data) == total
    # empty layers are filled with zeros up to n_layers
    fig = layer_distribution({"anger": NeuronSet({1: (0, 1, 2)})}, n_layers=4, d_mlp=100)
    assert list(fig.data[0].y) == [0, 3, 0, 0]
    assert fig.data[0].customdata[1][1] == pytest.approx(0.03)
    assert "of the layer's 100 neurons" in fig.data[0].hovertemplate


def test_overlap_heatmap_values_are_exact_percent(tables):
    fig = overlap_heatmap(tables["overlap"])
    z = np.array(fig.data[0].z, dtype=float)
    assert np.allclose(z, z.T) and np.allclose(np.diag(z), 100)
    row = tables["overlap"].query("a == 'anger' and b == 'fear'").iloc[0]
    assert z[0, 2] == pytest.approx(100 * row.jaccard)
    # one order of each pair is enough; the mirror is filled
    half = tables["overlap"][tables["overlap"].a <= tables["overlap"].b]
    assert np.allclose(np.array(overlap_heatmap(half).data[0].z, dtype=float), z)
    fig2 = overlap_heatmap(tables["overlap"], metric="overlap_min")
    assert "min(|A|, |B|)" in fig2.layout.title.text
    sets = {e: NeuronSet.from_pairs(p) for e, p in tables["neurons"]["neurons"].items()}
    assert np.allclose(np.array(overlap_heatmap(sets).data[0].z, dtype=float), z)
    with pytest.raises(EmocircuitsError, match="Unknown overlap metric"):
        overlap_heatmap(tables["overlap"], metric="dice")


def test_masking_accuracy_panels_controls_and_ci(tables):
    fig = masking_accuracy(tables["mask_effects"])
    masked = [t for t in fig.data if t.offsetgroup == "masked"]
    control = [t for t in fig.data if t.offsetgroup == "control"]
    normal = [t for t in fig.data if t.legendgroup == "normal"]
    assert len(masked) == len(control) == len(normal) == 6  # one panel per true label, pooled "all" excluded
    anger = masked[0]
    assert list(anger.x) == list(EMOTIONS)
    assert anger.y[0] == pytest.approx(40.0) and anger.y[1] == pytest.approx(88.0)
    assert control[0].y[0] == pytest.approx(89.0)
    assert normal[0].y[0] == pytest.approx(90.0)
    # CI of (masked − control) drawn around the masked bar: diff −49 pp, CI [−54, −45]
    assert anger.error_y.arrayminus[0] == pytest.approx(5.0) and anger.error_y.array[0] == pytest.approx(4.0)
    assert "accuracy masked: 40.00%" in anger.hovertext[0]
    assert "masked − control: -49.00 pp [95% CI -54.00, -45.00]" in anger.hovertext[0]
    assert "neurons masked: 12" in anger.hovertext[0]
    # the own-emotion bar is outlined
    assert anger.marker.line.width == 2.5 and anger.marker.line.color[0] == "#111"
    assert fig.layout.yaxis.ticksuffix == "%"


def test_masking_accuracy_bad_input(tables):
    with pytest.raises(EmocircuitsError, match="needs columns"):
        masking_accuracy(tables["mask_effects"].drop(columns=["acc_masked"]))
    with pytest.raises(EmocircuitsError, match="empty table"):
        masking_accuracy(tables["mask_effects"].iloc[:0])
    with pytest.raises(EmocircuitsError, match="DataFrame"):
        masking_accuracy({"a": 1})


def test_accuracy_change_heatmap(tables):
    fig = accuracy_change_heatmap(tables["mask_effects"])
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape == (6, 7)  # six labels + pooled "all" last
    assert np.allclose(np.diag(z[:, :6]), -50.0)
    assert fig.data[0].zmid == 0


def test_masking_accuracy_names_the_number_of_controls_and_their_rank(tables):
    effects = tables["mask_effects"].assign(k_controls=5, rank_p=1 / 6)
    fig = masking_accuracy(effects)
    names = {t.name for t in fig.data if t.showlegend}
    assert "control (mean of 5 random sets, same layers and size)" in names
    assert "rank p among the controls: 0.17" in fig.data[0].hovertext[0]


def test_accuracy_change_heatmap_against_controls_stars_cis_that_exclude_zero(tables):
    fig = accuracy_change_heatmap(tables["mask_effects"], value="diff")
    z = np.array(fig.data[0].z, dtype=float)
    assert np.allclose(np.diag(z[:, :6]), -49.0)  # 0.40 masked - 0.89 control
    text = np.array(fig.data[0].text)
    starred = np.char.endswith(text.astype(str), "*")
    assert starred[:, :6].diagonal().all()  # CI [-54, -45] excludes 0
    assert not starred[~np.eye(6, 7, dtype=bool)].any()  # off-diagonal CI [-6, +3] contains 0
    assert "CI excludes 0" in fig.layout.title.text
    with pytest.raises(EmocircuitsError, match="delta_masked"):
        accuracy_change_heatmap(tables["mask_effects"], value="acc_masked")


def test_misclassification_rows_sum_to_100(tables):
    fig = misclassification_heatmap(tables["mask_errors"])
    z = np.nan_to_num(np.array(fig.data[0].z, dtype=float))
    assert np.allclose(z.sum(1), 100)
    assert np.allclose(np.diag(z), 0)  # correct predictions are not failures
    errs = tables["mask_errors"]
    anger = errs[errs.masked_emotion == "anger"]
    j = list(fig.data[0].x).index("fear")
    assert z[0, j] == pytest.approx(100 * anger[anger.predicted == "fear"]["count"].sum() / anger["count"].sum())
    with pytest.raises(EmocircuitsError, match="within"):
        misclassification_heatmap(errs, within="some")


def test_ratio_sweep_averages_seeds_and_skips_failed_rows(tables):
    fig = ratio_sweep(tables["results"])
    anger = next(t for t in fig.data if t.name == "anger")
    assert list(anger.x) == [1.0, 2.0, 3.0]  # percent; the failed 0.05 row is dropped
    assert list(anger.y) == pytest.approx([-20.0, -40.0, -60.0])  # layers=all by default
    assert "layers: all" in fig.layout.title.text
    bottom = ratio_sweep(tables["results"], layers="bottom")
    assert list(next(t for t in bottom.data if t.name == "anger").y) == pytest.approx([-10.0, -20.0, -30.0])
    with pytest.raises(EmocircuitsError, match="No sweep rows have layers='upper'"):
        ratio_sweep(tables["results"], layers="upper")


def test_ratio_sweep_per_true_label_panels(tables):
    rows = []
    for e in ("anger", "fear"):
        for t in EMOTIONS:
            for r in (0.01, 0.02):
                rows.append({"emotion": e, "true_label": t, "ratio": r, "acc_normal": 0.9,
                             "acc_masked": 0.9 - (r * 10 if t == e else 0.0)})
    fig = ratio_sweep(pd.DataFrame(rows))
    own = [t for t in fig.data if t.line.width == 3.5]
    assert [t.name for t in own] == ["anger", "fear"]
    assert list(own[0].y) == pytest.approx([-10.0, -20.0])
    assert len([t for t in fig.data if t.mode == "lines+markers"]) == 12


def test_sweeps_read_the_rq3_schema(tables):
    """The RQ3 results schema (neuron_masking sweeps, emocircuits.methods.neurons.sweep): own_* / all_* columns."""
    from emocircuits.methods.neurons.masking import MASK_METRICS

    df = tables["results"].dropna(subset=["acc_masked"])
    prefixed = df.rename(columns={m: f"own_{m}" for m in MASK_METRICS})
    for m in MASK_METRICS:
        prefixed[f"all_{m}"] = 0.0
    a, b = ratio_sweep(df), ratio_sweep(prefixed)
    assert [list(t.y) for t in a.data] == [list(t.y) for t in b.data]
    assert all(v == 0 for t in ratio_sweep(prefixed, scope="all").data for v in t.y)
    with pytest.raises(EmocircuitsError, match="Unknown scope"):
        ratio_sweep(prefixed, scope="mine")
    spans = prefixed.assign(layer_first=prefixed["layers"].map(lambda x: SPANS[x][0]),
                            layer_last=prefixed["layers"].map(lambda x: SPANS[x][1]))
    fig = layer_range_sweep(spans.iloc[::-1])  # spans come from the table, whatever its row order
    assert list(fig.layout.xaxis.tickvals) == ["bottom", "middle", "top", "all"]
    assert "layers 4–5" in fig.layout.xaxis.ticktext[2]


def test_layer_range_sweep_order_and_values(tables):
    fig = layer_range_sweep(tables["results"], spans=SPANS)
    bars = [t for t in fig.data if isinstance(t, go.Bar)]
    assert list(bars[0].x) == ["bottom", "middle", "top", "all"]
    assert list(bars[0].y) == pytest.approx([-10.0, -10.0, -10.0, -20.0])  # ratio 0.01 by default
    assert "layers 0–1" in fig.layout.xaxis.ticktext[0]
    diamonds = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(diamonds) == 6 and list(diamonds[0].y) == pytest.approx([-1.0] * 4)
    assert "masked − control -9.00 pp [95% CI -13.00, -5.00]" in bars[0].hovertext[0]
    at3 = layer_range_sweep(tables["results"], ratio=0.03)
    assert next(t for t in at3.data if isinstance(t, go.Bar)).y[0] == pytest.approx(-30.0)


# ----------------------------------------------------------------------------- token views


def test_neuron_set_tokens_view():
    view = neuron_set_tokens(["a", "b", "c"], torch.tensor([0.5, -1.0, 2.0]), emotion="fear")
    assert isinstance(view, TokenView) and view.component == "ColoredTokens"
    assert view.props["values"] == [0.5, -1.0, 2.0]
    assert view.props["positiveColor"] == EMOTION_COLORS["fear"]
    assert view.props["maxValue"] == 2.0 and view.props["minValue"] == -2.0
    html = view._repr_html_()
    assert "var CircuitsVis=" in html and "CircuitsVis.ColoredTokens" in html
    assert "unpkg" not in html and "<script src" not in html
    assert "var CircuitsVis=" not in view.to_html(include_js=False)
    assert TokenView.from_dict(view.to_dict()) == view
    with pytest.raises(EmocircuitsError, match="3 tokens but 2 values"):
        neuron_set_tokens(["a", "b", "c"], [1.0, 2.0])
    with pytest.raises(EmocircuitsError, match=r"one value per token"):
        neuron_set_tokens(["a"], [[1.0]])


def test_top_examples_sorted_most_active_first():
    view = top_examples([(["x", "y"], [0.1, 0.2]), (["p", "q", "r"], [0.0, 3.0, 1.0])], layer=4, neuron=9)
    assert view.props["tokens"] == [[[["p", "q", "r"], ["x", "y"]]]]
    assert view.props["firstDimensionLabels"] == ["9"] and "L4.N9" in view.title
    with pytest.raises(EmocircuitsError):
        top_examples([], layer=0, neuron=0)


def test_attention_heads_view_validates_shape():
    pat = torch.softmax(torch.randn(2, 3, 3), -1)
    view = attention_heads(["a", "b", "c"], pat, ["L0H1", "L2H0"])
    assert np.array(view.props["attention"]).shape == (2, 3, 3)
    assert view.props["maskUpperTri"] is True
    with pytest.raises(EmocircuitsError, match=r"pattern \[heads, 2, 2\]"):
        attention_heads(["a", "b"], pat)
    with pytest.raises(EmocircuitsError, match="2 head names for 1 heads"):
        attention_heads(["a", "b", "c"], pat[0], ["x", "y"])


def test_script_close_in_props_cannot_break_out():
    view = neuron_set_tokens(["</script><script>alert(1)</script>"], [1.0])
    html = view.to_html()
    assert "</script><script>alert" not in html


# ----------------------------------------------------------------------------- computing the values


def test_tokenviews_match_a_manual_capture(tiny_llama):
    from emocircuits.core.interventions import capture
    from emocircuits.methods import tokenviews as tv

    model, spec = tiny_llama
    text = "I cannot believe they cancelled the trip again"
    neurons = NeuronSet({0: (1, 5), 2: (7,)})
    tokens, values = tv.neuron_set_values(model, text, neurons)
    ids, toks = tv.encode(model, text)
    assert tokens == toks and len(values) == ids.shape[1]
    with capture(model, "neuron.gated", [0, 2], positions="all") as got, torch.inference_mode():
        model(ids)
    manual = got[0][0][0][:, [1, 5]].sum(-1) + got[2][0][0][:, 7]
    assert torch.allclose(values, manual, atol=1e-5)
    view = tv.neuron_set_view(model, text, {"anger": neurons}, "anger")
    assert view.meta["n_neurons"] == 3


def test_tokenviews_heads_and_top_examples(tiny_llama):
    from emocircuits.methods import tokenviews as tv

    model, _ = tiny_llama
    tokens, pattern, names = tv.head_patterns(model, "the cat sat on the mat", [(2, 1), (0, 3)])
    assert names == ["L2H1", "L0H3"] and pattern.shape == (2, len(tokens), len(tokens))
    assert torch.allclose(pattern.sum(-1), torch.ones(2, len(tokens)), atol=1e-5)
    assert torch.all(pattern.triu(1) == 0)  # causal
    texts = ["a happy day", "so sad and alone today", "what a surprise"]
    best = tv.top_examples_for(model, texts, 1, 3, k=2, progress=False)
    maxima = [float(v.max()) for _, v in tv.neuron_values(model, texts, 1, 3, progress=False)]
    assert [float(v.max()) for _, v in best] == sorted(maxima, reverse=True)[:2]
    with pytest.raises(EmocircuitsError, match="out of range"):
        tv.head_patterns(model, "x y", [(0, 99)])
    with pytest.raises(EmocircuitsError, match="Neuron index"):
        tv.neuron_values(model, texts, 0, 10_000)
    doc = tv.views_document([tv.attention_view(model, "a b c", [(1, 0)])])
    assert doc["views"][0]["component"] == "AttentionHeads"
