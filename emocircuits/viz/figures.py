"""Figures of the emotion-neurons method (Lee et al. 2025): pure functions from results to plotly figures.

Each function takes what an analysis wrote (a DataFrame of a documented schema, or the in-memory
selection) and returns a ``plotly.graph_objects.Figure``; nothing here runs a model. Every figure has
a title, axis titles with units, the emotion colours of :mod:`emocircuits.viz.colors`, and hover text
with the exact values. Accuracies in the tables are fractions in [0, 1]; figures show percent and
percentage points (pp).

=========================  ===================================  ==========================
function                   input                                paper figure
=========================  ===================================  ==========================
``layer_distribution``     selection / neurons.json / layer_counts   Fig. 1
``overlap_heatmap``        overlap.parquet                      Fig. 14
``masking_accuracy``       mask_effects.parquet                 Fig. 2
``accuracy_change_heatmap`` mask_effects.parquet                (summary of Fig. 2)
``ratio_sweep``            sweep results.parquet                Fig. 3
``layer_range_sweep``      sweep results.parquet                Fig. 4
``misclassification_heatmap`` mask_errors.parquet               Fig. 15
=========================  ===================================  ==========================
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from emocircuits.base.errors import EmocircuitsError
from emocircuits.viz.colors import CONTROL_COLOR, NORMAL_COLOR, order_labels, resolve_colors, tint

Colors = Mapping[str, str] | None

#: The ``true_label`` of rows pooled over every label in ``mask_effects``.
POOLED = "all"
_FONT = "Inter, 'Segoe UI', Helvetica, Arial, sans-serif"


# ----------------------------------------------------------------------------- shared helpers


def _style(fig: go.Figure, title: str, subtitle: str | None = None, *, height: int | None = None) -> go.Figure:
    text = f"<b>{title}</b>" + (f"<br><span style='font-size:12px;color:#555'>{subtitle}</span>" if subtitle else "")
    fig.update_layout(
        template="plotly_white",
        title={"text": text, "x": 0.01, "xanchor": "left", "yref": "container", "y": 1.0, "yanchor": "top",
               "pad": {"t": 14}},
        font={"family": _FONT, "size": 13, "color": "#222"},
        hoverlabel={"font": {"family": _FONT, "size": 12}, "align": "left"},
        margin={"t": 100 if subtitle else 75, "l": 70, "r": 30, "b": 60},
        legend={"bgcolor": "rgba(255,255,255,0.85)"},
    )
    if height:
        fig.update_layout(height=height)
    return fig


def _need(df: Any, columns: Iterable[str], what: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise EmocircuitsError(f"{what} needs a pandas DataFrame, got {type(df).__name__}.")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise EmocircuitsError(
            f"{what} needs columns {missing} that the table lacks (it has {list(df.columns)}); "
            "pass the table the analysis wrote."
        )
    if df.empty:
        raise EmocircuitsError(f"{what} got an empty table; there is nothing to plot.")
    return df


def _colored_label(label: str, colors: Mapping[str, str]) -> str:
    return f"<span style='color:{colors.get(label, '#222')}'><b>{label}</b></span>"


def _pct_scale(values: pd.Series) -> float:
    """100 when ``values`` are fractions (all within [-1, 1]), else 1 (already percent)."""
    finite = values[np.isfinite(values.astype(float))]
    return 100.0 if finite.empty or finite.abs().max() <= 1.0 + 1e-9 else 1.0


def _ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Sweep rows that finished: drop rows whose ``status`` says failed or whose ``error`` is set."""
    keep = pd.Series(True, index=df.index)
    if "status" in df.columns:
        keep &= ~df["status"].astype(str).str.lower().isin(["failed", "error", "skipped", "pending", "running"])
    if "error" in df.columns:
        keep &= df["error"].isna() | (df["error"].astype(str).isin(["", "None", "nan"]))
    return df[keep]


def _fmt_pp(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.2f} pp"


def _fmt_ci(lo: float, hi: float) -> str:
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return ""
    return f" [95% CI {lo:+.2f}, {hi:+.2f}]"


def _f(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key, np.nan)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# ----------------------------------------------------------------------------- Fig. 1


def _pairs_of(value: Any) -> list[tuple[int, int]]:
    if hasattr(value, "pairs"):
        value = value.pairs()
    elif hasattr(value, "neurons") and hasattr(value.neurons, "pairs"):
        value = value.neurons.pairs()
    try:
        return [(int(a), int(b)) for a, b in value]
    except (TypeError, ValueError):
        raise EmocircuitsError(
            f"Cannot read neurons from {type(value).__name__}; pass NeuronSets or [[layer, index], ...] lists."
        ) from None


