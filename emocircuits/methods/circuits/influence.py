"""Emotion circuits II (Wang et al. 2025, arXiv 2510.11328), question Q2b: sublayer influence and the
assembly of each emotion's global circuit from the local components of :mod:`emocircuits.methods.circuits`.

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
one batch, one row each, through :class:`~emocircuits.core.interventions.AddPerExample`. ``method="full"``
re-runs whole prompts under :class:`~emocircuits.core.interventions.AddDirection` (the reference; the tests
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
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.constants import NEUTRAL_SYSTEM, SUBLAYER_SITES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Direction
from emocircuits.core.interventions import AddDirection, AddPerExample, BatchInfo, Compose
from emocircuits.core.models import spec_of
from emocircuits.core.runner import Runner, check_cache
from emocircuits.methods.circuits.elicit import USER_TEMPLATE, prompt_ids
from emocircuits.methods.circuits.local_components import PROMPT_USES, prompt_rows

ALPHAS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)




SUBLAYERS: tuple[str, ...] = ("attn", "mlp")




DIR_SITE = {"attn": "resid.mid", "mlp": "resid.post"}


READOUTS = ("final.norm", "resid")


SIGMA_FROM = ("output", "resid")


SIGMA_PROMPTS = ("neutral", "elicit")
"""Which prompts σ is measured over: the emotion-free influence prompts (the default) or the emotion-instructed
elicitation prompts of the directions run (the authors take the residual RMS over those)."""


PAPER_REF_LAYERS = (21, 25, 28)
"""The authors' "stable segment" averaged into ``v_ref``: layers 21–25 of their 28-layer model."""


def paper_ref_layers(n_layers: int) -> list[int]:
    """The authors' reference window (layers 21–25 of 28) scaled to ``n_layers`` (round half up, clipped):
    28 layers give 21–25, 30 layers 23–27, 4 layers 3–3."""
    lo, hi, n = PAPER_REF_LAYERS
    a = min(int(math.floor(lo * n_layers / n + 0.5)), n_layers - 1)
    b = min(max(int(math.floor(hi * n_layers / n + 0.5)), a), n_layers - 1)
    return list(range(a, b + 1))


def neutral_items(items: pd.DataFrame, system: str = NEUTRAL_SYSTEM) -> pd.DataFrame:
    """One row per (skeleton, valence) of an items/replies table, with the emotion-free ``system``:
    ``skeleton, valence, user, system`` (+ ``scenario, event, theme`` when present), first-seen order."""

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


def emotion_prompt_masks(prompts: pd.DataFrame, neutral: pd.DataFrame, emotions: Sequence[str],
                         use: str) -> dict[str, np.ndarray] | None:
    """``{emotion: bool [n_neutral]}``: which emotion-free prompts (rows of ``neutral``) each emotion's
    influence averages over, chosen by ``use`` from the directions run's ``prompts`` (:func:`prompt_rows`);
    None when every prompt counts (``use="all"``, or a table without emotions)."""
    if use == "all" or "emotion" not in prompts or not {"skeleton", "valence"} <= set(neutral.columns):
        return None
    keys = list(zip(neutral["skeleton"], neutral["valence"], strict=True))
    out = {}
    for e in emotions:
        rows = prompts.iloc[prompt_rows(prompts, e, use)]
        chosen = set(zip(rows["skeleton"], rows["valence"], strict=True))
        out[e] = np.array([k in chosen for k in keys], dtype=bool)
        if not out[e].any():
            raise EmocircuitsError(f"No prompt of emotion {e!r} is among the first {len(keys)} influence prompts "
                                   f"(use={use}); raise --max-prompts or use all.")
    return out


def chat_ids(model: Any, items: pd.DataFrame, max_tokens: int = 4096) -> list[list[int]]:
    """Token ids of each row's chat prompt (``system`` + ``user``, generation prompt added)."""

    return prompt_ids(model, items, max_tokens)


