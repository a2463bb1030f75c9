"""Assembling each emotion's circuit from sublayer influence and local component scores (Wang et al. 2025, Q2b).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Circuit
from emocircuits.core.interventions import current_batch, observe
from emocircuits.core.models import spec_of
from emocircuits.core.runner import Runner
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.methods.circuits.influence import chat_ids

PAPER_LAYERS, PAPER_NEURONS, PAPER_HEADS = 28, 392, 168


def default_budget(n_layers: int, k_total: int | None = None,
                   neuron_share: float = PAPER_NEURONS / (PAPER_NEURONS + PAPER_HEADS)) -> tuple[int, int]:
    """``(k_neurons, k_heads)``: ``k_total`` (default the paper's 560 scaled by ``n_layers / 28``) split by
    ``neuron_share`` (default 392/560 = 0.7), neurons rounded half up."""
    if not 0 <= neuron_share <= 1:
        raise EmocircuitsError(f"neuron_share must be in [0, 1] (got {neuron_share}).")
    if k_total is None:
        k_total = int(math.floor((PAPER_NEURONS + PAPER_HEADS) * n_layers / PAPER_LAYERS + 0.5))
    if k_total < 1:
        raise EmocircuitsError(f"The component budget must be at least 1 (got {k_total}).")
    kn = int(math.floor(k_total * neuron_share + 0.5))
    return kn, int(k_total - kn)


def _waterfill(amount: float, w: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Split ``amount`` in proportion to ``w`` (uniformly where every active weight is 0) without any entry
    exceeding its ``room``; what a full entry cannot take flows to the others."""
    alloc = np.zeros(len(w))
    active = room > 1e-12
    left = float(amount)
    while left > 1e-9 and active.any():
        ww = np.where(active, w, 0.0)
        if ww.sum() <= 0:
            ww = active.astype(float)
        share = left * ww / ww.sum()
        free = room - alloc
        full = active & (share >= free - 1e-12)
        if full.any():
            left -= float(free[full].sum())
            alloc[full] = room[full]
            active &= ~full
            continue
        alloc += share
        left = 0.0
    return alloc


def allocate(weights: Sequence[float], total: int, *, minimum: int = 0, cap_ratio: float = 0.4,
             available: Sequence[int] | None = None) -> np.ndarray:
    """Integer counts per layer ``[n]`` summing to ``total`` (or to everything available when fewer).

    1. ``w = max(weights, 0)``; each layer's ceiling is ``min(available, cap)`` with ``cap = floor(cap_ratio ·
       total)``, raised to the smallest value whose ceilings can hold ``total`` when they cannot.
    2. Each layer first gets ``min(minimum, ceiling)`` (the minimum is lowered, down to 0, when the
       minimums alone exceed ``total``).
    3. The rest is split in proportion to ``w`` (uniformly when all are 0), a layer at its ceiling passing
       its excess to the others by weight (backfill), then rounded by largest remainder.
    """
    w = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64), nan=0.0), 0.0, None)
    n = len(w)
    if total < 0 or minimum < 0:
        raise EmocircuitsError(f"total and minimum must be >= 0 (got {total}, {minimum}).")
    if n == 0:
        return np.zeros(0, dtype=int)
    avail = np.full(n, total, dtype=np.int64) if available is None else np.asarray(available, dtype=np.int64)
    if avail.shape != (n,) or (avail < 0).any():
        raise EmocircuitsError("available must give a count >= 0 for every layer.")
    total = int(min(total, int(avail.sum())))
    cap = int(math.floor(cap_ratio * total + 1e-9))
    while int(np.minimum(avail, cap).sum()) < total:  # the cap cannot hold the budget: raise it just enough
        cap += 1
    ceiling = np.minimum(avail, cap)
    m = int(minimum)
    while m > 0 and int(np.minimum(ceiling, m).sum()) > total:
        m -= 1
    base = np.minimum(ceiling, m)
    target = base + _waterfill(total - int(base.sum()), w, (ceiling - base).astype(np.float64))
    k = np.floor(target + 1e-9).astype(np.int64)
    left = total - int(k.sum())
    if left > 0:
        frac = target - k
        order = sorted(range(n), key=lambda i: (-round(frac[i], 9), -w[i], i))
        for i in order:
            if left == 0:
                break
            if k[i] < ceiling[i]:
                k[i] += 1
                left -= 1
        for i in sorted(range(n), key=lambda i: (-w[i], i)):  # rounding blocked by ceilings: any room left
            while left > 0 and k[i] < ceiling[i]:
                k[i] += 1
                left -= 1
    return k.astype(int)


