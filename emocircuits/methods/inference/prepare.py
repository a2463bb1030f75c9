"""Preparing examples for the inference analyses (Tak et al. 2025): prompts, kept examples, cached activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from emocircuits.base.constants import DEFAULT_CALIBRATION, DEFAULT_TEMPLATE
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.interventions import (
    Intervention,
)
from emocircuits.core.models import spec_of
from emocircuits.core.readout import LabelReadout, prior_examples_for
from emocircuits.core.runner import Runner
from emocircuits.data import APPRAISAL_COLUMNS, Example

KNOCKOUT_MODES = ("zero", "noise")




def windows(n_layers: int, span: int, stride: int = 1) -> list[tuple[int, ...]]:
    """Windows of ``span`` consecutive layers starting every ``stride`` layers: ``(0..span-1), (stride..), ...``;
    with ``stride > 1`` the last window still ends at the last layer."""
    if not 1 <= span <= n_layers:
        raise EmocircuitsError(f"Window span {span} is out of range; use 1..{n_layers} for this model.")
    if stride < 1:
        raise EmocircuitsError(f"Window stride {stride} is out of range; use 1 or more.")
    starts = list(range(0, n_layers - span + 1, stride))
    if starts[-1] != n_layers - span:
        starts.append(n_layers - span)
    return [tuple(range(s, s + span)) for s in starts]


def _check_sites(sites: Sequence[str], allowed: Sequence[str]) -> list[str]:
    bad = [s for s in sites if s not in allowed]
    if bad or not sites:
        raise EmocircuitsError(f"Site(s) {bad or '[]'} not valid here; use one or more of {', '.join(allowed)}.")
    return list(sites)


# ----------------------------------------------------------------------------------- prepared set
@dataclass
class Prepared:
    """Examples ready for analysis: ``token_ids`` per example, clean ``scores [n, n_labels]`` (label
    log-probs), ``pred [n]`` and ``true [n]`` label indices; ``n_total`` before filtering."""

    readout: LabelReadout
    examples: list[Example]
    token_ids: list[list[int]]
    scores: Tensor
    pred: np.ndarray
    true: np.ndarray
    n_total: int
    clean_accuracy: float
    only_correct: bool

    @property
    def labels(self) -> tuple[str, ...]:
        return self.readout.labels

    @property
    def model(self) -> Any:
        return self.readout.model

    def __len__(self) -> int:
        return len(self.examples)

    def summary(self) -> dict[str, Any]:
        return {"n_total": self.n_total, "n_kept": len(self), "clean_accuracy": self.clean_accuracy,
                "only_correct": self.only_correct, "calibration": self.readout.calibrate or "none",
                "kept_per_label": {lab: int((self.true == i).sum()) for i, lab in enumerate(self.labels)}}

    def predict(self, intervention: Intervention | None = None, rows: Sequence[int] | None = None) -> Tensor:
        """Label scores ``[n, n_labels]`` of (a subset of) the examples under ``intervention``."""
        ids = self.token_ids if rows is None else [self.token_ids[i] for i in rows]
        with intervention.apply(self.model) if intervention is not None else contextlib.nullcontext():
            return self.readout.calibrated(self.readout.scores_of(ids))


def prepare(model: Any, examples: Sequence[Example], *, labels: Sequence[str] | None = None,
            template: str = DEFAULT_TEMPLATE, calibrate: bool | str = DEFAULT_CALIBRATION,
            prior_examples: Sequence[Example] | None = None, only_correct: bool = True,
            max_tokens: int = 4096) -> Prepared:
    """Classify ``examples`` once (clean) and keep the correctly predicted ones when ``only_correct``.

    The readout is the toolkit's default (``chat_short``, first-token scores, calibrated against a label prior
    fitted on ``prior_examples``, else as :func:`emocircuits.core.readout.classify` finds them); the prior is a
    constant per label, so it moves which label wins but no logit difference or gradient. ``calibrate=False``
    and ``template="tak2025"`` give Tak et al.'s plain few-shot readout (their public code's default prompt)
    (``fewshot`` is the toolkit's own few-shot prompt). Raises when nothing is left.
    """

    dataset = examples
    examples = list(examples)
    if not examples:
        raise EmocircuitsError("No examples to analyse; the dataset is empty.")
    labs = tuple(labels or getattr(dataset, "labels", ()) or sorted({ex.label for ex in examples}))
    unknown = sorted({ex.label for ex in examples} - set(labs))
    if unknown:
        raise EmocircuitsError(f"Labels {unknown} are not in the label set {list(labs)}; pass labels= that cover them.")
    if calibrate == "prior" and prior_examples is None:
        prior_examples = prior_examples_for(dataset, labs)[0]
        if prior_examples is None:
            calibrate = "content_free"
    ro = LabelReadout(model, labs, template, "first_token", calibrate, max_tokens=max_tokens)
    if calibrate == "prior":
        ro.fit_prior(prior_examples)
    ids = ro.encode(examples)
    ro.runner.keep_clean()  # knockout and patching at the last token then rerun only that token
    scores = ro.calibrated(ro.scores_of(ids))
    pred = scores.argmax(-1).numpy()
    true = np.array([labs.index(ex.label) for ex in examples])
    correct = pred == true
    acc = float(correct.mean())
    keep = np.nonzero(correct)[0] if only_correct else np.arange(len(examples))
    if len(keep) == 0:
        raise EmocircuitsError("No example was predicted correctly; use another template or only_correct=False.")
    return Prepared(ro, [examples[i] for i in keep], [ids[i] for i in keep], scores[keep], pred[keep], true[keep],
                    len(examples), acc, only_correct)


# ----------------------------------------------------------------------------------- activations
def capture_sites(model: Any, token_ids: Sequence[Sequence[int]], sites: Sequence[str],
                  layers: Sequence[int] | None = None, *, max_tokens: int = 4096) -> dict[str, dict[int, Tensor]]:
    """Last-token readings of several sites in ONE pass: ``{site: {layer: [n, ...]}}`` in input order
    (:meth:`Runner.capture_last`; every layer when ``layers`` is None)."""
    layers = list(range(spec_of(model).n_layers)) if layers is None else [int(x) for x in layers]
    return Runner(model, max_tokens=max_tokens).capture_last(token_ids, {s: layers for s in sites})


def appraisal_matrix(examples: Sequence[Example], names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``[n, k]`` appraisal ratings from ``Example.meta`` (columns every example rates), and their names."""
    names = list(names or APPRAISAL_COLUMNS)
    have = [a for a in names if all(_num(ex.meta.get(a)) is not None for ex in examples)]
    if not have:
        return np.zeros((len(examples), 0)), []
    return np.array([[float(ex.meta[a]) for a in have] for ex in examples]), have


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(f) else f
