"""``component_validation``: the dose-response of Wang et al.'s top components (Circuits I) as sweep cells.

Cell = (emotion, kind, scale): scale the emotion's top-k components of ``kind`` (``neurons`` or ``heads``)
by ``scale`` and read the emotion score (the final residual at the last prompt token projected on the
emotion's late-layer reference direction) on that emotion's prompts, against ``controls`` random sets with
the same per-layer counts. Each row is :func:`emocircuits.methods.circuits.validate_cell` — the columns of
``circuits.validate_components`` — so ``emocircuits circuits validate`` is this sweep, resumable after a
kill and runnable on Ray (the components and directions run directories must be readable by every worker).

``[analysis]``: ``components`` (the run directory of ``emocircuits circuits components``; its directions run
is found through its manifest), ``top_k = 0`` (0 = the sets the components run kept; else re-pick the top k
from its score tables), ``controls = 5``, ``use = "used"`` (which prompts: ``used``, ``accepted`` or
``all``, :data:`emocircuits.methods.circuits.PROMPT_USES`), ``max_prompts = 0`` (0 = all), ``n_boot = 1000``, ``max_tokens``.

``judge = ""`` (a judge name: also generate under the emotion-instructed prompts and judge the replies, on the
first ``judge_prompts = 6`` prompts, ``max_new_tokens = 30``).

Metrics: ``kind, scale, k, n, base, top, random, random_sd, diff, ci_low, ci_high`` (CI: bootstrap over
prompts of top − random); with a judge also ``judged_base, judged_top, judged_random, judged_diff,
judged_ci_low, judged_ci_high`` (:func:`emocircuits.methods.circuits.judged_cell`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emocircuits.base.constants import VALIDATION_SCALES
from emocircuits.base.errors import EmocircuitsError, spell
from emocircuits.jobs.circuits import read_components, read_directions
from emocircuits.jobs.common import check_made_on
from emocircuits.judges.panel import check_judge_name
from emocircuits.methods.circuits.local_components import KINDS, PROMPT_USES, prompt_rows
from emocircuits.methods.circuits.validate import emotion_prompts, emotion_scores, judged_cell, validate_cell
from emocircuits.runs.rundir import finished_run
from emocircuits.sweeps.base import Analysis
from emocircuits.sweeps.config import at_least, choice
from emocircuits.sweeps.shared import cached_model


@dataclass(frozen=True)
class ComponentValidationParams:
    """``[analysis]`` of component_validation."""

    components: str = ""
    top_k: int = 0
    controls: int = 5
    use: str = "used"
    max_prompts: int = 0
    n_boot: int = 1000
    max_tokens: int = 4096
    judge: str = ""
    judge_prompts: int = 6
    max_new_tokens: int = 30
    allow_other_model: bool = False


@dataclass(frozen=True)
class ComponentValidationCell:
    """One dose-response point."""

    emotion: str
    kind: str = "neurons"
    scale: float = 0.0


@dataclass
class ValidationState:
    model: Any
    spec: Any
    params: ComponentValidationParams
    prompts: Any
    directions: dict[str, Any]
    sets: dict[str, dict[str, Any]]  # kind -> emotion -> NeuronSet | HeadSet
    seed: int  # the sweep seed: the same random sets at every scale of one emotion and kind
    inputs: dict[str, Any] = field(default_factory=dict)  # emotion -> (token_ids, ref, base scores)


def _directions_run(components: str) -> Path:

    manifest = finished_run(Path(components), "neuron_scores.parquet", "circuits components")
    return Path(manifest["config"]["from"])


def _made(components: str) -> list[tuple[str, dict[str, Any]]]:
    manifest = finished_run(Path(components), "neuron_scores.parquet", "circuits components")
    return [(f"The components run {str(components)!r}", manifest)]


def _model_check(cfg: Any) -> dict[str, Any]:
    return {"model": cfg.model.spec, "allow_other_model": cfg.params.allow_other_model}


class ComponentValidation(Analysis):
    name = "component_validation"
    Params = ComponentValidationParams
    Cell = ComponentValidationCell
    default_cells_per_task = 1

    def validate(self, cfg: Any) -> None:

        p: ComponentValidationParams = cfg.params
        if not p.components:
            raise EmocircuitsError("Key 'analysis.components' is empty; name the run directory of "
                                   "`emocircuits circuits components`.")
        source = _directions_run(p.components)
        finished_run(source, "prompts.parquet", "circuits directions")
        check_made_on(_model_check(cfg), _made(p.components))
        at_least("analysis", p, {"top_k": 0, "controls": 1, "max_prompts": 0, "n_boot": 1, "judge_prompts": 1,
                                 "max_new_tokens": 1})
        choice("analysis.use", p.use, PROMPT_USES)
        if p.judge:

            check_judge_name(p.judge)
        emotions = sorted(path.stem for path in (source / "directions").glob("*.json"))
        for e in cfg.grid.get("emotion", []):
            choice("grid.emotion", e, emotions)
        for k in cfg.grid.get("kind", []):
            choice("grid.kind", k, KINDS)
        for s in cfg.grid.get("scale", []):
            if not isinstance(s, int | float) or s < 0:
                raise EmocircuitsError(f"Key 'grid.scale' has value {s!r}; allowed: numbers >= 0.")

    def prepare(self, cfg: Any, shared: dict[str, Any], *, progress: bool = False) -> ValidationState:
        import torch

        p: ComponentValidationParams = cfg.params
        torch.manual_seed(cfg.seed)
        model, spec = cached_model(cfg.model, progress=progress)
        check_made_on(_model_check(cfg), _made(p.components), spec)
        prompts, directions = read_directions(_directions_run(p.components))
        neurons, heads = read_components(Path(p.components), p.top_k or None)
        return ValidationState(model, spec, p, prompts, directions, {"neurons": neurons, "heads": heads}, cfg.seed)

    def run(self, state: ValidationState, cells: Sequence[ComponentValidationCell]) -> list[dict[str, Any]]:

        p = state.params
        out: list[dict[str, Any]] = []
        for cell in cells:
            comp = state.sets[cell.kind].get(cell.emotion)
            if comp is None or not len(comp):
                raise EmocircuitsError(f"The components run has no {cell.kind} for {cell.emotion!r}; drop it from "
                                       "the grid or re-run `circuits components` with that emotion.")
            if cell.emotion not in state.inputs:
                ids, ref = emotion_prompts(state.model, state.prompts, state.directions[cell.emotion], cell.emotion,
                                           use=p.use, max_prompts=p.max_prompts or None, max_tokens=p.max_tokens)
                state.inputs[cell.emotion] = (ids, ref, emotion_scores(state.model, ids, ref,
                                                                       max_tokens=p.max_tokens).numpy())
            ids, ref, base = state.inputs[cell.emotion]
            row = validate_cell(state.model, ids, ref, cell.kind, comp, cell.scale, n_random=p.controls,
                                seed=state.seed, n_boot=p.n_boot, max_tokens=p.max_tokens, base=base)
            if p.judge:  # metric (b): judged expression of generations on a subset of the prompts
                rows = prompt_rows(state.prompts.reset_index(drop=True), cell.emotion, p.use)[:p.judge_prompts]
                row.update(judged_cell(state.model, state.prompts.reset_index(drop=True).iloc[rows], cell.emotion,
                                       cell.kind, comp, cell.scale, p.judge, n_random=p.controls, seed=state.seed,
                                       max_new_tokens=p.max_new_tokens, n_boot=p.n_boot))
            out.append(row)
        return out


def validation_config(*, components: str, model: str | None = None, dtype: str | None = None, kinds: Sequence[str] = KINDS,
                      scales: Sequence[float] = VALIDATION_SCALES, emotions: Sequence[str] | None = None,
                      top_k: int = 0, controls: int = 5, use: str = "used", max_prompts: int = 0, n_boot: int = 1000,
                      seed: int = 0, judge: str = "", judge_prompts: int = 6, max_new_tokens: int = 30,
                      allow_other_model: bool = False) -> Any:
    """The ``component_validation`` sweep config (emotion × kind × scale), validated: what
    ``emocircuits circuits validate`` runs. ``model``/``dtype``: default, those of the components run."""

    made = finished_run(Path(components), "neuron_scores.parquet", "circuits components")["config"]
    model, dtype = model or made.get("model", "default"), dtype or made.get("dtype", "float32")
    have = sorted(path.stem for path in (_directions_run(components) / "directions").glob("*.json"))
    for name, values, allowed in (("kinds", kinds, KINDS), ("emotion", emotions or [], have)):
        bad = [v for v in values if v not in allowed]
        if bad or len(set(values)) < len(values):
            what = f"{bad[0]!r} is not valid" if bad else f"{','.join(values)!r} names one twice"
            raise EmocircuitsError(f"{spell(name, '--' + name)} {what}; use one or more of {', '.join(allowed)}, "
                                   "each once.")
    if not kinds:
        raise EmocircuitsError(f"{spell('kinds', '--kinds')} names no kind; use neurons, heads or neurons,heads.")
    if emotions is None:
        emotions = have
    return {
        "sweep": {"analysis": "component_validation", "seed": seed,
                  "description": "Circuits I validation: top-k components scaled vs random-k"},
        "model": {"spec": model, "dtype": dtype},
        "data": {"spec": "builtin:sev", "split": "all"},  # unused: the prompts are the directions run's
        "analysis": {"components": str(components), "top_k": top_k, "controls": controls, "use": use,
                     "max_prompts": max_prompts, "n_boot": n_boot, "judge": judge, "judge_prompts": judge_prompts,
                     "max_new_tokens": max_new_tokens, "allow_other_model": allow_other_model},
        "grid": {"emotion": list(emotions), "kind": list(kinds), "scale": [float(s) for s in scales]},
    }
