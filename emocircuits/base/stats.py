"""Intervals and rank tests shared by every analysis: intervals that stay in range, bootstrap over examples,
rank p-values.

Only numpy and scipy (and :mod:`emocircuits.base.errors`); every function is pure and, where random, seeded.

* :func:`wilson_interval` — Wilson score interval of ``k`` successes in ``n`` trials: always inside [0, 1],
  never of zero width at 0/n or n/n (a percentile bootstrap of all-correct examples is ``[1, 1]``).
* :func:`bootstrap_proportion` — mean of per-example values in [0, 1] (0/1 correctness) and its percentile
  bootstrap interval over examples; a percentile interval of means of values in [0, 1] stays in [0, 1].
* :func:`bootstrap_versus_controls` — ``mean(x) − mean over K controls`` (e.g. probe accuracy minus its
  label-permutation controls) with a percentile interval that resamples the examples (paired) and,
  independently, the K control draws, so it counts both the example noise and the control-to-control noise.
* :func:`clip_interval` — clip an interval (e.g. a t-interval over folds) to a metric's natural range.
* :func:`bootstrap_ci`, :func:`rank_p`, :func:`accuracy_ci` — masking effects against controls (neurons);
  :func:`mean_ci` — a mean and its bootstrap interval over examples (inference shares).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st

from emocircuits.base.errors import EmocircuitsError

__all__ = ["accuracy_ci", "bootstrap_ci", "bootstrap_indices", "bootstrap_proportion", "bootstrap_versus_controls",
           "clip_interval", "mean_ci", "percentile_interval", "rank_p", "wilson_interval"]


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise EmocircuitsError(f"Interval level {level} is out of range; use a share in (0, 1), e.g. 0.95.")


def wilson_interval(k: float | np.ndarray, n: float | np.ndarray, level: float = 0.95
                    ) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a proportion ``k / n`` at confidence ``level``.

    ``k, n``: scalars or arrays of the same shape (``0 <= k <= n``); returns ``(low, high)`` of that shape
    (floats for scalars), both inside [0, 1]. ``n == 0`` gives ``(nan, nan)``. With ``z`` the normal quantile,
    ``p = k/n``: ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)``.
    """
    _check_level(level)
    k_a, n_a = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if np.any(k_a < 0) or np.any(k_a > n_a):
        raise EmocircuitsError(f"Wilson interval needs 0 <= k <= n; got k={k}, n={n}.")
    z = float(_st.norm.ppf(0.5 + level / 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        p = k_a / n_a
        denom = 1 + z * z / n_a
        centre = (p + z * z / (2 * n_a)) / denom
        half = z * np.sqrt(p * (1 - p) / n_a + z * z / (4 * n_a * n_a)) / denom
        lo = np.where(n_a > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
        hi = np.where(n_a > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    # exact ends: 0 successes → low 0, n successes → high 1 (the formula gives them up to rounding)
    lo = np.where((k_a == 0) & (n_a > 0), 0.0, lo)
    hi = np.where((k_a == n_a) & (n_a > 0), 1.0, hi)
    if lo.ndim == 0:
        return float(lo), float(hi)
    return lo, hi


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` example indices drawn with replacement (``numpy.random.default_rng(seed)``)."""
    if n_boot < 1:
        raise EmocircuitsError(f"n_boot must be at least 1 resample, got {n_boot}.")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` percentile interval of bootstrap ``samples [n_boot]`` (NaN when empty)."""
    _check_level(level)
    samples = np.asarray(samples, dtype=float)
    if samples.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(samples, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def bootstrap_proportion(x: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                         ) -> tuple[float, float, float]:
    """Mean of ``x [n]`` (values in [0, 1], usually 0/1 correctness) and its percentile bootstrap interval
    over the examples: ``(mean, low, high)``, all in [0, 1]; ``(nan, nan, nan)`` when ``n == 0``.

    All-correct or all-wrong examples give a zero-width interval; prefer :func:`wilson_interval` for a
    single pooled accuracy, and this where the interval must be paired with another resampled quantity.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 1:
        raise EmocircuitsError(f"bootstrap_proportion takes a 1-d array of per-example values; got shape {x.shape}.")
    if len(x) == 0:
        return (math.nan, math.nan, math.nan)
    if np.any((x < 0) | (x > 1)):
        raise EmocircuitsError("bootstrap_proportion takes per-example values in [0, 1] (e.g. 0/1 correctness).")
    means = x[bootstrap_indices(len(x), n_boot, seed)].mean(1)
    lo, hi = percentile_interval(means, level)
    return float(x.mean()), lo, hi


def bootstrap_versus_controls(x: np.ndarray, controls: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                              level: float = 0.95) -> dict[str, float]:
    """A per-example score against K control draws of it, with intervals over examples and controls.

    ``x [n]``: per-example values (0/1 correctness of the real probe); ``controls [K, n]``: the same for K
    control draws (e.g. probes trained on K label permutations), on the same examples in the same order.
    Each resample draws the examples with replacement (the same rows for ``x`` and every control: paired)
    and, independently, K of the control draws with replacement. Returns ``mean`` (of ``x``),
    ``control`` (mean over the K controls), ``control_std`` (standard deviation of the K control means,
    ``ddof=1``; 0 for K = 1), ``control_low, control_high`` (interval of the control mean),
    ``diff = mean − control`` and ``diff_low, diff_high`` (interval of the difference; in [−1, 1] for
    values in [0, 1]), ``k`` (K).
    """
    x = np.asarray(x, dtype=float)
    c = np.atleast_2d(np.asarray(controls, dtype=float))
    if c.shape[1] != len(x) or len(c) == 0:
        raise EmocircuitsError(f"controls must be [K, n] with K >= 1 and n = {len(x)}; got shape {c.shape}.")
    k, n = c.shape
    nan = {"mean": math.nan, "control": math.nan, "control_std": math.nan, "control_low": math.nan,
           "control_high": math.nan, "diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "k": k}
    if n == 0:
        return nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    real = x[idx].mean(1)  # [n_boot]
    per_ctrl = np.stack([row[idx].mean(1) for row in c], 1)  # [n_boot, K]
    pick = rng.integers(0, k, size=(n_boot, k))
    ctrl = np.take_along_axis(per_ctrl, pick, 1).mean(1)  # [n_boot]
    means = c.mean(1)  # [K]
    c_lo, c_hi = percentile_interval(ctrl, level)
    d_lo, d_hi = percentile_interval(real - ctrl, level)
    return {"mean": float(x.mean()), "control": float(means.mean()),
            "control_std": float(means.std(ddof=1)) if k > 1 else 0.0, "control_low": c_lo, "control_high": c_hi,
            "diff": float(x.mean() - means.mean()), "diff_low": d_lo, "diff_high": d_hi, "k": k}


def clip_interval(lo: float, hi: float, low: float = 0.0, high: float = 1.0) -> tuple[float, float, bool]:
    """``(lo, hi)`` clipped to ``[low, high]`` (pass ``-inf`` for an open end) and whether it was clipped.

    For intervals that are not range-aware by construction (a t-interval over CV folds); the caller notes
    the clipping where it reports the interval. NaN stays NaN.
    """
    c_lo = lo if math.isnan(lo) else min(max(lo, low), high)
    c_hi = hi if math.isnan(hi) else min(max(hi, low), high)
    return c_lo, c_hi, bool(c_lo != lo or c_hi != hi) and not (math.isnan(lo) or math.isnan(hi))


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
    """Percentile bootstrap 95% CI of the mean of ``correct [n]`` (0/1), via :func:`bootstrap_ci`. When every
    value agrees (0/n or n/n) resampling has no spread and would give a zero-width interval; the Wilson
    interval is returned then (e.g. 0 of 18: [0, 0.18])."""

    correct = np.asarray(correct, dtype=np.float64)
    if len(correct) and np.all(correct == correct[0]):
        lo, hi = wilson_interval(float(correct.sum()), float(len(correct)))
        return float(lo), float(hi)
    return bootstrap_ci(np.zeros_like(correct), correct, None, n_boot=n_boot, seed=seed)


def mean_ci(x: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``x [n]`` and its bootstrap percentile CI over examples (the same resamples as
    :func:`bootstrap_ci`). For 0/1 values (shares) the interval lies inside [0, 1]."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"), float("nan"))
    lo, hi = percentile_interval(x[bootstrap_indices(len(x), n_boot, seed)].mean(1), level)
    return float(x.mean()), lo, hi
