"""Probes by layer (Tak et al. 2025): emotion logistic regressions and appraisal ridge regressions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.constants import PROBE_MAX_ITER, PROBE_SEED, PROBE_SITES
from emocircuits.base.errors import EmocircuitsError, spell
from emocircuits.base.seeds import derive_seed
from emocircuits.base.stats import bootstrap_versus_controls, clip_interval, wilson_interval
from emocircuits.core.components import Direction
from emocircuits.core.models import spec_of
from emocircuits.methods.inference.prepare import Prepared, _check_sites, appraisal_matrix, capture_sites


# ----------------------------------------------------------------------------------- probes
@dataclass
class ProbeResult:
    """``table``: one row per (site, layer, target); ``emotion_directions``: {emotion: Direction};
    ``appraisal_directions``: {appraisal: Direction}; vectors are probe weights in activation space."""

    table: pd.DataFrame
    emotion_directions: dict[str, Direction] = field(default_factory=dict)
    appraisal_directions: dict[str, Direction] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    split: dict[str, list[int]] = field(default_factory=dict)
    """Row indices (into the prepared examples) of the emotion probes' ``train`` and ``test`` parts."""

    def best(self) -> pd.DataFrame:
        """The best (site, layer) per target by selectivity (cv_mean − control mean): the highest point
        estimate, chosen on the same data (optimistic; see its ``selectivity_low``)."""
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


def _fit_logreg(x: np.ndarray, y: np.ndarray, c: float, seed: int, max_iter: int = PROBE_MAX_ITER) -> Any:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():  # a capped fit (max_iter, e.g. Tak et al.'s 100) is a setting, not an accident
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y)


def label_permutations(n: int, k: int, seed: int) -> np.ndarray:
    """``[k, n]`` row permutations for K label-permutation controls; permutation ``i`` is drawn from
    ``derive_seed(seed, "probe-permutation", i, attempt)`` (so it does not depend on K or on the order of
    draws), redrawn (next ``attempt``) while it repeats an earlier one, so the K draws are distinct when
    ``n! >= k``."""
    out: list[np.ndarray] = []
    seen: set[bytes] = set()
    for i in range(k):
        for attempt in range(100):
            p = np.random.default_rng(derive_seed(seed, "probe-permutation", i, attempt)).permutation(n)
            if p.tobytes() not in seen:
                break
        seen.add(p.tobytes())
        out.append(p)
    return np.stack(out) if out else np.zeros((0, n), dtype=int)


def _scaled(x: np.ndarray, fit: np.ndarray, standardise: bool) -> tuple[np.ndarray, np.ndarray]:
    """``x`` standardised on ``fit``'s mean and sd (``standardise``), else raw; and the sd to map weights back."""
    if not standardise:
        return x, np.ones(x.shape[1])
    xs, _, sd = _standardise(x, fit)
    return xs, sd


def emotion_split(y: np.ndarray, test_size: float, seed: int, stratify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The emotion probe's train/test row indices: ``train_test_split`` with ``seed``, stratified by label
    when ``stratify`` and every label can be (else unstratified)."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)[np.bincount(y) > 0]
    n_test = int(np.ceil(test_size * len(y)))
    ok = counts.min() >= 2 and n_test >= len(counts) and len(y) - n_test >= len(counts)
    strat = y if stratify and ok else None
    tr, te = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=strat)
    return tr, te


def _oof_correct(x: np.ndarray, y: np.ndarray, splits: Sequence[tuple[np.ndarray, np.ndarray]],
                 train_labels: np.ndarray, c: float, seed: int, standardise: bool = True,
                 max_iter: int = PROBE_MAX_ITER) -> np.ndarray:
    """0/1 correctness against ``y`` of each held-out row (rows of the splits' test parts, in order), the
    probe of each split trained on ``train_labels`` (``y`` itself, or a permutation of it)."""
    out = []
    for a, b in splits:
        xf, _ = _scaled(x, x[a], standardise)
        out.append(_fit_logreg(xf[a], train_labels[a], c, seed, max_iter).predict(xf[b]) == y[b])
    return np.concatenate(out).astype(float)


