"""Probe promotion and appraisal steering (Tak et al. 2025).

β ``auto`` (:func:`choose_beta`): the strongest β whose added directions keep the model's free replies fluent
(:mod:`emocircuits.methods.fluency`), on replies to a seeded sample of the run's own texts (fluency is not the
measured effect, so sharing the texts does not bias the shares).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.constants import (
    CALIBRATION_PROMPTS,
    STEER_MAX_NEW_TOKENS,
    STEER_SENTENCES,
    STRENGTH_GRIDS,
)
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.seeds import derive_seed
from emocircuits.base.stats import wilson_interval
from emocircuits.core.components import Direction
from emocircuits.core.interventions import (
    AddDirection,
)
from emocircuits.core.models import spec_of
from emocircuits.methods.circuits.influence import NEUTRAL_SYSTEM
from emocircuits.methods.fluency import StrengthChoice, calibrate_strength
from emocircuits.methods.inference.prepare import Prepared


# ----------------------------------------------------------------------------------- strength
def choose_beta(prep: Prepared, vectors: Sequence[Mapping[int, Tensor] | Tensor], *, layers: Sequence[int],
                site: str = "resid.post", rms_scaled: bool = False, n_prompts: int = CALIBRATION_PROMPTS,
                seed: int = 0, grid: Sequence[float] | None = None, system: str = NEUTRAL_SYSTEM,
                generate_kw: Mapping[str, Any] | None = None) -> StrengthChoice:
    """``auto`` β: the strongest of ``grid`` (default ``STRENGTH_GRIDS["beta"]``) at which adding each of
    ``vectors`` (``[d]`` or ``{layer: [d]}``, made unit) over ``layers`` at the last position keeps replies to
    ``n_prompts`` of the run's texts (chat turns under ``system``, seeded choice) fluent."""
    if n_prompts < 1:
        raise EmocircuitsError(f"calibration prompts must be at least 1 (got {n_prompts}).")
    layers = tuple(int(x) for x in layers)
    rng = np.random.default_rng(derive_seed(seed, "beta-calibration"))
    pick = sorted(rng.permutation(len(prep.examples))[: min(n_prompts, len(prep.examples))].tolist())
    tok = prep.model.tokenizer
    texts = [prep.examples[i].text for i in pick]
    prompts: list[Any] = ([[{"role": "system", "content": system}, {"role": "user", "content": t}] for t in texts]
                          if getattr(tok, "chat_template", None) else texts)

    def at(beta: float) -> list[AddDirection]:
        return [AddDirection(v, site, layers, float(beta), positions="last", rms_scaled=rms_scaled, unit=True)
                for v in vectors]

    kw = {"max_new_tokens": STEER_MAX_NEW_TOKENS, "sentences": STEER_SENTENCES, **dict(generate_kw or {})}
    return calibrate_strength(prep.model, prompts, at, grid=grid or STRENGTH_GRIDS["beta"], name="beta",
                              generate_kw=kw)


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
    random_low, random_high, percentile`` and the shares' Wilson 95% intervals (``base_share_low, _high``,
    ``steered_share_low, _high``); controls ``emotion, beta, control, success``.
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
            n = len(prep)
            b_lo, b_hi = wilson_interval(round(base[j] * n), n)
            s_lo, s_hi = wilson_interval(round(sh[j] * n), n)
            rows.append({"emotion": e, "beta": float(beta), "base_share": float(base[j]), "steered_share": float(sh[j]),
                         "base_share_low": b_lo, "base_share_high": b_hi, "steered_share_low": s_lo,
                         "steered_share_high": s_hi, "success": s, "random_mean": float(c.mean()) if len(c) else float("nan"),
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

    ``settings``: :class:`~emocircuits.methods.inference.appraisal_theory.TheorySetting` s. Random controls: ``n_random`` random
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