def neuron_sets_table(data: Any) -> pd.DataFrame:
    """Per-layer counts ``(emotion, layer, count)`` from a selection ``{emotion: NeuronSet}``, the
    ``neurons.json`` document (``{"neurons": {emotion: [[layer, index], ...]}}``) or a
    ``layer_counts`` table (returned unchanged)."""
    if isinstance(data, pd.DataFrame):
        return _need(data, ["emotion", "layer", "count"], "layer_distribution")[["emotion", "layer", "count"]]
    if isinstance(data, Mapping) and "neurons" in data and isinstance(data["neurons"], Mapping):
        data = data["neurons"]
    if hasattr(data, "sets") and isinstance(data.sets, Mapping):
        data = data.sets
    if not isinstance(data, Mapping) and hasattr(data, "items"):
        data = dict(data.items())
    if not isinstance(data, Mapping) or not data:
        raise EmocircuitsError(
            "layer_distribution needs {emotion: NeuronSet}, a neurons.json document or a layer_counts table."
        )
    rows = []
    for emotion, value in data.items():
        counts: dict[int, int] = {}
        for layer, _ in _pairs_of(value):
            counts[layer] = counts.get(layer, 0) + 1
        rows += [{"emotion": str(emotion), "layer": layer, "count": n} for layer, n in sorted(counts.items())]
        if not counts:
            rows.append({"emotion": str(emotion), "layer": 0, "count": 0})
    return pd.DataFrame(rows, columns=["emotion", "layer", "count"])


def layer_distribution(data: Any, *, n_layers: int | None = None, d_mlp: int | None = None,
                       colors: Colors = None, title: str = "Emotion neurons per layer") -> go.Figure:
    """Fig. 1: how many of each emotion's neurons sit in each layer, one line per emotion.

    ``data``: a selection ``{emotion: NeuronSet}``, the ``neurons.json`` document, or the
    ``layer_counts`` table (emotion, layer, count). ``n_layers`` fills empty layers with 0 (default:
    up to the highest layer seen); ``d_mlp`` adds each count's share of the layer's neurons to the hover.
    """
    table = neuron_sets_table(data)
    emotions = order_labels(table["emotion"])
    cmap = resolve_colors(emotions, colors)
    top = int(table["layer"].max()) + 1 if len(table) else 0
    n = max(n_layers or 0, top)
    fig = go.Figure()
    totals = {}
    for emotion in emotions:
        sub = table[table["emotion"] == emotion].groupby("layer")["count"].sum()
        y = np.array([int(sub.get(layer, 0)) for layer in range(n)])
        total = int(y.sum())
        totals[emotion] = total
        share_set = y / total if total else np.zeros_like(y, dtype=float)
        share_layer = y / d_mlp if d_mlp else np.full_like(y, np.nan, dtype=float)
        custom = np.stack([share_set, share_layer, np.full_like(y, total)], axis=1)
        hover = (f"<b>{emotion}</b><br>layer %{{x}}: %{{y:d}} neurons<br>"
                 "%{customdata[0]:.2%} of this emotion's %{customdata[2]:d} neurons")
        if d_mlp:
            hover += f"<br>%{{customdata[1]:.3%}} of the layer's {d_mlp} neurons"
        fig.add_trace(go.Scatter(
            x=list(range(n)), y=y, name=f"{emotion} ({total})", mode="lines+markers",
            line={"color": cmap[emotion], "width": 2.5}, marker={"size": 6, "color": cmap[emotion]},
            customdata=custom, hovertemplate=hover + "<extra></extra>",
        ))
    fig.update_xaxes(title_text="Layer (block index, 0 = first)", dtick=1 if n <= 32 else None,
                     range=[-0.5, n - 0.5])
    fig.update_yaxes(title_text="Emotion neurons in layer (count)", rangemode="tozero")
    sub = " · ".join(f"{e} {totals[e]:,}" for e in emotions)
    _style(fig, title, f"Total neurons per emotion: {sub}", height=440)
    fig.update_layout(legend_title_text="Emotion (total)", hovermode="closest")
    return fig


# ----------------------------------------------------------------------------- Fig. 14


_OVERLAP_METRICS = {"jaccard": "Jaccard overlap |A∩B| / |A∪B|", "overlap_min": "Overlap |A∩B| / min(|A|, |B|)"}


def overlap_table(sets: Mapping[str, Any]) -> pd.DataFrame:
    """The ``overlap`` schema (a, b, jaccard, overlap_min, n_a, n_b, n_shared) from ``{emotion: NeuronSet}``."""
    pairs = {str(k): set(_pairs_of(v)) for k, v in sets.items()}
    rows = []
    for a in pairs:
        for b in pairs:
            sa, sb = pairs[a], pairs[b]
            shared, union = len(sa & sb), len(sa | sb)
            small = min(len(sa), len(sb))
            rows.append({"a": a, "b": b, "jaccard": shared / union if union else 0.0,
                         "overlap_min": shared / small if small else 0.0,
                         "n_a": len(sa), "n_b": len(sb), "n_shared": shared})
    return pd.DataFrame(rows)


