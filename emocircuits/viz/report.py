"""One self-contained HTML report from one or more run directories.

``write_report(["runs/demo", "runs/sweep"], "report.html")`` reads each run's manifest and the files
it wrote, draws every figure those files support, and writes a single HTML file that opens offline:
plotly.js and CircuitsVis' JavaScript are inlined once each, and a Content-Security-Policy forbids
every network request. The manifests' summary is at the top.

Files and the figures they give (a figure whose input is missing or unusable is listed under
"not shown" with the reason, never silently dropped):

=========================  ==========================================================
file                       figures
=========================  ==========================================================
layer_counts.parquet       emotion neurons per layer (else from neurons.json)
overlap.parquet            overlap heatmap (else computed from neurons.json)
mask_effects.parquet       accuracy normal vs masked with controls; Δ accuracy grid
mask_errors.parquet        misclassification heatmap
results.parquet            ratio sweep and layer-range sweep (when the sweep varied them)
neuron_summary.parquet     table of the most selective neurons
token_views.json           CircuitsVis token views (``emocircuits.methods.tokenviews``)
accuracy.parquet …         circuits: judged accuracy, direction cosines, valence consistency, head and
                           neuron scores, dose-response, sublayer influence, the circuit view, the steering
                           comparison and example replies (:data:`FIGURE_RULES`)
probes.parquet …           inference: probes, knockout, patching, attribution, promotion, appraisal Sankey
agreement.parquet …        triangulate: the generated reading with the agreement table, layer profiles,
                           masking effects of each method's set (:mod:`emocircuits.viz.triangulate`)
tour.json                  the demo (``emocircuits.jobs.demo``): one section per paper, each with its reading,
                           headline numbers and the figures of the run directories it lists
=========================  ==========================================================
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from tqdm.auto import tqdm

import emocircuits.viz.circuit_view as CV
import emocircuits.viz.circuits as C
import emocircuits.viz.figures as F
import emocircuits.viz.inference as I
import emocircuits.viz.triangulate as TR
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.io import atomic_path
from emocircuits.runs.circuit_files import read_circuits
from emocircuits.runs.rundir import MANIFEST, read_manifest
from emocircuits.viz.colors import color_map
from emocircuits.viz.tokens import TokenView, circuitsvis_js

#: Class of the wrapper around each plotly figure (plotly itself adds ``js-plotly-plot`` to the graph div).
FIGURE_CLASS = "ec-figure"
TOKEN_VIEWS_FILE = "token_views.json"
TOUR_FILE = "tour.json"

_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True,
                  "toImageButtonOptions": {"format": "png", "scale": 2}}


@dataclass
class Item:
    """One thing in a report section: a plotly figure, a token view, or a ready HTML block."""

    kind: str  # "figure" | "token_view" | "html"
    title: str
    value: Any
    caption: str = ""


@dataclass
class Section:
    """A titled part of a run's report (the demo has one per paper): a reading, headline lines, and the
    run's ``items[start:end]``."""

    key: str
    title: str
    reading: str
    headlines: list[str]
    start: int
    end: int


@dataclass
class RunReport:
    """What the report shows for one run directory."""

    path: Path
    manifest: dict[str, Any]
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (figure, reason)
    sections: list[Section] = field(default_factory=list)  # empty: the items form one list

    @property
    def n_figures(self) -> int:
        return sum(i.kind == "figure" for i in self.items)

    @property
    def n_token_views(self) -> int:
        return sum(i.kind == "token_view" for i in self.items)


@dataclass
class Report:
    """A built report: the runs it covers, its HTML, and where it was written (if it was)."""

    runs: list[RunReport]
    html: str
    path: Path | None = None

    @property
    def n_figures(self) -> int:
        return sum(r.n_figures for r in self.runs)

    @property
    def n_token_views(self) -> int:
        return sum(r.n_token_views for r in self.runs)


# ----------------------------------------------------------------------------- reading runs


