"""Emotion directions (Wang et al. 2025, Q1) from the within-group contrast of last-token activations.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction
from emocircuits.core.models import spec_of
from emocircuits.core.runner import Runner
from emocircuits.methods.circuits.elicit import prompt_ids

DIRECTION_SITES: tuple[str, ...] = ("resid.mid", "resid.post")


GROUP_MODES = ("accepted", "all")


def capture_last(model: Any, token_ids: Sequence[Sequence[int]], reads: Mapping[str, Sequence[int]], *,
                 max_tokens: int = 4096) -> dict[str, dict[int, Tensor]]:
    """Several sites at each prompt's last token from ONE forward pass, in input order:
    ``{site: {layer: [n, ...]}}`` (float32, CPU); see :meth:`Runner.capture_last`."""

    return Runner(model, max_tokens=max_tokens).capture_last(token_ids, reads)


def final_norm_last(model: Any, token_ids: Sequence[Sequence[int]], *, max_tokens: int = 4096) -> Tensor:
    """The final norm's output (the unembedding's input; HF's ``hidden_states[-1]``) at each prompt's last
    token, in input order: ``[n, d_model]`` (float32, CPU)."""
    runner = Runner(model, max_tokens=max_tokens)
    out: Tensor | None = None
    for step in runner.run(runner.batches(token_ids)):
        h = step.last().float().cpu()
        if out is None:
            out = torch.zeros(len(token_ids), h.shape[-1])
        out[step.batch.rows] = h
    if out is None:
        raise EmocircuitsError("No prompts to read the final norm on.")
    return out


def group_tensor(acts: Tensor, skeletons: Sequence[str], valences: Sequence[str], emotions: Sequence[str],
                 order: Sequence[str], keep: Sequence[bool] | None = None) -> tuple[Tensor, list[tuple[str, str]]]:
    """Arrange per-prompt activations ``acts [n, ...]`` as ``X [G, E, ...]`` by (skeleton, valence) group.

    Groups are (skeleton, valence) pairs — never skeletons alone. ``keep [n]`` drops rows before
    grouping; a group lacking any emotion of ``order`` is dropped; several rows of one group and
    emotion are averaged. Returns ``X`` and the groups kept, in first-seen order.
    """
    order = list(order)
    col = {e: j for j, e in enumerate(order)}
    members: dict[tuple[str, str], dict[int, list[int]]] = {}
    for i, (sk, val, emo) in enumerate(zip(skeletons, valences, emotions, strict=True)):
        if keep is not None and not keep[i]:
            continue
        if emo in col:
            members.setdefault((str(sk), str(val)), {}).setdefault(col[emo], []).append(i)
    groups = [g for g, m in members.items() if len(m) == len(order)]
    X = acts.new_zeros((len(groups), len(order), *acts.shape[1:]))
    for gi, g in enumerate(groups):
        for j, idx in members[g].items():
            X[gi, j] = acts[idx].mean(0)
    return X, groups


def directions_from_groups(X: Tensor, weights: Tensor | None = None) -> Tensor:
    """The Wang et al. formula on grouped activations ``X [G, E, ..., d]`` → unit ``v [E, ..., d]``
    (``weights [B, G]``: bootstrap counts → ``[B, E, ..., d]``).

    ``c_e = Σ_g w_g (X[g, e] − mean_e X[g, e]) / Σ_g w_g``; ``v_e = normalise(c_e − mean_e c_e)``.
    """
    if X.shape[0] == 0:
        raise EmocircuitsError("No (skeleton, valence) groups to compute directions from; use all groups or "
                               "elicit more skeletons.")
    Xd = X.double()
    centred = Xd - Xd.mean(1, keepdim=True)
    if weights is None:
        c = centred.mean(0)
    else:
        w = weights.double()
        c = torch.einsum("bg,g...->b...", w, centred) / w.sum(1).view(-1, *([1] * (centred.dim() - 1)))
    e_axis = 0 if weights is None else 1
    c = c - c.mean(e_axis, keepdim=True)
    return (c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()


def _boot_weights(n: int, n_boot: int, rng: np.random.Generator) -> Tensor:
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    return torch.from_numpy(w)


def _ci(x: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.nanquantile(x, [0.025, 0.975], axis=axis)
    return lo, hi


@dataclass
class DirectionsResult:
    """Result of :func:`emotion_directions`.

    ``directions``: ``{emotion: Direction}`` (unit vectors at ``resid.mid``/``resid.post``, every layer).
    ``prompts``: the replies table with ``used`` (row in a group used for the directions) — what
    components and validation read. ``groups``: ``skeleton, valence`` of the groups used.
    ``cos_emotions``: ``site, layer, a, b, cosine, ci_low, ci_high``; ``cos_layers``: ``site, emotion,
    layer_a, layer_b, cosine, ci_low, ci_high``; ``cos_valences``: ``site, layer, emotion, valence_a,
    valence_b, n_a, n_b, cosine, ci_low, ci_high``; ``control``: ``site, layer, real, control_mean,
    control_q95, beats`` (mean cross-valence cosine, real labels vs labels shuffled within groups).
    ``vectors``: ``{site: [E, n_layers, d_model]}``.
    """

    directions: dict[str, Direction]
    emotions: list[str]
    prompts: pd.DataFrame
    groups: pd.DataFrame
    cos_emotions: pd.DataFrame
    cos_layers: pd.DataFrame
    cos_valences: pd.DataFrame
    control: pd.DataFrame
    vectors: dict[str, Tensor]
    summary: dict[str, Any] = field(default_factory=dict)


def _cos(a: Tensor, b: Tensor) -> Tensor:
    return (a.double() * b.double()).sum(-1) / (a.double().norm(dim=-1) * b.double().norm(dim=-1)).clamp_min(1e-24)


def emotion_directions(model: Any, replies: pd.DataFrame, *, sites: Sequence[str] = DIRECTION_SITES,
                       groups: str = "accepted", emotions: Sequence[str] | None = None, n_boot: int = 200,
                       n_shuffle: int = 20, seed: int = 0, max_tokens: int = 4096,
                       last_after_final_norm: bool = False,
                       activations: Mapping[str, Tensor] | None = None) -> DirectionsResult:
    """Emotion directions from the prompts of an elicitation (Q1), with cosine tables and a control.

    ``replies``: :attr:`Elicitation.replies` (needs ``skeleton, valence, emotion, system, user`` and,
    for ``groups="accepted"``, ``accepted``). ``activations``: ``{site: [n, n_layers, d_model]}`` to skip
    the forward passes (tests). Bootstrap CIs resample groups (``n_boot``); the control shuffles the
    emotion labels within each group (``n_shuffle`` seeded shuffles). ``last_after_final_norm``: the last layer's
    ``resid.post`` reading is taken after the final norm (the authors' ``hidden_states[-1]``) instead of before
    it; every other layer and site is unchanged.
    """
    if groups not in GROUP_MODES:
        raise EmocircuitsError(f"groups {groups!r} is not valid; use one of {', '.join(GROUP_MODES)}.")
    need = ["skeleton", "valence", "emotion", "system", "user"] + (["accepted"] if groups == "accepted" else [])
    missing = [c for c in need if c not in replies.columns]
    if missing:
        raise EmocircuitsError(f"The replies table lacks columns {missing}; pass the replies an elicit run wrote.")
    emotions = list(emotions or dict.fromkeys(replies["emotion"]))
    if len(emotions) < 2:
        raise EmocircuitsError("Directions need at least two emotions (each is measured against their mean).")
    replies = replies.reset_index(drop=True)
    if activations is None:

        n_layers = spec_of(model).n_layers
        ids = prompt_ids(model, replies, max_tokens)
        got = capture_last(model, ids, {s: range(n_layers) for s in sites}, max_tokens=max_tokens)
        activations = {s: torch.stack([got[s][layer] for layer in range(n_layers)], 1) for s in sites}
        if last_after_final_norm and "resid.post" in activations:
            activations["resid.post"][:, -1] = final_norm_last(model, ids, max_tokens=max_tokens)
    sites = list(activations)
    keep = replies["accepted"].astype(bool).tolist() if groups == "accepted" else None
    acts = torch.stack([activations[s] for s in sites], 1)  # [n, S, L, d]
    sk, va, em = replies["skeleton"].astype(str).tolist(), replies["valence"].astype(str).tolist(), \
        replies["emotion"].astype(str).tolist()
    X, used = group_tensor(acts, sk, va, em, emotions, keep)  # [G, E, S, L, d]
    if not used:
        raise EmocircuitsError("No (skeleton, valence) group had every emotion accepted; use all groups "
                               "(groups='all', CLI --groups all) or elicit more skeletons.")
    V = directions_from_groups(X)  # [E, S, L, d]
    rng = np.random.default_rng(seed)
    n_layers, n_e = V.shape[2], len(emotions)
    cos_ee = _cos(V[:, None], V[None, :]).numpy()  # [E, E, S, L]
    cos_ll = _cos(V[:, :, :, None], V[:, :, None, :]).numpy()  # [E, S, L, L]
    ee_b, ll_b = [], []
    weights = _boot_weights(len(used), n_boot, rng) if n_boot else None
    for start in range(0, n_boot, 25):  # chunks keep the [B, E, S, L, d] bootstrap directions small
        Vb = directions_from_groups(X, weights[start:start + 25])
        ee_b.append(_cos(Vb[:, :, None], Vb[:, None, :]).numpy())
        ll_b.append(_cos(Vb[:, :, :, :, None], Vb[:, :, :, None, :]).numpy())
    nan_ee, nan_ll = np.full_like(cos_ee, np.nan), np.full_like(cos_ll, np.nan)
    ee_lo, ee_hi = _ci(np.concatenate(ee_b)) if ee_b else (nan_ee, nan_ee)
    ll_lo, ll_hi = _ci(np.concatenate(ll_b)) if ll_b else (nan_ll, nan_ll)
    # ---- emotion × emotion per layer
    a, b, si, layer = np.meshgrid(np.arange(n_e), np.arange(n_e), np.arange(len(sites)), np.arange(n_layers),
                                  indexing="ij")
    cos_emotions = pd.DataFrame({"site": np.asarray(sites)[si.ravel()], "layer": layer.ravel(),
                                 "a": np.asarray(emotions)[a.ravel()], "b": np.asarray(emotions)[b.ravel()],
                                 "cosine": cos_ee.ravel(), "ci_low": ee_lo.ravel(), "ci_high": ee_hi.ravel()})
    cos_emotions = cos_emotions.sort_values(["site", "layer"], kind="stable").reset_index(drop=True)
    # ---- layer × layer per emotion
    e, si, la, lb = np.meshgrid(np.arange(n_e), np.arange(len(sites)), np.arange(n_layers), np.arange(n_layers),
                                indexing="ij")
    cos_layers = pd.DataFrame({"site": np.asarray(sites)[si.ravel()], "emotion": np.asarray(emotions)[e.ravel()],
                               "layer_a": la.ravel(), "layer_b": lb.ravel(), "cosine": cos_ll.ravel(),
                               "ci_low": ll_lo.ravel(), "ci_high": ll_hi.ravel()})
    # ---- across valences
    gval = np.array([v for _, v in used])
    vals = [v for v in dict.fromkeys(gval)]
    per_val = {v: np.flatnonzero(gval == v) for v in vals}
    rows = []
    for i, v1 in enumerate(vals):
        for v2 in vals[i + 1:]:
            g1, g2 = per_val[v1], per_val[v2]
            A, B = directions_from_groups(X[g1]), directions_from_groups(X[g2])
            cab = _cos(A, B)  # [E, S, L]
            if n_boot:
                Ab = directions_from_groups(X[g1], _boot_weights(len(g1), n_boot, rng))
                Bb = directions_from_groups(X[g2], _boot_weights(len(g2), n_boot, rng))
                cb_lo, cb_hi = _ci(_cos(Ab, Bb).numpy())
            for e, emo in enumerate(emotions):
                for si, s in enumerate(sites):
                    for layer in range(n_layers):
                        lo, hi = (cb_lo[e, si, layer], cb_hi[e, si, layer]) if n_boot else (math.nan, math.nan)
                        rows.append({"site": s, "layer": layer, "emotion": emo, "valence_a": v1, "valence_b": v2,
                                     "n_a": len(g1), "n_b": len(g2), "cosine": float(cab[e, si, layer]),
                                     "ci_low": float(lo), "ci_high": float(hi)})
    cos_valences = pd.DataFrame(rows, columns=["site", "layer", "emotion", "valence_a", "valence_b", "n_a", "n_b",
                                               "cosine", "ci_low", "ci_high"])
    control = _shuffle_control(X, gval, vals, sites, n_shuffle, seed)
    if not cos_valences.empty:
        real = cos_valences.groupby(["site", "layer"], sort=False)["cosine"].mean()
        control["real"] = [float(real.get((s, layer), math.nan)) for s, layer in zip(control.site, control.layer,
                                                                                    strict=True)]
        control["beats"] = control["real"] > control["control_q95"]
    directions = {emo: Direction({s: {layer: V[e, si, layer] for layer in range(n_layers)}
                                  for si, s in enumerate(sites)}, emo,
                                 {"method": "wang2025 mean-difference", "groups": groups, "n_groups": len(used),
                                  "last_after_final_norm": bool(last_after_final_norm),
                                  "emotions": emotions})
                  for e, emo in enumerate(emotions)}
    used_set = set(used)
    prompts = replies.copy()
    prompts["used"] = [(a, b) in used_set and c in emotions for a, b, c in zip(sk, va, em, strict=True)]
    n_groups_total = len({(a, b) for a, b in zip(sk, va, strict=True)})
    summary = {"n_groups": len(used), "n_groups_total": n_groups_total, "groups_mode": groups,
               "groups_per_valence": {str(v): int(len(ix)) for v, ix in per_val.items()}, "sites": sites,
               "n_layers": n_layers, "last_after_final_norm": bool(last_after_final_norm)}
    return DirectionsResult(directions, emotions, prompts, pd.DataFrame(used, columns=["skeleton", "valence"]),
                            cos_emotions, cos_layers, cos_valences, control,
                            {s: V[:, si].clone() for si, s in enumerate(sites)}, summary)


def _shuffle_control(X: Tensor, gval: np.ndarray, vals: list[str], sites: Sequence[str], n_shuffle: int,
                     seed: int) -> pd.DataFrame:
    """Mean cross-valence cosine of directions computed with emotion labels shuffled within groups."""
    n_layers = X.shape[3]
    cols = ["site", "layer", "control_mean", "control_q95", "n_shuffle", "real", "beats"]
    if len(vals) < 2 or n_shuffle < 1:
        return pd.DataFrame([{"site": s, "layer": layer, "control_mean": math.nan, "control_q95": math.nan,
                              "n_shuffle": 0, "real": math.nan, "beats": False}
                             for s in sites for layer in range(n_layers)], columns=cols)
    rng = np.random.default_rng(seed + 7919)
    E = X.shape[1]
    stats = []
    for _ in range(n_shuffle):
        perm = torch.from_numpy(np.stack([rng.permutation(E) for _ in range(X.shape[0])]))
        Xs = torch.stack([X[g, perm[g]] for g in range(X.shape[0])])
        cs = []
        for i, v1 in enumerate(vals):
            for v2 in vals[i + 1:]:
                A = directions_from_groups(Xs[np.flatnonzero(gval == v1)])
                B = directions_from_groups(Xs[np.flatnonzero(gval == v2)])
                cs.append(_cos(A, B).mean(0))  # [S, L]
        stats.append(torch.stack(cs).mean(0).numpy())
    st = np.stack(stats)  # [K, S, L]
    rows = [{"site": s, "layer": layer, "control_mean": float(st[:, si, layer].mean()),
             "control_q95": float(np.quantile(st[:, si, layer], 0.95)), "n_shuffle": n_shuffle,
             "real": math.nan, "beats": False}
            for si, s in enumerate(sites) for layer in range(n_layers)]
    return pd.DataFrame(rows, columns=cols)


def reference_direction(direction: Direction, site: str = "resid.post", fraction: float = 1 / 6) -> Tensor:
    """Unit ``[d_model]`` mean of the last ``ceil(fraction · n_layers)`` layers' vectors at ``site``, each
    sign-aligned to the last layer's vector first."""
    layers = sorted(direction.layers(site))
    if not layers:
        raise EmocircuitsError(f"Direction {direction.name!r} has no vectors at {site}.")
    k = max(1, math.ceil(fraction * len(layers)))
    last = direction.vector(site, layers[-1]).double()
    acc = torch.zeros_like(last)
    for layer in layers[-k:]:
        v = direction.vector(site, layer).double()
        v = v / v.norm().clamp_min(1e-12)
        acc += v if float(v @ last) >= 0 else -v
    return (acc / acc.norm().clamp_min(1e-12)).float()