def overlap_heatmap(data: Any, *, metric: str = "jaccard", colors: Colors = None,
                    title: str = "Overlap between emotion neuron sets") -> go.Figure:
    """Fig. 14: overlap of every pair of emotion neuron sets, in percent.

    ``data``: the ``overlap`` table (a, b, jaccard, overlap_min, n_a, n_b, n_shared; one or both
    orders of each pair) or a selection ``{emotion: NeuronSet}``. ``metric``: ``jaccard`` or
    ``overlap_min``.
    """
    if metric not in _OVERLAP_METRICS:
        raise EmocircuitsError(f"Unknown overlap metric {metric!r}; use one of {', '.join(_OVERLAP_METRICS)}.")
    df = data if isinstance(data, pd.DataFrame) else overlap_table(
        data["neurons"] if isinstance(data, Mapping) and isinstance(data.get("neurons"), Mapping) else data)
    _need(df, ["a", "b", metric], "overlap_heatmap")
    labels = order_labels(list(df["a"]) + list(df["b"]))
    cmap = resolve_colors(labels, colors)
    k = len(labels)
    z = np.full((k, k), np.nan)
    shared = np.full((k, k), np.nan)
    na = np.full((k, k), np.nan)
    nb = np.full((k, k), np.nan)
    pos = {lab: i for i, lab in enumerate(labels)}
    for row in df.to_dict("records"):
        i, j = pos[str(row["a"])], pos[str(row["b"])]
        for (r, c, first, second) in ((i, j, "n_a", "n_b"), (j, i, "n_b", "n_a")):
            if not np.isnan(z[r, c]) and (r, c) != (i, j):
                continue  # an explicit row for the mirrored pair wins
            z[r, c] = 100.0 * float(row[metric])
            shared[r, c] = _f(row, "n_shared")
            na[r, c], nb[r, c] = _f(row, first), _f(row, second)
    for i in range(k):
        if np.isnan(z[i, i]):
            z[i, i] = 100.0
    custom = np.stack([shared, na, nb], axis=-1)
    ticks = [_colored_label(lab, cmap) for lab in labels]
    fig = go.Figure(go.Heatmap(
        z=z, x=labels, y=labels, zmin=0, zmax=100, colorscale="Blues",
        text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.0f}%")(z), texttemplate="%{text}",
        customdata=custom,
        colorbar={"title": {"text": "Overlap (%)", "side": "right"}, "ticksuffix": "%"},
        hovertemplate=("reference <b>%{y}</b> vs comparison <b>%{x}</b><br>"
                       f"{_OVERLAP_METRICS[metric]}: %{{z:.2f}}%<br>"
                       "shared neurons: %{customdata[0]:.0f}<br>|%{y}|: %{customdata[1]:.0f} · "
                       "|%{x}|: %{customdata[2]:.0f}<extra></extra>"),
    ))
    fig.update_xaxes(title_text="Comparison emotion (neuron set)", tickvals=labels, ticktext=ticks, side="bottom")
    fig.update_yaxes(title_text="Reference emotion (neuron set)", tickvals=labels, ticktext=ticks,
                     autorange="reversed", scaleanchor="x")
    _style(fig, title, f"{_OVERLAP_METRICS[metric]}, in percent of neurons", height=480)
    return fig


# ----------------------------------------------------------------------------- Fig. 2


_EFFECT_COLUMNS = ["masked_emotion", "true_label", "acc_normal", "acc_masked"]


