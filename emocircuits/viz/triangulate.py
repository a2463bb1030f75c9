"""Figures and the generated reading of a ``triangulate`` run: pure functions, tables → plotly / text.

    fig = layer_profiles(profiles, probes)      # where each method puts each emotion, probe accuracy dotted
    fig = masking_effects(effects)              # masked − control per set, own label and the others, 95% CIs
    text = reading(agreement, effects)          # what agrees beyond chance; what differs beyond the controls
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emocircuits.base.constants import (
    CHANCE_ALPHA,
    MIN_CLAIM_N,
    TRIANGULATION_COMBINED,
    TRIANGULATION_METHODS,
)
from emocircuits.viz.colors import CONTROL_COLOR, order_labels
from emocircuits.viz.figures import _need

__all__ = ["agreement_table", "layer_profiles", "masking_effects", "reading"]

METHOD_COLORS = {"lee": "#1f77b4", "wang": "#d62728", "tak": "#2ca02c", "union": "#9467bd",
                 "intersection": "#8c564b"}
METHOD_NAMES = {"lee": "Lee (entropy)", "wang": "Wang (direction contribution)", "tak": "Tak (probe via W_out)",
                "union": "union", "intersection": "intersection"}


def layer_profiles(profiles: pd.DataFrame, probes: pd.DataFrame | None = None, *, cols: int = 3) -> go.Figure:
    """One panel per emotion: each method's share of its set per layer (``layer_profiles.parquet``), and the
    emotion probes' cross-validated accuracy per layer (``probes.parquet``, dotted) on the same [0, 1] axis."""
    p = _need(profiles, ["emotion", "method", "layer", "share"], "layer_profiles")
    emotions = order_labels(list(dict.fromkeys(p.emotion)))
    rows = -(-len(emotions) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=emotions, shared_yaxes=True,
                        vertical_spacing=0.12, horizontal_spacing=0.05)
    acc = None
    if probes is not None:
        q = _need(probes, ["layer", "cv_mean"], "layer_profiles (probes)")
        q = q[q.target == "emotion"] if "target" in q else q
        acc = q.sort_values("layer")
    for i, emotion in enumerate(emotions):
        r, c = i // cols + 1, i % cols + 1
        d = p[p.emotion == emotion]
        for method in TRIANGULATION_METHODS:
            g = d[d.method == method].sort_values("layer")
            if g.empty:
                continue
            fig.add_trace(go.Scatter(x=g.layer, y=g.share, mode="lines", name=METHOD_NAMES[method],
                                     line={"color": METHOD_COLORS[method]}, legendgroup=method, showlegend=i == 0,
                                     hovertemplate=f"{method}<br>layer %{{x}}<br>share %{{y:.2f}}<extra></extra>"),
                          row=r, col=c)
        if acc is not None:
            fig.add_trace(go.Scatter(x=acc.layer, y=acc.cv_mean, mode="lines", name="probe accuracy (mlp.out, CV)",
                                     line={"color": CONTROL_COLOR, "dash": "dot"}, legendgroup="probe",
                                     showlegend=i == 0,
                                     hovertemplate="probe<br>layer %{x}<br>accuracy %{y:.2f}<extra></extra>"),
                          row=r, col=c)
    fig.update_yaxes(range=[0, 1])
    fig.update_layout(title="Where each method puts each emotion: share of the set per layer", height=300 * rows,
                      template="plotly_white", legend={"orientation": "h", "y": -0.08})
    return fig


def masking_effects(effects: pd.DataFrame) -> go.Figure:
    """Masked − control accuracy per emotion and set, own label (left) and the other labels (right), with the
    bootstrap 95% CI (examples and control sets resampled); ``triangulation_effects.parquet``."""
    e = _need(effects, ["emotion", "method", "target", "diff", "ci_low", "ci_high", "n_neurons"], "masking_effects")
    emotions = order_labels(list(dict.fromkeys(e.emotion)))
    fig = make_subplots(rows=1, cols=2, subplot_titles=["own label", "other labels"], shared_yaxes=True)
    for col, target in enumerate(("own", "others"), start=1):
        for method in (*TRIANGULATION_METHODS, *TRIANGULATION_COMBINED):
            g = e[(e.method == method) & (e.target == target)].set_index("emotion").reindex(emotions)
            if g["diff"].isna().all():
                continue
            fig.add_trace(go.Bar(x=emotions, y=g["diff"], name=METHOD_NAMES[method], legendgroup=method,
                                 marker_color=METHOD_COLORS[method], showlegend=col == 1,
                                 error_y={"type": "data", "symmetric": False,
                                          "array": (g["ci_high"] - g["diff"]).tolist(),
                                          "arrayminus": (g["diff"] - g["ci_low"]).tolist()},
                                 customdata=g["n_neurons"].fillna(0).astype(int),
                                 hovertemplate=f"{method}<br>%{{x}}<br>masked − control %{{y:+.3f}}<br>"
                                               "neurons %{customdata}<extra></extra>"), row=1, col=col)
    fig.add_hline(y=0, line={"color": "#555", "width": 1})
    fig.update_layout(barmode="group", template="plotly_white", height=420,
                      title="Accuracy change when each set is masked, against size- and layer-matched random sets",
                      yaxis_title="masked − control accuracy")
    return fig


