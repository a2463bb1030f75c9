"""``neuron_masking``: the emotion-neurons masking sweep (RQ2/RQ3 of Lee et al.) as sweep cells.

Cell = (emotion, layers, ratio, ratio_mode, seed): zero the emotion's neurons restricted to a layer range
(bottom | middle | top | all | A-B | A) at a masking ratio (omit for the full selected set), and compare
with ``controls`` random neuron sets of the same per-layer sizes drawn with ``seed``. The numbers are
exactly those of :func:`emocircuits.neurons.mask` for that one condition.

Neurons come from ``[analysis] neurons = "PATH"`` (a ``neurons.json`` or the run directory of
``emocircuits neurons find``) or, when that is empty, are found once per sweep on ``[analysis.find]``'s
split (saved as ``neurons.json`` and ``neuron_stats.safetensors`` in the sweep directory and reused on
resume). ``ratio_mode = "reselect"`` needs the statistics: found here, or a ``stats`` safetensors file.

Metrics (one row per cell): ``n_neurons``; over all examples ``acc_normal, acc_masked, acc_control,
delta_masked, delta_control, diff, ci_low, ci_high``; the same on the masked emotion's own true label
with prefix ``own_``; and ``acc_masked_<label>`` for every true label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emocircuits.errors import EmocircuitsError
from emocircuits.sweeps.analyses.head_scaling import check_layers_syntax
from emocircuits.sweeps.base import Analysis
from emocircuits.sweeps.config import choice

METRICS = ("acc_normal", "acc_masked", "acc_control", "delta_masked", "delta_control", "diff", "ci_low", "ci_high")
STATS_FILE = "neuron_stats.safetensors"
NEURONS_FILE = "neurons.json"


@dataclass(frozen=True)
class FindParams:
    """``[analysis.find]``: how to find neurons when no neurons file is given."""

    split: str = "train"
    limit_per_label: int = 0
    reading: str = "gated"
    tokens: str = "all"
    top_rate: float = 0.01
    assign: str = "argmax"


@dataclass(frozen=True)
class NeuronMaskingParams:
    """``[analysis]`` of neuron_masking."""

    neurons: str = ""
    stats: str = ""
    controls: int = 2
    n_boot: int = 1000
    scoring: str = "first_token"
    max_tokens: int = 4096
    find: FindParams = field(default_factory=FindParams)


@dataclass(frozen=True)
class NeuronMaskingCell:
    """One masking condition and the seed of its random controls."""

    emotion: str
    layers: str = "all"
    ratio: float | None = None
    ratio_mode: str = "truncate"
    seed: int = 0


@dataclass
class MaskingState:
    model: Any
    spec: Any
    engine: Any
    selection: Any
    stats: Any
    dataset: Any
    controls: int = 2
    n_boot: int = 1000


def _stats_path(params: NeuronMaskingParams) -> Path | None:
    if params.stats:
        return Path(params.stats)
    if params.neurons:
        p = Path(params.neurons)
        d = p if p.is_dir() else p.parent
        for name in (STATS_FILE, "stats.safetensors"):
            if (d / name).is_file():
                return d / name
    return None


class NeuronMasking(Analysis):
    name = "neuron_masking"
    Params = NeuronMaskingParams
    Cell = NeuronMaskingCell
    default_cells_per_task = 1

    def validate(self, cfg: Any) -> None:
        from emocircuits.data import EKMAN6
        from emocircuits.neurons import ASSIGN_MODES, RATIO_MODES, TOKEN_MODES
        from emocircuits.readout import SCORINGS
        from emocircuits.sites import READINGS

        p: NeuronMaskingParams = cfg.params
        choice("analysis.scoring", p.scoring, SCORINGS)
        choice("analysis.find.split", p.find.split, ("train", "test", "all"))
        choice("analysis.find.reading", p.find.reading, tuple(READINGS))
        choice("analysis.find.tokens", p.find.tokens, TOKEN_MODES)
        choice("analysis.find.assign", p.find.assign, ASSIGN_MODES)
        if not 0 < p.find.top_rate <= 1:
            raise EmocircuitsError(f"Key 'analysis.find.top_rate' has value {p.find.top_rate}; allowed: numbers in (0, 1].")
        if p.controls < 0:
            raise EmocircuitsError(f"Key 'analysis.controls' has value {p.controls}; allowed: integers >= 0.")
        if p.n_boot < 1:
            raise EmocircuitsError(f"Key 'analysis.n_boot' has value {p.n_boot}; allowed: integers >= 1.")
        labels = tuple(cfg.data.labels) or EKMAN6
        if p.neurons:
            from emocircuits.neurons import Selection

            labels = Selection.load(p.neurons).labels  # one sentence if missing or damaged
            if p.stats and not Path(p.stats).is_file():
                raise EmocircuitsError(f"Key 'analysis.stats' names {p.stats!r}, which does not exist.")
        for e in cfg.grid.get("emotion", []):
            choice("grid.emotion", e, labels)
        for v in cfg.grid.get("layers", []):
            check_layers_syntax("grid.layers", v)
        for r in cfg.grid.get("ratio", []):
            if r is not None and not 0 < r <= 1:
                raise EmocircuitsError(f"Key 'grid.ratio' has value {r}; allowed: numbers in (0, 1] (omit the axis "
                                       "for the full selected set).")
        for m in cfg.grid.get("ratio_mode", []):
            choice("grid.ratio_mode", m, RATIO_MODES)
        if "reselect" in cfg.grid.get("ratio_mode", []) and p.neurons and _stats_path(p) is None:
            raise EmocircuitsError("Key 'grid.ratio_mode' has 'reselect', which needs neuron statistics: set "
                                   "'analysis.stats' to a stats safetensors file or leave 'analysis.neurons' empty "
                                   "to find neurons in the sweep.")

    def setup(self, cfg: Any, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
        """Load (or find, once, on the train split) the neuron selection and statistics for every worker."""
        from emocircuits.neurons import Selection, collect
        from emocircuits.runs import write_json, write_tensors

        p: NeuronMaskingParams = cfg.params
        shared: dict[str, Any] = {}
        if p.neurons:
            shared["selection"] = Selection.load(p.neurons).to_json()
            sp = _stats_path(p)
            if sp is not None:
                shared["stats"] = _read_stats(sp)
            return shared
        sel_file, stats_file = Path(run_dir) / NEURONS_FILE, Path(run_dir) / STATS_FILE
        if sel_file.is_file() and stats_file.is_file():  # found by an earlier (interrupted) run of this sweep
            shared["selection"] = Selection.load(sel_file).to_json()
            shared["stats"] = _read_stats(stats_file)
            return shared
        from emocircuits.sweeps.shared import cached_model

        model, _ = cached_model(cfg.model, progress=progress)
        train = cfg.data.load(seed=cfg.seed, split=p.find.split)
        if p.find.limit_per_label:
            train = train.limit_per_label(p.find.limit_per_label, seed=cfg.seed)
        stats = collect(model, train, reading=p.find.reading, tokens=p.find.tokens, template=cfg.data.template,
                        max_tokens=p.max_tokens, progress=progress)
        sel = stats.select(top_rate=p.find.top_rate, assign=p.find.assign)
        write_tensors(stats_file, {"counts": stats.counts, "totals": stats.totals},
                      metadata={"labels": ",".join(stats.labels)})
        write_json(sel_file, sel.to_json())
        shared["selection"] = sel.to_json()
        shared["stats"] = {"counts": stats.counts.numpy(), "totals": stats.totals.numpy(), "labels": list(stats.labels),
                           "config": stats.config}
        return shared

    def prepare(self, cfg: Any, shared: dict[str, Any], *, progress: bool = False) -> MaskingState:
        import torch

        from emocircuits.neurons import MaskingEngine, NeuronStats, Selection
        from emocircuits.sweeps.shared import cached_model

        p: NeuronMaskingParams = cfg.params
        torch.manual_seed(cfg.seed)
        model, spec = cached_model(cfg.model, progress=progress)
        selection = Selection.from_json(shared["selection"])
        stats = None
        if "stats" in shared:
            s = shared["stats"]
            stats = NeuronStats(torch.as_tensor(np.asarray(s["counts"])), torch.as_tensor(np.asarray(s["totals"])),
                                tuple(s["labels"]), dict(s.get("config") or {}))
        if (selection.n_layers, selection.d_mlp) != (spec.n_layers, spec.d_mlp) and selection.d_mlp:
            raise EmocircuitsError(f"The neuron selection is for {selection.n_layers} layers x {selection.d_mlp} neurons "
                                   f"but the model has {spec.n_layers} x {spec.d_mlp}; find neurons on this model.")
        dataset = cfg.data.load(seed=cfg.seed)
        engine = MaskingEngine(model, dataset, labels=selection.labels, template=cfg.data.template,
                               scoring=p.scoring, max_tokens=p.max_tokens, progress=False)
        return MaskingState(model, spec, engine, selection, stats, dataset, p.controls, p.n_boot)

    def run(self, state: MaskingState, cells: Sequence[NeuronMaskingCell]) -> list[dict[str, Any]]:
        from emocircuits.neurons import mask

        out: list[dict[str, Any]] = []
        for cell in cells:
            res = mask(state.model, state.dataset, state.selection, emotions=[cell.emotion], layers=cell.layers,
                       ratio=cell.ratio, ratio_mode=cell.ratio_mode, stats=state.stats, controls=state.controls,
                       seed=cell.seed, n_boot=state.n_boot, engine=state.engine, progress=False)
            eff = res.effects
            overall = eff[eff.true_label == "all"].iloc[0]
            own = eff[eff.true_label == cell.emotion]
            metrics: dict[str, Any] = {"n_neurons": int(overall.n_neurons), "n_examples": int(overall.n)}
            metrics.update({k: _f(overall[k]) for k in METRICS})
            metrics.update({f"own_{k}": _f(own.iloc[0][k]) if len(own) else math.nan for k in METRICS})
            for lab in state.selection.labels:
                row = eff[eff.true_label == lab]
                metrics[f"acc_masked_{lab}"] = _f(row.iloc[0]["acc_masked"]) if len(row) else math.nan
            labels = list(state.engine.labels)
            masked = np.array([labels.index(x) for x in res.predictions[f"masked_{cell.emotion}"]], dtype=np.int64)
            metrics["__arrays__"] = {"masked_predicted": masked, "normal_predicted": state.engine.clean.astype(np.int64)}
            out.append(metrics)
        return out


def _f(x: Any) -> float:
    return float(x)


def _read_stats(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        meta = fh.metadata() or {}
        counts, totals = fh.get_tensor("counts"), fh.get_tensor("totals")
    labels = meta.get("labels", "").split(",") if meta.get("labels") else None
    if labels is None:
        raise EmocircuitsError(f"Statistics file {str(path)!r} has no 'labels' metadata; re-create it with the sweep's "
                               "find step or `emocircuits neurons find`.")
    return {"counts": counts, "totals": totals, "labels": labels, "config": {}}