def influence_reference(direction: Direction, *, fraction: float = 1 / 6,
                        sites: Sequence[str] = ("resid.mid", "resid.post"), layers: Sequence[int] | None = None,
                        anchor: tuple[str, int] | None = None) -> Tensor:
    """Unit ``[d_model]`` reference ``v_ref``: the mean of the unit vectors at ``sites`` over the reference
    window — ``layers`` when given (the paper: a fixed stable segment, :func:`paper_ref_layers`), else the
    last ``ceil(fraction · n_layers)`` layers — each sign-aligned to the ``anchor`` vector ``(site, layer)``
    (default: the last layer's vector at the last site). With ``sites=("resid.post",)`` and no ``layers``
    this is :func:`emocircuits.methods.circuits.reference_direction`."""
    if not 0 < fraction <= 1:
        raise EmocircuitsError(f"The reference fraction must be in (0, 1] (got {fraction}).")
    sites = [s for s in sites if direction.layers(s)] if hasattr(direction, "layers") else list(sites)
    if not sites:
        raise EmocircuitsError(f"Direction {direction.name!r} has no vectors at the reference sites.")
    have = sorted(direction.layers(sites[-1]))
    if layers is None:
        window = have[-max(1, math.ceil(fraction * len(have))):]
    else:
        window = sorted({int(x) for x in layers})
        bad = [x for x in window if x not in have]
        if not window or bad:
            raise EmocircuitsError(f"The reference layers {list(layers)} are not all layers of direction "
                                   f"{direction.name!r} (it has 0-{have[-1]}).")
    a_site, a_layer = anchor if anchor is not None else (sites[-1], have[-1])
    if a_site not in direction.sites() or int(a_layer) not in direction.layers(a_site):
        raise EmocircuitsError(f"The sign anchor {a_site} layer {a_layer} is not a vector of direction "
                               f"{direction.name!r}.")
    anchor_v = direction.vector(a_site, int(a_layer)).double()
    acc = torch.zeros_like(anchor_v)
    for site in sites:
        for layer in window:
            v = direction.vector(site, layer).double()
            v = v / v.norm().clamp_min(1e-12)
            acc += v if float(v @ anchor_v) >= 0 else -v
    return (acc / acc.norm().clamp_min(1e-12)).float()


def local_direction(direction: Direction, sublayer: str, layer: int, ref: Tensor | None = None) -> Tensor:
    """Unit ``[d_model]`` direction injected into ``sublayer`` (``attn``: ``resid.mid``, ``mlp``: ``resid.post``)
    of ``layer``, sign-aligned to ``ref`` when given."""
    v = direction.vector(DIR_SITE[sublayer], layer).float()
    v = v / v.norm().clamp_min(1e-12)
    if ref is not None and float(v @ ref.float()) < 0:
        v = -v
    return v


