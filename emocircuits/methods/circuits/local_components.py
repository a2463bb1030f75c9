"""Local components (Wang et al. 2025, Q2a): neuron and head contributions along an emotion direction.

Neurons: ``β = W_down v_e(l)`` (``[d_mlp]``, ``v_e(l)`` the ``resid.post`` direction), contribution
``c_n = a_n β_n`` with ``a`` the ``neuron.gated`` value at the last prompt token. Heads: the drop of the MLP
input's projection ``⟨N(r), v_e(l)⟩`` when query head h's ``head.z`` slice is zeroed (``r`` = ``resid.mid(l)``,
``N`` the layer's post-attention normalisation, ``v_e(l)`` the ``resid.mid`` direction), which equals
``⟨N(r), v⟩ − ⟨N(r − z_h @ W_O[h]), v⟩``: every head of every layer from one forward pass (checked against
real ablation in the tests). ``head_score="resid"`` scores the un-normalised ``⟨resid.mid(l), v_e(l)⟩``
instead, i.e. ``(z_h @ W_O[h]) · v_e(l)`` (see :data:`HEAD_SCORES`).
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
from emocircuits.base.seeds import derive_seed
from emocircuits.core.components import Direction
from emocircuits.core.interventions import ZeroHeads
from emocircuits.core.models import spec_of
from emocircuits.core.sites import norm, weight
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.methods.circuits.directions import capture_last
from emocircuits.methods.circuits.elicit import prompt_ids

KINDS = ("neurons", "heads")


def neuron_contributions(a: Tensor, w_down: Tensor, v: Tensor) -> Tensor:
    """``c = a · (W_down v)``: ``a [n, d_mlp]``, ``w_down [d_mlp, d_model]``, ``v [d_model]`` → ``[n, d_mlp]``."""
    beta = w_down.float() @ v.float()
    return a.float() * beta[None, :]


HEAD_SCORES = ("mlp_in", "resid")
"""Definitions of a head's importance for emotion ``e`` at layer ``l`` (``r`` = ``resid.mid(l)`` at the last
prompt token, ``o_h = z_h @ W_O[h]`` the head's write, ``N`` the layer's post-attention normalisation
``mlp.norm``, ``v`` = ``v_e(l)`` at ``resid.mid``):

* ``mlp_in`` (default, as Wang et al.): the drop of the projection of the MLP input,
  ``⟨N(r), v⟩ − ⟨N(r − o_h), v⟩``;
* ``resid``: the drop of the projection of the un-normalised residual, ``⟨o_h, v⟩``. Linear, so a set's
  drop is the sum of its heads' scores, and it measures what the head writes into the stream that every
  later layer reads, not what this layer's MLP sees; but it grows with the residual norm over depth, so a
  global ranking favours late layers."""


def _check_head_score(head_score: str) -> str:
    if head_score not in HEAD_SCORES:
        raise EmocircuitsError(f"head_score {head_score!r} is not valid; use one of {', '.join(HEAD_SCORES)}.")
    return head_score


def head_contributions(z: Tensor, w_o: Tensor, v: Tensor) -> Tensor:
    """Each query head's write projected on ``v``: ``z [n, n_heads, d_head]``, ``w_o [n_heads, d_head,
    d_model]``, ``v [d_model]`` or ``[n, d_model]`` → ``[n, n_heads]``. Equals the drop of
    ``⟨resid.mid, v⟩`` when that head's ``head.z`` slice is zeroed (the ``resid`` head score)."""
    proj = torch.einsum("hdm,...m->...hd", w_o.float(), v.float())  # [H, dh] or [n, H, dh]
    return (z.float() * proj).sum(-1) if proj.dim() == 3 else torch.einsum("nhd,hd->nh", z.float(), proj)


