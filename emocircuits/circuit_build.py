"""Emotion circuits II (Wang et al. 2025, arXiv 2510.11328), question Q2b: sublayer influence and the
assembly of each emotion's global circuit from the local components of :mod:`emocircuits.circuits`.

    inf = sublayer_influence(model, dr.prompts, dr.directions)            # which sublayers matter
    sh = shift_vectors(model, dr.prompts)                                 # Δμ per neuron and head slice
    asm = assemble_circuits(inf.table, co.neuron_scores, co.head_scores, sh, n_layers=spec.n_layers)
    with asm.circuits["fear"].intervention("steer", scale=1.0).apply(model): ...

**Sublayer influence.** Prompts carry no emotion instruction (system ``"Keep the reply to at most two
sentences."``, one prompt per (skeleton, valence)). ``σ(l, p)`` = mean over prompts of the RMS of
sublayer p's output (``attn.out`` / ``mlp.out`` of layer l) at the last prompt token. ``v_ref(e)`` =
normalised mean of the unit directions of the last ``ceil(fraction · n_layers)`` layers at ``resid.mid``
and ``resid.post`` (both sites, as the authors' code merges attention and MLP directions), each
sign-aligned to the last layer's ``resid.post`` vector. The injection ``α·σ(l,p)·v̂`` (``v̂`` = the layer's
unit direction at ``resid.mid`` for attention, ``resid.post`` for the MLP, sign-aligned to ``v_ref``) is
added to that one sublayer's output at the last token; the effect is the change of the final hidden
state's projection on ``v_ref`` at the last token (``readout="final.norm"``: after the final norm, what
the authors read as ``hidden_states[-1]``; ``"resid"``: the last layer's ``resid.post``), divided by
``α·σ``, averaged over prompts and over ``α ∈ {0.1, 0.3, 0.5, 0.7}``. ``influence`` = that value clipped
at 0 and normalised to sum 1 over all (layer, sublayer) of the emotion (``raw`` keeps it unclipped).

**Fast path.** Only the last token changes, so each prompt's other tokens run once (their keys and
values cached) and every injection re-runs just the last token with that cache: many injections go in
one batch, one row each, through :class:`~emocircuits.interventions.AddPerExample`. ``method="full"``
re-runs whole prompts under :class:`~emocircuits.interventions.AddDirection` (the reference; the tests
check both agree).

**Assembly.** A budget K per emotion (default the paper's 560 = 392 neurons + 168 heads on 28 layers,
scaled by ``n_layers / 28``) is split into neurons and heads, each allocated over layers in proportion
to ``max(influence, 0)`` of the MLP (neurons) or attention (heads) sublayer by :func:`allocate`
(per-layer minimum, per-layer cap ``cap_ratio · K_kind``, largest-remainder rounding, backfill where a
layer has too few candidates). Within a layer the top components by the Circuits I scores are taken.

**Shift vectors Δμ.** Under the emotion-instructed prompts, the last prompt token's down-projection input
(``neuron.gated``) and per-head output-projection input (``head.z``): ``Δμ_e = mean_g (x[g, e] − mean_e'
x[g, e'])`` over (skeleton, valence) groups g, as the authors' within-group contrast; one streaming pass.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.components import Circuit, Direction, HeadSet, NeuronSet
from emocircuits.errors import EmocircuitsError

ALPHAS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
NEUTRAL_SYSTEM = "Keep the reply to at most two sentences."
SUBLAYERS: tuple[str, ...] = ("attn", "mlp")
OUT_SITE = {"attn": "attn.out", "mlp": "mlp.out"}
DIR_SITE = {"attn": "resid.mid", "mlp": "resid.post"}
READOUTS = ("final.norm", "resid")
SIGMA_FROM = ("output", "resid")
PAPER_LAYERS, PAPER_NEURONS, PAPER_HEADS = 28, 392, 168


# ============================================================================ prompts


def neutral_items(items: pd.DataFrame, system: str = NEUTRAL_SYSTEM) -> pd.DataFrame:
    """One row per (skeleton, valence) of an items/replies table, with the emotion-free ``system``:
    ``skeleton, valence, user, system`` (+ ``scenario, event, theme`` when present), first-seen order."""
    from emocircuits.circuits import USER_TEMPLATE

    if "user" not in items.columns:
        if not {"scenario", "event"} <= set(items.columns):
            raise EmocircuitsError("The prompts table needs a 'user' column or 'scenario' and 'event' columns; pass "
                                   "the items or replies of a circuits elicit run.")
        items = items.assign(user=[USER_TEMPLATE.format(scenario=s, event=e)
                                   for s, e in zip(items["scenario"], items["event"], strict=True)])
    keys = [c for c in ("skeleton", "valence") if c in items.columns] or ["user"]
    out = items.drop_duplicates(keys).copy()
    keep = [c for c in ("skeleton", "valence", "theme", "scenario", "event", "user") if c in out.columns]
    out = out[keep].reset_index(drop=True)
    out["system"] = system
    return out


def chat_ids(model: Any, items: pd.DataFrame, max_tokens: int = 4096) -> list[list[int]]:
    """Token ids of each row's chat prompt (``system`` + ``user``, generation prompt added)."""
    from emocircuits.circuits import prompt_ids

    return prompt_ids(model, items, max_tokens)