def _probe_emotion(x: np.ndarray, y: np.ndarray, *, c: float, seed: int, folds: int, test_size: float,
                   perms: np.ndarray, random_features: int | None = None, n_boot: int = 1000,
                   standardise: bool = True, stratify: bool = True,
                   max_iter: int = PROBE_MAX_ITER) -> tuple[dict[str, float], np.ndarray]:
    """Emotion probe of ``x [n, d]`` for labels ``y [n]``; weights ``[n_cls, d]`` in raw space.

    ``value``: accuracy on an 80/20 split (Wilson interval ``value_low, value_high``). ``cv_mean``: accuracy
    of the pooled out-of-fold predictions of k-fold CV (every example predicted once, by a probe that did not
    see it), ``ci_low, ci_high`` its Wilson interval over the ``n_oof`` examples (always inside [0, 1]).
    Controls: the same CV with the labels permuted by each row of ``perms [K, n]``, scored against the true
    labels: ``control`` (mean of the K), ``control_std``, ``control_low, control_high``, and
    ``selectivity = cv_mean − control`` with ``selectivity_low, selectivity_high``
    (:func:`emocircuits.base.stats.bootstrap_versus_controls`: examples paired, the K draws resampled).
    ``random_features`` (a seed, or None): the same CV on Gaussian features of the same shape.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    counts = np.bincount(y)[np.bincount(y) > 0]
    tr, te = emotion_split(y, test_size, seed, stratify)
    xs, _ = _scaled(x, x[tr], standardise)
    clf = _fit_logreg(xs[tr], y[tr], c, seed, max_iter)
    hits = int((clf.predict(xs[te]) == y[te]).sum())
    value = hits / len(te)
    v_lo, v_hi = wilson_interval(hits, len(te))
    k = min(folds, int(counts.min()))
    if not stratify:
        k = folds
    splits = ((list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y)) if stratify
               else list(KFold(k, shuffle=True, random_state=seed).split(x))) if k >= 2
              else [(tr, te)])  # too few of a label for k-fold: the 80/20 split is the one "fold"
    correct = _oof_correct(x, y, splits, y, c, seed, standardise, max_iter)  # [n_oof]
    ctrl = np.stack([_oof_correct(x, y, splits, y[p], c, seed, standardise, max_iter) for p in perms])  # [K, n_oof]
    m = float(correct.mean())
    lo, hi = wilson_interval(int(correct.sum()), len(correct))
    vs = bootstrap_versus_controls(correct, ctrl, n_boot=n_boot, seed=seed)
    row = {"value": value, "value_low": v_lo, "value_high": v_hi, "cv_mean": m, "ci_low": lo, "ci_high": hi,
           "n_oof": len(correct), "control": vs["control"], "control_std": vs["control_std"],
           "control_low": vs["control_low"], "control_high": vs["control_high"], "k_controls": len(perms),
           "selectivity": vs["diff"], "selectivity_low": vs["diff_low"], "selectivity_high": vs["diff_high"],
           "random_features": np.nan, "random_features_low": np.nan, "random_features_high": np.nan,
           "n_train": len(tr), "n_test": len(te)}
    if random_features is not None:
        g = np.random.default_rng(random_features).standard_normal(x.shape)
        rf = _oof_correct(g, y, splits, y, c, seed, standardise, max_iter)
        row["random_features"] = float(rf.mean())
        row["random_features_low"], row["random_features_high"] = wilson_interval(int(rf.sum()), len(rf))
    # full-data fit for the weights, mapped back to raw activation space (w / sd)
    xs_all, sd = _scaled(x, x, standardise)
    full = _fit_logreg(xs_all, y, c, seed, max_iter)
    coef = full.coef_ / sd[None, :]
    if coef.shape[0] == 1:  # binary: sklearn keeps one row (class 1 vs 0)
        coef = np.concatenate([-coef, coef])
    return row, coef


def _probe_ridge(x: np.ndarray, ya: np.ndarray, *, alpha: float, seed: int, folds: int, test_size: float,
                 perms: np.ndarray, random_features: int | None = None) -> tuple[list[dict[str, float]], np.ndarray]:
    """Ridge R² per appraisal column of ``ya [n, k]`` (one multi-output fit = k separate ridges); weights ``[k, d]``.

    ``value``: R² on the 80/20 split; ``cv_mean``: mean R² over the CV folds with a 95% t-interval over
    folds (``ci_low, ci_high``; R² has no lower bound, the upper end is clipped at 1, ``ci_clipped``).
    Controls: the same CV with the rows of ``ya`` permuted by each row of ``perms [K, n]``: ``control`` (mean
    of the K fold-mean R²s), ``control_std``, ``control_low, control_high`` (t over the K), and
    ``selectivity = cv_mean − control`` with a paired t-interval over folds.
    """
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, train_test_split

    tr, te = train_test_split(np.arange(len(x)), test_size=test_size, random_state=seed)

    def r2(a: np.ndarray, b: np.ndarray, y: np.ndarray, feats: np.ndarray = x) -> np.ndarray:
        model = Ridge(alpha=alpha).fit(feats[a], y[a])
        return np.atleast_1d(r2_score(ya[b], model.predict(feats[b]), multioutput="raw_values"))

    splits = list(KFold(max(2, min(folds, len(x))), shuffle=True, random_state=seed).split(x))
    value = r2(tr, te, ya)
    cv = np.array([r2(a, b, ya) for a, b in splits])  # [folds, n_app]
    ctrl = np.array([[r2(a, b, ya[p]) for a, b in splits] for p in perms])  # [K, folds, n_app]
    rf = None
    if random_features is not None:
        g = np.random.default_rng(random_features).standard_normal(x.shape)
        rf = np.array([r2(a, b, ya, g) for a, b in splits]).mean(0)  # [n_app]
    rows = []
    for j in range(ya.shape[1]):
        m, lo, hi = _t_ci(cv[:, j])
        lo, hi, clipped = clip_interval(lo, hi, -np.inf, 1.0)
        per_k = ctrl[:, :, j].mean(1)  # [K]
        c_m, c_lo, c_hi = _t_ci(per_k)
        c_lo, c_hi, _ = clip_interval(c_lo, c_hi, -np.inf, 1.0)
        s_m, s_lo, s_hi = _t_ci(cv[:, j] - ctrl[:, :, j].mean(0))
        rows.append({"value": float(value[j]), "value_low": np.nan, "value_high": np.nan, "cv_mean": m,
                     "ci_low": lo, "ci_high": hi, "ci_clipped": clipped, "n_oof": len(x), "control": c_m,
                     "control_std": float(per_k.std(ddof=1)) if len(per_k) > 1 else 0.0,
                     "control_low": c_lo, "control_high": c_hi, "k_controls": len(perms), "selectivity": s_m,
                     "selectivity_low": s_lo, "selectivity_high": s_hi,
                     "random_features": float(rf[j]) if rf is not None else np.nan,
                     "random_features_low": np.nan, "random_features_high": np.nan,
                     "n_train": len(tr), "n_test": len(te)})
    coef = np.atleast_2d(Ridge(alpha=alpha).fit(x, ya).coef_)
    return rows, coef


def probe_activations(acts: Mapping[str, Mapping[int, Tensor]], labels: np.ndarray, label_names: Sequence[str],
                      appraisals: np.ndarray | None = None, appraisal_names: Sequence[str] = (), *,
                      c: float = 1.0, alpha: float = 5.0, seed: int = PROBE_SEED, folds: int = 5,
                      test_size: float = 0.2, controls: int = 5, random_features: bool = False, n_boot: int = 1000,
                      standardise: bool = True, stratify: bool = True, max_iter: int = PROBE_MAX_ITER,
                      provenance: Mapping[str, Any] | None = None) -> ProbeResult:
    """Probes on captured activations ``{site: {layer: [n, d]}}`` (see :func:`probe`)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise EmocircuitsError("Probing needs examples of at least two labels; load more data or turn off only_correct.")
    if int(controls) < 1:
        raise EmocircuitsError(f"controls must be at least 1 label permutation (5 or more give a spread), got {controls}.")
    perms = label_permutations(len(labels), int(controls), seed)  # the same K permutations at every site and layer
    rows = []
    e_vecs: dict[str, dict[str, dict[int, Tensor]]] = {}
    a_vecs: dict[str, dict[str, dict[int, Tensor]]] = {}
    present = np.unique(labels)
    for site, per in acts.items():
        for layer, t in per.items():
            x = t.double().numpy()
            rf_seed = derive_seed(seed, "probe-random-features", site, layer) if random_features else None
            stats_, coef = _probe_emotion(x, labels, c=c, seed=seed, folds=folds, test_size=test_size, perms=perms,
                                          random_features=rf_seed, n_boot=n_boot, standardise=standardise,
                                          stratify=stratify, max_iter=max_iter)
            rows.append({"site": site, "layer": layer, "target": "emotion", "metric": "accuracy", **stats_})
            for k, cls in enumerate(present):
                e_vecs.setdefault(label_names[int(cls)], {}).setdefault(site, {})[layer] = torch.tensor(coef[k]).float()
            if appraisals is not None and len(appraisal_names):
                arows, acoef = _probe_ridge(x, appraisals, alpha=alpha, seed=seed, folds=folds, test_size=test_size,
                                            perms=perms, random_features=rf_seed)
                for j, name in enumerate(appraisal_names):
                    rows.append({"site": site, "layer": layer, "target": name, "metric": "r2", **arows[j]})
                    a_vecs.setdefault(name, {}).setdefault(site, {})[layer] = torch.tensor(acoef[j]).float()
    table = pd.DataFrame(rows)
    if "ci_clipped" in table:
        table["ci_clipped"] = table["ci_clipped"].fillna(False).astype(bool)
    prov = dict(provenance or {})
    cfg = {"C": c, "alpha": alpha, "seed": seed, "folds": folds, "test_size": test_size, "controls": int(controls),
           "random_features": bool(random_features), "standardise": bool(standardise), "stratify": bool(stratify),
           "max_iter": int(max_iter)}
    emo = {e: Direction(v, e, {**prov, "method": "logistic probe", **cfg}) for e, v in e_vecs.items()}
    app = {a: Direction(v, a, {**prov, "method": "ridge probe", **cfg}) for a, v in a_vecs.items()}
    tr, te = emotion_split(labels, test_size, seed, stratify)
    return ProbeResult(table, emo, app, cfg, {"train": sorted(map(int, tr)), "test": sorted(map(int, te))})


