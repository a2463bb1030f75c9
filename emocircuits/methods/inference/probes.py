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

from emocircuits.base.constants import PROBE_SEED, PROBE_SITES
from emocircuits.base.errors import EmocircuitsError
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
                      c: float = 1.0, alpha: float = 5.0, seed: int = PROBE_SEED, folds: int = 5,
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


def probe(prep: Prepared, *, sites: Sequence[str] = PROBE_SITES, layers: Sequence[int] | None = None,
          appraisals: Sequence[str] | None = None, c: float = 1.0, alpha: float = 5.0, seed: int = PROBE_SEED,
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
