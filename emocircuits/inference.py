"""Emotion inference (Tak et al. 2025): probes, knockout, activation and attribution patching, promotion,
appraisal steering — over the runner, the label readout and the interventions.

Every analysis starts from a :class:`Prepared` set (:func:`prepare`): the examples, their prompt token ids,
the clean label scores and predictions, optionally only the correctly predicted examples (as the paper
does), with the counts kept. Readout = argmax over the labels' first-token log-probs at the last
position, calibrated by the toolkit's default label prior (``calibrate=False``: Tak et al.'s plain argmax).

Tables (pandas; schemas in each function's docstring):

* :func:`probe` → ``site, layer, target, metric, value, cv_mean, ci_low, ci_high, control, selectivity``
  plus probe weights as :class:`~emocircuits.components.Direction` (emotion and appraisal).
* :func:`knockout` → ``site, mode, start, end, unchanged, ci_low, ci_high, accuracy, n``.
* :func:`patch` → ``site, start, end, flip, stay, other`` with CIs and ``logit_diff_change``.
* :func:`attribute` → first-order estimates per site/layer (and head) of patching's effect on the
  target-minus-source logit difference; :func:`compare_attribution` → Spearman vs real patching.
* :func:`promote` → ``emotion, beta, base_share, steered_share, success`` with random-direction controls.
* :func:`steer_appraisal` → transitions and theory checks with random-direction percentiles.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.components import Direction
from emocircuits.data import APPRAISAL_COLUMNS, Example
from emocircuits.errors import EmocircuitsError
from emocircuits.interventions import (
    AddDirection,
    GradTap,
    Intervention,
    Noise,
    PatchFrom,
    ScaleSite,
    grad_through_inputs,
)
from emocircuits.models import spec_of
from emocircuits.prompts import DEFAULT_CALIBRATION, DEFAULT_TEMPLATE
from emocircuits.readout import CALIBRATIONS, LabelReadout
from emocircuits.runner import Runner

__all__ = [
    "KNOCKOUT_MODES",
    "PROBE_SITES",
    "AttributionResult",
    "Prepared",
    "ProbeResult",
    "appraisal_direction",
    "attribute",
    "capture_sites",
    "compare_attribution",
    "knockout",
    "make_pairs",
    "mean_ci",
    "patch",
    "prepare",
    "probe",
    "probe_activations",
    "promote",
    "steer_appraisal",
    "windows",
]

PROBE_SITES = ("attn.out", "mlp.out", "resid.post")
KNOCKOUT_MODES = ("zero", "noise")
CALIBRATION_NAMES = tuple("none" if c is False else c for c in CALIBRATIONS)  # as the command line names them
KNOCKOUT_SITES = ("attn.out", "mlp.out")


# ----------------------------------------------------------------------------------- helpers
def mean_ci(x: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``x [n]`` and its bootstrap percentile CI over examples (reuses ``neurons.bootstrap_ci``)."""
    from emocircuits.neurons import bootstrap_ci

    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"), float("nan"))
    lo, hi = bootstrap_ci(np.zeros_like(x), x, None, n_boot=n_boot, seed=seed, level=level)
    return float(x.mean()), lo, hi


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
    fitted on ``prior_examples``, else as :func:`emocircuits.readout.classify` finds them); the prior is a
    constant per label, so it moves which label wins but no logit difference or gradient. ``calibrate=False``
    and ``template="fewshot"`` give Tak et al.'s uncalibrated few-shot readout. Raises when nothing is left.
    """
    from emocircuits.readout import prior_examples_for

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


# ----------------------------------------------------------------------------------- probes
@dataclass
class ProbeResult:
    """``table``: one row per (site, layer, target); ``emotion_directions``: {emotion: Direction};
    ``appraisal_directions``: {appraisal: Direction}; vectors are probe weights in activation space."""

    table: pd.DataFrame
    emotion_directions: dict[str, Direction] = field(default_factory=dict)
    appraisal_directions: dict[str, Direction] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def best(self) -> pd.DataFrame:
        """The best (site, layer) per target by selectivity (value − control)."""
        t = self.table
        return t.loc[t.groupby("target")["selectivity"].idxmax()].reset_index(drop=True)


def _t_ci(scores: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    from scipy import stats

    m = float(np.mean(scores))
    if len(scores) < 2:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, len(scores) - 1) * np.std(scores, ddof=1) / np.sqrt(len(scores)))
    return m, m - half, m + half


def _standardise(x: np.ndarray, fit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sd = fit.mean(0), fit.std(0)
    sd = np.where(sd < 1e-8, 1.0, sd)
    return (x - mu) / sd, mu, sd


def _fit_logreg(x: np.ndarray, y: np.ndarray, c: float, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)


def _probe_emotion(x: np.ndarray, y: np.ndarray, *, c: float, seed: int, folds: int, test_size: float
                   ) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy on an 80/20 split, k-fold CV mean+CI, shuffled-label control; weights ``[n_cls, d]`` (raw space)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    rng = np.random.default_rng(seed)
    counts = np.bincount(y)[np.bincount(y) > 0]
    n_test = int(np.ceil(test_size * len(y)))
    strat = y if counts.min() >= 2 and n_test >= len(counts) and len(y) - n_test >= len(counts) else None
    tr, te = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=strat)
    xs, _, _ = _standardise(x, x[tr])
    clf = _fit_logreg(xs[tr], y[tr], c, seed)
    value = float((clf.predict(xs[te]) == y[te]).mean())
    ctrl = _fit_logreg(xs[tr], rng.permutation(y[tr]), c, seed)
    control = float((ctrl.predict(xs[te]) == y[te]).mean())
    k = min(folds, int(np.bincount(y)[np.bincount(y) > 0].min()))
    cv = []
    if k >= 2:
        for a, b in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
            xf, _, _ = _standardise(x, x[a])
            cv.append(float((_fit_logreg(xf[a], y[a], c, seed).predict(xf[b]) == y[b]).mean()))
    m, lo, hi = _t_ci(np.array(cv)) if cv else (value, value, value)
    # full-data fit for the weights, mapped back to raw activation space (w / sd)
    xs_all, _, sd = _standardise(x, x)
    full = _fit_logreg(xs_all, y, c, seed)
    coef = full.coef_ / sd[None, :]
    if coef.shape[0] == 1:  # binary: sklearn keeps one row (class 1 vs 0)
        coef = np.concatenate([-coef, coef])
    return {"value": value, "cv_mean": m, "ci_low": lo, "ci_high": hi, "control": control,
            "n_train": len(tr), "n_test": len(te)}, coef


def _probe_ridge(x: np.ndarray, ya: np.ndarray, *, alpha: float, seed: int, folds: int, test_size: float
                 ) -> tuple[list[dict[str, float]], np.ndarray]:
    """Ridge R² per appraisal column of ``ya [n, k]`` (one multi-output fit = k separate ridges); weights ``[k, d]``."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, train_test_split

    rng = np.random.default_rng(seed)
    tr, te = train_test_split(np.arange(len(x)), test_size=test_size, random_state=seed)

    def r2(a: np.ndarray, b: np.ndarray, y: np.ndarray) -> np.ndarray:
        model = Ridge(alpha=alpha).fit(x[a], y[a])
        return np.atleast_1d(r2_score(ya[b], model.predict(x[b]), multioutput="raw_values"))

    value = r2(tr, te, ya)
    control = r2(tr, te, _shuffled_rows(ya, tr, rng))
    cv = np.array([r2(a, b, ya) for a, b in KFold(max(2, min(folds, len(x))), shuffle=True,
                                                 random_state=seed).split(x)])  # [k, n_app]
    rows = []
    for j in range(ya.shape[1]):
        m, lo, hi = _t_ci(cv[:, j])
        rows.append({"value": float(value[j]), "cv_mean": m, "ci_low": lo, "ci_high": hi, "control": float(control[j]),
                     "n_train": len(tr), "n_test": len(te)})
    coef = np.atleast_2d(Ridge(alpha=alpha).fit(x, ya).coef_)
    return rows, coef


