"""Figures of Emotion circuits II (:mod:`emocircuits.methods.circuits`, :mod:`emocircuits.methods.circuits.steer`): pure
functions from the tables and circuits those runs write to plotly figures (and one HTML table).

    fig = influence_by_layer(pd.read_parquet("runs/influence/influence.parquet"))
    fig = circuit_view(read_circuits("runs/assemble"))
    fig = steering_comparison(pd.read_parquet("runs/steer/accuracy.parquet"), pd.read_parquet("runs/steer/quality.parquet"))
    html = example_replies(pd.read_parquet("runs/steer/replies.parquet"))
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emocircuits.base.constants import FLUENCY_MAX_PPL_RATIO, FLUENCY_MIN_DISTINCT2_RATIO
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Circuit
from emocircuits.viz.circuits import _one
from emocircuits.viz.colors import CONTROL_COLOR, NORMAL_COLOR, order_labels, resolve_colors
from emocircuits.viz.figures import _need, _style
from emocircuits.viz.inference import SITE_COLORS

if TYPE_CHECKING:
    from emocircuits.core.components import Circuit

Colors = Mapping[str, str] | None

__all__ = ["circuit_view", "example_replies", "influence_by_layer", "steering_comparison"]

SUBLAYER_NAMES = {"attn": "attention", "mlp": "MLP"}
SUBLAYER_COLORS = {"attn": SITE_COLORS["attn.out"], "mlp": SITE_COLORS["mlp.out"]}
METHOD_ORDER = ("circuit", "residual", "prompt", "none", "random")
METHOD_COLORS = {"circuit": "#0072B2", "residual": "#E69F00", "prompt": "#009E73", "none": NORMAL_COLOR,
                 "random": CONTROL_COLOR}
POOLED = "all"


# ----------------------------------------------------------------------------- shared helpers


def _title_text(title: str, subtitle: str | None = None) -> str:
    """The title markup :func:`_style` writes, for a dropdown button to set."""
    return _style(go.Figure(), title, subtitle).layout.title.text


def _emotion_menu(fig: go.Figure, emotions: Sequence[str], per: int, active: int,
                  titles: Sequence[str]) -> None:
    """Show the ``per`` traces of ``emotions[active]`` only; with more than one emotion, a dropdown (one button
    per emotion) switches the visible traces and the title."""
    for i, trace in enumerate(fig.data):
        trace.visible = i // per == active
    if len(emotions) < 2:
        return
    buttons = [{"label": e, "method": "update",
                "args": [{"visible": [j // per == k for j in range(len(fig.data))]}, {"title.text": titles[k]}]}
               for k, e in enumerate(emotions)]
    fig.update_layout(updatemenus=[{"buttons": buttons, "active": active, "showactive": True, "x": 1.0, "y": 1.02,
                                    "xanchor": "right", "yanchor": "bottom"}])


def _fmt(x: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.4g}"


# ----------------------------------------------------------------------------- sublayer influence


def influence_by_layer(influence: pd.DataFrame, emotion: str | None = None, *, value: str = "influence") -> go.Figure:
    """Grouped bars per layer: attention vs MLP sublayer influence of one emotion (``influence.parquet`` of
    ``circuits influence``: emotion, layer, sublayer, sigma, raw, influence); a dropdown switches emotion.
    ``value``: ``influence`` (share of the positive effect) or ``raw`` (effect per unit dose, unclipped)."""
    what = "influence_by_layer"
    if value not in ("influence", "raw"):
        raise EmocircuitsError(f"{what}: value {value!r} is not valid; use influence or raw.")
    df = _need(influence, ["emotion", "layer", "sublayer", "sigma", "raw", "influence"], what)
    emotions = order_labels(df.emotion)
    emotion = emotions[0] if emotion is None else _one(df, "emotion", emotion, what)[1]
    subs = [s for s in SUBLAYER_NAMES if s in set(df.sublayer)] + sorted(set(df.sublayer) - set(SUBLAYER_NAMES))
    fig = go.Figure()
    for emo in emotions:
        d = df[df.emotion == emo]
        for sub in subs:
            g = d[d.sublayer == sub].sort_values("layer")
            name = SUBLAYER_NAMES.get(sub, sub)
            fig.add_bar(x=g.layer, y=g[value], name=name, legendgroup=sub,
                        marker_color=SUBLAYER_COLORS.get(sub, NORMAL_COLOR),
                        customdata=np.stack([g.influence, g.raw, g.sigma], axis=-1) if len(g) else None,
                        hovertemplate=f"{emo}, layer %{{x}} {name}<br>influence %{{customdata[0]:.4f}}<br>"
                                      "raw %{customdata[1]:.4g} per unit dose<br>σ %{customdata[2]:.4g}<extra></extra>")
    sub_text = ("share of the positive effect on the final projection on v_ref (sums to 1 per emotion)"
                if value == "influence" else "change of the final projection on v_ref per unit dose α·σ (unclipped)")
    titles = [_title_text(f"Sublayer influence by layer: {e}", sub_text) for e in emotions]
    fig.update_layout(barmode="group", xaxis={"title": "layer", "dtick": 1 if df.layer.nunique() <= 32 else None},
                      yaxis={"title": "influence (share)" if value == "influence" else "raw effect per unit dose"},
                      legend={"title": {"text": "sublayer"}})
    _style(fig, f"Sublayer influence by layer: {emotion}", sub_text)
    _emotion_menu(fig, emotions, len(subs), emotions.index(emotion), titles)
    return fig


# ----------------------------------------------------------------------------- circuit view


def _score_lookup(table: pd.DataFrame | None, emotion: str, index: str, col: str,
                  what: str) -> dict[tuple[int, int], float]:
    if table is None:
        return {}
    t = _need(table, ["emotion", "layer", index, col], what)
    t = t[t.emotion == emotion]
    return {(int(a), int(b)): float(s) for a, b, s in t[["layer", index, col]].itertuples(index=False)}


def _nodes(circuit: Circuit, kind: str, table: dict[tuple[int, int], float]) -> pd.DataFrame:
    """One row per component of ``kind`` (neurons | heads): layer, index, score, shift norm (NaN = unknown)."""
    index = circuit.neurons.layers if kind == "neurons" else circuit.heads.by_layer()
    shifts = circuit.neuron_shift if kind == "neurons" else circuit.head_shift
    scores = (circuit.scores or {}).get(kind, {})
    rows = []
    for layer, idx in index.items():
        sc = scores[layer].double().numpy() if layer in scores else None
        sh = shifts[layer].double() if layer in shifts else None
        norms = None if sh is None else (sh.abs() if sh.ndim == 1 else sh.norm(dim=-1)).numpy()
        for j, i in enumerate(idx):
            score = float(sc[j]) if sc is not None else table.get((int(layer), int(i)), np.nan)
            rows.append({"layer": int(layer), "index": int(i), "score": score,
                         "shift": float(norms[j]) if norms is not None else np.nan})
    return pd.DataFrame(rows, columns=["layer", "index", "score", "shift"])


def circuit_view(circuits: Mapping[str, Circuit] | Circuit, emotion: str | None = None, *,
                 neuron_scores: pd.DataFrame | None = None, head_scores: pd.DataFrame | None = None,
                 n_layers: int | None = None, colors: Colors = None) -> go.Figure:
    """Each emotion's circuit over depth (x = layer): attention heads in the top band (y = head), MLP neurons in
    the bottom band (y = rank in the layer by score), node size by |score| (open marker: negative score), hover
    with the component, score and Δμ norm (|Δμ| of a neuron, ‖Δμ‖ of a head's slice); a dropdown switches
    emotion. ``circuits``: ``{emotion: Circuit}`` (``read_circuits`` of ``circuits assemble``) or one Circuit.
    Scores come from the circuit, else from ``neuron_scores`` (emotion, layer, neuron, mean) and
    ``head_scores`` (emotion, layer, head, score) of ``circuits components``."""

    what = "circuit_view"
    if isinstance(circuits, Circuit):
        circuits = {circuits.emotion: circuits}
    if not isinstance(circuits, Mapping) or not circuits:
        got = "an empty mapping" if isinstance(circuits, Mapping) else f"a {type(circuits).__name__}"
        raise EmocircuitsError(f"{what} needs a non-empty {{emotion: Circuit}} mapping (read_circuits of an "
                               f"assemble run); got {got}.")
    bad = [k for k, c in circuits.items() if not isinstance(c, Circuit)]
    if bad:
        raise EmocircuitsError(f"{what}: the value for {bad[0]!r} is a {type(circuits[bad[0]]).__name__}, not a "
                               "Circuit; pass read_circuits(run_dir) of an assemble run.")
    emotions = order_labels(circuits)
    if emotion is None:
        emotion = emotions[0]
    if emotion not in circuits:
        raise EmocircuitsError(f"{what}: emotion {emotion!r} has no circuit; circuits exist for {emotions}.")
    cmap = resolve_colors(emotions, colors)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.38, 0.62], vertical_spacing=0.08,
                        subplot_titles=("attention heads", "MLP neurons"))
    layers_seen: set[int] = set()
    counts = {}
    top_y = {1: 0, 2: 1}  # the largest head index and neuron rank drawn: whole-number ticks up to them
    for emo in emotions:
        c = circuits[emo]
        heads = _nodes(c, "heads", _score_lookup(head_scores, emo, "head", "score", what))
        neurons = _nodes(c, "neurons", _score_lookup(neuron_scores, emo, "neuron", "mean", what))
        counts[emo] = (len(heads), len(neurons))
        if len(neurons):  # rank within the layer: best score first (index order where scores are unknown)
            key = neurons.score.fillna(-np.inf)
            neurons = neurons.assign(key=-key).sort_values(["layer", "key", "index"], kind="stable")
            neurons["rank"] = neurons.groupby("layer").cumcount() + 1
        else:
            neurons["rank"] = []
        for kind, d, y, row, symbol, ident in (("heads", heads, "index", 1, "diamond", "H"),
                                               ("neurons", neurons, "rank", 2, "circle", "N")):
            layers_seen.update(int(x) for x in d.layer)
            if len(d):
                top_y[row] = max(top_y[row], int(d[y].max()))
            mag = d.score.abs()
            top = float(mag.max()) if len(d) and np.isfinite(mag).any() and mag.max() > 0 else 0.0
            size = (7 + 19 * np.sqrt(mag / top)).fillna(8) if top else pd.Series(10.0, index=d.index)
            negative = (d.score < 0).to_numpy()
            text = [f"<b>L{r.layer} {ident}{r.index}</b> ({emo} {kind[:-1]})<br>score {_fmt(r.score)}<br>"
                    f"{'|Δμ|' if kind == 'neurons' else '‖Δμ‖'} {_fmt(r.shift)}" for r in d.itertuples()]
            fig.add_trace(go.Scatter(
                x=d.layer, y=d[y], mode="markers", name=f"{emo}: {kind} ({len(d)})", legendgroup=kind,
                text=text, hovertemplate="%{text}<extra></extra>",
                marker={"size": size.to_numpy() if len(d) else [], "color": cmap[emo],
                        "symbol": [f"{symbol}-open" if n else symbol for n in negative],
                        "line": {"width": 1, "color": "#333"}, "opacity": 0.85}), row=row, col=1)
    hi = (n_layers - 1) if n_layers else (max(layers_seen) if layers_seen else 0)
    fig.update_xaxes(range=[-0.7, hi + 0.7], dtick=1 if hi < 32 else None, showgrid=True)
    fig.update_xaxes(title_text="layer", row=2, col=1)
    for row, first, title in ((1, 0, "head"), (2, 1, "rank in layer")):  # heads and ranks are whole numbers
        fig.update_yaxes(title_text=title, tickmode="linear", tick0=first, dtick=max(1, -(-top_y[row] // 8)),
                         tickformat="d", row=row, col=1)
    fig.update_yaxes(autorange="reversed", row=2, col=1)
    sub = "node size: |score| (Circuits I); open marker: negative score; hover: component, score, Δμ norm"
    titles = [_title_text(f"Circuit of {e}: {counts[e][0]} heads, {counts[e][1]} neurons", sub) for e in emotions]
    _style(fig, f"Circuit of {emotion}: {counts[emotion][0]} heads, {counts[emotion][1]} neurons", sub, height=620)
    _emotion_menu(fig, emotions, 2, emotions.index(emotion), titles)
    return fig


# ----------------------------------------------------------------------------- steering


def _methods(*tables: pd.DataFrame) -> list[str]:
    seen = list(dict.fromkeys(m for t in tables for m in t.method))
    return [m for m in METHOD_ORDER if m in seen] + [m for m in seen if m not in METHOD_ORDER]


def _pooled(df: pd.DataFrame, emotion: str, cols: Sequence[str], what: str) -> pd.DataFrame:
    """Rows of ``emotion`` (and valence "all" where the table has valences), one per method; without such rows,
    the n-weighted mean of ``cols`` over the method's rows (other columns NaN)."""
    d = df[df.emotion == emotion] if emotion != POOLED or (df.emotion == POOLED).any() else df[df.emotion != POOLED]
    if d.empty:
        known = order_labels(e for e in df.emotion if e != POOLED)
        raise EmocircuitsError(f"{what}: emotion {emotion!r} is not in the table; it has {known} (or 'all').")
    if "valence" in d.columns:
        d = d[d.valence == POOLED] if (d.valence == POOLED).any() else d
    out = []
    for method, g in d.groupby("method", sort=False):
        if len(g) == 1:
            out.append(g.iloc[0].to_dict())
            continue
        w = g["n"].astype(float).to_numpy() if "n" in g.columns else np.ones(len(g))
        row = {"method": method, "n": float(w.sum())}
        for c in cols:
            v = g[c].astype(float).to_numpy()
            ok = np.isfinite(v) & (w > 0)
            row[c] = float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else np.nan
        out.append(row)
    return pd.DataFrame(out).set_index("method")


def steering_comparison(accuracy: pd.DataFrame, quality: pd.DataFrame, judge: str | None = None, *,
                        emotion: str = POOLED) -> go.Figure:
    """Per steering method: judged accuracy with 95% CI whiskers, perplexity (bar: median, ◆: mean),
    distinct-2 and the shares of empty / cut-off replies (``accuracy.parquet``: judge, method, emotion, valence,
    n, accuracy, ci_low, ci_high; ``quality.parquet``: method, emotion, n, ppl_mean, ppl_median, distinct2,
    empty, cut_off of ``circuits steer``). ``emotion``: ``all`` (pooled rows) or one target emotion."""
    what = "steering_comparison"
    acc = _need(accuracy, ["judge", "method", "emotion", "valence", "n", "accuracy", "ci_low", "ci_high"], what)
    qual = _need(quality, ["method", "emotion", "n", "ppl_mean", "ppl_median", "distinct2", "empty", "cut_off"], what)
    acc, judge = _one(acc, "judge", judge, what)
    a = _pooled(acc, emotion, ["accuracy"], what)  # rows pooled here by weighting have no CI
    q = _pooled(qual, emotion, ["ppl_mean", "ppl_median", "distinct2", "empty", "cut_off"], what)
    methods = _methods(acc, qual)
    a = a.reindex(index=methods, columns=["n", "accuracy", "ci_low", "ci_high"])
    q = q.reindex(methods)
    colors = [METHOD_COLORS.get(m, NORMAL_COLOR) for m in methods]
    fig = make_subplots(rows=1, cols=4, column_widths=[0.34, 0.22, 0.22, 0.22], horizontal_spacing=0.06,
                        subplot_titles=(f"judged accuracy ({judge})", "perplexity (bar: median, ◆: mean)",
                                        "distinct-2", "empty / cut-off replies"))
    fig.add_bar(x=methods, y=a.accuracy, marker_color=colors, name="accuracy", showlegend=False,
                error_y={"type": "data", "symmetric": False, "array": (a.ci_high - a.accuracy).fillna(0),
                         "arrayminus": (a.accuracy - a.ci_low).fillna(0), "visible": bool(a.ci_low.notna().any())},
                customdata=np.stack([a.ci_low, a.ci_high, a.n], axis=-1),
                hovertemplate="%{x}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}] "
                              "(n=%{customdata[2]:.0f})<extra></extra>", row=1, col=1)
    fig.add_bar(x=methods, y=q.ppl_median, marker_color=colors, name="perplexity (median)", showlegend=False,
                hovertemplate="%{x}: median %{y:.3g}<extra></extra>", row=1, col=2)
    fig.add_scatter(x=methods, y=q.ppl_mean, mode="markers", name="perplexity (mean)", showlegend=False,
                    marker={"symbol": "diamond", "color": "#222", "size": 9},
                    hovertemplate="%{x}: mean %{y:.3g}<extra></extra>", row=1, col=2)
    fig.add_bar(x=methods, y=q.distinct2, marker_color=colors, name="distinct-2", showlegend=False,
                hovertemplate="%{x}: %{y:.3f}<extra></extra>", row=1, col=3)
    for col, name, color in (("empty", "empty", "#555555"), ("cut_off", "cut off", "#BBBBBB")):
        fig.add_bar(x=methods, y=q[col], marker_color=color, name=name, legendgroup=col,
                    hovertemplate="%{x}: " + name + " %{y:.1%}<extra></extra>", row=1, col=4)
    fig.update_layout(barmode="group", legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": -0.18})
    fig.update_yaxes(range=[0, 1.05], title_text="share judged as the target", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=3)
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", row=1, col=4)
    scope = "pooled over emotions and valences" if emotion == POOLED else f"target {emotion}, pooled over valences"
    return _style(fig, "Steering methods compared: accuracy and reply quality",
                  f"{scope}; whiskers: 95% bootstrap CI over replies; perplexity under the unsteered model; "
                  "distinct-2: unique / all word bigrams", height=460)


def steering_dose_response(dose: pd.DataFrame, judge: str | None = None, *,
                           max_ppl_ratio: float = FLUENCY_MAX_PPL_RATIO) -> go.Figure:
    """Dose-response of each steerable method (``dose.parquet`` of ``circuits steer``: method, dose, strength,
    judge, n, accuracy, ci_low, ci_high, ppl_ratio, distinct2_ratio, fluent). Left: judged accuracy (95% CI)
    against the multiple of each method's strength; right: the same points against the perplexity ratio, so
    methods compare at matched fluency (dashed: the fluency rule's bound; open markers: not fluent)."""
    what = "steering_dose_response"
    d = _need(dose, ["method", "dose", "strength", "judge", "n", "accuracy", "ci_low", "ci_high", "ppl_ratio",
                     "fluent"], what)
    d, judge = _one(d, "judge", judge, what)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("accuracy by dose (× the method's strength)",
                                        "accuracy at matched fluency (perplexity ratio)"))
    for m in _methods(d):
        g = d[d.method == m].sort_values("dose")
        color = METHOD_COLORS.get(m, NORMAL_COLOR)
        err = {"type": "data", "symmetric": False, "array": (g.ci_high - g.accuracy).fillna(0),
               "arrayminus": (g.accuracy - g.ci_low).fillna(0)}
        symbols = ["circle" if f else "circle-open" for f in g.fluent]
        custom = np.stack([g.strength, g.ci_low, g.ci_high, g.ppl_ratio, g.n], axis=-1)
        hover = (m + " ×%{customdata[0]:.3g}: %{y:.3f} [%{customdata[1]:.3f}, %{customdata[2]:.3f}], "
                 "ppl ×%{customdata[3]:.2f} (n=%{customdata[4]:.0f})<extra></extra>")
        for col, x in ((1, g.dose), (2, g.ppl_ratio)):
            fig.add_scatter(x=x, y=g.accuracy, mode="lines+markers", name=m, legendgroup=m, showlegend=col == 1,
                            line={"color": color}, marker={"symbol": symbols, "size": 9, "color": color},
                            error_y=err, customdata=custom, hovertemplate=hover, row=1, col=col)
    fig.add_vline(x=max_ppl_ratio, line_dash="dash", line_color=CONTROL_COLOR, row=1, col=2)
    fig.update_xaxes(type="log", title_text="dose (× strength)", row=1, col=1)
    fig.update_xaxes(title_text="perplexity ratio to unsteered replies", row=1, col=2)
    fig.update_yaxes(range=[0, 1.05], title_text="share judged as the target", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], row=1, col=2)
    return _style(fig, "Steering dose-response", f"judge {judge}; whiskers: 95% bootstrap CI over replies; open "
                  f"markers break the fluency rule; compare methods left of the dashed line ({max_ppl_ratio:g}×)",
                  height=440)