# ============================================================================ reference and local directions


def influence_reference(direction: Direction, *, fraction: float = 1 / 6,
                        sites: Sequence[str] = ("resid.mid", "resid.post")) -> Tensor:
    """Unit ``[d_model]`` reference ``v_ref``: the mean of the unit vectors at ``sites`` over the last
    ``ceil(fraction · n_layers)`` layers, each sign-aligned to the last layer's vector at the last site.
    With ``sites=("resid.post",)`` this is :func:`emocircuits.circuits.reference_direction`."""
    if not 0 < fraction <= 1:
        raise EmocircuitsError(f"The reference fraction must be in (0, 1] (got {fraction}).")
    sites = [s for s in sites if direction.layers(s)] if hasattr(direction, "layers") else list(sites)
    if not sites:
        raise EmocircuitsError(f"Direction {direction.name!r} has no vectors at the reference sites.")
    layers = sorted(direction.layers(sites[-1]))
    k = max(1, math.ceil(fraction * len(layers)))
    anchor = direction.vector(sites[-1], layers[-1]).double()
    acc = torch.zeros_like(anchor)
    for site in sites:
        for layer in layers[-k:]:
            v = direction.vector(site, layer).double()
            v = v / v.norm().clamp_min(1e-12)
            acc += v if float(v @ anchor) >= 0 else -v
    return (acc / acc.norm().clamp_min(1e-12)).float()


def local_direction(direction: Direction, sublayer: str, layer: int, ref: Tensor | None = None) -> Tensor:
    """Unit ``[d_model]`` direction injected into ``sublayer`` (``attn``: ``resid.mid``, ``mlp``: ``resid.post``)
    of ``layer``, sign-aligned to ``ref`` when given."""
    v = direction.vector(DIR_SITE[sublayer], layer).float()
    v = v / v.norm().clamp_min(1e-12)
    if ref is not None and float(v @ ref.float()) < 0:
        v = -v
    return v


# ============================================================================ sigma


def sublayer_sigma(model: Any, token_ids: Sequence[Sequence[int]], *, layers: Sequence[int] | None = None,
                   max_tokens: int = 4096) -> pd.DataFrame:
    """``layer, sublayer, sigma, sigma_resid``: mean over prompts of the RMS at the last token of each
    sublayer's output (``sigma``) and of the residual after it (``sigma_resid``: resid.mid / resid.post,
    what the authors' σ script read). One forward pass."""
    from emocircuits.models import spec_of
    from emocircuits.runner import Runner

    layers = list(range(spec_of(model).n_layers)) if layers is None else [int(x) for x in layers]
    sites = [OUT_SITE[p] for p in SUBLAYERS] + [DIR_SITE[p] for p in SUBLAYERS]
    got = Runner(model, max_tokens=max_tokens).capture_last(token_ids, {s: layers for s in sites})
    def rms(site: str, layer: int) -> float:
        return float(got[site][layer].double().pow(2).mean(-1).sqrt().mean())

    rows = [{"layer": layer, "sublayer": p, "sigma": rms(OUT_SITE[p], layer), "sigma_resid": rms(DIR_SITE[p], layer)}
            for layer in layers for p in SUBLAYERS]
    return pd.DataFrame(rows)