def masking_accuracy(effects: pd.DataFrame, *, colors: Colors = None, cols: int = 3,
                     title: str = "Classification accuracy, normal vs masked") -> go.Figure:
    """Fig. 2: per true label, accuracy with each emotion's neurons masked, beside random-neuron controls.

    ``effects``: the ``mask_effects`` table (masked_emotion, true_label, n, acc_normal, acc_masked,
    acc_control, delta_masked, delta_control, diff, ci_low, ci_high). One panel per true label; in it,
    a bar per masked emotion (its colour; outlined when it is the panel's own emotion), a grey bar for
    the size-matched random-neuron control, and a dashed line at the unmasked accuracy. Error bars are
    the 95% CI of (masked − control), drawn around the masked bar.
    """
    df = _need(effects, _EFFECT_COLUMNS, "masking_accuracy").copy()
    df = df[df["true_label"].astype(str) != POOLED]
    if df.empty:
        raise EmocircuitsError("masking_accuracy needs rows per true label; the table only has pooled rows.")
    scale = _pct_scale(pd.concat([df["acc_normal"], df["acc_masked"]]))
    masked = order_labels(df["masked_emotion"])
    truths = order_labels(df["true_label"])
    cmap = resolve_colors(masked + truths, colors)
    cols = max(1, min(cols, len(truths)))
    rows = math.ceil(len(truths) / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.04,
                        vertical_spacing=0.16 if rows > 1 else 0.1,
                        subplot_titles=[f"true label: {_colored_label(t, cmap)}" for t in truths])
    has_control = "acc_control" in df.columns and df["acc_control"].notna().any()
    has_ci = {"ci_low", "ci_high"} <= set(df.columns) and df["ci_low"].notna().any()
    k_controls = int(df["k_controls"].max()) if "k_controls" in df.columns and df["k_controls"].notna().any() else 0
    control_name = (f"control (mean of {k_controls} random sets, same layers and size)" if k_controls > 1
                    else "control (random neurons, same layers and size)")
    for k, truth in enumerate(truths):
        r, c = k // cols + 1, k % cols + 1
        sub = df[df["true_label"] == truth].set_index("masked_emotion").reindex(masked)
        normal = float(sub["acc_normal"].mean()) * scale
        acc_m = sub["acc_masked"].astype(float) * scale
        acc_c = sub["acc_control"].astype(float) * scale if has_control else None
        diff = (sub["diff"].astype(float) * scale if "diff" in sub.columns
                else (acc_m - acc_c if acc_c is not None else acc_m * np.nan))
        n = sub["n"] if "n" in sub.columns else pd.Series(np.nan, index=sub.index)
        hover = []
        for e in masked:
            lo = _f(sub.loc[e], "ci_low") * scale if has_ci else float("nan")
            hi = _f(sub.loc[e], "ci_high") * scale if has_ci else float("nan")
            text = (f"true label <b>{truth}</b> (n={_int(n.get(e))})<br>masked: <b>{e}</b> neurons<br>"
                    f"accuracy masked: {acc_m[e]:.2f}%<br>accuracy normal: {normal:.2f}%<br>"
                    f"Δ masked: {_fmt_pp(acc_m[e] - normal)}")
            if "n_neurons" in sub.columns:
                text += f"<br>neurons masked: {_int(sub.loc[e, 'n_neurons'])}"
            if acc_c is not None:
                text += f"<br>accuracy control: {acc_c[e]:.2f}% (Δ {_fmt_pp(acc_c[e] - normal)})"
                text += f"<br>masked − control: {_fmt_pp(diff[e])}{_fmt_ci(lo, hi)}"
                if "rank_p" in sub.columns and np.isfinite(_f(sub.loc[e], "rank_p")):
                    text += f"<br>rank p among the controls: {_f(sub.loc[e], 'rank_p'):.2f}"
            hover.append(text)
        error = None
        if has_ci:
            lo = sub["ci_low"].astype(float) * scale
            hi = sub["ci_high"].astype(float) * scale
            error = {"type": "data", "array": (hi - diff).clip(lower=0).tolist(),
                     "arrayminus": (diff - lo).clip(lower=0).tolist(), "color": "#333", "thickness": 1.2, "width": 3}
        fig.add_trace(go.Bar(
            x=masked, y=acc_m, name="masked (bar colour = masked emotion)", legendgroup="masked",
            showlegend=k == 0, marker={"color": [cmap[e] for e in masked],
                                       "line": {"color": ["#111" if e == truth else "rgba(0,0,0,0)" for e in masked],
                                                "width": 2.5}},
            error_y=error, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>", offsetgroup="masked",
        ), row=r, col=c)
        if acc_c is not None:
            fig.add_trace(go.Bar(
                x=masked, y=acc_c, name=control_name, legendgroup="control",
                showlegend=k == 0, marker={"color": CONTROL_COLOR}, offsetgroup="control",
                hovertext=hover, hovertemplate="%{hovertext}<extra></extra>",
            ), row=r, col=c)
        fig.add_trace(go.Scatter(
            x=masked, y=[normal] * len(masked), mode="lines", name="normal (nothing masked)", legendgroup="normal",
            showlegend=k == 0, line={"color": NORMAL_COLOR, "dash": "dash", "width": 2},
            hovertemplate=f"true label <b>{truth}</b><br>accuracy normal: {normal:.2f}%<extra></extra>",
        ), row=r, col=c)
    fig.update_yaxes(range=[0, 105], ticksuffix="%")
    for r in range(1, rows + 1):
        fig.update_yaxes(title_text="Accuracy (%)", row=r, col=1)
    for c in range(1, cols + 1):
        fig.update_xaxes(title_text="Masked neuron set (emotion)", row=rows, col=c)
    fig.update_xaxes(tickangle=-35)
    _style(fig, title, "Error bars: 95% CI of masked − control accuracy, around the masked bar; "
           "outlined bar = the panel's own emotion", height=330 * rows + 140)
    fig.update_layout(barmode="group", bargap=0.25, bargroupgap=0.05,
                      legend={"orientation": "h", "y": -0.12 if rows > 1 else -0.3, "x": 0})
    return fig


def _int(value: Any) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


def accuracy_change_heatmap(effects: pd.DataFrame, *, value: str = "delta_masked", colors: Colors = None,
                            title: str = "Accuracy change when an emotion's neurons are masked") -> go.Figure:
    """Every (masked emotion × true label) accuracy change at a glance, in percentage points.

    ``value``: ``delta_masked`` (masked − normal) or ``diff`` (masked − control). With ``diff`` and the
    ``ci_low``/``ci_high`` columns, a cell whose 95% CI excludes 0 is starred and the hover shows the CI.
    """
    if value not in ("delta_masked", "diff"):
        raise EmocircuitsError(f"accuracy_change_heatmap: value {value!r} is not allowed; use 'delta_masked' "
                               "(masked − normal) or 'diff' (masked − control).")
    df = _need(effects, ["masked_emotion", "true_label", value], "accuracy_change_heatmap")
    scale = _pct_scale(df[value])
    masked = order_labels(df["masked_emotion"])
    labels = [t for t in order_labels(df["true_label"].astype(str)) if t != POOLED]
    cmap = resolve_colors(masked + labels, colors)
    truths = labels + ([POOLED] if (df["true_label"].astype(str) == POOLED).any() else [])
    df = df.assign(true_label=df["true_label"].astype(str))

    def grid(column: str) -> np.ndarray:
        table = df.pivot_table(index="masked_emotion", columns="true_label", values=column, aggfunc="mean")
        return table.reindex(index=masked, columns=truths).to_numpy(dtype=float) * scale

    z = grid(value)
    with_ci = value == "diff" and {"ci_low", "ci_high"} <= set(df.columns)
    low, high = (grid("ci_low"), grid("ci_high")) if with_ci else (np.full_like(z, np.nan), np.full_like(z, np.nan))
    star = (low > 0) | (high < 0)
    bound = max(1.0, float(np.nanmax(np.abs(z)))) if np.isfinite(z).any() else 1.0
    what = "masked − normal" if value == "delta_masked" else "masked − control"
    text = np.vectorize(lambda v, s: "" if np.isnan(v) else f"{v:+.1f}" + ("*" if s else ""))(z, star)
    ci = np.vectorize(lambda a, b: "" if np.isnan(a) else f"<br>95% CI [{a:+.1f}, {b:+.1f}] pp")(low, high)
    fig = go.Figure(go.Heatmap(
        z=z, x=truths, y=masked, zmid=0, zmin=-bound, zmax=bound, colorscale="RdBu",
        text=text, customdata=ci, texttemplate="%{text}",
        colorbar={"title": {"text": "Δ accuracy (pp)", "side": "right"}},
        hovertemplate=(f"masked <b>%{{y}}</b> neurons, true label <b>%{{x}}</b><br>{what}: "
                       "%{z:+.2f} pp%{customdata}<extra></extra>"),
    ))
    fig.update_xaxes(title_text="True label of the test texts", tickvals=truths,
                     ticktext=[_colored_label(t, cmap) if t != POOLED else "<i>all labels</i>" for t in truths])
    fig.update_yaxes(title_text="Masked neuron set (emotion)", tickvals=masked,
                     ticktext=[_colored_label(m, cmap) for m in masked], autorange="reversed")
    note = "; * = 95% CI excludes 0" if with_ci else ""
    _style(fig, title, f"Accuracy {what}, in percentage points (blue = higher, red = lower){note}", height=460)
    return fig