def agreement_table(agreement: pd.DataFrame) -> str:
    """An HTML table of ``agreement.parquet``: shared neurons, Jaccard, the chance mean and the p-value."""
    a = _need(agreement, ["emotion", "a", "b", "n_a", "n_b", "n_shared", "jaccard", "expected", "p_value"],
              "agreement_table")
    layered = "p_layer" in a.columns

    def extra(r: Any) -> str:
        return f"<td>{r.expected_layer:.2f}</td><td>{r.p_layer:.2g}</td>" if layered else ""

    rows = "".join(f"<tr><td>{r.emotion}</td><td>{r.a}–{r.b}</td><td>{int(r.n_a)} / {int(r.n_b)}</td>"
                   f"<td>{int(r.n_shared)}</td><td>{r.jaccard:.3f}</td><td>{r.expected:.2f}</td>"
                   f"<td>{r.p_value:.2g}</td>{extra(r)}</tr>" for r in a.itertuples())
    head = "<th>layer-matched mean</th><th>layer-matched p</th>" if layered else ""
    return ("<table class='ec-table'><thead><tr><th>emotion</th><th>pair</th><th>sizes</th><th>shared</th>"
            f"<th>Jaccard</th><th>chance mean</th><th>P(X ≥ shared)</th>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _overlap(lo1: float, hi1: float, lo2: float, hi2: float) -> bool:
    return not (hi1 < lo2 or hi2 < lo1)


def reading(agreement: pd.DataFrame, effects: pd.DataFrame | None = None) -> str:
    """A paragraph generated from the numbers: which pairs of methods share more neurons than chance
    (hypergeometric p < ``CHANCE_ALPHA``) and which do not; which sets lower their emotion's own label beyond
    their random controls (CI of masked − control below 0); and, for each emotion, whether the three methods'
    own-label effects differ — only where their intervals do not overlap, else "no difference beyond the
    controls"."""
    a = _need(agreement, ["emotion", "a", "b", "n_shared", "expected", "p_value", "n_a"], "reading")
    parts = []
    agree = a[a.p_value < CHANCE_ALPHA]
    if agree.empty:
        parts.append(f"No pair of methods shares more neurons than chance for any emotion (every hypergeometric "
                     f"p ≥ {CHANCE_ALPHA}).")
    else:
        def layer_note(r: Any) -> str:
            if "p_layer" not in a.columns or pd.isna(getattr(r, "p_layer", None)):
                return ""
            if r.p_layer < CHANCE_ALPHA:
                return f"; also beyond the layer-matched chance {r.expected_layer:.2f}, p = {r.p_layer:.2g}"
            return (f"; not beyond the layer-matched chance {r.expected_layer:.2f} (p = {r.p_layer:.2g}), so the "
                    "shared layer preference may explain it")

        items = [f"{r.emotion} {r.a}–{r.b} ({int(r.n_shared)} shared vs {r.expected:.2f} by chance, "
                 f"p = {r.p_value:.2g}{layer_note(r)})" for r in agree.itertuples()]
        parts.append(f"The methods agree beyond chance (hypergeometric p < {CHANCE_ALPHA}) for {len(agree)} of "
                     f"{len(a)} (emotion, pair) cases: " + "; ".join(items) + ".")
        not_agree = a[a.p_value >= CHANCE_ALPHA]
        if len(not_agree):
            parts.append(f"The other {len(not_agree)} do not agree beyond chance.")
    if effects is not None and len(effects):
        e = _need(effects, ["emotion", "method", "target", "diff", "ci_low", "ci_high"], "reading")
        measured = e[e["diff"].notna()]
        small = measured[measured["n"] < MIN_CLAIM_N] if "n" in measured else measured.iloc[:0]
        if len(small):
            parts.append(f"Masking effects on fewer than {MIN_CLAIM_N} texts ({len(small)} of {len(measured)} rows, "
                         f"n = {int(small['n'].min())}–{int(small['n'].max())}) are shown but neither claimed nor "
                         "ranked: a bootstrap over so few texts gives intervals of zero width.")
        measured = measured.drop(small.index)
        own = measured[measured.target == "own"]
        for target, what in (("own", "its own emotion's accuracy"), ("others", "the other labels' accuracy")):
            rows = measured[measured.target == target]
            if rows.empty:
                continue
            hurt = rows[rows.ci_high < 0]
            if hurt.empty:
                parts.append(f"No set lowers {what} beyond its random controls (every 95% CI of masked − control "
                             "reaches 0 or above).")
            else:
                parts.append(f"Sets that lower {what} beyond their random controls: "
                             + "; ".join(f"{r.emotion} {r.method} {r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                                         for r in hurt.itertuples()) + ".")
        ranked, tied = [], []
        for emotion, g in own.groupby("emotion", sort=False):
            g = g[g.method.isin(TRIANGULATION_METHODS)].set_index("method")
            names = [m for m in TRIANGULATION_METHODS if m in g.index]
            for i, m1 in enumerate(names):
                for m2 in names[i + 1:]:
                    r1, r2 = g.loc[m1], g.loc[m2]
                    if _overlap(r1.ci_low, r1.ci_high, r2.ci_low, r2.ci_high):
                        tied.append(f"{emotion} {m1}–{m2}")
                    else:
                        worse, better = (m1, m2) if r1["diff"] < r2["diff"] else (m2, m1)
                        ranked.append(f"for {emotion}, masking {worse}'s neurons lowers its own label more than "
                                      f"masking {better}'s ({g.loc[worse, 'diff']:+.3f} vs {g.loc[better, 'diff']:+.3f})")
        if ranked:
            parts.append("Where the intervals do not overlap: " + "; ".join(ranked) + ".")
        if tied:
            parts.append(f"For {'the other ' if ranked else ''}{len(tied)} (emotion, pair of methods) cases the "
                         "own-label intervals overlap: no difference beyond the controls.")
        floor = e[(e.target == "own") & e.get("floor", pd.Series(False, index=e.index)).astype(bool)]
        if len(floor):
            parts.append("Clean accuracy below the floor (no drop can show) for: "
                         + ", ".join(sorted(set(floor.emotion))) + ".")
    return " ".join(parts)