def _shuffled_rows(ya: np.ndarray, tr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``ya`` with the training rows' targets permuted among themselves (test rows untouched)."""
    out = ya.copy()
    out[tr] = ya[rng.permutation(tr)]
    return out


def probe_activations(acts: Mapping[str, Mapping[int, Tensor]], labels: np.ndarray, label_names: Sequence[str],
                      appraisals: np.ndarray | None = None, appraisal_names: Sequence[str] = (), *,
                      c: float = 1.0, alpha: float = 5.0, seed: int = 42, folds: int = 5,
                      test_size: float = 0.2, provenance: Mapping[str, Any] | None = None) -> ProbeResult:
    """Probes on captured activations ``{site: {layer: [n, d]}}`` (see :func:`probe`)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise EmocircuitsError("Probing needs examples of at least two labels; load more data or turn off only_correct.")
    rows = []
    e_vecs: dict[str, dict[str, dict[int, Tensor]]] = {}
    a_vecs: dict[str, dict[str, dict[int, Tensor]]] = {}
    present = np.unique(labels)
    for site, per in acts.items():
        for layer, t in per.items():
            x = t.double().numpy()
            stats_, coef = _probe_emotion(x, labels, c=c, seed=seed, folds=folds, test_size=test_size)
            rows.append({"site": site, "layer": layer, "target": "emotion", "metric": "accuracy", **stats_})
            for k, cls in enumerate(present):
                e_vecs.setdefault(label_names[int(cls)], {}).setdefault(site, {})[layer] = torch.tensor(coef[k]).float()
            if appraisals is not None and len(appraisal_names):
                arows, acoef = _probe_ridge(x, appraisals, alpha=alpha, seed=seed, folds=folds, test_size=test_size)
                for j, name in enumerate(appraisal_names):
                    rows.append({"site": site, "layer": layer, "target": name, "metric": "r2", **arows[j]})
                    a_vecs.setdefault(name, {}).setdefault(site, {})[layer] = torch.tensor(acoef[j]).float()
    table = pd.DataFrame(rows)
    table["selectivity"] = table["value"] - table["control"]
    prov = dict(provenance or {})
    cfg = {"C": c, "alpha": alpha, "seed": seed, "folds": folds, "test_size": test_size}
    emo = {e: Direction(v, e, {**prov, "method": "logistic probe", **cfg}) for e, v in e_vecs.items()}
    app = {a: Direction(v, a, {**prov, "method": "ridge probe", **cfg}) for a, v in a_vecs.items()}
    return ProbeResult(table, emo, app, cfg)


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


def probe(prep: Prepared, *, sites: Sequence[str] = PROBE_SITES, layers: Sequence[int] | None = None,
          appraisals: Sequence[str] | None = None, c: float = 1.0, alpha: float = 5.0, seed: int = 42,
          folds: int = 5, test_size: float = 0.2) -> ProbeResult:
    """Last-token probes at every layer of each site (all sites captured in one pass).

    Emotion: logistic regression (C=1) on standardised activations, accuracy on an 80/20 split (seed 42),
    k-fold CV mean with a 95% t-interval, and a control probe trained on labels shuffled within the
    training set (``selectivity = value − control``). Appraisals (those every example rates in
    ``meta``): ridge (α=5) R² per appraisal, same split/CV/control. Weights come back as Directions in
    raw activation space. Table: ``site, layer, target, metric, value, cv_mean, ci_low, ci_high, control,
    n_train, n_test, selectivity``.
    """
    sites = _check_sites(sites, PROBE_SITES)
    n_test = int(round(len(prep) * test_size))
    if folds < 2 or len(prep) < max(2 * folds, 10) or n_test < 2 or len(set(prep.true.tolist())) < 2:
        raise EmocircuitsError(
            f"Probes need at least {max(2 * folds, 10)} examples of two or more emotions for {folds}-fold CV and a "
            f"{test_size:.0%} test split (and folds >= 2); {len(prep)} are left — use more examples "
            "(--limit-per-label) or keep wrong predictions too (--all-examples).")
    acts = capture_sites(prep.model, prep.token_ids, sites, layers)
    ya, names = appraisal_matrix(prep.examples, appraisals)
    spec = spec_of(prep.model)
    return probe_activations(acts, prep.true, prep.labels, ya if names else None, names, c=c, alpha=alpha,
                             seed=seed, folds=folds, test_size=test_size,
                             provenance={"model": spec.name if hasattr(spec, "name") else str(spec.architecture),
                                         "n_examples": len(prep)})


# ----------------------------------------------------------------------------------- knockout
def knockout(prep: Prepared, *, sites: Sequence[str] = KNOCKOUT_SITES, span: int = 3, mode: str = "zero",
             seed: int = 0, n_boot: int = 1000, stride: int = 1) -> pd.DataFrame:
    """Knock out the last-token output of ``site`` over sliding windows of ``span`` layers (every ``stride``).

    ``mode="zero"``: ``ScaleSite(factor=0)``; ``"noise"``: norm-matched Gaussian noise (seeded per prompt).
    Table: ``site, mode, start, end, unchanged`` (share of predictions equal to the clean ones),
    ``ci_low, ci_high`` (bootstrap over examples), ``accuracy`` (share correct), ``n``.
    """
    sites = _check_sites(sites, ("attn.out", "mlp.out", "resid.post", "resid.mid"))
    if mode not in KNOCKOUT_MODES:
        raise EmocircuitsError(f"Knockout mode {mode!r} is not valid; use one of {', '.join(KNOCKOUT_MODES)}.")
    rows = []
    for site in sites:
        for w in windows(spec_of(prep.model).n_layers, span, stride):
            iv: Intervention = (ScaleSite(site, w, 0.0, positions="last") if mode == "zero"
                                else Noise(site, w, positions="last", seed=seed))
            pred = prep.predict(iv).argmax(-1).numpy()
            m, lo, hi = mean_ci((pred == prep.pred).astype(float), n_boot=n_boot, seed=seed)
            rows.append({"site": site, "mode": mode, "start": w[0], "end": w[-1], "unchanged": m, "ci_low": lo,
                         "ci_high": hi, "accuracy": float((pred == prep.true).mean()), "n": len(prep)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- patching
def make_pairs(labels: np.ndarray, n_pairs: int, seed: int = 0) -> np.ndarray:
    """``[n_pairs, 2]`` random (source, target) example indices with different labels (seeded)."""
    labels = np.asarray(labels)
    if n_pairs < 1:
        raise EmocircuitsError(f"Number of pairs must be at least 1 (got {n_pairs}).")
    if len(np.unique(labels)) < 2:
        raise EmocircuitsError("Patching needs examples of at least two labels; load more data.")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_pairs:
        s, t = rng.integers(0, len(labels), size=2)
        if labels[s] != labels[t]:
            out.append((int(s), int(t)))
    return np.array(out, dtype=int)


def _pair_sources(acts: Mapping[int, Tensor], pairs: np.ndarray, layers: Sequence[int]) -> dict[int, Tensor]:
    return {layer: acts[layer][pairs[:, 0]] for layer in layers}


def patch(prep: Prepared, *, sites: Sequence[str] = PROBE_SITES, span: int = 3, stride: int = 1, n_pairs: int = 50,
          seed: int = 0,
          pairs: np.ndarray | None = None, n_boot: int = 1000, acts: Mapping[str, Mapping[int, Tensor]] | None = None
          ) -> pd.DataFrame:
    """Activation patching: write each source's last-token activation at ``site`` over a window of layers
    into its target's last token (all pairs in one batched pass per window and site).

    Table: ``site, start, end, flip`` (share now predicting the source's label), ``stay`` (the target's
    clean prediction), ``other``, each with ``*_low, *_high`` bootstrap CIs, ``logit_diff_change`` (mean
    change of target-label minus source-label log-prob, what :func:`attribute` estimates), ``n_pairs``.
    """
    sites = _check_sites(sites, ("attn.out", "mlp.out", "resid.post", "resid.mid", "resid.pre"))
    pairs = make_pairs(prep.pred, n_pairs, seed) if pairs is None else np.asarray(pairs, dtype=int)
    n_layers = spec_of(prep.model).n_layers
    acts = acts or capture_sites(prep.model, prep.token_ids, sites)
    src_lab, tgt_lab = prep.pred[pairs[:, 0]], prep.pred[pairs[:, 1]]
    clean = prep.scores[pairs[:, 1]]
    ar = torch.arange(len(pairs))
    clean_ld = (clean[ar, tgt_lab] - clean[ar, src_lab]).numpy()
    rows = []
    for site in sites:
        for w in windows(n_layers, span, stride):
            iv = PatchFrom(site, _pair_sources(acts[site], pairs, w), positions="last")
            sc = prep.predict(iv, rows=pairs[:, 1].tolist())
            pred = sc.argmax(-1).numpy()
            ld = (sc[ar, tgt_lab] - sc[ar, src_lab]).numpy()
            row: dict[str, Any] = {"site": site, "start": w[0], "end": w[-1]}
            for name, hit in (("flip", pred == src_lab), ("stay", pred == tgt_lab),
                              ("other", (pred != src_lab) & (pred != tgt_lab))):
                m, lo, hi = mean_ci(hit.astype(float), n_boot=n_boot, seed=seed)
                row.update({name: m, f"{name}_low": lo, f"{name}_high": hi})
            row.update({"logit_diff_change": float((ld - clean_ld).mean()), "n_pairs": len(pairs)})
            rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- attribution
@dataclass
class AttributionResult:
    """``layers``: ``site, layer, estimate`` (mean over pairs of grad·Δact, the first-order change of the
    target-minus-source logit difference); ``heads``: ``layer, head, estimate`` (``head.z``);
    ``per_pair``: ``{site: [n_pairs, n_layers]}``; ``seconds``: wall time."""

    layers: pd.DataFrame
    heads: pd.DataFrame
    per_pair: dict[str, np.ndarray]
    pairs: np.ndarray
    seconds: float

    def windows(self, span: int, stride: int = 1) -> pd.DataFrame:
        """Estimates summed over sliding windows (every ``stride`` layers): ``site, start, end, estimate``."""
        rows = []
        for site, per in self.per_pair.items():
            for w in windows(per.shape[1], span, stride):
                rows.append({"site": site, "start": w[0], "end": w[-1], "estimate": float(per[:, list(w)].sum(1).mean())})
        return pd.DataFrame(rows)


def attribute(prep: Prepared, *, sites: Sequence[str] = PROBE_SITES, heads: bool = True, n_pairs: int = 50,
              seed: int = 0, pairs: np.ndarray | None = None, max_tokens: int = 2048,
              acts: Mapping[str, Mapping[int, Tensor]] | None = None) -> AttributionResult:
    """Attribution patching: for each (source, target) pair, ``∂(logit_tgt − logit_src)/∂a · (a_src − a_tgt)``
    at the target's last token, for every layer of each site (and every head via ``head.z``), from one
    forward + backward per batch of pairs. Source activations come from one clean capture pass."""
    sites = _check_sites(sites, ("attn.out", "mlp.out", "resid.post", "resid.mid", "resid.pre"))
    t0 = time.perf_counter()
    model = prep.model
    n_layers = spec_of(model).n_layers
    layers = list(range(n_layers))
    pairs = make_pairs(prep.pred, n_pairs, seed) if pairs is None else np.asarray(pairs, dtype=int)
    all_sites = list(sites) + (["head.z"] if heads else [])
    if acts is None or any(s not in acts for s in all_sites):
        acts = capture_sites(model, prep.token_ids, all_sites)
    src_lab = torch.as_tensor(prep.pred[pairs[:, 0]])
    tgt_lab = torch.as_tensor(prep.pred[pairs[:, 1]])
    first = torch.tensor(prep.readout.first_ids)
    runner = Runner(model, max_tokens=max_tokens, share_prefix=False, grad=True)
    tgt_ids = [prep.token_ids[int(t)] for t in pairs[:, 1]]
    per_pair = {s: np.zeros((len(pairs), n_layers)) for s in all_sites}
    head_pp = None
    store: dict[tuple[str, int], Tensor] = {}
    req = [p for p in model.parameters() if p.requires_grad]
    for p in req:
        p.requires_grad_(False)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(grad_through_inputs(model))
            for s in all_sites:
                stack.enter_context(GradTap(s, tuple(layers), store).apply(model))
            for step in runner.run(runner.batches(tgt_ids)):
                rows = torch.as_tensor(step.batch.rows)
                logits = runner.logits(step.last())[:, first]  # [b, n_labels]
                ar = torch.arange(len(rows))
                metric = logits[ar, tgt_lab[rows]] - logits[ar, src_lab[rows]]
                metric.sum().backward()
                last = step.batch.last_index - step.offset
                for (s, layer), v in store.items():
                    if v.grad is None:
                        continue
                    g = v.grad[ar, last].detach().float().cpu()
                    a_t = v[ar, last].detach().float().cpu()
                    a_s = acts[s][layer][torch.as_tensor(pairs[rows.numpy(), 0])]
                    contrib = (g * (a_s - a_t))
                    if s == "head.z":
                        hp = contrib.sum(-1).numpy()  # [b, n_heads]
                        if head_pp is None:
                            head_pp = np.zeros((len(pairs), n_layers, hp.shape[1]))
                        head_pp[rows.numpy(), layer] = hp
                        per_pair[s][rows.numpy(), layer] = hp.sum(-1)
                    else:
                        per_pair[s][rows.numpy(), layer] = contrib.flatten(1).sum(-1).numpy()
                store.clear()
    finally:
        for p in req:
            p.requires_grad_(True)
    layer_rows = [{"site": s, "layer": layer, "estimate": float(per_pair[s][:, layer].mean())}
                  for s in all_sites for layer in layers]
    head_rows = ([{"layer": layer, "head": h, "estimate": float(head_pp[:, layer, h].mean())}
                  for layer in layers for h in range(head_pp.shape[2])] if head_pp is not None else [])
    return AttributionResult(pd.DataFrame(layer_rows), pd.DataFrame(head_rows, columns=["layer", "head", "estimate"]),
                             per_pair, pairs, time.perf_counter() - t0)


def compare_attribution(estimates: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation per site between window estimates (``AttributionResult.windows``) and real
    patching's ``logit_diff_change`` over the same windows: ``site, spearman, pvalue, n_windows``."""
    from scipy.stats import spearmanr

    m = estimates.merge(real, on=["site", "start", "end"])
    rows = []
    for site, g in m.groupby("site"):
        if len(g) >= 3 and g["estimate"].std() > 0 and g["logit_diff_change"].std() > 0:
            r, p = spearmanr(g["estimate"], g["logit_diff_change"])
        else:
            r, p = float("nan"), float("nan")
        rows.append({"site": site, "spearman": float(r), "pvalue": float(p), "n_windows": len(g)})
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------- promotion
def _shares(pred: np.ndarray, n_labels: int) -> np.ndarray:
    return np.bincount(pred, minlength=n_labels) / max(len(pred), 1)


def _success(base: float, steered: float) -> float:
    d = steered - base
    if d >= 0:
        return d / (1 - base) if base < 1 else 0.0
    return d / base if base > 0 else 0.0


def _random_units(d: int, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, d, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


def promote(prep: Prepared, directions: Mapping[str, Direction], *, layers: Sequence[int],
            betas: Sequence[float] = (1.0, 2.0, 4.0), n_random: int = 20, seed: int = 0, site: str = "resid.post",
            rms_scaled: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Direct promotion: add ``β · unit(w_e[layer])`` to ``site`` at each layer of ``layers`` at the last token.

    Success = change of the share predicted as ``e`` over its headroom (``(s − p)/(1 − p)`` when rising,
    ``(s − p)/p`` when falling). Controls: ``n_random`` random unit directions (one per run, the same at
    every layer), same β; one pass per control serves every emotion. Returns
    ``(table, controls)``: table ``emotion, beta, base_share, steered_share, success, random_mean,
    random_low, random_high, percentile``; controls ``emotion, beta, control, success``.
    """
    if n_random < 0:
        raise EmocircuitsError(f"n_random must be at least 0 (got {n_random}).")
    layers = [int(x) for x in layers]
    labs = prep.labels
    base = _shares(prep.pred, len(labs))
    d = spec_of(prep.model).d_model
    rand = _random_units(d, n_random, seed)
    ctrl_rows = []
    for beta in betas:
        for k in range(n_random):
            iv = AddDirection(rand[k], site, tuple(layers), float(beta), positions="last", rms_scaled=rms_scaled)
            sh = _shares(prep.predict(iv).argmax(-1).numpy(), len(labs))
            for j, e in enumerate(labs):
                ctrl_rows.append({"emotion": e, "beta": float(beta), "control": k, "success": _success(base[j], sh[j])})
    controls = pd.DataFrame(ctrl_rows, columns=["emotion", "beta", "control", "success"])
    rows = []
    for e, dirn in directions.items():
        if e not in labs:
            continue
        j = labs.index(e)
        vec = {layer: dirn.vector(site, layer) for layer in layers}
        for beta in betas:
            iv = AddDirection(vec, site, tuple(layers), float(beta), positions="last", rms_scaled=rms_scaled, unit=True)
            sh = _shares(prep.predict(iv).argmax(-1).numpy(), len(labs))
            s = _success(base[j], sh[j])
            c = controls[(controls.emotion == e) & (controls.beta == float(beta))]["success"].to_numpy()
            rows.append({"emotion": e, "beta": float(beta), "base_share": float(base[j]), "steered_share": float(sh[j]),
                         "success": s, "random_mean": float(c.mean()) if len(c) else float("nan"),
                         "random_low": float(np.quantile(c, 0.025)) if len(c) else float("nan"),
                         "random_high": float(np.quantile(c, 0.975)) if len(c) else float("nan"),
                         "percentile": float((c < s).mean() * 100) if len(c) else float("nan")})
    return pd.DataFrame(rows), controls


# ----------------------------------------------------------------------------------- appraisal steering
def appraisal_direction(weights: Mapping[str, Tensor], change: Mapping[str, int], fixed: Sequence[str] = ()) -> Tensor:
    """Unit ``v = (I − P_fixed) Σ_a c_a w_a`` : ``weights[a] [d]`` ridge weights, ``change`` a → ±1, ``fixed``
    the appraisals whose span is projected out (orthonormal basis by QR). Raises when nothing is left."""
    missing = [a for a in (*change, *fixed) if a not in weights]
    if missing:
        raise EmocircuitsError(f"No probe weights for appraisals {missing}; probe them first (known: {sorted(weights)}).")
    v = sum(float(c) * weights[a].double() for a, c in change.items())
    if not isinstance(v, Tensor):
        raise EmocircuitsError("Choose at least one appraisal to raise or lower.")
    if fixed:
        f = torch.stack([weights[a].double() for a in fixed], dim=1)  # [d, k]
        q, _ = torch.linalg.qr(f)
        v = v - q @ (q.T @ v)
    n = v.norm()
    if n < 1e-10:
        raise EmocircuitsError("The appraisal direction vanishes after removing the fixed appraisals; fix fewer.")
    return (v / n).float()


def steer_appraisal(prep: Prepared, weights: Mapping[str, Tensor], settings: Sequence[Any], *, layers: Sequence[int],
                    beta: float = 4.0, n_random: int = 100, seed: int = 0, site: str = "resid.post"
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Steer along appraisal directions (:func:`appraisal_direction`, ×β) added over ``layers`` at the last token.

    ``settings``: :class:`~emocircuits.appraisal_theory.TheorySetting` s. Random controls: ``n_random`` random
    directions of the same norm (β), one pass each, shared by every setting. Returns ``(summary,
    transitions)``: summary ``setting, expected, expected_shift`` (change of the summed share of the
    expected emotions), ``as_theory`` (shift > 0), ``random_mean, percentile`` (of the shift among random
    directions), ``shift_<emotion>``; transitions ``setting, clean, steered, count``.
    """
    layers = [int(x) for x in layers]
    labs = prep.labels
    base = _shares(prep.pred, len(labs))
    rand = _random_units(spec_of(prep.model).d_model, n_random, seed)
    rand_shift = []
    for k in range(n_random):
        iv = AddDirection(rand[k], site, tuple(layers), float(beta), positions="last")
        rand_shift.append(_shares(prep.predict(iv).argmax(-1).numpy(), len(labs)) - base)
    rand_shift_a = np.array(rand_shift).reshape(n_random, len(labs))
    rows, trans = [], []
    for s in settings:
        v = appraisal_direction(weights, s.change, s.fixed)
        iv = AddDirection(v, site, tuple(layers), float(beta), positions="last")
        pred = prep.predict(iv).argmax(-1).numpy()
        shift = _shares(pred, len(labs)) - base
        idx = [labs.index(e) for e in s.expected if e in labs]
        exp_shift = float(shift[idx].sum())
        r = rand_shift_a[:, idx].sum(1) if n_random else np.array([])
        row = {"setting": s.name, "expected": ",".join(s.expected), "expected_shift": exp_shift,
               "as_theory": bool(exp_shift > 0), "random_mean": float(r.mean()) if len(r) else float("nan"),
               "percentile": float((r < exp_shift).mean() * 100) if len(r) else float("nan"),
               "beta": float(beta), "source": s.source}
        row.update({f"shift_{e}": float(shift[j]) for j, e in enumerate(labs)})
        rows.append(row)
        ct = pd.crosstab(pd.Series([labs[i] for i in prep.pred], name="clean"),
                         pd.Series([labs[i] for i in pred], name="steered"))
        for a in ct.index:
            for b in ct.columns:
                if ct.loc[a, b]:
                    trans.append({"setting": s.name, "clean": a, "steered": b, "count": int(ct.loc[a, b])})
    return pd.DataFrame(rows), pd.DataFrame(trans, columns=["setting", "clean", "steered", "count"])


# ============================================================================ re-runnable jobs
# ``emocircuits inference <cmd>`` builds a config dict and calls ``run_inference``; ``emocircuits rerun``
# calls the same function with a manifest's config, without importing the CLI.

COMMANDS = ("probe", "knockout", "patch", "attribute", "promote", "appraisal")


def _sites(text: str, allowed: tuple[str, ...]) -> list[str]:
    sites = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in sites if s not in allowed]
    if bad or not sites:
        raise EmocircuitsError(f"--sites {text!r} is not valid; use a comma list of {', '.join(allowed)}.")
    return sites


def _floats(text: str, name: str) -> list[float]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise EmocircuitsError(f"--{name} {text!r} is not a comma list of numbers; write e.g. 1,2,4.") from None
    if not vals:
        raise EmocircuitsError(f"--{name} is empty; give at least one number.")
    return vals


def validate(cmd: str, cfg: dict[str, Any]) -> None:
    """Check a config without a model (one sentence per problem)."""
    import emocircuits.inference as inf
    from emocircuits.appraisal_theory import get_setting
    from emocircuits.sites import check_layer_range

    if cmd not in COMMANDS:
        raise EmocircuitsError(f"Unknown inference command {cmd!r}; use one of {', '.join(COMMANDS)}.")
    for key in ("span", "stride", "n_pairs", "folds"):
        if key in cfg and int(cfg[key]) < 1:
            raise EmocircuitsError(f"--{key.replace('_', '-')} must be at least 1 (got {cfg[key]}).")
    if "sites" in cfg:
        allowed = inf.KNOCKOUT_SITES if cmd == "knockout" else inf.PROBE_SITES
        _sites(cfg["sites"], allowed)
    calibration = cfg.get("calibration", "none")
    if calibration not in CALIBRATION_NAMES:
        raise EmocircuitsError(f"--calibration {calibration!r} is not valid; use one of {', '.join(CALIBRATION_NAMES)}.")
    if cmd == "knockout" and cfg["mode"] not in inf.KNOCKOUT_MODES:
        raise EmocircuitsError(f"--mode {cfg['mode']!r} is not valid; use one of {', '.join(inf.KNOCKOUT_MODES)}.")
    if "layers" in cfg and cfg["layers"] is not None:
        check_layer_range(cfg["layers"], "layers")
    if "betas" in cfg:
        _floats(cfg["betas"], "betas")
    if "n_random" in cfg and int(cfg["n_random"]) < 0:
        raise EmocircuitsError(f"--n-random must be at least 0 (got {cfg['n_random']}).")
    if cmd == "appraisal":
        for name in [s for s in cfg["settings"].split(",") if s.strip()] or ["?"]:
            get_setting(name.strip())
    if cfg.get("limit_per_label") is not None and int(cfg["limit_per_label"]) < 1:
        raise EmocircuitsError(f"--limit-per-label must be at least 1 (got {cfg['limit_per_label']}).")


def run_inference(cmd: str, config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> dict:
    """Run one inference analysis from its config and write the run directory ``out``; returns the summary."""
    import emocircuits.inference as inf
    from emocircuits.data import load_data
    from emocircuits.models import load_for_config
    from emocircuits.runs import RunDir
    from emocircuits.sites import layer_range

    validate(cmd, config)
    split = None if config["split"] in (None, "all") else config["split"]
    data = load_data(config["data"], split=split, limit_per_label=config["limit_per_label"], seed=config["seed"])
    bridge, spec = load_for_config(config, quiet, model_pair)
    layers = layer_range(spec.n_layers, config["layers"]) if config.get("layers") else None
    if "span" in config:
        inf.windows(spec.n_layers, int(config["span"]), int(config.get("stride", 1)))
    with RunDir.create(out, command=f"inference {cmd}", config=config, model_spec=spec, seed=config["seed"]) as run:
        calibration = config.get("calibration", "none")  # runs made before the option read uncalibrated
        prep = inf.prepare(bridge, data, template=config["template"], only_correct=not config["all_examples"],
                           calibrate=False if calibration == "none" else calibration)
        summary: dict[str, Any] = {"examples": prep.summary()}
        seed = int(config["seed"])
        if cmd == "probe":
            res = inf.probe(prep, sites=_sites(config["sites"], inf.PROBE_SITES), layers=layers,
                            folds=int(config["folds"]), seed=seed)
            run.write_table("probes", res.table, "site, layer, target, metric, value (80/20), cv_mean, ci_low, ci_high "
                            "(95% t over folds), control (shuffled labels), selectivity, n_train, n_test")
            names = []
            for kind, dirs in (("emotion", res.emotion_directions), ("appraisal", res.appraisal_directions)):
                for name, d in dirs.items():
                    d.save(run.path / "directions" / f"{kind}_{name}")
                    names.append(f"directions/{kind}_{name}.json")
            summary["best"] = res.best().to_dict("records")
            run.update(directions=names)
        elif cmd == "knockout":
            t = inf.knockout(prep, sites=_sites(config["sites"], inf.KNOCKOUT_SITES), span=int(config["span"]),
                             stride=int(config.get("stride", 1)), mode=config["mode"], seed=seed)
            run.write_table("knockout", t, "site, mode, start, end, unchanged, ci_low, ci_high, accuracy, n")
            summary["most_disruptive"] = t.loc[t.groupby("site")["unchanged"].idxmin()].to_dict("records")
        elif cmd in ("patch", "attribute"):
            sites = _sites(config["sites"], inf.PROBE_SITES)
            stride = int(config.get("stride", 1))
            pairs = inf.make_pairs(prep.pred, int(config["n_pairs"]), seed)
            att = inf.attribute(prep, sites=sites, pairs=pairs) if cmd == "attribute" else None
            if att is not None:
                run.write_table("attribution_layers", att.layers, "site, layer, estimate (mean grad x delta)")
                run.write_table("attribution_heads", att.heads, "layer, head, estimate")
                run.write_table("attribution_windows", att.windows(int(config["span"]), stride),
                                "site, start, end, estimate")
                summary["attribution_seconds"] = att.seconds
            if cmd == "patch" or config.get("compare"):
                import time

                t0 = time.perf_counter()
                real = inf.patch(prep, sites=sites, span=int(config["span"]), stride=stride, pairs=pairs, seed=seed)
                summary["patch_seconds"] = time.perf_counter() - t0
                run.write_table("patching", real, "site, start, end, flip/stay/other shares with _low/_high CIs, "
                                "logit_diff_change, n_pairs")
                if att is not None:
                    cmp_ = inf.compare_attribution(att.windows(int(config["span"]), stride), real)
                    run.write_table("attribution_vs_patching", cmp_, "site, spearman, pvalue, n_windows")
                    summary["spearman"] = cmp_.to_dict("records")
        else:
            win = layers or layer_range(spec.n_layers, "middle")[:3]
            pr = inf.probe(prep, sites=["resid.post"], layers=win, folds=2, seed=42)
            if cmd == "promote":
                t, ctrl = inf.promote(prep, pr.emotion_directions, layers=win, betas=_floats(config["betas"], "betas"),
                                      n_random=int(config["n_random"]), seed=seed, rms_scaled=config["rms_scaled"])
                run.write_table("promotion", t, "emotion, beta, base_share, steered_share, success, random_mean, "
                                "random_low, random_high, percentile")
                run.write_table("promotion_controls", ctrl, "emotion, beta, control, success")
                summary["promotion"] = t.to_dict("records")
            else:
                from emocircuits.appraisal_theory import get_setting, theory_table

                layer = win[len(win) // 2]
                weights = {a: d.vector("resid.post", layer) for a, d in pr.appraisal_directions.items()}
                settings = [get_setting(s.strip()) for s in config["settings"].split(",") if s.strip()]
                t, trans = inf.steer_appraisal(prep, weights, settings, layers=win, beta=float(config["beta"]),
                                               n_random=int(config["n_random"]), seed=seed)
                run.write_table("appraisal_steering", t, "setting, expected, expected_shift, as_theory, random_mean, "
                                "percentile, beta, source, shift_<emotion>")
                run.write_table("appraisal_transitions", trans, "setting, clean, steered, count")
                run.write_table("theory", theory_table(), "setting, raise, lower, fixed, expected, source, note")
                summary["steering"] = t.drop(columns=["source"]).to_dict("records")
        run.write_json("summary", summary, "counts kept after filtering and headline numbers")
        run.update(summary={"n_kept": len(prep), "n_total": prep.n_total})
    return summary


def _register_jobs() -> None:
    from emocircuits.runs import register_command

    for cmd in COMMANDS:
        register_command(f"inference {cmd}", lambda cfg, out, _c=cmd: run_inference(_c, dict(cfg), Path(out), quiet=True))


_register_jobs()