# ----------------------------------------------------------------------------- Figs. 3 and 4


SCOPES = ("own", "all")


def _scoped(results: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The RQ3 results schema (``own_<metric>`` / ``all_<metric>`` columns) read for ``scope``: its columns
    lose the prefix. A long table of plain metric columns (one row per true label) is used as it is."""
    if scope not in SCOPES:
        raise EmocircuitsError(f"Unknown scope {scope!r}; use 'own' (the masked emotion's texts) or 'all'.")
    if not isinstance(results, pd.DataFrame):
        return results
    prefix = f"{scope}_"
    return results.rename(columns={c: c[len(prefix):] for c in results.columns if c.startswith(prefix)})


def _sweep_rows(results: pd.DataFrame, what: str, need: Sequence[str], scope: str = "own") -> pd.DataFrame:
    df = _ok_rows(_need(_scoped(results, scope), need, what))
    if df.empty:
        raise EmocircuitsError(f"{what}: every row of the sweep failed or was skipped; there is nothing to plot.")
    return df


def _spans_of(df: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """``{layers name: (first, last)}`` from the ``layer_first`` / ``layer_last`` columns, when present."""
    if not {"layer_first", "layer_last"} <= set(df.columns):
        return {}
    rows = df.dropna(subset=["layer_first", "layer_last"]).drop_duplicates("layers")
    return {str(r.layers): (int(r.layer_first), int(r.layer_last)) for r in rows.itertuples()}


def _own_label(df: pd.DataFrame) -> pd.DataFrame:
    if "true_label" in df.columns:
        own = df[df["true_label"] == df["emotion"]]
        return own if not own.empty else df
    return df


def _mean_by(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Average the numeric columns over seeds (and anything else not in ``keys``)."""
    metrics = [c for c in df.columns if c not in keys and c not in ("seed", "cell_index")
               and pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]
    out = df.groupby(keys, dropna=False)[metrics].mean().reset_index()
    if "seed" in df.columns:
        out["n_seeds"] = df.groupby(keys, dropna=False)["seed"].nunique().to_numpy()
    if "delta_masked" not in out.columns:
        out["delta_masked"] = out["acc_masked"] - out["acc_normal"]
    if "delta_control" not in out.columns and "acc_control" in out.columns:
        out["delta_control"] = out["acc_control"] - out["acc_normal"]
    return out


def _pick(df: pd.DataFrame, column: str, value: Any, default: Any) -> tuple[pd.DataFrame, Any]:
    """Keep rows where ``column == value`` (``value`` None: ``default`` if present, else the most common)."""
    if column not in df.columns or df[column].nunique(dropna=False) <= 1:
        return df, (df[column].iloc[0] if column in df.columns and len(df) else value)
    if value is None:
        values = list(df[column].dropna().unique())
        value = default if default in values else df[column].mode().iloc[0]
    sub = df[df[column] == value]
    if sub.empty:
        raise EmocircuitsError(f"No sweep rows have {column}={value!r}; present values are "
                               f"{sorted(map(str, df[column].dropna().unique()))}.")
    return sub, value


def _ratio_pct(ratio: pd.Series) -> pd.Series:
    r = ratio.astype(float)
    return r * 100.0 if r.max() <= 1.0 else r


def ratio_sweep(results: pd.DataFrame, *, layers: str | None = None, ratio_mode: str | None = None,
                scope: str = "own", colors: Colors = None, cols: int = 3,
                title: str = "Accuracy change vs masking ratio") -> go.Figure:
    """Fig. 3: accuracy change (masked − normal, pp) as the masked share of an emotion's neurons grows.

    ``results``: the sweep's ``results`` table (emotion, ratio, acc_* / delta_* columns; optional
    true_label, layers, ratio_mode, seed, ci_low, ci_high). With a ``true_label`` column there is one
    panel per masked emotion and one line per true label (the masked emotion's own line is thicker),
    as in the paper; otherwise one line per emotion. The dashed grey line is the random-neuron control
    of the own label. Seeds are averaged. ``layers`` / ``ratio_mode`` choose the slice when the sweep
    varied them too (default: ``all`` and the most common mode). The RQ3 results schema (``own_*`` /
    ``all_*`` metric columns, written by the ``neuron_masking`` sweep and ``emocircuits.methods.neurons.sweep``)
    is read through ``scope``: ``own`` (the masked emotion's texts) or ``all`` (every text).
    """
    df = _sweep_rows(results, "ratio_sweep", ["emotion", "ratio", "acc_normal", "acc_masked"], scope)
    df, layers = _pick(df, "layers", layers, "all")
    df, ratio_mode = _pick(df, "ratio_mode", ratio_mode, "reselect")
    if df["ratio"].nunique() < 2:
        raise EmocircuitsError("ratio_sweep needs at least two masking ratios in the results; the sweep has one.")
    per_label = "true_label" in df.columns
    keys = ["emotion", "ratio"] + (["true_label"] if per_label else [])
    agg = _mean_by(df, keys)
    agg["ratio_pct"] = _ratio_pct(agg["ratio"])
    scale = _pct_scale(pd.concat([agg["acc_normal"], agg["acc_masked"]]))
    emotions = order_labels(agg["emotion"])
    labels = order_labels(list(agg["emotion"]) + (list(agg["true_label"]) if per_label else []))
    cmap = resolve_colors(labels, colors)
    slice_note = " · ".join(x for x in (f"layers: {layers}" if layers is not None else "",
                                        f"ratio mode: {ratio_mode}" if ratio_mode is not None else "") if x)
    if per_label:
        cols = max(1, min(cols, len(emotions)))
        rows = math.ceil(len(emotions) / cols)
        fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.04,
                            vertical_spacing=0.16 if rows > 1 else 0.1,
                            subplot_titles=[f"masking {_colored_label(e, cmap)} neurons" for e in emotions])
        truths = order_labels(agg["true_label"])
        for k, emotion in enumerate(emotions):
            r, c = k // cols + 1, k % cols + 1
            sub = agg[agg["emotion"] == emotion]
            for truth in truths:
                line = sub[sub["true_label"] == truth].sort_values("ratio_pct")
                if line.empty:
                    continue
                own = truth == emotion
                fig.add_trace(_sweep_line(line, f"{truth}", cmap[truth], scale, own=own, legend=k == 0,
                                          group=truth, masked=emotion, truth=truth), row=r, col=c)
            own_rows = sub[sub["true_label"] == emotion].sort_values("ratio_pct")
            if "delta_control" in own_rows.columns and own_rows["delta_control"].notna().any():
                fig.add_trace(_control_line(own_rows, scale, legend=k == 0, masked=emotion), row=r, col=c)
        for r in range(1, rows + 1):
            fig.update_yaxes(title_text="Δ accuracy vs normal (pp)", row=r, col=1)
        for c in range(1, cols + 1):
            fig.update_xaxes(title_text="Masking ratio (% of neurons)", row=rows, col=c)
        height = 320 * rows + 150
        legend_title = "True label"
    else:
        fig = go.Figure()
        for emotion in emotions:
            line = agg[agg["emotion"] == emotion].sort_values("ratio_pct")
            fig.add_trace(_sweep_line(line, emotion, cmap[emotion], scale, own=True, legend=True,
                                      group=emotion, masked=emotion, truth=emotion))
            if "delta_control" in line.columns and line["delta_control"].notna().any():
                ctl = _control_line(line, scale, legend=emotion == emotions[0], masked=emotion)
                ctl.update(line={"color": tint(cmap[emotion], 0.35), "dash": "dot", "width": 1.8},
                           marker={"color": tint(cmap[emotion], 0.35)},
                           name="controls (random neurons; dotted, lighter shade)")
                fig.add_trace(ctl)
        fig.update_xaxes(title_text="Masking ratio (% of neurons)")
        fig.update_yaxes(title_text="Δ accuracy of the masked emotion vs normal (pp)")
        height = 460
        legend_title = "Masked emotion"
    fig.add_hline(y=0, line={"color": "#888", "width": 1})
    fig.update_xaxes(ticksuffix="%")
    _style(fig, title, "Accuracy masked − normal in percentage points; error bars: 95% CI of masked − control"
           + (f" · {slice_note}" if slice_note else ""), height=height)
    fig.update_layout(legend_title_text=legend_title, hovermode="closest")
    return fig


