"""Intervals and rank tests shared by every analysis (bootstrap over examples, rank p-values).
"""

from __future__ import annotations

import math

import numpy as np


def bootstrap_ci(normal: np.ndarray, masked: np.ndarray, control: np.ndarray | None, *, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``(acc_masked − acc_normal) − (acc_control − acc_normal)``.

    ``normal, masked [n]`` and ``control [K, n]`` are 0/1 correctness. Each resample draws the examples
    with replacement and, independently, K of the control sets with replacement (so the CI also counts
    how much the controls disagree); without controls the CI is of the masked effect alone.
    """
    n = len(normal)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    eff = masked[idx].mean(1) - normal[idx].mean(1)
    if control is not None and len(control):
        k = len(control)
        per_set = np.stack([c[idx].mean(1) for c in control], 1)  # [n_boot, K]: each control's accuracy
        pick = rng.integers(0, k, size=(n_boot, k))
        eff = eff - (np.take_along_axis(per_set, pick, 1).mean(1) - normal[idx].mean(1))
    lo, hi = np.quantile(eff, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def rank_p(masked_acc: float, control_accs: np.ndarray) -> float:
    """Empirical p-value of a drop: ``(1 + #{k: control_k ≤ masked}) / (K + 1)`` over ``control_accs [K]``
    (NaN without controls; never below ``1 / (K + 1)``)."""
    k = len(control_accs)
    return (1 + int((np.asarray(control_accs) <= masked_acc).sum())) / (k + 1) if k else math.nan


def accuracy_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the mean of ``correct [n]`` (0/1), via ``neurons.bootstrap_ci``."""

    correct = np.asarray(correct, dtype=np.float64)
    return bootstrap_ci(np.zeros_like(correct), correct, None, n_boot=n_boot, seed=seed)


# ----------------------------------------------------------------------------------- helpers
def mean_ci(x: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``x [n]`` and its bootstrap percentile CI over examples (reuses ``neurons.bootstrap_ci``)."""

    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"), float("nan"))
    lo, hi = bootstrap_ci(np.zeros_like(x), x, None, n_boot=n_boot, seed=seed, level=level)
    return float(x.mean()), lo, hi
