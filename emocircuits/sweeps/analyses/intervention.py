"""``intervention``: any intervention, filled in from the grid, evaluated by a readout.

Each cell fills the ``[analysis.intervention]`` template (:mod:`emocircuits.sweeps.templates`) with its
grid values and measures the filled intervention against the clean model. Head ablation, knockout
windows (``ScaleSite`` / ``Noise`` at ``attn.out`` / ``mlp.out`` over a window of layers), patching windows
(``PatchFrom`` an ``activations`` artifact) and steering scales (``AddDirection`` of a ``direction``
artifact) are configs, not classes — see ``examples/sweeps/``::

    [sweep]
    analysis = "intervention"

    [analysis]
    readout = "accuracy"            # accuracy | projection
    scoring = "first_token"         # first_token | full_label
    n_boot = 1000                   # bootstrap resamples of the CIs
    max_tokens = 4096               # token budget per batch
    share_prefix = true
    save_predictions = true         # arrays/<cell_id>.safetensors: predicted [n], scores [n, n_labels]

    [analysis.intervention]         # the template: an Intervention.to_dict() with {placeholders}
    type = "ScaleHeads"
    heads = "{layers}:all"
    factor = "{factor}"

    [analysis.projection]           # readout = "projection": mean projection of a site's last-token value
    direction = "@dirs:{emotion}"   # a Direction (artifact or file); its vector at (site, layer), unit length
    site = ""                       # "" = the direction's only site
    layer = -1                      # negative: counted from the last layer

    [analysis.artifacts.dirs]       # computed once per sweep (emocircuits.sweeps.artifacts)
    kind = "direction"

    [grid]                          # any axes; each fills a placeholder, each placeholder needs an axis
    layers = ["bottom", "middle", "top"]
    factor = [0.0, 0.5]

Metrics, ``readout = "accuracy"`` (the pooled row of :func:`emocircuits.methods.heads.accuracy_table`):
``n_examples, n_heads, n_neurons, n_sites, clean_acc, acc, delta, ci_low, ci_high, changed,
changed_ci_low, changed_ci_high, clean_true_logp, true_logp``, per true label ``clean_acc_<label>,
acc_<label>, delta_<label>, ci_low_<label>, ci_high_<label>``, and with a ``PatchFrom`` of an activations
artifact ``source_acc`` (share predicted as the label of the text the activation came from) and
``clean_source_acc``. ``readout = "projection"``: ``n_examples, n_*, clean_proj, proj, delta_proj, ci_low,
ci_high`` and ``clean_proj_<label>, proj_<label>``. Every cell also has ``intervention`` (its repr).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import emocircuits.sweeps.templates as templates
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.seeds import derive_seed
from emocircuits.base.stats import bootstrap_ci
from emocircuits.core.components import Direction
from emocircuits.core.readout import SCORINGS
from emocircuits.core.sites import site_info
from emocircuits.methods.heads import POOLED, Evaluator
from emocircuits.sweeps.artifacts import Activations, Artifacts, parse_artifacts, prepare_artifacts
from emocircuits.sweeps.base import Analysis, TemplateCell
from emocircuits.sweeps.config import at_least, choice, expand_cells
from emocircuits.sweeps.shared import cached_model
from emocircuits.sweeps.templates import check_ref

READOUTS = ("accuracy", "projection")
ACCURACY_KEYS = ("clean_acc", "acc", "delta", "ci_low", "ci_high", "changed", "changed_ci_low", "changed_ci_high",
                 "clean_true_logp", "true_logp")
PER_LABEL_KEYS = ("clean_acc", "acc", "delta", "ci_low", "ci_high")


@dataclass(frozen=True)
class ProjectionParams:
    """``[analysis.projection]``: which direction, site and layer the projection readout reads."""

    direction: str = ""
    site: str = ""
    layer: int | str = -1


@dataclass(frozen=True)
class InterventionParams:
    """``[analysis]`` of the intervention analysis."""

    intervention: dict[str, Any] = field(default_factory=dict)
    readout: str = "accuracy"
    scoring: str = "first_token"
    n_boot: int = 1000
    max_tokens: int = 4096
    share_prefix: bool = True
    save_predictions: bool = True
    projection: ProjectionParams = field(default_factory=ProjectionParams)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class InterventionState:
    """A worker's state: the model, the evaluator (clean pass done), loaded artifacts, clean projections."""

    model: Any
    spec: Any
    evaluator: Any
    artifacts: Any
    params: InterventionParams
    declared: dict[str, Any]
    seed: int
    clean_proj: dict[tuple[str, int, str], np.ndarray] = field(default_factory=dict)


def _template_parts(p: InterventionParams) -> dict[str, Any]:
    """Everything placeholders may appear in, by config key."""
    parts: dict[str, Any] = {"analysis.intervention": p.intervention}
    if p.readout == "projection":
        parts["analysis.projection"] = {"direction": p.projection.direction, "layer": p.projection.layer}
    return parts