def _sweep_line(line: pd.DataFrame, name: str, color: str, scale: float, *, own: bool, legend: bool,
                group: str, masked: str, truth: str) -> go.Scatter:
    y = line["delta_masked"].astype(float) * scale
    error = None
    if {"ci_low", "ci_high", "diff"} <= set(line.columns) and line["ci_low"].notna().any() and own:
        d = line["diff"].astype(float) * scale
        error = {"type": "data", "array": (line["ci_high"] * scale - d).clip(lower=0).tolist(),
                 "arrayminus": (d - line["ci_low"] * scale).clip(lower=0).tolist(), "thickness": 1.2, "width": 3}
    custom = np.stack([
        line["acc_normal"].astype(float) * scale, line["acc_masked"].astype(float) * scale,
        (line["delta_control"].astype(float) * scale) if "delta_control" in line.columns else np.full(len(line), np.nan),
        (line["diff"].astype(float) * scale) if "diff" in line.columns else np.full(len(line), np.nan),
        (line["ci_low"].astype(float) * scale) if "ci_low" in line.columns else np.full(len(line), np.nan),
        (line["ci_high"].astype(float) * scale) if "ci_high" in line.columns else np.full(len(line), np.nan),
    ], axis=1)
    return go.Scatter(
        x=line["ratio_pct"], y=y, mode="lines+markers", name=name, legendgroup=group, showlegend=legend,
        line={"color": color, "width": 3.5 if own else 1.6}, marker={"size": 8 if own else 5, "color": color},
        opacity=1.0 if own else 0.75, error_y=error, customdata=custom,
        hovertemplate=(f"masking <b>{masked}</b> neurons, true label <b>{truth}</b><br>"
                       "ratio %{x:.2f}%<br>accuracy %{customdata[0]:.2f}% → %{customdata[1]:.2f}% "
                       "(Δ %{y:+.2f} pp)<br>control Δ %{customdata[2]:+.2f} pp<br>masked − control "
                       "%{customdata[3]:+.2f} pp [95% CI %{customdata[4]:+.2f}, %{customdata[5]:+.2f}]<extra></extra>"),
    )