class _Files:
    """Lazy, cached access to a run directory's files."""

    def __init__(self, path: Path):
        self.path = path
        self._cache: dict[str, Any] = {}

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._cache:
            try:
                self._cache[name] = pd.read_parquet(self.path / name)
            except Exception as exc:  # noqa: BLE001 - any reader failure is a damaged file
                raise EmocircuitsError(f"{str(self.path / name)!r} cannot be read as Parquet ({type(exc).__name__}); "
                                       "the run directory is damaged.") from exc
        return self._cache[name]

    def json(self, name: str) -> Any:
        if name not in self._cache:
            try:
                self._cache[name] = json.loads((self.path / name).read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise EmocircuitsError(f"{str(self.path / name)!r} is not valid JSON (line {exc.lineno}); "
                                       "the run directory is damaged.") from exc
        return self._cache[name]


def _labels_in(files: _Files) -> set[str]:
    labels: set[str] = set()
    if files.has("neurons.json"):
        doc = files.json("neurons.json")
        if isinstance(doc, dict) and isinstance(doc.get("neurons"), dict):
            labels |= set(doc["neurons"])
    for name, cols in (("layer_counts.parquet", ["emotion"]), ("mask_effects.parquet", ["masked_emotion", "true_label"]),
                       ("mask_errors.parquet", ["masked_emotion", "true_label", "predicted"]),
                       ("results.parquet", ["emotion", "true_label"])):
        if files.has(name):
            df = files.table(name)
            for c in cols:
                if c in df.columns:
                    labels |= {str(x) for x in df[c].dropna().unique()}
    return labels - {F.POOLED}


def _tour_parts(files: _Files) -> list[tuple[dict[str, Any], list[_Files]]]:
    """The parts of a demo run (``tour.json``) with the run directories each lists (``"."``: the demo's own)."""
    doc = files.json(TOUR_FILE)
    parts = doc.get("parts") if isinstance(doc, dict) else None
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise EmocircuitsError(f"{str(files.path / TOUR_FILE)!r} has no list of parts; the run directory is damaged.")
    return [(p, [files if rel == "." else _Files(files.path / rel) for rel in p.get("runs", [])]) for p in parts]


def _tour_items(files: _Files, manifest: dict[str, Any], colors: dict[str, str]) -> RunReport:
    """A demo run: one :class:`Section` per part, holding the items of the run directories the part lists."""
    run = RunReport(files.path, manifest)
    for part, subs in _tour_parts(files):
        title = str(part.get("title", part.get("key", "")))
        start = len(run.items)
        for sub in subs:
            try:
                sub_manifest = manifest if sub is files else read_manifest(sub.path)
            except EmocircuitsError as exc:
                run.skipped.append((f"{title}: {sub.path.name}", str(exc)))
                continue
            got = _run_items(sub, sub_manifest, colors)
            run.items += got.items
            run.skipped += [(f"{title}: {t}", r) for t, r in got.skipped]
        run.sections.append(Section(str(part.get("key", len(run.sections))), title, str(part.get("reading", "")),
                                    [str(line) for line in part.get("headlines", [])], start, len(run.items)))
    return run


def _model_dims(manifest: dict[str, Any]) -> tuple[int | None, int | None]:
    model = manifest.get("model") or {}
    return model.get("n_layers"), model.get("d_mlp")


def _run_items(files: _Files, manifest: dict[str, Any], colors: dict[str, str]) -> RunReport:
    run = RunReport(files.path, manifest)
    n_layers, d_mlp = _model_dims(manifest)
    analysis = (manifest.get("sweep") or {}).get("analysis")  # None unless the run is a sweep

    def add(title: str, build: Callable[[], go.Figure | str], caption: str, needs: str) -> None:
        try:
            value = build()
        except EmocircuitsError as exc:
            run.skipped.append((title, f"{needs}: {exc}"))
            return
        run.items.append(Item("html" if isinstance(value, str) else "figure", title, value, caption))

    neurons_doc = files.json("neurons.json") if files.has("neurons.json") else None
    if files.has("layer_counts.parquet") or neurons_doc is not None:
        source = files.table("layer_counts.parquet") if files.has("layer_counts.parquet") else neurons_doc
        add("Layer distribution (Fig. 1)",
            lambda: F.layer_distribution(source, n_layers=n_layers, d_mlp=d_mlp, colors=colors),
            "How many of each emotion's selected neurons sit in each layer.", "layer_counts.parquet")
    if files.has("overlap.parquet") or neurons_doc is not None:
        source = files.table("overlap.parquet") if files.has("overlap.parquet") else neurons_doc
        add("Overlap between emotion sets (Fig. 14)", lambda: F.overlap_heatmap(source, colors=colors),
            "Jaccard overlap |A∩B| / |A∪B| of every pair of emotion neuron sets.", "overlap.parquet")
    if files.has("mask_effects.parquet"):
        effects = files.table("mask_effects.parquet")
        add("Accuracy under masking (Fig. 2)", lambda: F.masking_accuracy(effects, colors=colors),
            "Accuracy per true label with each emotion's neurons zeroed, against size-matched random neurons.",
            "mask_effects.parquet")
        controlled = "diff" in effects.columns and effects["diff"].notna().any()
        add("Accuracy change grid",
            lambda: F.accuracy_change_heatmap(effects, value="diff" if controlled else "delta_masked", colors=colors),
            "The same masking runs as one grid: masked minus the mean of the random controls, in percentage "
            "points; a star marks a 95% CI (examples and control sets resampled) that excludes 0."
            if controlled else "The same masking runs as one grid: masked minus normal, in percentage points "
            "(this run has no random controls).", "mask_effects.parquet")
    if files.has("mask_errors.parquet"):
        errors = files.table("mask_errors.parquet")
        add("Misclassifications under masking (Fig. 15)",
            lambda: F.misclassification_heatmap(errors, colors=colors),
            "Where the masked emotion's failed texts go.", "mask_errors.parquet")
    if files.has("results.parquet") and analysis in (None, "neuron_masking"):
        results = files.table("results.parquet")
        add("Masking-ratio sweep (Fig. 3)", lambda: F.ratio_sweep(results, colors=colors),
            "Accuracy change as a growing share of an emotion's neurons is masked.", "results.parquet")
        add("Layer-range sweep (Fig. 4)",
            lambda: F.layer_range_sweep(results, colors=colors),
            "Accuracy change when the neurons are masked only in one third of the layers.", "results.parquet")
    if files.has("neuron_summary.parquet"):
        try:
            run.items.append(Item("html", "Most selective neurons", _summary_table(files.table("neuron_summary.parquet")),
                                  "Lowest-entropy neurons across all emotions (rank 1 = most selective)."))
        except EmocircuitsError as exc:
            run.skipped.append(("Most selective neurons", f"neuron_summary.parquet: {exc}"))
    for rule in FIGURE_RULES:
        if rule.applies(files, manifest):
            add(rule.title, lambda rule=rule: rule.build(files), rule.caption, ", ".join(rule.needs))
    if files.has(TOKEN_VIEWS_FILE):
        records = files.json(TOKEN_VIEWS_FILE)
        records = records.get("views", []) if isinstance(records, dict) else records
        for record in records:
            view = TokenView.from_dict(record)
            run.items.append(Item("token_view", view.title or view.component, view, view.caption))
    return run


@dataclass(frozen=True)
class FigureRule:
    """A figure the report draws when a run directory holds every file in ``needs``."""

    needs: tuple[str, ...]
    title: str
    build: Callable[[_Files], go.Figure | str]  # a figure, or a ready HTML block
    caption: str
    when: tuple[str, ...] = ()  # only for runs of these commands or sweep analyses (empty: any run)

    def applies(self, files: _Files, manifest: dict[str, Any]) -> bool:
        kinds = {manifest.get("command"), (manifest.get("sweep") or {}).get("analysis")}
        return all(files.has(name) for name in self.needs) and (not self.when or bool(kinds & set(self.when)))


def _stability_table(f: _Files) -> str:
    df = f.table("stability.parquet")
    need = ["emotion", "n_neurons", "jaccard_mean", "jaccard_low", "jaccard_high", "n_resamples"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise EmocircuitsError(f"stability.parquet lacks columns {missing}; write it with `emocircuits neurons find`.")
    rows = "".join(f"<tr><td>{_e(r.emotion)}</td><td>{int(r.n_neurons)}</td><td>{r.jaccard_mean:.2f}</td>"
                   f"<td>[{r.jaccard_low:.2f}, {r.jaccard_high:.2f}]</td><td>{int(r.n_resamples)}</td></tr>"
                   for r in df.itertuples())
    return ("<table class='ec-table'><thead><tr><th>emotion</th><th>neurons</th><th>mean Jaccard</th>"
            f"<th>95% interval</th><th>resamples</th></tr></thead><tbody>{rows}</tbody></table>")


def _neuron_rules() -> list[FigureRule]:
    return [FigureRule(("stability.parquet",), "Selection stability", _stability_table,
                       "Jaccard of each emotion's selection on bootstrap resamples of its texts against the "
                       "full-data selection (1 = the same neurons every time).")]


def _circuit_rules() -> list[FigureRule]:

    return [
        FigureRule(("accuracy.parquet",), "Judged emotion expression (prompting baseline)",
                   lambda f: C.judged_accuracy(f.table("accuracy.parquet")),
                   "Share of replies judged as the instructed emotion, per emotion and valence, with 95% CIs.",
                   when=("circuits elicit",)),
        FigureRule(("cos_emotions.parquet",), "Cosine between emotion directions",
                   lambda f: C.cosine_heatmap(f.table("cos_emotions.parquet")),
                   "Emotion × emotion cosine of the directions at the middle layer."),
        FigureRule(("cos_layers.parquet",), "Direction stability through depth",
                   lambda f: C.layer_cosine_heatmap(f.table("cos_layers.parquet")),
                   "Layer × layer cosine of one emotion's direction."),
        FigureRule(("cos_valences.parquet", "control.parquet"), "Consistency across valences",
                   lambda f: C.valence_consistency(f.table("cos_valences.parquet"), f.table("control.parquet")),
                   "Cosine between directions computed from different valences; dashed: the shuffled-label "
                   "control's 95th percentile, which a real direction must beat."),
        FigureRule(("head_scores.parquet",), "Head importance", lambda f: C.head_importance(f.table("head_scores.parquet")),
                   "Each query head's output projected on the emotion direction (layer × head, one panel per emotion)."),
        FigureRule(("neuron_scores.parquet",), "Neuron contribution by layer",
                   lambda f: C.neuron_contribution_by_layer(f.table("neuron_scores.parquet")),
                   "Summed contribution a·β of each emotion's top neurons per layer."),
        FigureRule(("results.parquet",), "Dose-response: top-k vs random-k",
                   lambda f: C.dose_response(f.table("results.parquet").query("status == 'ok'")),
                   "Emotion score when the top-k components are scaled by s, against random components with the "
                   "same per-layer counts (band: 95% CI of the difference).", when=("component_validation",)),
        FigureRule(("influence.parquet",), "Sublayer influence by layer",
                   lambda f: CV.influence_by_layer(f.table("influence.parquet")),
                   "Each attention and MLP sublayer's share of the positive effect of an injection α·σ·v̂ at the last "
                   "token on the final projection on v_ref; choose the emotion in the menu."),
        FigureRule(("allocation.parquet",), "Emotion circuits", _circuit_figure,
                   "The heads (top) and neurons (bottom) each emotion's circuit takes per layer; node size: |score|; "
                   "hover for the component, its score and its Δμ norm; choose the emotion in the menu.",
                   when=("circuits assemble",)),
        FigureRule(("accuracy.parquet", "quality.parquet"), "Steering methods compared",
                   lambda f: CV.steering_comparison(f.table("accuracy.parquet"), f.table("quality.parquet")),
                   "Judged accuracy (95% CI) and reply quality (perplexity under the unsteered model, distinct-2, "
                   "empty / cut-off shares) per steering method, pooled over emotions and valences.",
                   when=("circuits steer",)),
        FigureRule(("dose.parquet",), "Steering dose-response", lambda f: CV.steering_dose_response(
                       f.table("dose.parquet")),
                   "Judged accuracy (95% CI) of each steerable method at multiples of its strength, and the same "
                   "points against the perplexity ratio: methods compare at matched fluency, not at one setting.",
                   when=("circuits steer",)),
        FigureRule(("strength.parquet",), "Steering strength chosen on fluency",
                   lambda f: CV.strength_calibration(f.table("strength.parquet")),
                   "The auto strength: each strength tried on the calibration prompts, its perplexity and distinct-2 "
                   "ratios to the unsteered replies; the strongest before the first that breaks the rule is kept.",
                   when=("circuits steer",)),
        FigureRule(("replies.parquet", "quality.parquet"), "Example steered replies",
                   lambda f: CV.example_replies(f.table("replies.parquet")),
                   "Replies of every method to the same emotion-free prompts (the first prompts per target).",
                   when=("circuits steer",)),
    ]


def _circuit_figure(f: _Files) -> go.Figure:

    return CV.circuit_view(read_circuits(f.path), n_layers=_model_dims(read_manifest(f.path))[0])


def _inference_rules() -> list[FigureRule]:

    def promotion(f: _Files) -> go.Figure:
        ctrl = f.table("promotion_controls.parquet") if f.has("promotion_controls.parquet") else None
        return I.promotion_vs_beta(f.table("promotion.parquet"), ctrl)

    return [
        FigureRule(("probes.parquet",), "Emotion probe accuracy by layer", lambda f: I.probe_by_layer(f.table("probes.parquet")),
                   "Logistic-regression accuracy per layer and site (pooled held-out predictions of the CV, Wilson "
                   "95% band inside [0, 1]); dotted: the same probe on permuted labels (mean of the permutations, "
                   "grey band: its 95% interval). A layer decodes beyond the controls only where selectivity's "
                   "interval (probes.parquet) excludes 0; overlapping bands do not rank layers."),
        FigureRule(("knockout.parquet",), "Knockout windows",
                   lambda f: I.window_heatmap(f.table("knockout.parquet"), "unchanged", "Share of predictions unchanged "
                                              "when a layer window's last-token output is knocked out"),
                   "Lower = the window matters more; hover for the 95% CI."),
        FigureRule(("patching.parquet",), "Activation patching windows",
                   lambda f: I.window_heatmap(f.table("patching.parquet"), "flip", "Share of predictions flipped to the "
                                              "source's label by patching a window"),
                   "Higher = the window carries the emotion; hover for the 95% CI."),
        FigureRule(("attribution_windows.parquet", "patching.parquet"), "Attribution patching vs real patching",
                   lambda f: I.attribution_scatter(f.table("attribution_windows.parquet"), f.table("patching.parquet")),
                   "One point per window and site; the legend gives Spearman's ρ."),
        FigureRule(("promotion.parquet",), "Direct promotion", promotion,
                   "Share change toward the emotion over its headroom, for the probe direction and random directions."),
        FigureRule(("appraisal_transitions.parquet",), "Appraisal steering: prediction shifts",
                   lambda f: I.appraisal_sankey(f.table("appraisal_transitions.parquet")),
                   "Clean prediction (left) to steered prediction (right); choose the setting in the menu."),
    ]


def _summary_table(df: pd.DataFrame, top: int = 12) -> str:
    need = ["layer", "neuron", "entropy"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise EmocircuitsError(f"the table lacks columns {missing}")
    frame = df.sort_values("rank" if "rank" in df.columns else "entropy").head(top)
    p_cols = [c for c in frame.columns if c.startswith("p_")]
    rows = []
    for rec in frame.to_dict("records"):
        emotions = rec.get("emotions", "")
        if not isinstance(emotions, str):
            emotions = ", ".join(map(str, list(emotions)))
        cells = [str(rec.get("rank", "")), f"L{int(rec['layer'])}.N{int(rec['neuron'])}", f"{rec['entropy']:.4f}",
                 html.escape(emotions)] + [f"{float(rec[c]):.3g}" for c in p_cols]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in
                   ["rank", "neuron", "entropy (nats)", "assigned to"] + [f"P({c[2:]})" for c in p_cols])
    return f"<table class='ec-table'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


# ----------------------------------------------------------------------------- HTML


_CSS = """
:root { --ink:#1f2328; --muted:#59636e; --line:#d8dee4; --bg:#f6f8fa; --accent:#0072B2; }
* { box-sizing: border-box; }
body { margin:0; font-family: Inter, 'Segoe UI', Helvetica, Arial, sans-serif; color:var(--ink); background:var(--bg); }
header.ec-top { background:#1f2a37; color:#fff; padding:22px 36px 18px; }
header.ec-top h1 { margin:0 0 4px; font-size:24px; font-weight:650; letter-spacing:.2px; }
header.ec-top .sub { color:#c9d1d9; font-size:13px; }
header.ec-top .chips { margin-top:10px; display:flex; gap:8px; flex-wrap:wrap; }
.chip { display:inline-block; padding:2px 10px; border-radius:999px; font-size:12px; font-weight:600; color:#fff; }
main { max-width: 1240px; margin: 0 auto; padding: 20px 28px 60px; }
section.ec-card { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 22px; margin:18px 0; }
h2 { font-size:19px; margin:0 0 10px; }
h3 { font-size:16px; margin:22px 0 2px; }
p.cap { color:var(--muted); margin:2px 0 8px; font-size:13px; }
table.ec-table { border-collapse: collapse; width:100%; font-size:13px; }
table.ec-table th, table.ec-table td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align: top; }
table.ec-table th { background:var(--bg); font-weight:600; }
.status { font-weight:700; padding:1px 8px; border-radius:6px; font-size:12px; }
.status.complete { background:#dafbe1; color:#116329; } .status.failed { background:#ffebe9; color:#a40e26; }
.status.running { background:#fff8c5; color:#7d4e00; }
details { margin-top:8px; } summary { cursor:pointer; color:var(--accent); font-size:13px; }
pre { background:var(--bg); border:1px solid var(--line); border-radius:6px; padding:10px; font-size:12px; overflow:auto; }
.ec-figure { margin: 10px 0 22px; border-top:1px solid var(--line); padding-top:10px; }
.fig-cap { margin:0 12px; }
.ec-token-view { margin: 8px 0 18px; }
.ec-cv-title { font-weight:600; font-size:14px; } .ec-cv-caption { color:var(--muted); font-size:12px; margin-bottom:6px; }
.skipped { color:#7d4e00; font-size:13px; } .skipped li { margin:2px 0; }
section.ec-part { border-top:3px solid var(--line); margin-top:22px; padding-top:6px; }
p.ec-reading { font-size:14px; line-height:1.5; max-width:980px; }
ul.ec-headlines { font-size:12px; color:var(--muted); margin:0 0 10px; padding-left:18px; }
nav.toc { font-size:13px; } nav.toc a { color:var(--accent); text-decoration:none; margin-right:14px; }
footer { color:var(--muted); font-size:12px; text-align:center; padding:18px; }
"""

# No network at all: only inline scripts/styles and data:/blob: images and fonts.
_CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
        "img-src data: blob:; font-src data:; connect-src 'none'; worker-src blob:")


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _duration(manifest: dict[str, Any]) -> str:
    try:
        start = _dt.datetime.fromisoformat(manifest["started"])
        end = _dt.datetime.fromisoformat(manifest["finished"])
    except (KeyError, TypeError, ValueError):
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _summary_html(runs: Sequence[RunReport]) -> str:
    rows = []
    for k, run in enumerate(runs, 1):
        m = run.manifest
        model = m.get("model") or {}
        dims = (f"{model.get('n_layers', '?')} layers × {model.get('d_mlp', '?')} neurons"
                if model else "")
        status = str(m.get("status", "unknown"))
        rows.append(
            f"<tr><td><a href='#run-{k}'>{k}</a></td><td><code>{_e(run.path.name)}</code></td>"
            f"<td><code>{_e(m.get('command'))}</code></td><td><span class='status {_e(status)}'>{_e(status)}</span></td>"
            f"<td>{_e(model.get('model_id', ''))}<br><span class='cap'>{_e(dims)} · {_e(m.get('dtype') or '')}</span></td>"
            f"<td>{_e(m.get('seed'))}</td><td>{_e(m.get('started'))}</td><td>{_e(_duration(m))}</td>"
            f"<td>{run.n_figures} figures, {run.n_token_views} token views</td></tr>")
    head = "".join(f"<th>{h}</th>" for h in ["#", "run", "command", "status", "model", "seed", "started", "took",
                                            "shown"])
    return (f"<section class='ec-card' id='summary'><h2>Runs</h2><table class='ec-table'><thead><tr>{head}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></section>")


def _run_html(k: int, run: RunReport, progress: bool) -> str:
    m = run.manifest
    parts = [f"<section class='ec-card' id='run-{k}'><h2>{k}. <code>{_e(m.get('command'))}</code> — "
             f"{_e(run.path.name)}</h2>"]
    if m.get("error"):
        parts.append(f"<p class='skipped'>The run failed: {_e(m['error'])}</p>")
    toc = "".join(f"<a href='#run-{k}-{_e(s.key)}'>{_e(s.title)}</a>" for s in run.sections) if run.sections else \
        "".join(f"<a href='#run-{k}-item-{i}'>{_e(item.title)}</a>" for i, item in enumerate(run.items))
    if toc:
        parts.append(f"<nav class='toc'>{toc}</nav>")
    details = {"path": str(run.path), "config": m.get("config"), "model": m.get("model"), "versions": m.get("versions"),
               "files": sorted((m.get("files") or {}).keys())}
    parts.append("<details><summary>Manifest: config, model, versions, files</summary><pre>"
                 f"{_e(json.dumps(details, indent=2, default=str))}</pre></details>")
    items = [_item_html(f"run-{k}-item-{i}", item) for i, item in
             enumerate(tqdm(run.items, desc=f"report: run {k}", unit="item", disable=not progress, leave=False))]
    if run.sections:
        for s in run.sections:
            lines = "".join(f"<li><code>{_e(line.strip())}</code></li>" for line in s.headlines)
            parts.append(f"<section class='ec-part' id='run-{k}-{_e(s.key)}' data-section='{_e(s.key)}'>"
                         f"<h2>{_e(s.title)}</h2><p class='ec-reading'>{_e(s.reading)}</p>"
                         f"<ul class='ec-headlines'>{lines}</ul>{''.join(items[s.start:s.end])}</section>")
    else:
        parts += items
    if run.skipped:
        lis = "".join(f"<li><b>{_e(t)}</b> — {_e(r)}</li>" for t, r in run.skipped)
        parts.append(f"<h3>Not shown</h3><ul class='skipped'>{lis}</ul>")
    if not run.items and not run.skipped:
        parts.append("<p class='cap'>This run wrote no file the report knows how to draw.</p>")
    parts.append("</section>")
    return "".join(parts)


def _item_html(anchor: str, item: Item) -> str:
    if item.kind == "figure":
        body = pio.to_html(item.value, full_html=False, include_plotlyjs=False, config=_PLOTLY_CONFIG,
                           div_id=f"{anchor}-plot", default_width="100%")
        return (f"<div id='{anchor}' class='{FIGURE_CLASS}' data-title='{_e(item.title)}'>{body}"
                f"<p class='cap fig-cap'><b>{_e(item.title)}.</b> {_e(item.caption)}</p></div>")
    if item.kind == "token_view":
        return f"<div id='{anchor}'>{item.value.to_html(include_js=False)}</div>"
    return f"<h3 id='{anchor}'>{_e(item.title)}</h3><p class='cap'>{_e(item.caption)}</p>{item.value}"


def build_report(run_dirs: Sequence[str | Path] | str | Path, *, title: str | None = None,
                 progress: bool = True) -> Report:
    """Read the run directories and assemble the report's HTML (not written; see :func:`write_report`)."""
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise EmocircuitsError("No run directory given; pass at least one directory an emocircuits command wrote.")
    loaded = []
    for d in run_dirs:
        path = Path(d)
        if not path.is_dir():
            raise EmocircuitsError(f"{str(path)!r} is not a directory; pass a run directory an emocircuits command wrote.")
        manifest = read_manifest(path)
        if not isinstance(manifest, dict):
            raise EmocircuitsError(f"{str(path / MANIFEST)!r} is not a JSON object; the run directory is damaged.")
        loaded.append((_Files(path), manifest))
    labels: set[str] = set()
    for files, _ in loaded:
        for part_files in ([f for _, subs in _tour_parts(files) for f in subs] if files.has(TOUR_FILE) else [files]):
            labels |= _labels_in(part_files)
    colors = color_map(labels)
    runs = [(_tour_items if files.has(TOUR_FILE) else _run_items)(files, manifest, colors)
            for files, manifest in tqdm(loaded, desc="report: reading runs", unit="run", disable=not progress)]
    return Report(runs, _page(runs, title or "emocircuits report", colors, progress))


def _page(runs: Sequence[RunReport], title: str, colors: dict[str, str], progress: bool) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("emocircuits")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        ours = "source"
    has_plots = any(r.n_figures for r in runs)
    has_views = any(r.n_token_views for r in runs)
    scripts = ""
    if has_plots:
        from plotly.offline import get_plotlyjs

        scripts += f"<script type='text/javascript'>{get_plotlyjs()}</script>"
    if has_views:
        scripts += f"<script type='text/javascript'>{circuitsvis_js()}</script>"
    chips = "".join(f"<span class='chip' style='background:{c}'>{_e(lab)}</span>" for lab, c in colors.items())
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    n_fig = sum(r.n_figures for r in runs)
    n_tv = sum(r.n_token_views for r in runs)
    body = "".join(_run_html(k, run, progress) for k, run in enumerate(runs, 1))
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{_CSP}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style>{scripts}</head><body>"
        f"<header class='ec-top'><h1>{_e(title)}</h1><div class='sub'>{len(runs)} run(s) · {n_fig} figures · "
        f"{n_tv} token views · generated {now} by emocircuits {_e(ours)}</div><div class='chips'>{chips}</div></header>"
        f"<main data-figures='{n_fig}' data-token-views='{n_tv}'>{_summary_html(runs)}{body}</main>"
        "<footer>Self-contained: opens offline; plotly.js and CircuitsVis are inlined. Hover any mark for exact "
        "values.</footer></body></html>"
    )