def head_norm_drops(r: Tensor, z: Tensor, w_o: Tensor, v: Tensor, norm: Any, *, chunk: int = 1 << 22) -> Tensor:
    """The ``mlp_in`` head score: ``⟨N(r), v⟩ − ⟨N(r − o_h), v⟩`` for every head, ``o_h = z_h @ W_O[h]``.

    ``r [n, d_model]`` (``resid.mid``), ``z [n, n_heads, d_head]``, ``w_o [n_heads, d_head, d_model]``,
    ``v [d_model]`` or ``[n, d_model]``, ``norm`` a :class:`emocircuits.core.sites.Norm` → ``[n, n_heads]``
    (float32; computed in float64, in row chunks of at most ``chunk`` values of ``r − o_h``)."""
    n, n_heads = z.shape[0], z.shape[1]
    v = v.double().expand(n, -1)
    w_o = w_o.double()
    step = max(1, chunk // (n_heads * r.shape[-1]))
    out = []
    for i in range(0, n, step):
        ri, vi = r[i:i + step].double(), v[i:i + step]
        o = torch.einsum("nhd,hdm->nhm", z[i:i + step].double(), w_o)  # [c, H, d_model]
        clean = (norm(ri) * vi).sum(-1)  # [c]
        out.append(clean[:, None] - (norm(ri[:, None, :] - o) * vi[:, None, :]).sum(-1))
    return torch.cat(out).float() if out else torch.zeros(0, n_heads)


def head_reads(layers: Sequence[int], head_score: str = "mlp_in") -> dict[str, list[int]]:
    """The sites :func:`head_scores_captured` needs at ``layers`` (merge into a :func:`capture_last` read)."""
    layers = list(layers)
    if _check_head_score(head_score) == "resid":
        return {"head.z": layers}
    return {"head.z": layers, "resid.mid": layers, "mlp.in": layers}


def _check_norm(model: Any, layer: int, norm: Any, r: Tensor, mlp_in: Tensor) -> None:
    """The normalisation function must reproduce the model's own MLP input (else the scores are wrong)."""
    err = float((norm(r) - mlp_in.double()).abs().max()) / max(float(mlp_in.abs().max()), 1e-12)
    if err > 2e-2:
        raise EmocircuitsError(f"The layer-{layer} MLP normalisation computed from sites.norm differs from the "
                               f"model's own MLP input by {err:.2g} (relative) on {spec_of(model).architecture}; "
                               "fix its row in emocircuits.core.sites.NORMS, or use head_score='resid'.")


def head_scores_captured(model: Any, got: Mapping[str, Mapping[int, Tensor]], v_mid: Mapping[int, Tensor], *,
                         head_score: str = "mlp_in") -> Tensor:
    """Head scores ``[n, len(v_mid), n_heads]`` (layers in ascending order) from last-token readings
    ``got`` of the sites :func:`head_reads` names (as :func:`capture_last` returns them);
    ``head_score`` is one of :data:`HEAD_SCORES`."""
    _check_head_score(head_score)
    out = []
    for layer in sorted(v_mid):
        z, w_o, v = got["head.z"][layer], weight(model, "attn.o", layer), v_mid[layer]
        if head_score == "resid":
            out.append(head_contributions(z, w_o, v))
            continue
        n = norm(model, "mlp.norm", layer)
        r = got["resid.mid"][layer]
        if len(r):
            _check_norm(model, layer, n, r[:8], got["mlp.in"][layer][:8])
        out.append(head_norm_drops(r, z, w_o, v, n))
    return torch.stack(out, 1)


def head_scores_onepass(model: Any, token_ids: Sequence[Sequence[int]], v_mid: Mapping[int, Tensor], *,
                        head_score: str = "mlp_in", max_tokens: int = 4096) -> Tensor:
    """Head importance for every prompt, layer and query head from one forward pass: ``[n, n_layers,
    n_heads]`` = the drop at the last token when the head is zeroed of ``⟨mlp.in(l), v_mid[l]⟩``
    (``head_score="mlp_in"``, the MLP input) or ``⟨resid.mid(l), v_mid[l]⟩`` (``"resid"``); see
    :data:`HEAD_SCORES`. ``v_mid[l]``: ``[d_model]`` or per prompt ``[n, d_model]``."""
    got = capture_last(model, token_ids, head_reads(sorted(v_mid), head_score), max_tokens=max_tokens)
    return head_scores_captured(model, got, v_mid, head_score=head_score)


def head_scores_ablation(model: Any, token_ids: Sequence[Sequence[int]], v_mid: Mapping[int, Tensor], *,
                         head_score: str = "mlp_in", max_tokens: int = 4096) -> Tensor:
    """The same as :func:`head_scores_onepass` by real ablation: one pass per head with ``ZeroHeads``,
    reading the model's own ``mlp.in`` (``mlp_in``) or ``resid.mid`` (``resid``) (reference implementation
    and benchmark baseline; ``n_layers × n_heads`` passes)."""
    site = "resid.mid" if _check_head_score(head_score) == "resid" else "mlp.in"
    layers = sorted(v_mid)
    n_heads = spec_of(model).n_heads

    def proj(layer: int) -> Tensor:
        r = capture_last(model, token_ids, {site: [layer]}, max_tokens=max_tokens)[site][layer].double()
        v = v_mid[layer].double()
        return r @ v if v.dim() == 1 else (r * v).sum(-1)

    out = torch.zeros(len(token_ids), len(layers), n_heads)
    for li, layer in enumerate(layers):
        clean = proj(layer)
        for h in range(n_heads):
            with ZeroHeads(HeadSet(((layer, h),))).apply(model):
                out[:, li, h] = (clean - proj(layer)).float()
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


def subsample_rows(prompts: pd.DataFrame, rows: np.ndarray, *, max_samples: int | None = None,
                   per_valence: int | None = None, seed: int = 0, emotion: str = "") -> np.ndarray:
    """A subset of ``rows`` (row indices of ``prompts``): at most ``per_valence`` per valence, drawn without
    replacement with a generator seeded by ``seed`` and ``emotion`` (stratified), then the first
    ``max_samples`` in table order. Both None: ``rows`` unchanged."""
    rows = np.asarray(rows)
    if per_valence is not None:
        if per_valence < 1:
            raise EmocircuitsError(f"per_valence must be at least 1 (got {per_valence}).")
        if "valence" not in prompts.columns:
            raise EmocircuitsError("A per-valence cap needs a 'valence' column in the prompts table.")
        rng = np.random.default_rng(derive_seed(seed, "components-per-valence", emotion))
        vals = prompts["valence"].astype(str).to_numpy()[rows]
        keep = []
        for v in dict.fromkeys(vals):
            ix = rows[vals == v]
            keep.append(ix if len(ix) <= per_valence else rng.choice(ix, per_valence, replace=False))
        rows = np.sort(np.concatenate(keep)) if keep else rows
    if max_samples is not None:
        if max_samples < 1:
            raise EmocircuitsError(f"max_samples must be at least 1 (got {max_samples}).")
        rows = rows[:max_samples]
    return rows


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
                     token_ids: Sequence[Sequence[int]] | None = None, head_score: str = "mlp_in",
                     ablation: bool = False, layers: Sequence[int] | None = None, max_samples: int | None = None,
                     per_valence: int | None = None, seed: int = 0) -> ComponentsResult:
    """Score every MLP neuron (analytic contribution) and query head (one-pass ablation-equivalent drop,
    ``head_score`` one of :data:`HEAD_SCORES`, direction at ``resid.mid``) of every layer for each emotion,
    over that emotion's prompts (``use``: ``used`` = rows of the groups the directions were computed from,
    else accepted, else all). One forward pass for everything; ``ablation=True`` scores the heads by real
    per-head ablation instead (``n_layers × n_heads`` more passes) and records the largest difference to
    the one-pass scores as ``head_ablation_max_diff`` in ``config``. Subsets: ``layers`` (the layers scored,
    default all), and per emotion at most ``per_valence`` prompts per valence (seeded by ``seed``) and then
    ``max_samples`` prompts (see :func:`subsample_rows`)."""
    if top_k < 1:
        raise EmocircuitsError(f"top_k must be at least 1 (got {top_k}).")
    if use not in PROMPT_USES:
        raise EmocircuitsError(f"use {use!r} is not valid; use one of {', '.join(PROMPT_USES)}.")
    _check_head_score(head_score)
    spec = spec_of(model)
    layers = list(range(spec.n_layers)) if layers is None else sorted({int(x) for x in layers})
    if not layers or any(not 0 <= x < spec.n_layers for x in layers):
        raise EmocircuitsError(f"The layers scored {layers} must be layers 0-{spec.n_layers - 1} of the model.")
    prompts = prompts.reset_index(drop=True)
    ids = token_ids if token_ids is not None else prompt_ids(model, prompts, max_tokens)
    hreads = head_reads(layers, head_score)
    got = capture_last(model, ids, {**hreads, "neuron.gated": layers}, max_tokens=max_tokens)
    n_rows, h_rows = [], []
    max_diff = 0.0
    for emo, d in directions.items():
        rows = subsample_rows(prompts, prompt_rows(prompts, emo, use), max_samples=max_samples,
                              per_valence=per_valence, seed=seed, emotion=emo)
        if not len(rows):
            continue
        v_mid = {layer: d.vector("resid.mid", layer) for layer in layers}
        hs = head_scores_captured(model, {s: {layer: got[s][layer][rows] for layer in layers} for s in hreads},
                                  v_mid, head_score=head_score)  # [n_e, L, H]
        if ablation:
            abl = head_scores_ablation(model, [ids[i] for i in rows], v_mid, head_score=head_score,
                                       max_tokens=max_tokens)
            max_diff = max(max_diff, float((abl - hs).abs().max()))
            hs = abl
        for li, layer in enumerate(layers):
            c = neuron_contributions(got["neuron.gated"][layer][rows], weight(model, "mlp.down", layer),
                                     d.vector("resid.post", layer))  # [n_e, d_mlp]
            n_rows.append(pd.DataFrame({"emotion": emo, "layer": layer, "neuron": np.arange(c.shape[1]),
                                        "mean": c.mean(0).numpy(), "pos": c.clamp_min(0).mean(0).numpy(),
                                        "neg": c.clamp_max(0).mean(0).numpy(), "n": len(rows)}))
            hc = hs[:, li]  # [n_e, H]
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
                             "use": use, "head_score": head_score, "ablation": ablation, "layers": layers,
                             "max_samples": max_samples, "per_valence": per_valence, "seed": seed,
                             **({"head_ablation_max_diff": max_diff} if ablation else {})})
