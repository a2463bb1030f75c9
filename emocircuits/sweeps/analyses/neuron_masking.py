"""``neuron_masking``: the emotion-neurons masking sweep (RQ2/RQ3 of Lee et al.) as sweep cells.

Cell = (emotion, layers, ratio, ratio_mode, seed): zero the emotion's neurons restricted to a layer range
(bottom | middle | top | all | A-B | A) at a masking ratio (omit for the full selected set), and compare
with ``controls`` (default ``DEFAULT_CONTROLS`` = 5) random neuron sets of the same per-layer sizes drawn
with ``seed``; the CI resamples examples and control sets, ``rank_p`` ranks the masked effect among the K
control effects (smallest possible: ``1 / (K + 1)``). Each row is
:func:`emocircuits.methods.neurons.sweep_row` of :func:`emocircuits.methods.neurons.mask` for that one condition — the
RQ3 schema that :func:`emocircuits.methods.neurons.sweep` also writes.

Neurons come from ``[analysis] neurons = "PATH"`` (a ``neurons.json`` or the run directory of
``emocircuits neurons find``) or, when that is empty, are found once per sweep as a ``neurons`` artifact
with ``[analysis.find]``'s settings (``DIR/artifacts/neurons-<hash>/``, reused on resume).
``ratio_mode = "reselect"`` needs the statistics: found here, beside the neurons file, or ``stats``.

Metrics (one row per cell): ``n_neurons, n_examples, k_controls, layer_first, layer_last``, ``own_<m>`` on
the masked emotion's texts and ``all_<m>`` on every text for m in ``acc_normal, acc_masked, acc_control,
delta_masked, delta_control, diff, ci_low, ci_high, rank_p``, ``own_floor, all_floor`` (clean accuracy
below ``FLOOR_ACC`` = 0.2: that subset cannot show a drop), and ``acc_masked_<label>`` per true label.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emocircuits.base.constants import DEFAULT_CONTROLS, DEFAULT_TEMPLATE, EKMAN6, LAYER_RANGES, MASK_RATIOS
from emocircuits.base.errors import EmocircuitsError, spell
from emocircuits.core.readout import SCORINGS
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.jobs.common import check_made_on
from emocircuits.jobs.neurons import neurons_made_on
from emocircuits.methods.neurons.find import RATIO_MODES, Condition, Selection
from emocircuits.methods.neurons.masking import MaskingEngine, mask, sweep_row
from emocircuits.sweeps.artifacts import (
    Artifacts,
    NeuronFind,
    parse_artifacts,
    prepare_artifacts,
    read_artifact_path,
)
from emocircuits.sweeps.base import Analysis
from emocircuits.sweeps.config import at_least, choice
from emocircuits.sweeps.shared import cached_model

ARTIFACT = "neurons"


@dataclass(frozen=True)
class NeuronMaskingParams:
    """``[analysis]`` of neuron_masking."""

    neurons: str = ""
    stats: str = ""
    controls: int = DEFAULT_CONTROLS
    n_boot: int = 1000
    scoring: str = "first_token"
    max_tokens: int = 4096
    allow_other_model: bool = False
    find: NeuronFind = field(default_factory=NeuronFind)


@dataclass(frozen=True)
class NeuronMaskingCell(Condition):
    """One masking condition (emotion, layers, ratio, ratio_mode) and the seed of its random controls."""

    seed: int = 0


@dataclass
class MaskingState:
    model: Any
    spec: Any
    engine: Any
    selection: Any
    stats: Any
    dataset: Any
    controls: int = DEFAULT_CONTROLS
    n_boot: int = 1000


def _find_artifact(p: NeuronMaskingParams) -> dict[str, Any]:
    return {ARTIFACT: {"kind": "neurons", **dataclasses.asdict(p.find)}}


class NeuronMasking(Analysis):
    name = "neuron_masking"
    Params = NeuronMaskingParams
    Cell = NeuronMaskingCell
    default_cells_per_task = 1

    def validate(self, cfg: Any) -> None:

        p: NeuronMaskingParams = cfg.params
        choice("analysis.scoring", p.scoring, SCORINGS)
        parse_artifacts({"find": _find_artifact(p)[ARTIFACT]}, "analysis")  # the find settings, as an artifact
        at_least("analysis", p, {"controls": 0, "n_boot": 1})
        cfg.data.load(seed=cfg.seed)  # the data the cells read: refused before any model loads
        labels = tuple(cfg.data.labels) or EKMAN6
        if p.neurons:

            selection = Selection.load(p.neurons)  # one sentence if missing or damaged
            labels = selection.labels
            check_made_on({"model": cfg.model.spec, "allow_other_model": p.allow_other_model},
                          [(f"The neurons in {p.neurons!r}", neurons_made_on(p.neurons, selection))])
        if p.stats and not Path(p.stats).is_file():
            raise EmocircuitsError(f"Key 'analysis.stats' names {p.stats!r}, which does not exist.")
        for e in cfg.grid.get("emotion", []):
            choice("grid.emotion", e, labels)
        for v in cfg.grid.get("layers", []):
            check_layer_range(v, "grid.layers")
        for r in cfg.grid.get("ratio", []):
            if r is not None and not 0 < r <= 1:
                raise EmocircuitsError(f"Key 'grid.ratio' has value {r}; allowed: numbers in (0, 1] (omit the axis "
                                       "for the full selected set).")
        for m in cfg.grid.get("ratio_mode", []):
            choice("grid.ratio_mode", m, RATIO_MODES)
        if "reselect" in cfg.grid.get("ratio_mode", []) and p.neurons and not (p.stats or _has_stats(p.neurons)):
            raise EmocircuitsError("Key 'grid.ratio_mode' has 'reselect', which needs neuron statistics: set "
                                   "'analysis.stats' to a stats safetensors file or leave 'analysis.neurons' empty "
                                   "to find neurons in the sweep.")

    def check_cell(self, cfg: Any, spec: Mapping[str, Any], cell: NeuronMaskingCell) -> None:

        if spec:
            layer_range(int(spec["n_layers"]), cell.layers)

    def setup(self, cfg: Any, run_dir: Path, *, progress: bool = True) -> dict[str, Any]:
        """Load the given neuron selection (and statistics), or find them once as a ``neurons`` artifact."""

        p: NeuronMaskingParams = cfg.params
        if not p.neurons:
            return {"artifacts": prepare_artifacts(parse_artifacts(_find_artifact(p)), cfg, run_dir,
                                                   progress=progress)}
        raw = read_artifact_path(Path(p.neurons))
        if p.stats:
            raw["files"]["neuron_stats.safetensors"] = Path(p.stats).read_bytes()
        return {"artifacts": {ARTIFACT: raw}}

    def prepare(self, cfg: Any, shared: dict[str, Any], *, progress: bool = False) -> MaskingState:
        import torch

        p: NeuronMaskingParams = cfg.params
        torch.manual_seed(cfg.seed)
        model, spec = cached_model(cfg.model, progress=progress)
        selection, stats = Artifacts(shared["artifacts"]).load(ARTIFACT)
        if p.neurons:
            check_made_on({"model": cfg.model.spec, "allow_other_model": p.allow_other_model},
                          [(f"The neurons in {p.neurons!r}", neurons_made_on(p.neurons, selection))], spec)
        if (selection.n_layers, selection.d_mlp) != (spec.n_layers, spec.d_mlp) and selection.d_mlp:
            raise EmocircuitsError(f"The neuron selection is for {selection.n_layers} layers x {selection.d_mlp} neurons "
                                   f"but the model has {spec.n_layers} x {spec.d_mlp}; find neurons on this model.")
        dataset = cfg.data.load(seed=cfg.seed)
        engine = MaskingEngine(model, dataset, labels=selection.labels, template=cfg.data.template,
                               scoring=p.scoring, max_tokens=p.max_tokens, progress=False)
        return MaskingState(model, spec, engine, selection, stats, dataset, p.controls, p.n_boot)

    def run(self, state: MaskingState, cells: Sequence[NeuronMaskingCell]) -> list[dict[str, Any]]:

        out: list[dict[str, Any]] = []
        labels = list(state.engine.labels)
        for cell in cells:
            res = mask(state.model, state.dataset, state.selection, emotions=[cell.emotion], layers=cell.layers,
                       ratio=cell.ratio, ratio_mode=cell.ratio_mode, stats=state.stats, controls=state.controls,
                       seed=cell.seed, n_boot=state.n_boot, engine=state.engine, progress=False)
            metrics: dict[str, Any] = sweep_row(res, cell.emotion, labels, state.spec.n_layers)
            masked = np.array([labels.index(x) for x in res.predictions[f"masked_{cell.emotion}"]], dtype=np.int64)
            metrics["__arrays__"] = {"masked_predicted": masked, "normal_predicted": state.engine.clean.astype(np.int64)}
            out.append(metrics)
        return out


def _has_stats(neurons: str) -> bool:
    p = Path(neurons)
    d = p if p.is_dir() else p.parent
    return any((d / name).is_file() for name in ("neuron_stats.safetensors", "stats.safetensors"))


def rq3_config(*, neurons: str, model: str | None = None, data: str = "builtin:dialogues", split: str | None = "test",
               limit_per_label: int | None = None, template: str | None = None,
               ratios: Sequence[float] = MASK_RATIOS,
               layer_ranges: Sequence[str] = LAYER_RANGES, ratio_mode: str = "truncate",
               controls: int = DEFAULT_CONTROLS, n_boot: int = 1000, seed: int = 0, dtype: str = "float32",
               emotions: Sequence[str] | None = None, allow_other_model: bool = False) -> Any:
    """The ``neuron_masking`` sweep config of the RQ3 grid (emotion × layer range × ratio), validated.

    What ``emocircuits neurons sweep`` runs; the grid order is that of :func:`emocircuits.methods.neurons.sweep`.
    """

    if not ratios or len(set(ratios)) < len(ratios) or not all(0 < r <= 1 for r in ratios):
        raise EmocircuitsError(f"{spell('ratios', '--ratios')} {','.join(f'{r:g}' for r in ratios)} must list "
                               "different shares in (0, 1], e.g. 0.01,0.03.")
    for name in layer_ranges:
        check_layer_range(name, "layer_ranges")
    selection = Selection.load(neurons)
    labels = list(selection.labels)
    model = model or neurons_made_on(neurons, selection)["config"]["model"] or "default"
    return {
        "sweep": {"analysis": "neuron_masking", "seed": seed, "description": "RQ3: emotion x layer range x ratio"},
        "model": {"spec": model, "dtype": dtype},
        "data": {"spec": data, "split": split or "all", "limit_per_label": limit_per_label or 0, "labels": labels,
                 "template": template or DEFAULT_TEMPLATE},
        "analysis": {"neurons": str(neurons), "controls": controls, "n_boot": n_boot,
                     "allow_other_model": allow_other_model},
        "grid": {"emotion": list(emotions or labels), "layers": list(layer_ranges), "ratio": list(ratios),
                 "ratio_mode": [ratio_mode], "seed": [seed]},
    }