def write_report(run_dirs: Sequence[str | Path] | str | Path, out: str | Path, *, title: str | None = None,
                 progress: bool = True) -> Report:
    """Build the report for ``run_dirs`` and write it to ``out`` (atomically). Returns the :class:`Report`."""

    out = Path(out)
    if out.is_dir():
        raise EmocircuitsError(f"{str(out)!r} is a directory; pass a file name such as report.html for -o.")
    report = build_report(run_dirs, title=title, progress=progress)
    with atomic_path(out) as tmp:
        tmp.write_text(report.html, encoding="utf-8")
    umask = os.umask(0)
    os.umask(umask)
    out.chmod(0o666 & ~umask)  # a report is for sharing: ordinary file permissions, not the temp file's 0600
    report.path = out
    return report


def _triangulation_reading(f: _Files) -> str:
    effects = f.table("triangulation_effects.parquet") if f.has("triangulation_effects.parquet") else None
    return (f"<p class='ec-reading'>{_e(TR.reading(f.table('agreement.parquet'), effects))}</p>"
            + TR.agreement_table(f.table("agreement.parquet")))


def _triangulate_rules() -> list[FigureRule]:
    return [
        FigureRule(("agreement.parquet",), "Triangulation: where the three methods agree", _triangulation_reading,
                   "Generated from the numbers. Shared neurons of each pair of methods (sets of the same size per "
                   "emotion) beside the overlap two random sets of those sizes would have (hypergeometric mean over "
                   "all n_layers·d_mlp neurons) and P(X ≥ shared).", when=("triangulate",)),
        FigureRule(("layer_profiles.parquet",), "Layer profiles of the three methods",
                   lambda f: TR.layer_profiles(f.table("layer_profiles.parquet"),
                                               f.table("probes.parquet") if f.has("probes.parquet") else None),
                   "Share of each method's set per layer, one panel per emotion; dotted: Tak's probe accuracy per "
                   "layer (mlp.out, cross-validated). Spearman correlations: profile_correlations.parquet.",
                   when=("triangulate",)),
        FigureRule(("triangulation_effects.parquet",), "Masking each method's neurons",
                   lambda f: TR.masking_effects(f.table("triangulation_effects.parquet")),
                   "Accuracy with the set zeroed minus the mean of K random sets with the same per-layer counts "
                   "(disjoint from it), on the held-out texts of the emotion (left) and of the other labels (right); "
                   "bars: bootstrap 95% CI (examples and control sets resampled). Overlapping bars do not rank "
                   "methods.", when=("triangulate",)),
    ]


FIGURE_RULES: tuple[FigureRule, ...] = (*_neuron_rules(), *_circuit_rules(), *_inference_rules(),
                                        *_triangulate_rules())
"""Figures of the circuits and inference runs, by the files they need (neuron figures are drawn above)."""
