"""Local components (Wang et al. 2025, Q2a): neuron and head contributions along an emotion direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction
from emocircuits.core.interventions import ZeroHeads
from emocircuits.core.models import spec_of
from emocircuits.core.sites import weight
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.methods.circuits.directions import capture_last
from emocircuits.methods.circuits.elicit import prompt_ids

KINDS = ("neurons", "heads")


def neuron_contributions(a: Tensor, w_down: Tensor, v: Tensor) -> Tensor:
    """``c = a · (W_down v)``: ``a [n, d_mlp]``, ``w_down [d_mlp, d_model]``, ``v [d_model]`` → ``[n, d_mlp]``."""
    beta = w_down.float() @ v.float()
    return a.float() * beta[None, :]


def head_contributions(z: Tensor, w_o: Tensor, v: Tensor) -> Tensor:
    """Each query head's write projected on ``v``: ``z [n, n_heads, d_head]``, ``w_o [n_heads, d_head,
    d_model]``, ``v [d_model]`` or ``[n, d_model]`` → ``[n, n_heads]``. Equals the drop of
    ``⟨resid.mid, v⟩`` when that head's ``head.z`` slice is zeroed."""
    proj = torch.einsum("hdm,...m->...hd", w_o.float(), v.float())  # [H, dh] or [n, H, dh]
    return (z.float() * proj).sum(-1) if proj.dim() == 3 else torch.einsum("nhd,hd->nh", z.float(), proj)


def head_scores_onepass(model: Any, token_ids: Sequence[Sequence[int]], v_mid: Mapping[int, Tensor], *,
                        max_tokens: int = 4096) -> Tensor:
    """Head importance for every prompt, layer and query head from one forward pass: ``[n, n_layers,
    n_heads]`` = drop of ``⟨resid.mid(l), v_mid[l]⟩`` at the last token when the head is zeroed.
    ``v_mid[l]``: ``[d_model]`` or per prompt ``[n, d_model]``."""

    layers = sorted(v_mid)
    z = capture_last(model, token_ids, {"head.z": layers}, max_tokens=max_tokens)["head.z"]
    return torch.stack([head_contributions(z[layer], weight(model, "attn.o", layer), v_mid[layer]) for layer in layers], 1)


def head_scores_ablation(model: Any, token_ids: Sequence[Sequence[int]], v_mid: Mapping[int, Tensor], *,
                         max_tokens: int = 4096) -> Tensor:
    """The same as :func:`head_scores_onepass` by real ablation: one pass per head with ``ZeroHeads``
    (reference implementation and benchmark baseline; ``n_layers × n_heads`` passes)."""

    layers = sorted(v_mid)
    n_heads = spec_of(model).n_heads

    def proj(layer: int) -> Tensor:
        r = capture_last(model, token_ids, {"resid.mid": [layer]}, max_tokens=max_tokens)["resid.mid"][layer]
        v = v_mid[layer].float()
        return r @ v if v.dim() == 1 else (r * v).sum(-1)

    out = torch.zeros(len(token_ids), len(layers), n_heads)
    for li, layer in enumerate(layers):
        clean = proj(layer)
        for h in range(n_heads):
            with ZeroHeads(HeadSet(((layer, h),))).apply(model):
                out[:, li, h] = clean - proj(layer)
    return out


def random_heads(heads: HeadSet, n_heads: int, seed: int) -> HeadSet:
    """Random query heads with the same per-layer counts as ``heads``, disjoint from it, seeded (the head
    analogue of :func:`emocircuits.methods.neurons.random_control`)."""
    rng = np.random.default_rng(seed)
    out = []
    for layer, idx in heads.by_layer().items():
        pool = np.setdiff1d(np.arange(n_heads), np.asarray(idx))
        out += [(layer, int(h)) for h in rng.choice(pool, size=min(len(idx), len(pool)), replace=False)]
    return HeadSet(tuple(out))


def _rank(df: pd.DataFrame, score: str) -> pd.DataFrame:
    df = df.sort_values(["emotion", score], ascending=[True, False], kind="stable").reset_index(drop=True)
    df["rank"] = df.groupby("emotion").cumcount()
    df["rank_layer"] = df.groupby(["emotion", "layer"])[score].rank(ascending=False, method="first").astype(int) - 1
    return df


@dataclass
class ComponentsResult:
    """Result of :func:`local_components`.

    ``neuron_scores``: ``emotion, layer, neuron, mean, pos, neg, rank, rank_layer`` (contribution
    ``a_n β_n`` averaged over the emotion's prompts; ``pos``/``neg`` = means of its positive / negative
    parts; ``rank`` global by ``mean``, descending; ``rank_layer`` within the layer).
    ``head_scores``: ``emotion, layer, head, score, std, pos, neg, rank, rank_layer``.
    ``neuron_sets`` / ``head_sets``: ``{emotion: NeuronSet | HeadSet}`` of the global top-k.
    """

    neuron_scores: pd.DataFrame
    head_scores: pd.DataFrame
    neuron_sets: dict[str, NeuronSet]
    head_sets: dict[str, HeadSet]
    config: dict[str, Any] = field(default_factory=dict)