# ============================================================================ injections


@dataclass(frozen=True)
class Injection:
    """One single-sublayer injection: ``dose · vector`` into ``sublayer`` of ``layer`` at the last token,
    read on ``ref`` (the emotion's reference)."""

    emotion: str
    layer: int
    sublayer: str
    alpha: float
    sigma: float
    vector: Tensor
    ref: Tensor

    @property
    def dose(self) -> float:
        return float(self.alpha * self.sigma)


def _readout(model: Any, readout: str) -> tuple[str, int | None]:
    from emocircuits.models import spec_of

    if readout not in READOUTS:
        raise EmocircuitsError(f"readout {readout!r} is not valid; use one of {', '.join(READOUTS)}.")
    return ("final.norm", None) if readout == "final.norm" else ("resid.post", spec_of(model).n_layers - 1)


def injection_scores_fast(model: Any, token_ids: Sequence[Sequence[int]], plan: Sequence[Injection], *,
                          readout: str = "final.norm", max_rows: int = 64,
                          progress: bool = False) -> tuple[Tensor, Tensor]:
    """Projections of the last token's readout on each injection's ``ref``: ``(base [n, R], injected [n, R])``
    for ``n`` prompts and ``R`` injections, recomputing only the last token (see module docstring).

    Per prompt: one forward of all tokens but the last (keys/values cached), then the last token in
    batches of up to ``max_rows`` injections (row 0 of the first batch is the clean run)."""
    from tqdm.auto import tqdm
    from transformers import DynamicCache

    from emocircuits.interventions import AddPerExample, BatchInfo, Compose
    from emocircuits.models import spec_of
    from emocircuits.runner import Runner, check_cache

    if max_rows < 2:
        raise EmocircuitsError(f"max_rows must be at least 2 (got {max_rows}).")
    runner = Runner(model, share_prefix=False)
    dev, spec = runner.device(), spec_of(model)
    site = _readout(model, readout)
    R = len(plan)
    refs = torch.stack([inj.ref.float() for inj in plan]) if R else torch.zeros(0, spec.d_model)
    rows_all = [None] + list(range(R))  # None = the clean row
    base = torch.zeros(len(token_ids), R)
    out = torch.zeros(len(token_ids), R)
    with torch.inference_mode():
        for i, ids in enumerate(tqdm(token_ids, desc="influence", unit="prompt", disable=not progress)):
            p = len(ids)
            cache = None
            if p > 1:
                cache = DynamicCache()
                info = BatchInfo(torch.arange(p - 1)[None, :], torch.tensor([p]), torch.tensor([p]),
                                 torch.tensor([0]), torch.tensor([0]))
                runner.forward(torch.tensor([list(ids[:-1])], device=dev), ("resid.post", spec.n_layers - 1),
                               info=info, past_key_values=cache, use_cache=True)
                check_cache(cache, p - 1)
            clean = None
            for start in range(0, len(rows_all), max_rows):
                chunk = rows_all[start:start + max_rows]
                n = len(chunk)
                deltas: dict[str, dict[int, Tensor]] = {p_: {} for p_ in SUBLAYERS}
                for j, r in enumerate(chunk):
                    if r is None:
                        continue
                    inj = plan[r]
                    d = deltas[inj.sublayer].setdefault(inj.layer, torch.zeros(n, spec.d_model))
                    d[j] += inj.dose * inj.vector.float()
                parts = [AddPerExample(OUT_SITE[p_], deltas[p_], "last") for p_ in SUBLAYERS if deltas[p_]]
                kwargs: dict[str, Any] = {}
                if cache is not None:
                    c = copy.deepcopy(cache)
                    c.batch_repeat_interleave(n)
                    kwargs.update(past_key_values=c, use_cache=True)
                x = torch.tensor([[ids[-1]]] * n, device=dev)
                info = BatchInfo(torch.tensor([[p - 1]]), torch.full((n,), p), torch.full((n,), p), torch.arange(n),
                                 torch.zeros(n, dtype=torch.long))
                with Compose(tuple(parts)).apply(model):
                    h = runner.forward(x, site, info=info, **kwargs)[:, -1].float().cpu()  # [n, d]
                if clean is None:
                    clean = h[0]
                idx = [r for r in chunk if r is not None]
                sel = [j for j, r in enumerate(chunk) if r is not None]
                if idx:
                    out[i, idx] = (h[sel] * refs[idx]).sum(-1)
            assert clean is not None
            base[i] = refs @ clean
    return base, out