class InterventionAnalysis(Analysis):
    name = "intervention"
    Params = InterventionParams
    Cell = TemplateCell
    free_axes = True
    default_cells_per_task = 1

    # ------------------------------------------------------------------ before any model loads
    def validate(self, cfg: Any) -> None:

        p: InterventionParams = cfg.params
        choice("analysis.readout", p.readout, READOUTS)
        choice("analysis.scoring", p.scoring, SCORINGS)
        at_least("analysis", p, {"n_boot": 1, "max_tokens": 1})
        cfg.data.load(seed=cfg.seed)  # the data the cells read: refused before any model loads
        if not p.intervention:
            raise EmocircuitsError("Missing table [analysis.intervention]: the intervention template each cell fills "
                                   "(e.g. type = \"ScaleHeads\", heads = \"{layers}:all\", factor = \"{factor}\").")
        for name, table in p.artifacts.items():
            if templates.placeholders(table):
                raise EmocircuitsError(f"Artifact [analysis.artifacts.{name}] has placeholders; artifacts are made "
                                       "once per sweep, so their keys take fixed values.")
        declared = parse_artifacts(p.artifacts)
        parts = _template_parts(p)
        used = {ph: key for key, part in parts.items() for ph in templates.placeholders(part)}
        for ph, key in used.items():
            if ph not in cfg.grid:
                raise EmocircuitsError(f"Placeholder {{{ph}}} in [{key}] has no grid axis; add grid.{ph} = [...] "
                                       f"(axes now: {', '.join(cfg.grid) or 'none'}).")
        for axis in cfg.grid:
            if axis not in used:
                raise EmocircuitsError(f"Grid axis 'grid.{axis}' fills no placeholder; placeholders in the templates: "
                                       f"{', '.join(sorted(used)) or 'none'} (write {{{axis}}} where it belongs).")
        refs = _artifact_refs(parts)
        unused = sorted(set(declared) - refs)
        if unused:
            raise EmocircuitsError(f"Artifact [analysis.artifacts.{unused[0]}] is used by no template; remove it or "
                                   f"refer to it as '@{unused[0]}'.")
        for cell in expand_cells(cfg, self):
            templates.check(templates.fill(p.intervention, cell), declared)
            if p.readout == "projection":
                _check_projection(templates.fill(parts["analysis.projection"], cell), p.projection.site, declared)

    def check_cell(self, cfg: Any, spec: Mapping[str, Any], cell: Any) -> None:

        p: InterventionParams = cfg.params
        if not spec:
            return
        templates.resolve(templates.fill(p.intervention, cell), spec=spec, declared=parse_artifacts(p.artifacts))
        if p.readout == "projection":
            _layer_index(templates.fill(p.projection.layer, cell), int(spec["n_layers"]))

    # ------------------------------------------------------------------ driver and workers
    def setup(self, cfg: Any, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:

        return {"artifacts": prepare_artifacts(parse_artifacts(cfg.params.artifacts), cfg, run_dir, progress=progress)}

    def prepare(self, cfg: Any, shared: dict[str, Any], *, progress: bool = False) -> InterventionState:
        import torch

        p: InterventionParams = cfg.params
        torch.manual_seed(cfg.seed)
        model, spec = cached_model(cfg.model, progress=progress)
        dataset = cfg.data.load(seed=cfg.seed)
        evaluator = Evaluator(model, dataset, labels=dataset.labels, template=cfg.data.template, scoring=p.scoring,
                              max_tokens=p.max_tokens, share_prefix=p.share_prefix)
        return InterventionState(model, spec, evaluator, Artifacts(shared.get("artifacts", {})), p,
                                 parse_artifacts(p.artifacts), cfg.seed)

    def run(self, state: InterventionState, cells: Sequence[Any]) -> list[dict[str, Any] | BaseException]:

        out: list[dict[str, Any] | BaseException] = []
        p = state.params
        for cell in cells:
            filled = templates.fill(p.intervention, cell)
            iv = templates.resolve(filled, spec=state.spec, artifacts=state.artifacts, declared=state.declared)
            seed = _cell_seed(state.seed, cell)
            metrics: dict[str, Any] = {"intervention": repr(iv), **templates.size_metrics(iv)}
            if p.readout == "accuracy":
                metrics.update(_accuracy(state, iv, filled, seed))
            else:
                metrics.update(_projection(state, iv, templates.fill(_template_parts(p)["analysis.projection"], cell),
                                           seed))
            out.append(metrics)
        return out


# ----------------------------------------------------------------------------- readouts


def _cell_seed(seed: int, cell: Any) -> int:

    return derive_seed(seed, json.dumps(dict(cell), sort_keys=True))


def _accuracy(state: InterventionState, iv: Any, filled: Mapping[str, Any], seed: int) -> dict[str, Any]:
    ev = state.evaluator
    table, scores = ev.effect(iv, n_boot=state.params.n_boot, seed=seed)
    pooled = table.iloc[0]
    metrics: dict[str, Any] = {"n_examples": int(pooled["n"])}
    metrics.update({k: float(pooled[k]) for k in ACCURACY_KEYS})
    rows = table.set_index("true_label")
    for lab in ev.labels:
        for k in PER_LABEL_KEYS:
            metrics[f"{k}_{lab}"] = float(rows.loc[lab, k]) if lab in rows.index else math.nan
    pred = scores.argmax(-1)
    source = _patch_source(state, filled)
    if source is not None:
        metrics["source_acc"] = float((pred == source).mean())
        metrics["clean_source_acc"] = float((ev.clean_pred == source).mean())
    if state.params.save_predictions:
        metrics["__arrays__"] = {"predicted": pred.astype(np.int64), "scores": scores.astype(np.float32)}
    return metrics


def _patch_source(state: InterventionState, filled: Any) -> np.ndarray | None:
    """Label index of each text's patch source when the intervention patches from an activations artifact."""

    refs = _artifact_refs({"t": filled}, full=True)
    for ref in refs:
        obj = state.artifacts.resolve(ref) if ref.partition(":")[0].removeprefix("@") in state.artifacts else None
        if isinstance(obj, Activations):
            return obj.source_label.numpy()
    return None


def _projection(state: InterventionState, iv: Any, proj: Mapping[str, Any], seed: int) -> dict[str, Any]:

    ev = state.evaluator
    site, layer, vec = _direction_vector(state, proj)
    key = (site, layer, proj["direction"])
    if key not in state.clean_proj:
        state.clean_proj[key] = ev.activations(site, layer) @ vec
    clean, got = state.clean_proj[key], ev.activations(site, layer, iv) @ vec
    lo, hi = bootstrap_ci(clean, got, None, n_boot=state.params.n_boot, seed=derive_seed(seed, "bootstrap", POOLED))
    metrics: dict[str, Any] = {"n_examples": len(got), "clean_proj": float(clean.mean()), "proj": float(got.mean()),
                               "delta_proj": float(got.mean() - clean.mean()), "ci_low": lo, "ci_high": hi}
    for j, lab in enumerate(ev.labels):
        m = ev.y == j
        metrics[f"clean_proj_{lab}"] = float(clean[m].mean()) if m.any() else math.nan
        metrics[f"proj_{lab}"] = float(got[m].mean()) if m.any() else math.nan
    if state.params.save_predictions:
        metrics["__arrays__"] = {"projection": got.astype(np.float32), "clean_projection": clean.astype(np.float32)}
    return metrics


def _direction_vector(state: InterventionState, proj: Mapping[str, Any]) -> tuple[str, int, np.ndarray]:

    d = state.artifacts.resolve(proj["direction"])
    if not isinstance(d, Direction):
        raise EmocircuitsError(f"Key 'analysis.projection.direction': {proj['direction']!r} holds a "
                               f"{type(d).__name__}, not a Direction.")
    site = state.params.projection.site or (d.sites()[0] if len(d.sites()) == 1 else "")
    if not site:
        raise EmocircuitsError(f"Direction {d.name!r} has vectors at {d.sites()}; set analysis.projection.site.")
    layer = _layer_index(proj["layer"], state.spec.n_layers)
    v = d.vector(site, layer).double()
    return site, layer, (v / v.norm().clamp_min(1e-12)).numpy()


def _layer_index(value: Any, n_layers: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EmocircuitsError(f"Key 'analysis.projection.layer' has value {value!r}; give an integer layer "
                               "(negative: counted from the last layer).")
    if not -n_layers <= value < n_layers:
        raise EmocircuitsError(f"Key 'analysis.projection.layer' has value {value}, which is out of range; this model "
                               f"has layers 0..{n_layers - 1} (or -{n_layers}..-1).")
    return value % n_layers


def _check_projection(proj: Mapping[str, Any], site: str, declared: Mapping[str, Any]) -> None:

    ref = proj["direction"]
    if not isinstance(ref, str) or not ref.startswith("@"):
        raise EmocircuitsError("Key 'analysis.projection.direction' must name a direction: '@ARTIFACT:KEY'.")
    check_ref(ref, "analysis.projection.direction", ("direction",), declared)
    if site:
        try:
            site_info(site)
        except EmocircuitsError as exc:
            raise EmocircuitsError(f"Key 'analysis.projection.site': {exc}") from None
    if isinstance(proj["layer"], bool) or not isinstance(proj["layer"], int):
        raise EmocircuitsError(f"Key 'analysis.projection.layer' has value {proj['layer']!r}; give an integer layer.")


def _artifact_refs(obj: Any, full: bool = False) -> set[str]:
    """Artifact names (``full``: whole references) used by ``@NAME[:KEY]`` strings in templates."""
    if isinstance(obj, str):
        if obj.startswith("@"):
            return {obj if full else obj.removeprefix("@").partition(":")[0]}
        return set()
    if isinstance(obj, Mapping):
        return set().union(*(_artifact_refs(v, full) for v in obj.values())) if obj else set()
    if isinstance(obj, list | tuple):
        return set().union(*(_artifact_refs(v, full) for v in obj)) if obj else set()
    return set()