PROMPT_USES = ("used", "accepted", "all")


"""Which of an emotion's prompts to read: those of the groups the directions used, the accepted replies, or all
(each falls back to the next when it selects none)."""


def prompt_rows(prompts: pd.DataFrame, emotion: str, use: str) -> np.ndarray:
    """Row indices ``[k]`` of ``emotion``'s prompts chosen by ``use`` (:data:`PROMPT_USES`)."""
    m = (prompts["emotion"] == emotion).to_numpy()
    if use == "used" and "used" in prompts:
        sel = m & prompts["used"].astype(bool).to_numpy()
        if sel.any():
            return np.flatnonzero(sel)
    if use in ("used", "accepted") and "accepted" in prompts:
        sel = m & prompts["accepted"].astype(bool).to_numpy()
        if sel.any():
            return np.flatnonzero(sel)
    return np.flatnonzero(m)


def top_sets(neuron_scores: pd.DataFrame, head_scores: pd.DataFrame, top_k: int,
             top_k_heads: int | None = None) -> tuple[dict[str, NeuronSet], dict[str, HeadSet]]:
    """The global top-k neurons (by ``mean``) and heads (by ``score``) per emotion from ranked tables."""
    kh = top_k if top_k_heads is None else top_k_heads
    ns = {e: NeuronSet.from_pairs(d.nsmallest(top_k, "rank")[["layer", "neuron"]].to_numpy().tolist())
          for e, d in neuron_scores.groupby("emotion", sort=False)}
    hs = {e: HeadSet(tuple(map(tuple, d.nsmallest(kh, "rank")[["layer", "head"]].to_numpy().tolist())))
          for e, d in head_scores.groupby("emotion", sort=False)}
    return ns, hs


def local_components(model: Any, prompts: pd.DataFrame, directions: Mapping[str, Direction], *, top_k: int = 20,
                     top_k_heads: int | None = None, use: str = "used", max_tokens: int = 4096,
                     token_ids: Sequence[Sequence[int]] | None = None) -> ComponentsResult:
    """Score every MLP neuron (analytic contribution) and query head (one-pass ablation-equivalent drop)
    of every layer for each emotion, over that emotion's prompts (``use``: ``used`` = rows of the groups
    the directions were computed from, else accepted, else all). One forward pass for everything."""

    if top_k < 1:
        raise EmocircuitsError(f"top_k must be at least 1 (got {top_k}).")
    spec = spec_of(model)
    layers = list(range(spec.n_layers))
    prompts = prompts.reset_index(drop=True)
    ids = token_ids if token_ids is not None else prompt_ids(model, prompts, max_tokens)
    got = capture_last(model, ids, {"head.z": layers, "neuron.gated": layers}, max_tokens=max_tokens)
    n_rows, h_rows = [], []
    for emo, d in directions.items():
        rows = prompt_rows(prompts, emo, use)
        if not len(rows):
            continue
        for layer in layers:
            c = neuron_contributions(got["neuron.gated"][layer][rows], weight(model, "mlp.down", layer),
                                     d.vector("resid.post", layer))  # [n_e, d_mlp]
            n_rows.append(pd.DataFrame({"emotion": emo, "layer": layer, "neuron": np.arange(c.shape[1]),
                                        "mean": c.mean(0).numpy(), "pos": c.clamp_min(0).mean(0).numpy(),
                                        "neg": c.clamp_max(0).mean(0).numpy(), "n": len(rows)}))
            hc = head_contributions(got["head.z"][layer][rows], weight(model, "attn.o", layer),
                                    d.vector("resid.mid", layer))  # [n_e, H]
            h_rows.append(pd.DataFrame({"emotion": emo, "layer": layer, "head": np.arange(hc.shape[1]),
                                        "score": hc.mean(0).numpy(),
                                        "std": hc.std(0).numpy() if len(rows) > 1 else np.zeros(hc.shape[1]),
                                        "pos": hc.clamp_min(0).mean(0).numpy(), "neg": hc.clamp_max(0).mean(0).numpy(),
                                        "n": len(rows)}))
    if not n_rows:
        raise EmocircuitsError("No prompts of the directions' emotions in the prompts table; pass the prompts "
                               "the directions were computed from.")
    neuron_scores = _rank(pd.concat(n_rows, ignore_index=True), "mean")
    head_scores = _rank(pd.concat(h_rows, ignore_index=True), "score")
    ns, hs = top_sets(neuron_scores, head_scores, top_k, top_k_heads)
    return ComponentsResult(neuron_scores, head_scores, ns, hs,
                            {"top_k": top_k, "top_k_heads": top_k_heads if top_k_heads is not None else top_k,
                             "use": use})