def strength_calibration(curve: pd.DataFrame, *, max_ppl_ratio: float = FLUENCY_MAX_PPL_RATIO,
                         min_distinct2_ratio: float = FLUENCY_MIN_DISTINCT2_RATIO) -> go.Figure:
    """The ``auto`` strength search (``strength.parquet`` of ``circuits steer``: name, strength, ppl_ratio,
    distinct2_ratio, fluent): each ratio against the strength tried, the rule's bounds dashed."""
    what = "strength_calibration"
    c = _need(curve, ["name", "strength", "ppl_ratio", "distinct2_ratio", "fluent"], what)
    c = c[c.strength > 0]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=("perplexity ratio (≤ bound)", "distinct-2 ratio (≥ bound)"))
    colors = {"alpha": METHOD_COLORS["residual"], "scale": METHOD_COLORS["circuit"]}
    for name, g in c.groupby("name", sort=False):
        g = g.sort_values("strength")
        symbols = ["circle" if f else "x" for f in g.fluent]
        for col, y in ((1, g.ppl_ratio), (2, g.distinct2_ratio)):
            fig.add_scatter(x=g.strength, y=y, mode="lines+markers", name=str(name), legendgroup=str(name),
                            showlegend=col == 1, line={"color": colors.get(str(name), NORMAL_COLOR)},
                            marker={"symbol": symbols, "size": 9},
                            hovertemplate=f"{name} " + "%{x:.3g}: %{y:.2f}<extra></extra>", row=1, col=col)
    fig.add_hline(y=max_ppl_ratio, line_dash="dash", line_color=CONTROL_COLOR, row=1, col=1)
    fig.add_hline(y=min_distinct2_ratio, line_dash="dash", line_color=CONTROL_COLOR, row=1, col=2)
    fig.update_xaxes(type="log", title_text="strength")
    return _style(fig, "Steering strength chosen on fluency", "each strength tried, weakest first, on the calibration "
                  "prompts; ×: breaks the rule (the search stops there); auto keeps the last fluent one", height=400)