def _control_line(line: pd.DataFrame, scale: float, *, legend: bool, masked: str) -> go.Scatter:
    return go.Scatter(
        x=line["ratio_pct"], y=line["delta_control"].astype(float) * scale, mode="lines+markers",
        name="control (own label, random neurons)", legendgroup="control", showlegend=legend,
        line={"color": CONTROL_COLOR, "dash": "dash", "width": 2}, marker={"size": 5, "color": CONTROL_COLOR},
        hovertemplate=(f"control for <b>{masked}</b> (random neurons, same size)<br>ratio %{{x:.2f}}%<br>"
                       "Δ accuracy %{y:+.2f} pp<extra></extra>"),
    )


def layer_range_sweep(results: pd.DataFrame, *, ratio: float | None = None, ratio_mode: str | None = None,
                      spans: Mapping[str, Sequence[int]] | None = None, scope: str = "own", colors: Colors = None,
                      title: str = "Accuracy change by masked layer range") -> go.Figure:
    """Fig. 4: accuracy change of each emotion (pp) when its neurons are masked only in the bottom,
    middle or top third of the layers, or in all layers.

    ``results``: the sweep's ``results`` table (emotion, layers, acc_* / delta_* columns; optional
    true_label — only each emotion's own label is shown —, ratio, ratio_mode, seed, ci_low, ci_high).
    Bars: masked − normal; grey diamonds: the random-neuron control; error bars: 95% CI of
    masked − control around the bar. Seeds are averaged; ``scope`` as in :func:`ratio_sweep`.
    ``spans`` (``{layers name: (first, last)}``; default: the table's ``layer_first`` / ``layer_last``
    columns) order the bars by layer span and label each with its layers; without spans the bars keep
    the table's order.
    """
    df = _sweep_rows(results, "layer_range_sweep", ["emotion", "layers", "acc_normal", "acc_masked"], scope)
    if "ratio" in df.columns and df["ratio"].nunique() > 1:
        df, ratio = _pick(df, "ratio", ratio, df["ratio"].min())
    df, ratio_mode = _pick(df, "ratio_mode", ratio_mode, "reselect")
    df = _own_label(df)
    agg = _mean_by(df, ["emotion", "layers"])
    order = list(dict.fromkeys(str(x) for x in df["layers"]))
    known = {str(k): (int(v[0]), int(v[-1])) for k, v in (spans or _spans_of(df)).items() if len(v)}
    order.sort(key=lambda x: (x not in known, *((known[x][1] - known[x][0], known[x][0]) if x in known else ())))
    ticks = [f"{x}<br><sup>layers {known[x][0]}–{known[x][1]}</sup>" if x in known else x for x in order]
    scale = _pct_scale(pd.concat([agg["acc_normal"], agg["acc_masked"]]))
    emotions = order_labels(agg["emotion"])
    cmap = resolve_colors(emotions, colors)
    fig = go.Figure()
    for emotion in emotions:
        sub = agg[agg["emotion"] == emotion].set_index("layers").reindex(order)
        y = sub["delta_masked"].astype(float) * scale
        hover = []
        for name in order:
            row = sub.loc[name]
            text = (f"mask <b>{emotion}</b> neurons in <b>{name}</b> layers<br>"
                    f"{emotion} accuracy: {_f(row, 'acc_normal') * scale:.2f}% → {_f(row, 'acc_masked') * scale:.2f}%"
                    f" (Δ {_fmt_pp(y[name])})")
            if "delta_control" in sub.columns:
                text += f"<br>control Δ {_fmt_pp(_f(row, 'delta_control') * scale)}"
            if "diff" in sub.columns:
                text += (f"<br>masked − control {_fmt_pp(_f(row, 'diff') * scale)}"
                         f"{_fmt_ci(_f(row, 'ci_low') * scale, _f(row, 'ci_high') * scale)}")
            for col in ("n_neurons", "n_masked"):
                if col in sub.columns:
                    text += f"<br>neurons masked: {_int(row.get(col))}"
                    break
            hover.append(text)
        error = None
        if {"ci_low", "ci_high", "diff"} <= set(sub.columns) and sub["ci_low"].notna().any():
            d = sub["diff"].astype(float) * scale
            error = {"type": "data", "array": (sub["ci_high"] * scale - d).clip(lower=0).tolist(),
                     "arrayminus": (d - sub["ci_low"] * scale).clip(lower=0).tolist(), "color": "#333",
                     "thickness": 1.2, "width": 3}
        fig.add_trace(go.Bar(x=order, y=y, name=emotion, marker={"color": cmap[emotion]}, offsetgroup=emotion,
                             legendgroup=emotion, error_y=error, hovertext=hover,
                             hovertemplate="%{hovertext}<extra></extra>"))
        if "delta_control" in sub.columns and sub["delta_control"].notna().any():
            fig.add_trace(go.Scatter(
                x=order, y=sub["delta_control"].astype(float) * scale, mode="markers", offsetgroup=emotion,
                name="control (random neurons)", legendgroup="control", showlegend=emotion == emotions[0],
                marker={"symbol": "diamond", "size": 8, "color": NORMAL_COLOR, "line": {"color": "white", "width": 1}},
                hovertemplate=(f"control for <b>{emotion}</b> in %{{x}} layers<br>"
                               "Δ accuracy %{y:+.2f} pp<extra></extra>")))
    fig.add_hline(y=0, line={"color": "#888", "width": 1})
    fig.update_xaxes(title_text="Masked layer range", tickvals=order, ticktext=ticks, categoryorder="array",
                     categoryarray=order)
    fig.update_yaxes(title_text="Δ accuracy of the masked emotion vs normal (pp)")
    note = " · ".join(x for x in (f"ratio {ratio:g}" if isinstance(ratio, int | float) else "",
                                  f"ratio mode: {ratio_mode}" if ratio_mode is not None else "") if x)
    _style(fig, title, "Bars: masked − normal; diamonds: random-neuron control; error bars: 95% CI of "
           "masked − control" + (f" · {note}" if note else ""), height=470)
    fig.update_layout(barmode="group", scattermode="group", legend_title_text="Masked emotion")
    return fig


