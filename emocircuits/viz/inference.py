"""Figures of the emotion-inference analyses (:mod:`emocircuits.methods.inference`): pure functions, table → plotly.

    fig = probe_by_layer(result.table)             # accuracy / R² by layer per site, with the control
    fig = window_heatmap(knockout_table, "unchanged")
    fig = window_heatmap(patch_table, "flip")
    fig = attribution_scatter(windows, patch_table)
    fig = promotion_vs_beta(promotion_table, controls)
    fig = appraisal_sankey(transitions, setting="anger")
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emocircuits.base.errors import EmocircuitsError
from emocircuits.viz.colors import CONTROL_COLOR, color_map

__all__ = ["appraisal_sankey", "attribution_scatter", "probe_by_layer", "promotion_vs_beta", "window_heatmap"]

SITE_COLORS = {"attn.out": "#1f77b4", "mlp.out": "#d62728", "resid.post": "#2ca02c", "head.z": "#9467bd"}


def _need(df: Any, cols: list[str], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise EmocircuitsError(f"{what} needs a pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise EmocircuitsError(f"{what} needs columns {missing}; pass the table the matching inference function returns.")
    if df.empty:
        raise EmocircuitsError(f"{what} got an empty table; run the analysis on some examples first.")
    return df


def probe_by_layer(table: pd.DataFrame, target: str = "emotion") -> go.Figure:
    """Probe score (accuracy for emotion, R² for an appraisal) by layer, one line per site with its 95% band,
    and the control (mean of the label permutations, with its band when the table has one) dotted.

    Accuracy bands are drawn inside [0, 1] and R² bands at or below 1: tables written before the intervals
    were range-aware (a t-interval over folds) are clipped, and the title says so."""
    t = _need(table, ["site", "layer", "target", "value", "cv_mean", "ci_low", "ci_high", "control"], "probe_by_layer")
    t = t[t.target == target].sort_values("layer")
    if t.empty:
        raise EmocircuitsError(f"No probe rows for target {target!r}; targets here: {sorted(table.target.unique())}.")
    metric = t.metric.iloc[0] if "metric" in t else "score"
    low = 0.0 if metric == "accuracy" else None
    clipped = False
    fig = go.Figure()
    for site, g in t.groupby("site"):
        c = SITE_COLORS.get(site, "#333333")
        lo, hi = g.ci_low.clip(lower=low, upper=1.0), g.ci_high.clip(lower=low, upper=1.0)
        clipped |= bool((lo != g.ci_low).any() or (hi != g.ci_high).any())
        fig.add_trace(go.Scatter(x=list(g.layer) + list(g.layer[::-1]), y=list(hi) + list(lo[::-1]),
                                 fill="toself", line={"width": 0}, fillcolor=c, opacity=0.15, hoverinfo="skip",
                                 showlegend=False))
        fig.add_trace(go.Scatter(x=g.layer, y=g.cv_mean, mode="lines+markers", name=f"{site} (CV)",
                                 line={"color": c}, customdata=list(zip(lo, hi, strict=True)),
                                 hovertemplate="layer %{x}: %{y:.2f} [%{customdata[0]:.2f}, %{customdata[1]:.2f}]"
                                               "<extra></extra>"))
        k = int(g.k_controls.max()) if "k_controls" in g and g.k_controls.notna().any() else 1
        if {"control_low", "control_high"} <= set(g.columns) and g.control_low.notna().any():
            fig.add_trace(go.Scatter(x=list(g.layer) + list(g.layer[::-1]),
                                     y=list(g.control_high) + list(g.control_low[::-1]), fill="toself",
                                     line={"width": 0}, fillcolor=CONTROL_COLOR, opacity=0.12, hoverinfo="skip",
                                     showlegend=False))
        name = f"{site} control (mean of {k} label permutations)" if k > 1 else f"{site} control (shuffled labels)"
        fig.add_trace(go.Scatter(x=g.layer, y=g.control, mode="lines", name=name,
                                 line={"color": c, "dash": "dot", "width": 1}))
        if "random_features" in g and g.random_features.notna().any():
            fig.add_trace(go.Scatter(x=g.layer, y=g.random_features, mode="lines", name=f"{site} random features",
                                     line={"color": CONTROL_COLOR, "dash": "dash", "width": 1}))
    note = " (band clipped to the metric's range: a fold t-interval)" if clipped else ""
    fig.update_layout(title=f"Probe {metric} by layer — {target}{note}", xaxis_title="layer", yaxis_title=metric,
                      template="plotly_white")
    return fig


def window_heatmap(table: pd.DataFrame, value: str = "unchanged", title: str | None = None) -> go.Figure:
    """Heatmap window × site of a knockout (``unchanged``) or patching (``flip``, ``stay``, ``other``,
    ``logit_diff_change``) table; the CI shows on hover when the table has it."""
    t = _need(table, ["site", "start", "end", value], "window_heatmap")
    t = t.assign(window=[f"{a}-{b}" for a, b in zip(t.start, t.end, strict=True)]).sort_values("start")
    z = t.pivot_table(index="site", columns="start", values=value, sort=True)
    wins = [f"{a}-{a + int(t.end.iloc[0] - t.start.iloc[0])}" for a in z.columns]
    lo, hi = (f"{value}_low", f"{value}_high") if f"{value}_low" in t else ("ci_low", "ci_high")
    text = None
    if lo in t and hi in t:
        ci = t.assign(ci=[f"[{a:.2f}, {b:.2f}]" for a, b in zip(t[lo], t[hi], strict=True)])
        text = ci.pivot_table(index="site", columns="start", values="ci", aggfunc="first").reindex_like(z).values
    fig = go.Figure(go.Heatmap(z=z.values, x=wins, y=list(z.index), colorscale="Viridis", text=text,
                               hovertemplate="%{y} layers %{x}: %{z:.2f} %{text}<extra></extra>",
                               colorbar={"title": value}))
    fig.update_layout(title=title or f"{value} by layer window", xaxis_title="layers", yaxis_title="site",
                      template="plotly_white")
    return fig


def attribution_scatter(estimates: pd.DataFrame, real: pd.DataFrame) -> go.Figure:
    """Attribution estimate (summed over a window) vs real patching's change of the logit difference,
    one point per window, coloured by site, with the per-site Spearman in the legend."""
    from scipy.stats import spearmanr

    e = _need(estimates, ["site", "start", "end", "estimate"], "attribution_scatter")
    r = _need(real, ["site", "start", "end", "logit_diff_change"], "attribution_scatter")
    m = e.merge(r, on=["site", "start", "end"])
    fig = go.Figure()
    for site, g in m.groupby("site"):
        ok = len(g) >= 3 and g.estimate.std() > 0 and g.logit_diff_change.std() > 0
        rho = spearmanr(g.estimate, g.logit_diff_change)[0] if ok else float("nan")
        fig.add_trace(go.Scatter(x=g.estimate, y=g.logit_diff_change, mode="markers", name=f"{site} (ρ={rho:.2f})",
                                 text=[f"layers {a}-{b}" for a, b in zip(g.start, g.end, strict=True)],
                                 marker={"color": SITE_COLORS.get(site, "#333333")}))
    lim = [float(min(m.estimate.min(), m.logit_diff_change.min())), float(max(m.estimate.max(), m.logit_diff_change.max()))]
    fig.add_trace(go.Scatter(x=lim, y=lim, mode="lines", line={"dash": "dot", "color": CONTROL_COLOR}, name="y = x"))
    fig.update_layout(title="Attribution patching vs real patching", xaxis_title="first-order estimate",
                      yaxis_title="real change of logit difference", template="plotly_white")
    return fig


def promotion_vs_beta(table: pd.DataFrame, controls: pd.DataFrame | None = None) -> go.Figure:
    """Promotion success vs β, one panel per emotion: the probe direction and the random controls' mean with
    their 2.5–97.5% range."""
    t = _need(table, ["emotion", "beta", "success"], "promotion_vs_beta")
    emotions = list(dict.fromkeys(t.emotion))
    colors = color_map(emotions)
    fig = make_subplots(rows=1, cols=len(emotions), subplot_titles=emotions, shared_yaxes=True)
    for i, e in enumerate(emotions, start=1):
        g = t[t.emotion == e].sort_values("beta")
        fig.add_trace(go.Scatter(x=g.beta, y=g.success, mode="lines+markers", name=e,
                                 line={"color": colors.get(e, "#333333")}), row=1, col=i)
        if controls is not None and not controls.empty:
            c = controls[controls.emotion == e].groupby("beta")["success"]
            q = pd.DataFrame({"mean": c.mean(), "lo": c.quantile(0.025), "hi": c.quantile(0.975)}).reset_index()
            fig.add_trace(go.Scatter(x=q.beta, y=q["mean"], mode="lines", line={"color": CONTROL_COLOR, "dash": "dot"},
                                     error_y={"type": "data", "symmetric": False, "array": q.hi - q["mean"],
                                              "arrayminus": q["mean"] - q.lo},
                                     name="random", showlegend=i == 1), row=1, col=i)
    fig.update_layout(title="Direct promotion: success (share change / headroom) vs β", template="plotly_white")
    fig.update_yaxes(title_text="success", row=1, col=1)
    return fig


def appraisal_sankey(transitions: pd.DataFrame, setting: str | None = None) -> go.Figure:
    """Sankey of prediction shifts under appraisal steering: clean prediction (left) → steered prediction
    (right), link width = number of texts (``appraisal_transitions`` table: setting, clean, steered, count).
    One setting at a time (default: the first); a dropdown switches between settings."""
    t = _need(transitions, ["setting", "clean", "steered", "count"], "appraisal_sankey")
    settings = list(dict.fromkeys(t.setting))
    if setting is not None and setting not in settings:
        raise EmocircuitsError(f"No transitions for setting {setting!r}; settings here: {settings}.")
    labels = list(dict.fromkeys(list(t.clean) + list(t.steered)))
    colors = color_map(labels)
    n = len(labels)
    fig = go.Figure()
    for s in settings:
        g = t[(t.setting == s) & (t["count"] > 0)]
        fig.add_trace(go.Sankey(
            visible=s == (setting or settings[0]),
            node={"label": [f"{x} (clean)" for x in labels] + [f"{x} (steered)" for x in labels],
                  "color": [colors.get(x, "#888888") for x in labels] * 2, "pad": 12},
            link={"source": [labels.index(c) for c in g.clean], "target": [n + labels.index(c) for c in g.steered],
                  "value": list(g["count"]), "color": ["rgba(120,120,120,0.35)"] * len(g)}))
    if len(settings) > 1:
        buttons = [{"label": s, "method": "update",
                    "args": [{"visible": [s == o for o in settings]}, {"title": f"Appraisal steering: {s}"}]}
                   for s in settings]
        fig.update_layout(updatemenus=[{"buttons": buttons, "x": 1.0, "y": 1.15, "xanchor": "right"}])
    fig.update_layout(title=f"Appraisal steering: {setting or settings[0]}", template="plotly_white")
    return fig
