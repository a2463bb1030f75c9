"""``circuit_steering``: Wang et al.'s steering comparison (Circuits II, Q3) as sweep cells, method × scale.

Cell = (method, scale, emotion): generate replies to the emotion-free SEV prompts with one steering method
(``circuit``: s · Δμ at the circuit's components; ``residual``: α · RMS(h) · v over the middle band;
``prompt``: the emotion-instructing system prompt; ``none``; ``random``: random circuits of the same shape)
at one ``scale`` (s for circuit/random, α for residual, ignored by prompt/none), judge them and measure
their quality — :func:`emocircuits.methods.circuits.steer.steer_compare` for that one condition. ``emotion = "all"``
(the default) steers toward every emotion of the circuits run in turn and pools them.

``[analysis]``: ``circuits`` (the run directory of ``emocircuits circuits assemble``; its directions run gives
the residual directions), ``data = "builtin:sev"``, ``split = "test"``, ``limit = 3`` (skeletons),
``judges = ["lexicon"]``, ``n_random = 3``, ``band = ""`` (residual layers ``A-B``; "" = the paper's band,
scaled), ``max_new_tokens = 40``, ``n_boot = 1000``.

Metrics: ``n`` (replies), per judge ``acc_<judge>, ci_low_<judge>, ci_high_<judge>`` (pooled over emotions and
valences), and ``ppl_median, ppl_mean, distinct2, empty, cut_off``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.data import load_data
from emocircuits.jobs.circuits import read_directions
from emocircuits.jobs.common import check_made_on
from emocircuits.jobs.steer import METHODS
from emocircuits.judges.panel import check_judge_name
from emocircuits.methods.circuits.elicit import elicitation_items
from emocircuits.methods.circuits.steer import steer_compare
from emocircuits.runs.circuit_files import read_circuits
from emocircuits.runs.rundir import finished_run
from emocircuits.sweeps.base import Analysis
from emocircuits.sweeps.config import at_least, choice
from emocircuits.sweeps.shared import cached_model

ALL = "all"


@dataclass(frozen=True)
class CircuitSteeringParams:
    """``[analysis]`` of circuit_steering."""

    circuits: str = ""
    data: str = "builtin:sev"
    split: str = "test"
    limit: int = 3
    judges: list[str] = field(default_factory=lambda: ["lexicon"])
    n_random: int = 3
    band: str = ""
    max_new_tokens: int = 40
    n_boot: int = 1000
    sentences: int = 0
    """A reply ends after this many sentences (0: at its end of turn, as sweeps ran before the option)."""
    allow_other_model: bool = False


@dataclass(frozen=True)
class CircuitSteeringCell:
    """One steering condition."""

    method: str = "circuit"
    scale: float = 1.0
    emotion: str = ALL


@dataclass
class SteeringState:
    model: Any
    spec: Any
    params: CircuitSteeringParams
    items: Any
    circuits: dict[str, Any]
    directions: dict[str, Any]
    band: list[int] | None
    seed: int


def _runs(circuits: str) -> tuple[dict[str, Any], Path]:

    manifest = finished_run(Path(circuits), "allocation.parquet", "circuits assemble")
    return manifest, Path(manifest["summary"]["directions"])


def _model_check(cfg: Any) -> dict[str, Any]:
    return {"model": cfg.model.spec, "allow_other_model": cfg.params.allow_other_model}


class CircuitSteering(Analysis):
    name = "circuit_steering"
    Params = CircuitSteeringParams
    Cell = CircuitSteeringCell
    default_cells_per_task = 1

    def validate(self, cfg: Any) -> None:

        p: CircuitSteeringParams = cfg.params
        if not p.circuits:
            raise EmocircuitsError("Key 'analysis.circuits' is empty; name the run directory of "
                                   "`emocircuits circuits assemble`.")
        manifest, _ = _runs(p.circuits)
        check_made_on(_model_check(cfg), [(f"The assemble run {p.circuits!r}", manifest)])
        at_least("analysis", p, {"limit": 1, "n_random": 1, "max_new_tokens": 1, "n_boot": 1, "sentences": 0})
        if not p.judges:
            raise EmocircuitsError("Key 'analysis.judges' is empty; name at least one judge, e.g. [\"lexicon\"].")
        for j in p.judges:
            check_judge_name(j)
        if p.band:
            check_layer_range(p.band, "analysis.band")
        for m in cfg.grid.get("method", []):
            choice("grid.method", m, METHODS)
        for s in cfg.grid.get("scale", []):
            if not isinstance(s, int | float) or s < 0:
                raise EmocircuitsError(f"Key 'grid.scale' has value {s!r}; allowed: numbers >= 0.")
        emotions = sorted(manifest.get("circuits", {}))
        for e in cfg.grid.get("emotion", []):
            choice("grid.emotion", e, [ALL, *emotions])

    def prepare(self, cfg: Any, shared: dict[str, Any], *, progress: bool = False) -> SteeringState:
        import torch

        p: CircuitSteeringParams = cfg.params
        torch.manual_seed(cfg.seed)
        model, spec = cached_model(cfg.model, progress=progress)
        manifest, directions_run = _runs(p.circuits)
        check_made_on(_model_check(cfg), [(f"The assemble run {p.circuits!r}", manifest)], spec)
        circuits = read_circuits(p.circuits)
        directions = read_directions(directions_run)[1]
        split = None if p.split == ALL else p.split
        items = elicitation_items(load_data(p.data, split=split), emotions=list(circuits), limit=p.limit)
        band = layer_range(spec.n_layers, p.band) if p.band else None
        return SteeringState(model, spec, p, items, circuits, directions, band, cfg.seed)

    def run(self, state: SteeringState, cells: Sequence[CircuitSteeringCell]) -> list[dict[str, Any]]:

        p = state.params
        out: list[dict[str, Any]] = []
        for cell in cells:
            emotions = list(state.circuits) if cell.emotion == ALL else [cell.emotion]
            res = steer_compare(state.model, state.items, emotions=emotions, methods=[cell.method],
                                circuits=state.circuits, directions=state.directions, scale=float(cell.scale),
                                alpha=float(cell.scale), band=state.band, n_random=p.n_random, judges=p.judges,
                                max_new_tokens=p.max_new_tokens, sentences=p.sentences, seed=state.seed,
                                n_boot=p.n_boot)
            acc = res.accuracy[(res.accuracy.emotion == ALL) & (res.accuracy.valence == ALL)]
            quality = res.quality[res.quality.emotion == ALL].iloc[0]
            metrics: dict[str, Any] = {"n": int(acc["n"].iloc[0])}
            for r in acc.itertuples():
                judge = str(r.judge).replace(":", "_")
                metrics.update({f"acc_{judge}": float(r.accuracy), f"ci_low_{judge}": float(r.ci_low),
                                f"ci_high_{judge}": float(r.ci_high)})
            metrics.update({k: float(quality[k]) for k in ("ppl_median", "ppl_mean", "ppl_ratio", "distinct2",
                                                           "distinct2_ratio", "empty", "cut_off")})
            metrics["fluent"] = bool(quality["fluent"])
            out.append(metrics)
        return out