# ----------------------------------------------------------------------------- Fig. 15


def misclassification_heatmap(errors: pd.DataFrame, *, within: str = "own", colors: Colors = None,
                              title: str = "Where the errors go after masking") -> go.Figure:
    """Fig. 15: among the failed cases under masking, the share predicted as each wrong label.

    ``errors``: the ``mask_errors`` table (masked_emotion, true_label, predicted, count). Rows: the
    masked emotion; columns: the (wrong) predicted label; each row sums to 100%. ``within="own"``
    counts only texts whose true label is the masked emotion (as in the paper); ``"all"`` pools the
    failures of every true label under that mask.
    """
    if within not in ("own", "all"):
        raise EmocircuitsError(f"Unknown within={within!r}; use 'own' or 'all'.")
    df = _need(errors, ["masked_emotion", "true_label", "predicted", "count"], "misclassification_heatmap")
    df = df[df["predicted"].astype(str) != df["true_label"].astype(str)]
    if within == "own":
        df = df[df["masked_emotion"] == df["true_label"]]
    masked = order_labels(errors["masked_emotion"])
    predicted = order_labels(errors["predicted"].astype(str))
    cmap = resolve_colors(masked + predicted, colors)
    grid = (df.assign(predicted=df["predicted"].astype(str))
            .pivot_table(index="masked_emotion", columns="predicted", values="count", aggfunc="sum", fill_value=0)
            .reindex(index=masked, columns=predicted, fill_value=0))
    counts = grid.to_numpy(dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(totals > 0, 100.0 * counts / totals, np.nan)
    custom = np.stack([counts, np.broadcast_to(totals, counts.shape)], axis=-1)
    fig = go.Figure(go.Heatmap(
        z=share, x=predicted, y=masked, zmin=0, zmax=100, colorscale="OrRd",
        text=np.vectorize(lambda v: "" if np.isnan(v) else f"{v:.0f}%")(share), texttemplate="%{text}",
        customdata=custom, colorbar={"title": {"text": "Share of failures (%)", "side": "right"}, "ticksuffix": "%"},
        hovertemplate=("masked <b>%{y}</b> neurons → predicted <b>%{x}</b><br>%{z:.2f}% of failures "
                       "(%{customdata[0]:.0f} of %{customdata[1]:.0f})<extra></extra>"),
    ))
    fig.update_xaxes(title_text="Wrongly predicted label", tickvals=predicted,
                     ticktext=[_colored_label(p, cmap) for p in predicted])
    fig.update_yaxes(title_text="Masked emotion", tickvals=masked, ticktext=[_colored_label(m, cmap) for m in masked],
                     autorange="reversed")
    what = "texts of the masked emotion" if within == "own" else "texts of every true label"
    _style(fig, title, f"Misclassified {what} under masking; each row sums to 100% of its failures", height=460)
    return fig