@dataclass
class Shifts:
    """Δμ per emotion: ``neurons [E, n_layers, d_mlp]`` (``neuron.gated``) and ``heads [E, n_layers, n_heads,
    d_head]`` (``head.z``) at the last prompt token; ``emotions`` in that order; ``n_groups`` used."""

    neurons: Tensor
    heads: Tensor
    emotions: list[str]
    n_groups: int

    def of(self, emotion: str) -> tuple[Tensor, Tensor]:
        """``(neurons [n_layers, d_mlp], heads [n_layers, n_heads, d_head])`` of one emotion."""
        if emotion not in self.emotions:
            raise EmocircuitsError(f"No shift vectors for {emotion!r}; they exist for {', '.join(self.emotions)}.")
        e = self.emotions.index(emotion)
        return self.neurons[e], self.heads[e]


def group_weights(skeletons: Sequence[str], valences: Sequence[str], emotions: Sequence[str], order: Sequence[str],
                  keep: Sequence[bool] | None = None) -> tuple[np.ndarray, int]:
    """``W [n, E]``: row i's weight in emotion e's group-mean sum (``1/count`` of its (group, emotion) cell when
    its (skeleton, valence) group has every emotion of ``order``, else 0), and the number of groups G —
    so ``Wᵀ x / G`` is ``mean_g x[g, e]`` of :func:`emocircuits.methods.circuits.group_tensor`."""
    col = {e: j for j, e in enumerate(order)}
    cells: dict[tuple[str, str], dict[int, list[int]]] = {}
    for i, (sk, va, em) in enumerate(zip(skeletons, valences, emotions, strict=True)):
        if (keep is not None and not keep[i]) or em not in col:
            continue
        cells.setdefault((str(sk), str(va)), {}).setdefault(col[em], []).append(i)
    W = np.zeros((len(skeletons), len(order)))
    G = 0
    for m in cells.values():
        if len(m) != len(order):
            continue
        G += 1
        for j, idx in m.items():
            W[idx, j] = 1.0 / len(idx)
    return W, G


