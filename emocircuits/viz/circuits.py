"""Figures of the emotion-circuits pipeline (:mod:`emocircuits.methods.circuits`): pure functions from its tables
(as the ``circuits`` commands write them) to plotly figures. No computation beyond grouping.

    fig = judged_accuracy(pd.read_parquet("runs/elicit/accuracy.parquet"))
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emocircuits.base.errors import EmocircuitsError
from emocircuits.viz.colors import order_labels, resolve_colors
from emocircuits.viz.figures import _need, _style

Colors = Mapping[str, str] | None
VALENCE_COLORS = {"positive": "#2a9d8f", "neutral": "#8d99ae", "negative": "#e76f51", "all": "#264653"}

__all__ = ["cosine_heatmap", "dose_response", "head_importance", "judged_accuracy", "layer_cosine_heatmap",
           "neuron_contribution_by_layer", "valence_consistency"]


def _one(df: pd.DataFrame, column: str, value: str | None, what: str) -> tuple[pd.DataFrame, str]:
    values = list(dict.fromkeys(df[column]))
    if value is None:
        value = values[0]
    if value not in values:
        raise EmocircuitsError(f"{what}: {column} {value!r} is not in the table; it has {values}.")
    return df[df[column] == value], value


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def judged_accuracy(accuracy: pd.DataFrame, *, judge: str | None = None, pooled: bool = True) -> go.Figure:
    """Grouped bars: judged accuracy per target emotion (x) and valence (colour) with 95% CI whiskers
    (``accuracy.parquet`` of ``circuits elicit``)."""
    df = _need(accuracy, ["judge", "emotion", "valence", "accuracy", "ci_low", "ci_high"], "judged_accuracy")
    df, judge = _one(df, "judge", judge, "judged_accuracy")
    emotions = order_labels(e for e in df.emotion if e != "all") + (["all"] if pooled else [])
    fig = go.Figure()
    for val in [v for v in dict.fromkeys(df.valence) if pooled or v != "all"]:
        d = df[df.valence == val].set_index("emotion").reindex(emotions)
        fig.add_bar(x=emotions, y=d.accuracy, name=val, marker_color=VALENCE_COLORS.get(val, "#999"),
                    error_y={"type": "data", "symmetric": False, "array": d.ci_high - d.accuracy,
                             "arrayminus": d.accuracy - d.ci_low},
                    customdata=d.n, hovertemplate="%{x}, " + val + ": %{y:.2f} (n=%{customdata})<extra></extra>")
    fig.update_layout(barmode="group", yaxis={"title": "share judged as the target", "range": [0, 1.05]},
                      xaxis={"title": "target emotion"})
    return _style(fig, "Prompted emotion expression", f"judge: {judge}; bars: 95% bootstrap CI over prompts")


def cosine_heatmap(cos_emotions: pd.DataFrame, *, site: str = "resid.post", layer: int | None = None) -> go.Figure:
    """Emotion × emotion cosine of the directions at one site and layer (default: the middle layer)."""
    df = _need(cos_emotions, ["site", "layer", "a", "b", "cosine"], "cosine_heatmap")
    df, site = _one(df, "site", site, "cosine_heatmap")
    layers = sorted(df.layer.unique())
    layer = layers[len(layers) // 2] if layer is None else layer
    if layer not in layers:
        raise EmocircuitsError(f"cosine_heatmap: layer {layer} is not in the table; layers are {layers[0]}..{layers[-1]}.")
    d = df[df.layer == layer]
    emos = order_labels(d.a)
    m = d.pivot(index="a", columns="b", values="cosine").reindex(index=emos, columns=emos)
    fig = go.Figure(go.Heatmap(z=m.to_numpy(), x=emos, y=emos, zmin=-1, zmax=1, colorscale="RdBu_r",
                               text=np.round(m.to_numpy(), 2), texttemplate="%{text}",
                               hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return _style(fig, f"Emotion directions: cosine at {site}, layer {layer}")


def layer_cosine_heatmap(cos_layers: pd.DataFrame, *, emotion: str | None = None,
                         site: str = "resid.post") -> go.Figure:
    """Layer × layer cosine of one emotion's direction (how stable it is through depth)."""
    df = _need(cos_layers, ["site", "emotion", "layer_a", "layer_b", "cosine"], "layer_cosine_heatmap")
    df, site = _one(df, "site", site, "layer_cosine_heatmap")
    df, emotion = _one(df, "emotion", emotion, "layer_cosine_heatmap")
    m = df.pivot(index="layer_a", columns="layer_b", values="cosine")
    fig = go.Figure(go.Heatmap(z=m.to_numpy(), x=list(m.columns), y=list(m.index), zmin=-1, zmax=1,
                               colorscale="RdBu_r", hovertemplate="layers %{y}, %{x}: %{z:.3f}<extra></extra>"))
    fig.update_layout(xaxis={"title": "layer"}, yaxis={"title": "layer", "autorange": "reversed"})
    return _style(fig, f"{emotion}: direction cosine across layers ({site})")