def sublayer_sigma(model: Any, token_ids: Sequence[Sequence[int]], *, layers: Sequence[int] | None = None,
                   max_tokens: int = 4096) -> pd.DataFrame:
    """``layer, sublayer, sigma, sigma_resid``: mean over prompts of the RMS at the last token of each
    sublayer's output (``sigma``) and of the residual after it (``sigma_resid``: resid.mid / resid.post,
    what the authors' σ script read). One forward pass."""

    layers = list(range(spec_of(model).n_layers)) if layers is None else [int(x) for x in layers]
    sites = [SUBLAYER_SITES[p] for p in SUBLAYERS] + [DIR_SITE[p] for p in SUBLAYERS]
    got = Runner(model, max_tokens=max_tokens).capture_last(token_ids, {s: layers for s in sites})
    def rms(site: str, layer: int) -> float:
        return float(got[site][layer].double().pow(2).mean(-1).sqrt().mean())

    rows = [{"layer": layer, "sublayer": p, "sigma": rms(SUBLAYER_SITES[p], layer), "sigma_resid": rms(DIR_SITE[p], layer)}
            for layer in layers for p in SUBLAYERS]
    return pd.DataFrame(rows)


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
                parts = [AddPerExample(SUBLAYER_SITES[p_], deltas[p_], "last") for p_ in SUBLAYERS if deltas[p_]]
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
    :class:`~emocircuits.core.interventions.AddDirection` (reference implementation and benchmark baseline)."""
    from tqdm.auto import tqdm

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
            with AddDirection(inj.vector, SUBLAYER_SITES[inj.sublayer], (inj.layer,), inj.dose, "last").apply(model):
                out[:, r] = last_states() @ inj.ref.float()
    return base, out


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
                       ref_layers: Sequence[int] | None = None, ref_anchor: tuple[str, int] | None = None,
                       ref_sites: Sequence[str] = ("resid.mid", "resid.post"), readout: str = "final.norm",
                       sigma_from: str = "output", sigma_prompts: str = "neutral", method: str = "fast",
                       system: str = NEUTRAL_SYSTEM, token_ids: Sequence[Sequence[int]] | None = None,
                       sigma_token_ids: Sequence[Sequence[int]] | None = None, max_prompts: int | None = None,
                       use: str = "all", max_rows: int = 64, max_tokens: int = 4096,
                       progress: bool = False) -> InfluenceResult:
    """Each sublayer's unit influence on the final emotion representation (see module docstring).

    ``prompts``: SEV items or the replies/prompts table of a directions run (one emotion-free prompt is
    made per (skeleton, valence)); or ``token_ids`` directly. ``method``: ``fast`` (KV-cached last token)
    or ``full`` (whole prompts per injection). ``sigma_from``: ``output`` (the sublayer's output) or
    ``resid`` (the residual after it). ``max_prompts`` keeps the first prompts only. ``layers``: the
    sublayers scanned (default all). ``ref_layers``: the reference window (default the last
    ``ceil(ref_fraction · n_layers)`` layers; the paper's is :func:`paper_ref_layers`); ``ref_anchor``:
    the ``(site, layer)`` vector the window's directions are sign-aligned to (default the last layer's
    ``resid.post``). ``sigma_prompts``: ``neutral`` (σ over the influence prompts) or ``elicit`` (over the
    emotion-instructed prompts of ``prompts``, each row's own ``system``); ``sigma_token_ids`` gives σ's
    prompts directly. ``use`` (:data:`PROMPT_USES`, for a directions run's prompts table): ``all`` (every
    (skeleton, valence), the same for each emotion), ``used`` (those of the groups the directions used) or
    ``accepted`` (per emotion, those whose reply in that emotion was accepted, as the authors); with ``used``
    or ``accepted`` σ's elicitation prompts are the used groups' rows (the authors' residual dumps).
    """
    if use not in PROMPT_USES:
        raise EmocircuitsError(f"use {use!r} is not valid; use one of {', '.join(PROMPT_USES)}.")

    if method not in ("fast", "full"):
        raise EmocircuitsError(f"method {method!r} is not valid; use fast or full.")
    if sigma_prompts not in SIGMA_PROMPTS:
        raise EmocircuitsError(f"sigma_prompts {sigma_prompts!r} is not valid; use one of {', '.join(SIGMA_PROMPTS)}.")
    if sigma_from not in SIGMA_FROM:
        raise EmocircuitsError(f"sigma_from {sigma_from!r} is not valid; use one of {', '.join(SIGMA_FROM)}.")
    alphas = [float(a) for a in alphas]
    if not alphas or any(a <= 0 for a in alphas):
        raise EmocircuitsError(f"alphas must be positive numbers (got {alphas}).")
    _readout(model, readout)
    spec = spec_of(model)
    layers = list(range(spec.n_layers)) if layers is None else [int(x) for x in layers]
    if not layers or any(not 0 <= x < spec.n_layers for x in layers):
        raise EmocircuitsError(f"The scanned layers {layers} must be layers 0-{spec.n_layers - 1} of the model.")
    emotions = list(emotions or directions)
    missing = [e for e in emotions if e not in directions]
    if missing:
        raise EmocircuitsError(f"No direction for emotion {missing[0]!r}; directions exist for {', '.join(directions)}.")
    masks = None
    if token_ids is None:
        if prompts is None:
            raise EmocircuitsError("Pass a prompts table (SEV items or replies) or token_ids.")
        neutral = neutral_items(prompts, system)
        if max_prompts is not None:
            neutral = neutral.iloc[:max_prompts]
        token_ids = chat_ids(model, neutral, max_tokens)
        masks = emotion_prompt_masks(prompts, neutral, emotions, use)
    elif max_prompts is not None:
        token_ids = list(token_ids)[:max_prompts]
    if not token_ids:
        raise EmocircuitsError("No prompts to measure influence on.")
    sigma_given = sigma_token_ids is not None
    if sigma_token_ids is None and sigma_prompts == "elicit":
        if prompts is None or "system" not in prompts.columns:
            raise EmocircuitsError("sigma_prompts='elicit' needs the prompts table of a directions run (with its "
                                   "'system' column) or sigma_token_ids.")
        rows = prompts
        if use != "all" and "used" in prompts and prompts["used"].astype(bool).any():
            rows = prompts[prompts["used"].astype(bool)]
        sigma_token_ids = prompt_ids(model, rows.reset_index(drop=True), max_tokens)
    sigma = sublayer_sigma(model, token_ids if sigma_token_ids is None else sigma_token_ids, layers=layers,
                           max_tokens=max_tokens)
    scol = "sigma" if sigma_from == "output" else "sigma_resid"
    sig = {(int(r.layer), r.sublayer): float(getattr(r, scol)) for r in sigma.itertuples()}
    refs = {e: influence_reference(directions[e], fraction=ref_fraction, sites=ref_sites, layers=ref_layers,
                                   anchor=ref_anchor) for e in emotions}
    plan = [Injection(e, layer, p, a, sig[(layer, p)], local_direction(directions[e], p, layer, refs[e]), refs[e])
            for e in emotions for layer in layers for p in SUBLAYERS for a in alphas]
    if method == "fast":
        base, inj = injection_scores_fast(model, token_ids, plan, readout=readout, max_rows=max_rows,
                                          progress=progress)
    else:
        base, inj = injection_scores_full(model, token_ids, plan, readout=readout, max_tokens=max_tokens,
                                          progress=progress)
    rows = []
    for r, x in enumerate(plan):
        keep = slice(None) if masks is None else torch.as_tensor(masks[x.emotion])
        d = float((inj[keep, r] - base[keep, r]).double().mean())
        rows.append({"emotion": x.emotion, "layer": x.layer, "sublayer": x.sublayer, "alpha": x.alpha,
                     "sigma": x.sigma, "dose": x.dose, "base": float(base[keep, r].mean()), "delta": d,
                     "value": d / max(x.dose, 1e-12)})
    raw = pd.DataFrame(rows)
    config = {"alphas": alphas, "emotions": emotions, "layers": layers, "ref_fraction": ref_fraction,
              "ref_layers": None if ref_layers is None else sorted({int(x) for x in ref_layers}),
              "ref_anchor": None if ref_anchor is None else [ref_anchor[0], int(ref_anchor[1])],
              "ref_sites": list(ref_sites), "readout": readout, "sigma_from": sigma_from,
              "sigma_prompts": "given" if sigma_given else sigma_prompts,
              "method": method, "system": system, "n_prompts": len(token_ids), "use": use,
              "n_prompts_per_emotion": {e: int(len(token_ids) if masks is None else masks[e].sum())
                                        for e in emotions}}
    return InfluenceResult(raw, influence_table(raw), sigma, refs, config)