# ----------------------------------------------------------------------------- example replies


def example_replies(replies: pd.DataFrame, n: int = 2, *, emotions: Sequence[str] | None = None,
                    max_chars: int = 400) -> str:
    """An HTML table (all text escaped) of the replies of every method to ``n`` prompts per target emotion: the
    first ``n`` (skeleton, valence) of each emotion in table order, the lowest random seed (``replies.parquet``
    of ``circuits steer``: method, variant, emotion, skeleton, valence, user, reply, empty, cut_off,
    pred_<judge>, correct_<judge>; rows of a ``dose`` other than 1 are left out)."""
    what = "example_replies"
    df = _need(replies, ["method", "variant", "emotion", "skeleton", "valence", "user", "reply"], what)
    if not isinstance(n, int | np.integer) or n < 1:
        raise EmocircuitsError(f"{what}: n must be a whole number of at least 1 (got {n!r}).")
    known = order_labels(df.emotion)
    emotions = list(emotions) if emotions is not None else known
    bad = [e for e in emotions if e not in known]
    if bad:
        raise EmocircuitsError(f"{what}: emotion {bad[0]!r} is not in the replies; they have {known}.")
    judge = next((c[len("pred_"):] for c in df.columns if c.startswith("pred_")), None)
    if "dose" in df:  # the dose-response rows aside: the replies at each method's own strength
        df = df[(df["dose"] == 1.0) | df["dose"].isna()]
    methods = _methods(df)
    df = df.sort_values("variant", kind="stable")  # first row per (method, prompt) = lowest random seed
    first = df.drop_duplicates(["method", "emotion", "skeleton", "valence"]).set_index(
        ["emotion", "skeleton", "valence", "method"])
    esc = html.escape

    def clip(text: Any) -> str:
        s = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
        return s if len(s) <= max_chars else s[:max_chars].rstrip() + "…"

    body = []
    for emo in emotions:
        prompts = list(dict.fromkeys(zip(replies.skeleton[replies.emotion == emo],
                                         replies.valence[replies.emotion == emo], strict=True)))[:n]
        for sk, va in prompts:
            rows = [m for m in methods if (emo, sk, va, m) in first.index]
            for j, m in enumerate(rows):
                r = first.loc[(emo, sk, va, m)]
                flags = [f for f, col in (("empty", "empty"), ("cut off", "cut_off")) if bool(r.get(col, False))]
                verdict = ""
                if judge is not None:
                    ok = r.get(f"correct_{judge}")
                    mark = "" if ok is None or pd.isna(ok) else ("✓" if bool(ok) else "✗")
                    verdict = f"{mark} {esc(str(r[f'pred_{judge}']))}".strip()
                cells = []
                if j == 0:
                    cells.append(f"<td rowspan='{len(rows)}'><b>{esc(str(emo))}</b><br><small>{esc(str(sk))} · "
                                 f"{esc(str(va))}</small></td>")
                    cells.append(f"<td rowspan='{len(rows)}' style='white-space:pre-wrap'>{esc(clip(r['user']))}</td>")
                seed = r.get("variant", -1)
                label = f"{m} (seed {int(seed)})" if m == "random" and pd.notna(seed) and int(seed) >= 0 else str(m)
                cells += [f"<td>{esc(label)}</td>",
                          f"<td style='white-space:pre-wrap'>{esc(clip(r['reply']))}"
                          + (f" <small>[{esc(', '.join(flags))}]</small>" if flags else "") + "</td>",
                          f"<td>{verdict}</td>"]
                body.append("<tr>" + "".join(cells) + "</tr>")
    heads = ["target", "prompt", "method", "reply", f"judged ({judge})" if judge else "judged"]
    head = "".join(f"<th>{esc(h)}</th>" for h in heads)
    return f"<table class='ec-table'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