def valence_consistency(cos_valences: pd.DataFrame, control: pd.DataFrame | None = None, *,
                        site: str = "resid.post", colors: Colors = None) -> go.Figure:
    """Per emotion, the cosine between directions computed from different valences (mean over valence
    pairs) by layer, with the shuffled-label control's 95th percentile as a dashed line."""
    df = _need(cos_valences, ["site", "layer", "emotion", "cosine"], "valence_consistency")
    df, site = _one(df, "site", site, "valence_consistency")
    cmap = resolve_colors(df.emotion, colors)
    fig = go.Figure()
    for emo in order_labels(df.emotion):
        d = df[df.emotion == emo].groupby("layer")["cosine"].mean()
        fig.add_scatter(x=d.index, y=d.values, name=emo, mode="lines+markers", line={"color": cmap[emo]})
    if control is not None and not control.empty:
        c = control[control.site == site].sort_values("layer")
        fig.add_scatter(x=c.layer, y=c.control_q95, name="shuffled labels (95th pct)", mode="lines",
                        line={"color": "#555", "dash": "dash"})
    fig.update_layout(xaxis={"title": "layer"}, yaxis={"title": "cosine across valences", "range": [-1, 1.05]})
    return _style(fig, f"Direction consistency across valences ({site})")


def head_importance(head_scores: pd.DataFrame, *, emotions: list[str] | None = None, cols: int = 3) -> go.Figure:
    """Layer × head grids of head importance (drop of the MLP input's projection, or of resid.mid's with
    ``head_score="resid"``), one panel per emotion."""
    df = _need(head_scores, ["emotion", "layer", "head", "score"], "head_importance")
    emos = emotions or order_labels(df.emotion)
    cols = max(1, min(cols, len(emos)))
    rows = math.ceil(len(emos) / cols)
    lim = float(np.nanmax(np.abs(df[df.emotion.isin(emos)].score))) or 1.0
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=emos, horizontal_spacing=0.06, vertical_spacing=0.1)
    for i, emo in enumerate(emos):
        m = df[df.emotion == emo].pivot(index="layer", columns="head", values="score")
        fig.add_trace(go.Heatmap(z=m.to_numpy(), x=list(m.columns), y=list(m.index), zmin=-lim, zmax=lim,
                                 colorscale="RdBu_r", showscale=i == 0,
                                 hovertemplate=f"{emo}: L%{{y}} H%{{x}}: %{{z:.4f}}<extra></extra>"),
                      row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(title_text="head")
    fig.update_yaxes(title_text="layer")
    return _style(fig, "Head importance per emotion", "drop of ⟨MLP input, v_e⟩ (head score mlp_in) or "
                  "⟨resid.mid, v_e⟩ (resid) at the last token when the head is zeroed", height=320 * rows + 80)


def neuron_contribution_by_layer(neuron_scores: pd.DataFrame, *, top: int = 10, colors: Colors = None) -> go.Figure:
    """Per emotion and layer, the summed mean contribution of the layer's ``top`` neurons (positive
    side, solid) and ``top`` most negative neurons (dashed)."""
    df = _need(neuron_scores, ["emotion", "layer", "neuron", "mean"], "neuron_contribution_by_layer")
    cmap = resolve_colors(df.emotion, colors)
    fig = go.Figure()
    for emo in order_labels(df.emotion):
        g = df[df.emotion == emo].groupby("layer")["mean"]
        pos = g.apply(lambda s: s.nlargest(top).clip(lower=0).sum())
        neg = g.apply(lambda s: s.nsmallest(top).clip(upper=0).sum())
        fig.add_scatter(x=pos.index, y=pos.values, name=emo, mode="lines+markers", line={"color": cmap[emo]},
                        legendgroup=emo)
        fig.add_scatter(x=neg.index, y=neg.values, name=f"{emo} (neg)", mode="lines", showlegend=False,
                        line={"color": cmap[emo], "dash": "dash"}, legendgroup=emo)
    fig.update_layout(xaxis={"title": "layer"}, yaxis={"title": f"sum of top-{top} neuron contributions"})
    return _style(fig, "Neuron contributions to the emotion direction by layer",
                  "c = a·(W_down v_e) at the last prompt token; dashed: most negative")


def dose_response(dose: pd.DataFrame, *, kind: str | None = None, cols: int = 3, colors: Colors = None) -> go.Figure:
    """Emotion score against the scale factor: top-k (solid, band = random + 95% CI of top − random) vs
    random-k (dashed, band = ± sd over random sets), one panel per emotion (× kind)."""
    df = _need(dose, ["emotion", "kind", "scale", "top", "random", "ci_low", "ci_high"], "dose_response")
    if kind is not None:
        df, kind = _one(df, "kind", kind, "dose_response")
    panels = [(e, k) for e in order_labels(df.emotion) for k in dict.fromkeys(df.kind) if
              ((df.emotion == e) & (df.kind == k)).any()]
    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    cmap = resolve_colors(df.emotion, colors)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"{e} — {k}" for e, k in panels],
                        horizontal_spacing=0.07, vertical_spacing=0.12)
    for i, (emo, k) in enumerate(panels):
        d = df[(df.emotion == emo) & (df.kind == k)].sort_values("scale")
        r, c = i // cols + 1, i % cols + 1
        color = cmap[emo]
        sd = d.random_sd if "random_sd" in d else 0 * d.random
        x = list(d.scale) + list(d.scale[::-1])
        fig.add_scatter(x=x, y=list(d.random + d.ci_high) + list((d.random + d.ci_low)[::-1]), fill="toself",
                        fillcolor=_rgba(color, 0.2), line={"width": 0}, hoverinfo="skip", showlegend=False,
                        row=r, col=c)
        fig.add_scatter(x=x, y=list(d.random + sd) + list((d.random - sd)[::-1]), fill="toself",
                        fillcolor="rgba(120,120,120,0.15)", line={"width": 0}, hoverinfo="skip", showlegend=False,
                        row=r, col=c)
        fig.add_scatter(x=d.scale, y=d.top, mode="lines+markers", line={"color": color}, name="top-k",
                        showlegend=i == 0, legendgroup="top", row=r, col=c)
        fig.add_scatter(x=d.scale, y=d.random, mode="lines+markers", line={"color": "#666", "dash": "dash"},
                        name="random-k", showlegend=i == 0, legendgroup="random", row=r, col=c)
    fig.update_xaxes(title_text="scale factor")
    fig.update_yaxes(title_text="emotion score")
    return _style(fig, "Ablation / enhancement dose-response",
                  "final residual projected on the late reference direction", height=300 * rows + 100)