def probe(prep: Prepared, *, sites: Sequence[str] = PROBE_SITES, layers: Sequence[int] | None = None,
          appraisals: Sequence[str] | None = None, c: float = 1.0, alpha: float = 5.0, seed: int = PROBE_SEED,
          folds: int = 5, test_size: float = 0.2, controls: int = 5, random_features: bool = False,
          n_boot: int = 1000, standardise: bool = True, stratify: bool = True,
          max_iter: int = PROBE_MAX_ITER) -> ProbeResult:
    """Last-token probes at every layer of each site (all sites captured in one pass).

    Emotion: logistic regression (C=``c``, default 1) on activations standardised on the training part
    (``standardise=False``: raw activations, Tak et al.'s protocol), at most ``max_iter`` lbfgs iterations
    (default 2000, enough to converge here; Tak et al.'s code keeps scikit-learn's 100); the split and the CV folds are
    stratified by label (``stratify=False``: plain shuffled splits, as Tak et al.'s code). ``value``: accuracy on an 80/20 split
    (seed 42) with its Wilson 95% interval (``value_low, value_high``); ``cv_mean``: accuracy of the pooled
    out-of-fold predictions of k-fold CV with its Wilson 95% interval over those examples (``ci_low,
    ci_high``, inside [0, 1]; it counts example noise, not refitting noise). Controls: ``controls`` (K)
    label permutations (:func:`label_permutations`, seeded each by ``base.seeds.derive_seed``), each run through
    the same CV and scored against the true labels: ``control`` (mean), ``control_std``, ``control_low,
    control_high``, ``k_controls``; ``selectivity = cv_mean − control`` with ``selectivity_low,
    selectivity_high`` (bootstrap over examples, paired, and over the K draws). ``random_features``: the
    same CV on Gaussian features of the activations' shape (``random_features`` accuracy and its Wilson
    interval; NaN when off). Appraisals (those every example rates in ``meta``): ridge (α=5) R² per
    appraisal, 80/20 and CV fold mean with a t-interval over folds (upper end clipped at 1, ``ci_clipped``),
    the same K permutations as controls, selectivity with a paired t-interval over folds. Weights come back
    as Directions in raw activation space. Table: ``site, layer, target, metric, value, value_low,
    value_high, cv_mean, ci_low, ci_high, n_oof, control, control_std, control_low, control_high,
    k_controls, selectivity, selectivity_low, selectivity_high, random_features, random_features_low,
    random_features_high, n_train, n_test`` (+ ``ci_clipped`` with appraisals).
    """
    sites = _check_sites(sites, PROBE_SITES)
    if int(controls) < 1:
        raise EmocircuitsError(f"controls must be at least 1 label permutation (5 or more give a spread), got {controls}.")
    n_test = int(round(len(prep) * test_size))
    if folds < 2 or len(prep) < max(2 * folds, 10) or n_test < 2 or len(set(prep.true.tolist())) < 2:
        raise EmocircuitsError(
            f"Probes need at least {max(2 * folds, 10)} examples of two or more emotions for {folds}-fold CV and a "
            f"{test_size:.0%} test split (and folds >= 2); {len(prep)} are left, so load more examples (more data or a "
            f"larger {spell('limit_per_label', '--limit-per-label')})"
            + ("." if len(prep) >= prep.n_total else
               f" or keep wrong predictions too ({spell('only_correct=False', '--all-examples')})."))
    acts = capture_sites(prep.model, prep.token_ids, sites, layers)
    ya, names = appraisal_matrix(prep.examples, appraisals)
    spec = spec_of(prep.model)
    return probe_activations(acts, prep.true, prep.labels, ya if names else None, names, c=c, alpha=alpha,
                             seed=seed, folds=folds, test_size=test_size, controls=controls,
                             random_features=random_features, n_boot=n_boot, standardise=standardise,
                             stratify=stratify, max_iter=max_iter, provenance={"model": spec.name if hasattr(spec, "name") else str(spec.architecture),
                                         "n_examples": len(prep)})