def injection_scores_full(model: Any, token_ids: Sequence[Sequence[int]], plan: Sequence[Injection], *,
                          readout: str = "final.norm", max_tokens: int = 4096,
                          progress: bool = False) -> tuple[Tensor, Tensor]:
    """The same as :func:`injection_scores_fast` by re-running whole prompts once per injection under
    :class:`~emocircuits.interventions.AddDirection` (reference implementation and benchmark baseline)."""
    from tqdm.auto import tqdm

    from emocircuits.interventions import AddDirection
    from emocircuits.runner import Runner

    runner = Runner(model, max_tokens=max_tokens)
    site = _readout(model, readout)
    batches = runner.batches(token_ids)

    def last_states() -> Tensor:
        out = torch.zeros(len(token_ids), 0)
        if site[0] == "final.norm":
            for step in runner.run(batches):
                h = step.last().float().cpu()
                if out.shape[1] == 0:
                    out = torch.zeros(len(token_ids), h.shape[-1])
                out[step.batch.rows] = h
            return out
        return runner.capture_last(token_ids, {site[0]: [site[1]]})[site[0]][site[1]]

    clean = last_states()
    refs = torch.stack([inj.ref.float() for inj in plan]) if plan else torch.zeros(0, clean.shape[-1])
    base = clean @ refs.T
    out = torch.zeros(len(token_ids), len(plan))
    with torch.inference_mode():
        for r, inj in enumerate(tqdm(plan, desc="influence (full)", disable=not progress)):
            with AddDirection(inj.vector, OUT_SITE[inj.sublayer], (inj.layer,), inj.dose, "last").apply(model):
                out[:, r] = last_states() @ inj.ref.float()
    return base, out


# ============================================================================ influence


@dataclass
class InfluenceResult:
    """Result of :func:`sublayer_influence`.

    ``raw``: one row per emotion × layer × sublayer × α: ``emotion, layer, sublayer, alpha, sigma, dose,
    base, delta, value`` (``delta`` = mean change of the projection on ``v_ref``, ``value = delta / dose``).
    ``table``: one row per emotion × layer × sublayer: ``emotion, layer, sublayer, sigma, raw`` (mean of
    ``value`` over α) and ``influence`` (``max(raw, 0)`` normalised to sum 1 per emotion; 0 everywhere when
    no sublayer has a positive effect). ``sigma``: :func:`sublayer_sigma`'s table. ``reference``:
    ``{emotion: v_ref [d_model]}``.
    """

    raw: pd.DataFrame
    table: pd.DataFrame
    sigma: pd.DataFrame
    reference: dict[str, Tensor]
    config: dict[str, Any] = field(default_factory=dict)


