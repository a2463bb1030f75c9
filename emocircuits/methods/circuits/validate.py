"""Validating local components by ablation and enhancement against random components of the same layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from emocircuits.base.constants import EKMAN6, VALIDATION_SCALES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.stats import bootstrap_ci
from emocircuits.core.components import Direction
from emocircuits.core.generation import generate
from emocircuits.core.interventions import ScaleHeads, ScaleNeurons
from emocircuits.core.models import spec_of
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.judges.panel import judge_panel
from emocircuits.methods.circuits.directions import capture_last, reference_direction
from emocircuits.methods.circuits.elicit import messages, prompt_ids
from emocircuits.methods.circuits.local_components import prompt_rows, random_heads
from emocircuits.methods.neurons.find import random_control


def _scale(kind: str, comp: Any, factor: float) -> Any:

    return ScaleNeurons(comp, factor=factor) if kind == "neurons" else ScaleHeads(comp, factor=factor)


def random_like(kind: str, comp: Any, spec: Any, seed: int) -> Any:
    """k random components of ``kind`` with ``comp``'s per-layer counts (``neurons.random_control`` /
    :func:`random_heads`)."""

    return random_control(comp, spec.d_mlp, seed) if kind == "neurons" else random_heads(comp, spec.n_heads, seed)


def emotion_scores(model: Any, token_ids: Sequence[Sequence[int]], ref: Tensor, *, max_tokens: int = 4096) -> Tensor:
    """``[n]`` projection of the last layer's ``resid.post`` at each prompt's last token on ``ref [d_model]``."""

    last = spec_of(model).n_layers - 1
    r = capture_last(model, token_ids, {"resid.post": [last]}, max_tokens=max_tokens)["resid.post"][last]
    return r @ ref.float()


def validate_cell(model: Any, token_ids: Sequence[Sequence[int]], ref: Tensor, kind: str, comp: Any, scale: float, *,
                  n_random: int = 5, seed: int = 0, n_boot: int = 1000, max_tokens: int = 4096,
                  base: np.ndarray | None = None) -> dict[str, Any]:
    """One dose-response point: the emotion score (:func:`emotion_scores` on ``ref [d_model]``) of
    ``token_ids`` with ``comp`` (a NeuronSet for ``kind="neurons"``, a HeadSet for ``"heads"``) scaled by
    ``scale``, against ``n_random`` random sets with the same per-layer counts (seeds ``seed*1000 + r``).

    Returns ``kind, scale, k, n, base, top, random, random_sd, diff, ci_low, ci_high``: ``top``/``random``
    are mean scores (random: over sets and prompts), ``diff`` = top − random and its CI is a bootstrap over
    prompts of that difference (``neurons.bootstrap_ci``). ``base`` (the clean scores ``[n]``) may be
    passed to save its pass.
    """

    if n_random < 1:
        raise EmocircuitsError(f"n_random must be at least 1 (got {n_random}).")
    if base is None:
        base = emotion_scores(model, token_ids, ref, max_tokens=max_tokens).numpy()
    if scale == 1.0:  # scaling by 1 is the identity (bit-exact): no pass needed
        top, rand = base, np.stack([base] * n_random)
    else:
        spec = spec_of(model)
        with _scale(kind, comp, scale).apply(model):
            top = emotion_scores(model, token_ids, ref, max_tokens=max_tokens).numpy()
        rand_list = []
        for r in range(n_random):
            with _scale(kind, random_like(kind, comp, spec, seed * 1000 + r), scale).apply(model):
                rand_list.append(emotion_scores(model, token_ids, ref, max_tokens=max_tokens).numpy())
        rand = np.stack(rand_list)
    lo, hi = bootstrap_ci(base, top, rand, n_boot=n_boot, seed=seed)
    return {"kind": kind, "scale": float(scale), "k": len(comp), "n": len(base), "base": float(base.mean()),
            "top": float(top.mean()), "random": float(rand.mean()),
            "random_sd": float(rand.mean(1).std()) if n_random > 1 else 0.0,
            "diff": float(top.mean() - rand.mean()), "ci_low": lo, "ci_high": hi}


def judged_cell(model: Any, items: pd.DataFrame, emotion: str, kind: str, comp: Any, scale: float, judge: Any, *,
                n_random: int = 5, seed: int = 0, max_new_tokens: int = 30, n_boot: int = 1000) -> dict[str, Any]:
    """The judged side of a dose-response point: greedy replies to ``items`` (emotion-instructed prompts:
    ``system, user``) with ``comp`` scaled by ``scale``, and with ``n_random`` random sets of the same per-layer
    counts (the seeds of :func:`validate_cell`), judged by ``judge`` (a name or judge object) against
    ``emotion``. Returns ``judged_base, judged_top, judged_random`` (share judged as ``emotion``) and
    ``judged_diff, judged_ci_low, judged_ci_high`` (bootstrap over prompts of top − random)."""

    judge_obj = judge_panel([judge], model=model, emotions=EKMAN6)[0]
    msgs = messages(items)

    def correct(intervention: Any) -> np.ndarray:
        with intervention.apply(model) if intervention is not None else _nothing():
            texts = generate(model, msgs, max_new_tokens=max_new_tokens).texts
        pred = judge_obj.judge([t.strip() for t in texts], [emotion] * len(texts))["predicted"].astype(str)
        return (pred.to_numpy() == emotion).astype(float)

    spec = spec_of(model)
    base = correct(None)
    top = base if scale == 1.0 else correct(_scale(kind, comp, scale))
    rand = np.stack([base if scale == 1.0 else correct(_scale(kind, random_like(kind, comp, spec, seed * 1000 + r),
                                                              scale)) for r in range(n_random)])
    lo, hi = bootstrap_ci(base, top, rand, n_boot=n_boot, seed=seed)
    return {"judged_base": float(base.mean()), "judged_top": float(top.mean()), "judged_random": float(rand.mean()),
            "judged_diff": float(top.mean() - rand.mean()), "judged_ci_low": lo, "judged_ci_high": hi}


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def validate_components(model: Any, prompts: pd.DataFrame, directions: Mapping[str, Direction],
                        neuron_sets: Mapping[str, NeuronSet] | None = None,
                        head_sets: Mapping[str, HeadSet] | None = None, *, scales: Sequence[float] = VALIDATION_SCALES,
                        n_random: int = 5, seed: int = 0, use: str = "used", max_prompts: int | None = None,
                        n_boot: int = 1000, max_tokens: int = 4096, progress: bool = False) -> pd.DataFrame:
    """Dose-response of scaling each emotion's top-k components by ``s`` against ``n_random`` random sets
    with the same per-layer counts, on the emotion score (:func:`emotion_scores` on the emotion's
    :func:`reference_direction`) under that emotion's prompts: :func:`validate_cell` for every emotion,
    kind and scale. Returns ``emotion`` + :func:`validate_cell`'s columns, one row per point.

    In one process; ``emocircuits circuits validate`` runs the same cells through the sweep engine
    (the ``component_validation`` analysis), resumable and on Ray.
    """
    from tqdm.auto import tqdm

    if n_random < 1:
        raise EmocircuitsError(f"n_random must be at least 1 (got {n_random}).")
    kinds = [(k, s) for k, s in (("neurons", neuron_sets), ("heads", head_sets)) if s]
    rows = []
    jobs = [(e, k, sets[e]) for e in directions for k, sets in kinds if e in sets and len(sets[e])]
    for emo, kind, comp in tqdm(jobs, desc="validate", disable=not progress):
        ids, ref = emotion_prompts(model, prompts, directions[emo], emo, use=use, max_prompts=max_prompts,
                                   max_tokens=max_tokens)
        base = emotion_scores(model, ids, ref, max_tokens=max_tokens).numpy()
        for s in scales:
            rows.append({"emotion": emo, **validate_cell(model, ids, ref, kind, comp, s, n_random=n_random, seed=seed,
                                                         n_boot=n_boot, max_tokens=max_tokens, base=base)})
    if not rows:
        raise EmocircuitsError("No components to validate; pass neuron or head sets for the directions' emotions.")
    return pd.DataFrame(rows)


def emotion_prompts(model: Any, prompts: pd.DataFrame, direction: Direction, emotion: str, *, use: str = "used",
                    max_prompts: int | None = None, max_tokens: int = 4096) -> tuple[list[list[int]], Tensor]:
    """The token ids of ``emotion``'s prompts (rows chosen by ``use``, at most ``max_prompts``) and the
    emotion's :func:`reference_direction` ``[d_model]``: the inputs of :func:`validate_cell`."""
    idx = prompt_rows(prompts.reset_index(drop=True), emotion, use)
    if max_prompts is not None:
        idx = idx[:max_prompts]
    return prompt_ids(model, prompts.reset_index(drop=True).iloc[idx], max_tokens), reference_direction(direction)