def shift_vectors(model: Any, prompts: pd.DataFrame, *, emotions: Sequence[str] | None = None,
                  groups: str = "all", token_ids: Sequence[Sequence[int]] | None = None,
                  max_tokens: int = 4096) -> Shifts:
    """Δμ of every neuron and query-head slice under the emotion-instructed prompts, one streaming pass.

    ``prompts``: the replies/prompts table of an elicit or directions run (``skeleton, valence, emotion,
    system, user``; ``accepted`` for ``groups="accepted"``). ``Δμ_e = mean_g x[g, e] − mean_{g,e'} x[g, e']``
    over complete (skeleton, valence) groups (equal to ``mean_g (x[g, e] − mean_e' x[g, e'])``).
    """

    if groups not in ("all", "accepted"):
        raise EmocircuitsError(f"groups {groups!r} is not valid; use all or accepted.")
    need = ["skeleton", "valence", "emotion"] + (["accepted"] if groups == "accepted" else [])
    missing = [c for c in need if c not in prompts.columns]
    if missing:
        raise EmocircuitsError(f"The prompts table lacks columns {missing}; pass the replies of an elicit run.")
    prompts = prompts.reset_index(drop=True)
    emotions = list(emotions or dict.fromkeys(prompts["emotion"]))
    keep = prompts["accepted"].astype(bool).tolist() if groups == "accepted" else None
    W, G = group_weights(prompts["skeleton"].astype(str).tolist(), prompts["valence"].astype(str).tolist(),
                         prompts["emotion"].astype(str).tolist(), emotions, keep)
    if G == 0:
        raise EmocircuitsError("No (skeleton, valence) group has a prompt of every emotion; use groups='all' or "
                               "elicit more skeletons.")
    spec = spec_of(model)
    L = spec.n_layers
    ids = token_ids if token_ids is not None else chat_ids(model, prompts, max_tokens)
    Wt = torch.from_numpy(W)
    sums = {"neuron.gated": torch.zeros(L, len(emotions), spec.d_mlp, dtype=torch.float64),
            "head.z": torch.zeros(L, len(emotions), spec.n_heads * spec.d_head, dtype=torch.float64)}

    def add(site: str) -> Any:
        def cb(layer: int, value: Tensor) -> None:
            info = current_batch()
            if info is None or info.shared:
                return
            last = info.last_column().to(value.device)
            x = value[torch.arange(value.shape[0], device=value.device), last].detach().double().cpu()
            sums[site][layer] += Wt[info.rows].T @ x.flatten(1)
        return cb

    runner = Runner(model, max_tokens=max_tokens)
    with torch.inference_mode(), observe(model, "neuron.gated", range(L), add("neuron.gated")), \
            observe(model, "head.z", range(L), add("head.z")):
        for _ in runner.run(runner.batches(ids), stop=("neuron.gated", L - 1)):
            pass

    def delta(s: Tensor) -> Tensor:
        mean_e = s / G  # [L, E, ...]
        return (mean_e - mean_e.mean(1, keepdim=True)).transpose(0, 1).float()  # [E, L, ...]

    heads = delta(sums["head.z"]).reshape(len(emotions), L, spec.n_heads, spec.d_head)
    return Shifts(delta(sums["neuron.gated"]), heads, emotions, G)


def _ranked(scores: pd.DataFrame, emotion: str, col: str, idx_col: str, n_layers: int) -> dict[int, list[int]]:
    d = scores[scores["emotion"] == emotion]
    d = d.sort_values(["layer", col, idx_col], ascending=[True, False, True], kind="stable")
    out = {int(layer): g[idx_col].astype(int).tolist() for layer, g in d.groupby("layer", sort=True)}
    return {layer: out.get(layer, []) for layer in range(n_layers)}


def _layer_weights(table: pd.DataFrame, emotion: str, sublayer: str, n_layers: int) -> np.ndarray:
    d = table[(table["emotion"] == emotion) & (table["sublayer"] == sublayer)]
    col = "influence" if "influence" in d.columns else "raw"
    w = np.zeros(n_layers)
    for layer, val in zip(d["layer"].astype(int), d[col].astype(float), strict=True):
        if 0 <= layer < n_layers:
            w[layer] = max(val, 0.0)
    return w


@dataclass
class Assembly:
    """Result of :func:`assemble_circuits`: ``circuits`` ``{emotion: Circuit}`` and ``allocation``: one row per
    emotion × kind × layer: ``emotion, kind, layer, weight, available, k`` (``k`` components taken)."""

    circuits: dict[str, Circuit]
    allocation: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)