def influence_table(raw: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a ``raw`` table (see :class:`InfluenceResult`) over α: ``raw`` = mean value, ``influence`` =
    ``max(raw, 0)`` normalised to sum 1 per emotion."""
    t = (raw.groupby(["emotion", "layer", "sublayer"], sort=False)
         .agg(sigma=("sigma", "first"), raw=("value", "mean")).reset_index())
    pos = t["raw"].clip(lower=0)
    total = pos.groupby(t["emotion"]).transform("sum")
    t["influence"] = np.where(total > 0, pos / total.where(total > 0, 1.0), 0.0)
    return t


def sublayer_influence(model: Any, prompts: pd.DataFrame | None, directions: Mapping[str, Direction], *,
                       alphas: Sequence[float] = ALPHAS, emotions: Sequence[str] | None = None,
                       layers: Sequence[int] | None = None, ref_fraction: float = 1 / 6,
                       ref_sites: Sequence[str] = ("resid.mid", "resid.post"), readout: str = "final.norm",
                       sigma_from: str = "output", method: str = "fast", system: str = NEUTRAL_SYSTEM,
                       token_ids: Sequence[Sequence[int]] | None = None, max_prompts: int | None = None,
                       max_rows: int = 64, max_tokens: int = 4096, progress: bool = False) -> InfluenceResult:
    """Each sublayer's unit influence on the final emotion representation (see module docstring).

    ``prompts``: SEV items or the replies/prompts table of a directions run (one emotion-free prompt is
    made per (skeleton, valence)); or ``token_ids`` directly. ``method``: ``fast`` (KV-cached last token)
    or ``full`` (whole prompts per injection). ``sigma_from``: ``output`` (the sublayer's output) or
    ``resid`` (the residual after it). ``max_prompts`` keeps the first prompts only.
    """
    from emocircuits.models import spec_of

    if method not in ("fast", "full"):
        raise EmocircuitsError(f"method {method!r} is not valid; use fast or full.")
    if sigma_from not in SIGMA_FROM:
        raise EmocircuitsError(f"sigma_from {sigma_from!r} is not valid; use one of {', '.join(SIGMA_FROM)}.")
    alphas = [float(a) for a in alphas]
    if not alphas or any(a <= 0 for a in alphas):
        raise EmocircuitsError(f"alphas must be positive numbers (got {alphas}).")
    _readout(model, readout)
    spec = spec_of(model)
    layers = list(range(spec.n_layers)) if layers is None else [int(x) for x in layers]
    emotions = list(emotions or directions)
    missing = [e for e in emotions if e not in directions]
    if missing:
        raise EmocircuitsError(f"No direction for emotion {missing[0]!r}; directions exist for {', '.join(directions)}.")
    if token_ids is None:
        if prompts is None:
            raise EmocircuitsError("Pass a prompts table (SEV items or replies) or token_ids.")
        neutral = neutral_items(prompts, system)
        if max_prompts is not None:
            neutral = neutral.iloc[:max_prompts]
        token_ids = chat_ids(model, neutral, max_tokens)
    elif max_prompts is not None:
        token_ids = list(token_ids)[:max_prompts]
    if not token_ids:
        raise EmocircuitsError("No prompts to measure influence on.")
    sigma = sublayer_sigma(model, token_ids, layers=layers, max_tokens=max_tokens)
    scol = "sigma" if sigma_from == "output" else "sigma_resid"
    sig = {(int(r.layer), r.sublayer): float(getattr(r, scol)) for r in sigma.itertuples()}
    refs = {e: influence_reference(directions[e], fraction=ref_fraction, sites=ref_sites) for e in emotions}
    plan = [Injection(e, layer, p, a, sig[(layer, p)], local_direction(directions[e], p, layer, refs[e]), refs[e])
            for e in emotions for layer in layers for p in SUBLAYERS for a in alphas]
    if method == "fast":
        base, inj = injection_scores_fast(model, token_ids, plan, readout=readout, max_rows=max_rows,
                                          progress=progress)
    else:
        base, inj = injection_scores_full(model, token_ids, plan, readout=readout, max_tokens=max_tokens,
                                          progress=progress)
    delta = (inj - base).double().mean(0)
    rows = []
    for r, x in enumerate(plan):
        d = float(delta[r])
        rows.append({"emotion": x.emotion, "layer": x.layer, "sublayer": x.sublayer, "alpha": x.alpha,
                     "sigma": x.sigma, "dose": x.dose, "base": float(base[:, r].mean()), "delta": d,
                     "value": d / max(x.dose, 1e-12)})
    raw = pd.DataFrame(rows)
    config = {"alphas": alphas, "emotions": emotions, "layers": layers, "ref_fraction": ref_fraction,
              "ref_sites": list(ref_sites), "readout": readout, "sigma_from": sigma_from, "method": method,
              "system": system, "n_prompts": len(token_ids)}
    return InfluenceResult(raw, influence_table(raw), sigma, refs, config)


# ============================================================================ allocation


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


# ============================================================================ shift vectors


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
    so ``Wᵀ x / G`` is ``mean_g x[g, e]`` of :func:`emocircuits.circuits.group_tensor`."""
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
    from emocircuits.interventions import current_batch, observe
    from emocircuits.models import spec_of
    from emocircuits.runner import Runner

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


# ============================================================================ assembly


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
    """A :class:`~emocircuits.components.Circuit` per emotion (see :func:`assemble_circuit`); the budget is
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


def save_circuits(circuits: Mapping[str, Circuit], directory: str | Path) -> dict[str, str]:
    """Write ``<directory>/<emotion>.json|.safetensors`` per circuit; returns ``{emotion: json path}``."""
    return {e: str(c.save(Path(directory) / e)) for e, c in circuits.items()}


# ============================================================================ jobs (re-runnable, one run directory each)
#
# ``run_<step>(config, out)`` is the work of ``emocircuits circuits <step>`` as a function of a plain config dict
# (the CLI builds the dict; ``emocircuits rerun`` calls the same function with a manifest's config). Outputs:
#   influence: raw.parquet, influence.parquet, sigma.parquet, reference.safetensors ({emotion: v_ref})
#   assemble:  allocation.parquet, circuits/<emotion>.json|.safetensors (Circuit)


def parse_floats(text: str | Sequence[float], name: str = "alphas") -> list[float]:
    """``"0.1,0.3"`` (or a list) → ``[0.1, 0.3]``, each > 0 (one sentence on bad input)."""
    try:
        vals = [float(x) for x in (str(text).split(",") if isinstance(text, str) else text) if str(x).strip()]
    except ValueError:
        raise EmocircuitsError(f"--{name} {text!r} is not a comma-separated list of numbers, e.g. 0.1,0.3.") from None
    if not vals or any(v <= 0 for v in vals):
        raise EmocircuitsError(f"--{name} {text!r} must list at least one number, each > 0.")
    return vals


def run_influence(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> InfluenceResult:
    """Sublayer influence from a directions run's prompts and directions. Config: ``from`` (directions run),
    ``model``/``dtype`` (default: that run's), ``alphas``, ``emotions`` (empty = all), ``readout``,
    ``sigma_from``, ``ref_fraction``, ``max_prompts``, ``method``."""
    from emocircuits.circuits import read_directions
    from emocircuits.models import load_for_config
    from emocircuits.runs import RunDir, finished_run

    src = Path(config["from"])
    manifest = finished_run(src, "prompts.parquet", "circuits directions")
    alphas = parse_floats(config.get("alphas", list(ALPHAS)))
    if config.get("readout", "final.norm") not in READOUTS:
        raise EmocircuitsError(f"--readout {config['readout']!r} is not valid; use one of {', '.join(READOUTS)}.")
    if config.get("sigma_from", "output") not in SIGMA_FROM:
        raise EmocircuitsError(f"--sigma-from {config['sigma_from']!r} is not valid; use one of "
                               f"{', '.join(SIGMA_FROM)}.")
    if config.get("max_prompts") is not None and config["max_prompts"] < 1:
        raise EmocircuitsError(f"--max-prompts must be at least 1 (got {config['max_prompts']}).")
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    prompts, directions = read_directions(src)
    emotions = list(config.get("emotions") or directions)
    bad = [e for e in emotions if e not in directions]
    if bad:
        raise EmocircuitsError(f"--emotion {bad[0]!r} has no direction in {str(src)!r}; it has {', '.join(directions)}.")
    bridge, spec = load_for_config(config, quiet, model_pair)
    with RunDir.create(out, command="circuits influence", config=config, model_spec=spec,
                       seed=config.get("seed")) as run:
        res = sublayer_influence(bridge, prompts, directions, alphas=alphas, emotions=emotions,
                                 ref_fraction=float(config.get("ref_fraction", 1 / 6)),
                                 readout=config.get("readout", "final.norm"),
                                 sigma_from=config.get("sigma_from", "output"), method=config.get("method", "fast"),
                                 max_prompts=config.get("max_prompts"), progress=not quiet)
        run.write_table("raw", res.raw, "emotion, layer, sublayer, alpha, sigma, dose, base, delta, value "
                        "(delta = mean change of the final projection on v_ref; value = delta / dose)")
        run.write_table("influence", res.table, "emotion, layer, sublayer, sigma, raw (mean value over alphas), "
                        "influence (max(raw, 0) normalised to sum 1 per emotion)")
        run.write_table("sigma", res.sigma, "layer, sublayer, sigma (mean RMS of the sublayer output at the last "
                        "token), sigma_resid (of the residual after it)")
        run.write_tensors("reference", res.reference, "{emotion: v_ref [d_model]}")
        top = {e: d.nlargest(3, "influence")[["layer", "sublayer"]].astype(str).agg("".join, axis=1).tolist()
               for e, d in res.table.groupby("emotion", sort=False)}
        run.update(summary={**res.config, "top_sublayers": top})
    return res


def run_assemble(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Assembly:
    """Circuits from an influence run and a components run (whose directions run gives the prompts for Δμ).
    Config: ``influence``, ``components`` (run dirs), ``k_total`` (None = 560 · n_layers / 28),
    ``neuron_share``, ``min_neurons``, ``min_heads``, ``cap_ratio``, ``groups`` (Δμ groups: all | accepted)."""
    import pandas as pd

    from emocircuits.models import load_for_config
    from emocircuits.runs import RunDir, finished_run

    inf_dir, comp_dir = Path(config["influence"]), Path(config["components"])
    inf_manifest = finished_run(inf_dir, "influence.parquet", "circuits influence")
    comp_manifest = finished_run(comp_dir, "neuron_scores.parquet", "circuits components")
    dir_path = Path(comp_manifest["config"]["from"])
    finished_run(dir_path, "prompts.parquet", "circuits directions")
    for key, low in (("min_neurons", 0), ("min_heads", 0), ("k_total", 1)):
        if config.get(key) is not None and config[key] < low:
            raise EmocircuitsError(f"--{key.replace('_', '-')} must be at least {low} (got {config[key]}).")
    if not 0 < float(config.get("cap_ratio", 0.4)) <= 1:
        raise EmocircuitsError(f"--cap-ratio must be in (0, 1] (got {config['cap_ratio']}).")
    if not 0 <= float(config.get("neuron_share", 0.7)) <= 1:
        raise EmocircuitsError(f"--neuron-share must be in [0, 1] (got {config['neuron_share']}).")
    if config.get("groups", "all") not in ("all", "accepted"):
        raise EmocircuitsError(f"--groups {config['groups']!r} is not valid; use all or accepted.")
    config = {**config, "model": config.get("model") or inf_manifest["config"]["model"],
              "dtype": config.get("dtype") or inf_manifest["config"].get("dtype", "float32")}
    table = pd.read_parquet(inf_dir / "influence.parquet")
    ns, hs = pd.read_parquet(comp_dir / "neuron_scores.parquet"), pd.read_parquet(comp_dir / "head_scores.parquet")
    prompts = pd.read_parquet(dir_path / "prompts.parquet")
    emotions = [e for e in dict.fromkeys(table["emotion"]) if e in set(ns["emotion"])]
    bridge, spec = load_for_config(config, quiet, model_pair)
    with RunDir.create(out, command="circuits assemble", config=config, model_spec=spec,
                       seed=config.get("seed")) as run:
        shifts = shift_vectors(bridge, prompts, groups=config.get("groups", "all"))
        asm = assemble_circuits(table, ns, hs, shifts, n_layers=spec.n_layers, emotions=emotions,
                                k_total=config.get("k_total"),
                                neuron_share=float(config.get("neuron_share", PAPER_NEURONS / (PAPER_NEURONS +
                                                                                               PAPER_HEADS))),
                                min_neurons=int(config.get("min_neurons", 4)), min_heads=int(config.get("min_heads", 2)),
                                cap_ratio=float(config.get("cap_ratio", 0.4)))
        run.write_table("allocation", asm.allocation, "emotion, kind, layer, weight, available, k")
        files = {e: str(c.save(run.path / "circuits" / e).relative_to(run.path)) for e, c in asm.circuits.items()}
        run.update(circuits=files, summary={**asm.config, "n_groups": shifts.n_groups,
                                            "directions": str(dir_path)})
    return asm


def read_circuits(path: Path | str) -> dict[str, Circuit]:
    """``{emotion: Circuit}`` of an assemble run."""
    from emocircuits.runs import read_manifest

    manifest = read_manifest(path)
    return {e: Circuit.load(Path(path) / f[: -len(".json")] if f.endswith(".json") else Path(path) / f)
            for e, f in manifest.get("circuits", {}).items()}


def _register_jobs() -> None:
    from emocircuits.runs import register_command

    register_command("circuits influence", lambda cfg, out: run_influence(dict(cfg), Path(out), quiet=True))
    register_command("circuits assemble", lambda cfg, out: run_assemble(dict(cfg), Path(out), quiet=True))


_register_jobs()