def assemble_circuit(emotion: str, influence: pd.DataFrame, neuron_scores: pd.DataFrame, head_scores: pd.DataFrame,
                     shifts: Shifts | None, *, n_layers: int, k_neurons: int, k_heads: int, min_neurons: int = 4,
                     min_heads: int = 2, cap_ratio: float = 0.4) -> tuple[Circuit, pd.DataFrame]:
    """One emotion's circuit: per-layer counts from :func:`allocate` on the MLP / attention influence, the
    top components per layer by ``neuron_scores.mean`` / ``head_scores.score``, and their Δμ shifts
    (``shifts`` None: a circuit without shifts, to ablate). Returns the circuit and its allocation rows."""
    ranked_n = _ranked(neuron_scores, emotion, "mean", "neuron", n_layers)
    ranked_h = _ranked(head_scores, emotion, "score", "head", n_layers)
    rows, chosen = [], {}
    for kind, sub, ranked, k, m in (("neurons", "mlp", ranked_n, k_neurons, min_neurons),
                                    ("heads", "attn", ranked_h, k_heads, min_heads)):
        w = _layer_weights(influence, emotion, sub, n_layers)
        avail = [len(ranked[layer]) for layer in range(n_layers)]
        counts = allocate(w, k, minimum=m, cap_ratio=cap_ratio, available=avail)
        chosen[kind] = {layer: ranked[layer][: int(counts[layer])] for layer in range(n_layers) if counts[layer]}
        rows += [{"emotion": emotion, "kind": kind, "layer": layer, "weight": float(w[layer]),
                  "available": avail[layer], "k": int(counts[layer])} for layer in range(n_layers)]
    neurons = NeuronSet({layer: tuple(v) for layer, v in chosen["neurons"].items()})
    heads = HeadSet(tuple((layer, h) for layer, v in chosen["heads"].items() for h in v))
    n_score = {(int(a), int(b)): float(s) for a, b, s in
               neuron_scores.loc[neuron_scores["emotion"] == emotion, ["layer", "neuron", "mean"]].itertuples(index=False)}
    h_score = {(int(a), int(b)): float(s) for a, b, s in
               head_scores.loc[head_scores["emotion"] == emotion, ["layer", "head", "score"]].itertuples(index=False)}
    scores = {"neurons": {layer: torch.tensor([n_score[(layer, i)] for i in idx]) for layer, idx in neurons.layers.items()},
              "heads": {layer: torch.tensor([h_score[(layer, h)] for h in hs]) for layer, hs in heads.by_layer().items()}}
    n_shift: dict[int, Tensor] = {}
    h_shift: dict[int, Tensor] = {}
    if shifts is not None:
        dn, dh = shifts.of(emotion)
        n_shift = {layer: dn[layer, list(idx)].clone() for layer, idx in neurons.layers.items()}
        h_shift = {layer: dh[layer, list(hs)].clone() for layer, hs in heads.by_layer().items()}
    prov = {"method": "wang2025 global circuit", "k_neurons": int(len(neurons)), "k_heads": int(len(heads)),
            "budget": {"neurons": int(k_neurons), "heads": int(k_heads)}, "min_neurons": min_neurons,
            "min_heads": min_heads, "cap_ratio": cap_ratio,
            "n_groups": shifts.n_groups if shifts is not None else None}
    return Circuit(emotion, neurons, heads, n_shift, h_shift, scores, prov), pd.DataFrame(rows)


def assemble_circuits(influence: pd.DataFrame, neuron_scores: pd.DataFrame, head_scores: pd.DataFrame,
                      shifts: Shifts | None, *, n_layers: int, emotions: Sequence[str] | None = None,
                      k_total: int | None = None, neuron_share: float = PAPER_NEURONS / (PAPER_NEURONS + PAPER_HEADS),
                      min_neurons: int = 4, min_heads: int = 2, cap_ratio: float = 0.4) -> Assembly:
    """A :class:`~emocircuits.core.components.Circuit` per emotion (see :func:`assemble_circuit`); the budget is
    :func:`default_budget` (``k_total`` None: 560 · n_layers / 28, neurons ``neuron_share`` of it)."""
    if not 0 < cap_ratio <= 1:
        raise EmocircuitsError(f"cap_ratio must be in (0, 1] (got {cap_ratio}).")
    kn, kh = default_budget(n_layers, k_total, neuron_share)
    emotions = list(emotions or dict.fromkeys(influence["emotion"]))
    circuits, allocs = {}, []
    for e in emotions:
        c, a = assemble_circuit(e, influence, neuron_scores, head_scores, shifts, n_layers=n_layers, k_neurons=kn,
                                k_heads=kh, min_neurons=min_neurons, min_heads=min_heads, cap_ratio=cap_ratio)
        circuits[e] = c
        allocs.append(a)
    config = {"k_neurons": kn, "k_heads": kh, "min_neurons": min_neurons, "min_heads": min_heads,
              "cap_ratio": cap_ratio, "emotions": emotions}
    return Assembly(circuits, pd.concat(allocs, ignore_index=True), config)
