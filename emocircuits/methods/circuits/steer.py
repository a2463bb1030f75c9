"""Emotion steering compared (Wang et al. 2025, Q3): circuit steering against residual steering, prompting,
no steering and random circuits, with emotion-expression accuracy and reply quality.

Every method replies to the same emotion-free prompts (system ``"Keep the reply to at most two
sentences."``, user ``"{scenario}\n{event}"``), greedy, batched, interventions active on every step:

==========  ============================================================================================
``circuit``  ``s·Δμ`` added at the circuit's neurons (``neuron.gated``) at the last prompt token and each
             generated token, and at its head slices (``head.z``) at every position (``Circuit.intervention``)
``residual`` ``α·RMS(h)·v_e(l)`` added to ``resid.post`` at the last position (prompt's last token, then each
             new token) over a band of middle layers (default the paper's 11–20 of 28, scaled), ``α ≈ 8``
``prompt``   the Circuits I instruction ``"Always reply in {emotion}. ..."`` as system prompt, no hooks
``none``     the neutral prompt, no hooks (one generation per prompt, scored against every target)
``random``   per seed: random neurons and heads with the circuit's per-layer counts, random shifts with the
             same norms (per layer for neurons, per head for heads), added like ``circuit``
==========  ============================================================================================

Quality: perplexity of each reply under the unsteered model given the neutral prompt, distinct-2 (unique
word bigrams / bigrams, pooled over a method × emotion), share of empty replies and of cut-off replies
(``max_new_tokens`` reached without an end-of-sequence token).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.seeds import derive_seed
from emocircuits.core.components import Circuit, Direction
from emocircuits.core.generation import encode_prompts, generate
from emocircuits.core.interventions import AddDirection
from emocircuits.core.models import spec_of
from emocircuits.core.runner import Runner
from emocircuits.judges.panel import judge_panel
from emocircuits.methods.circuits.elicit import SYSTEM_TEMPLATE, pooled_accuracy, system_template
from emocircuits.methods.circuits.influence import NEUTRAL_SYSTEM, neutral_items
from emocircuits.methods.circuits.local_components import random_heads
from emocircuits.methods.neurons.find import random_control

METHODS: tuple[str, ...] = ("circuit", "residual", "prompt", "none", "random")
STEER_SYSTEM = NEUTRAL_SYSTEM


RESIDUAL_ALPHA = 8.0


CIRCUIT_SCALE = 1.0


PAPER_BAND = (11, 20, 28)  # layers 11..20 of a 28-layer model


_WORD = re.compile(r"[a-z0-9']+")


STEER_SITES = ("resid.post", "resid.mid")
"""Where residual steering reads its direction and adds it (the paper: the layer output, ``resid.post``)."""


def _check_site(site: str) -> str:
    if site not in STEER_SITES:
        raise EmocircuitsError(f"The residual steering site {site!r} is not valid; use one of {', '.join(STEER_SITES)}.")
    return site


def residual_band(n_layers: int) -> list[int]:
    """The paper's residual-steering band (layers 11–20 of 28) scaled to ``n_layers``."""
    lo, hi, n = PAPER_BAND
    a = int(math.floor(lo * n_layers / n + 0.5))
    b = int(math.floor(hi * n_layers / n + 0.5))
    a, b = min(a, n_layers - 1), min(max(b, a), n_layers - 1)
    return list(range(a, b + 1))


def residual_intervention(direction: Direction, layers: Sequence[int], alpha: float = RESIDUAL_ALPHA,
                          site: str = "resid.post") -> Any:
    """``AddDirection`` of ``α·RMS(h)·v̂(l)`` at the last position of ``layers`` (``v̂`` = unit vector of
    ``direction`` at ``site``)."""

    vecs = {int(layer): direction.vector(site, int(layer)).float() for layer in layers}
    return AddDirection(vecs, site, tuple(vecs), float(alpha), "last", rms_scaled=True, unit=True)


def random_circuit(circuit: Circuit, spec: Any, seed: int) -> Circuit:
    """Random components with ``circuit``'s per-layer counts (disjoint from it) and random shifts of the same
    norms: per layer for the neuron shift vector, per head for the head shifts. Seeded."""

    neurons = random_control(circuit.neurons, spec.d_mlp, seed)
    heads = random_heads(circuit.heads, spec.n_heads, seed)
    g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)

    def like(ref: torch.Tensor, k: int) -> torch.Tensor:
        z = torch.randn(k, *ref.shape[1:], generator=g, dtype=torch.float64)
        if ref.ndim == 1:  # one vector per layer: match its norm
            return (z * (ref.double().norm() / z.norm().clamp_min(1e-12))).float()
        norms = ref.double().norm(dim=-1, keepdim=True)[:k]
        return (z * norms / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float()

    n_shift = {layer: like(circuit.neuron_shift[layer], len(idx)) for layer, idx in neurons.layers.items()
               if layer in circuit.neuron_shift}
    h_shift = {layer: like(circuit.head_shift[layer], len(hs)) for layer, hs in heads.by_layer().items()
               if layer in circuit.head_shift}
    return Circuit(circuit.emotion, neurons, heads, n_shift, h_shift, None,
                   {"method": "random control", "seed": int(seed), "of": dict(circuit.provenance)})


def method_intervention(method: str, emotion: str, *, circuit: Circuit | None = None,
                        direction: Direction | None = None, scale: float | None = None,
                        band: Sequence[int] | None = None, n_layers: int | None = None,
                        site: str = "resid.post") -> Any:
    """The intervention of one steering method (None for ``prompt`` and ``none``). ``scale``: ``s`` for
    ``circuit``/``random`` (default 1), ``α`` for ``residual`` (default 8). ``random`` expects the random
    circuit already drawn (:func:`random_circuit`) as ``circuit``."""
    if method not in METHODS:
        raise EmocircuitsError(f"Unknown steering method {method!r}; use one of {', '.join(METHODS)}.")
    if method in ("prompt", "none"):
        return None
    if method in ("circuit", "random"):
        if circuit is None:
            raise EmocircuitsError(f"Method {method!r} needs the {emotion!r} circuit; assemble circuits first.")
        return circuit.intervention("steer", scale=CIRCUIT_SCALE if scale is None else float(scale))
    if direction is None:
        raise EmocircuitsError(f"Method 'residual' needs the {emotion!r} direction; compute directions first.")
    if band is None:
        if n_layers is None:
            raise EmocircuitsError("Residual steering needs its layer band (or n_layers to take the default band).")
        band = residual_band(n_layers)
    return residual_intervention(direction, band, RESIDUAL_ALPHA if scale is None else float(scale), site=site)


def _messages(users: Sequence[str], system: str) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": system}, {"role": "user", "content": u}] for u in users]


def _generate(model: Any, users: Sequence[str], system: str, intervention: Any, gen_kw: Mapping[str, Any]) -> Any:
    import contextlib

    ctx = intervention.apply(model) if intervention is not None else contextlib.nullcontext()
    with ctx:
        return generate(model, _messages(users, system), **gen_kw)


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique word n-grams / word n-grams pooled over ``texts`` (lower-case words; NaN with no n-gram)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = _WORD.findall(str(t).lower())
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def reply_perplexity(model: Any, prompt_ids: Sequence[Sequence[int]], reply_ids: Sequence[Sequence[int]], *,
                     max_tokens: int = 4096) -> np.ndarray:
    """``[n]`` perplexity ``exp(mean NLL)`` of each reply's tokens given its prompt, under the model as it is now
    (no hooks applied: the unsteered model); NaN for an empty reply."""

    out = np.full(len(prompt_ids), np.nan)
    todo = [i for i, r in enumerate(reply_ids) if len(r)]
    if not todo:
        return out
    runner = Runner(model, max_tokens=max_tokens)
    seqs = [list(prompt_ids[i]) + list(reply_ids[i]) for i in todo]
    plens = [len(prompt_ids[i]) for i in todo]
    batches = runner.batches_with_continuations(seqs, plens)
    for step in runner.run(batches):
        assert step.hidden is not None
        for j, r in enumerate(step.batch.rows):
            p, total = plens[r], len(seqs[r])
            h = step.hidden[j, p - 1 - step.offset: total - 1 - step.offset]  # [k, d]: states predicting the reply
            lp = torch.log_softmax(runner.logits(h), dim=-1)
            tgt = torch.tensor(seqs[r][p:total])
            nll = -lp[torch.arange(len(tgt)), tgt].double().mean()
            out[todo[r]] = float(torch.exp(nll))
    return out


@dataclass
class SteerResult:
    """Result of :func:`steer_compare`.

    ``replies``: one row per method × variant × target emotion × prompt: ``method, variant`` (random seed,
    else -1), ``emotion, skeleton, valence, user, reply, finish, n_new_tokens, empty, cut_off, ppl``,
    ``pred_<judge>``, ``correct_<judge>``. ``accuracy``: ``judge, method, emotion, valence, n, accuracy,
    ci_low, ci_high`` (``"all"`` = pooled; bootstrap over replies). ``quality``: ``method, emotion, n,
    ppl_mean, ppl_median, distinct2, empty, cut_off`` (``emotion="all"`` pooled).
    """

    replies: pd.DataFrame
    accuracy: pd.DataFrame
    quality: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)


def steer_accuracy(replies: pd.DataFrame, judge_names: Sequence[str], *, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """Accuracy per judge × method × emotion × valence (``"all"`` pooled) with bootstrap 95% CIs."""
    return pd.DataFrame([{"judge": judge, "method": method, **row} for judge in judge_names
                         for method, md in replies.groupby("method", sort=False)
                         for row in pooled_accuracy(md, f"correct_{judge}", n_boot=n_boot, seed=seed)])


def steer_quality(replies: pd.DataFrame) -> pd.DataFrame:
    """Quality per method × emotion (``"all"`` pooled): ``n, ppl_mean, ppl_median, distinct2, empty, cut_off``."""
    rows = []
    for method, md in replies.groupby("method", sort=False):
        for e in list(dict.fromkeys(md["emotion"])) + ["all"]:
            d = md if e == "all" else md[md["emotion"] == e]
            if method == "none" and e == "all":
                d = d.drop_duplicates(["skeleton", "valence", "user"])  # one generation per prompt
            ppl = d["ppl"].to_numpy(dtype=np.float64)
            finite = ppl[np.isfinite(ppl)]
            rows.append({"method": method, "emotion": e, "n": int(len(d)),
                         "ppl_mean": float(finite.mean()) if len(finite) else math.nan,
                         "ppl_median": float(np.median(finite)) if len(finite) else math.nan,
                         "distinct2": distinct_n(d["reply"].tolist(), 2),
                         "empty": float(d["empty"].mean()) if len(d) else math.nan,
                         "cut_off": float(d["cut_off"].mean()) if len(d) else math.nan})
    return pd.DataFrame(rows)


def steer_compare(model: Any, prompts: pd.DataFrame, *, emotions: Sequence[str] | None = None,
                  methods: Sequence[str] = METHODS, circuits: Mapping[str, Circuit] | None = None,
                  directions: Mapping[str, Direction] | None = None, scale: float = CIRCUIT_SCALE,
                  alpha: float = RESIDUAL_ALPHA, band: Sequence[int] | None = None, n_random: int = 3,
                  judges: Sequence[Any] = ("lexicon",), max_new_tokens: int = 48, max_prompts: int | None = None,
                  system: str = STEER_SYSTEM, prompt_system: str = SYSTEM_TEMPLATE, site: str = "resid.post",
                  seed: int = 0, n_boot: int = 1000, max_tokens: int = 8192,
                  generate_kw: Mapping[str, Any] | None = None, progress: bool = False) -> SteerResult:
    """Generate with every method for every target emotion, judge, and score accuracy and quality.

    ``prompts``: SEV items or any table with ``skeleton, valence`` and ``user`` (or ``scenario, event``); one
    prompt per (skeleton, valence). ``circuits`` (for ``circuit``/``random``) and ``directions`` (for
    ``residual``, ``resid.post`` vectors) by emotion. ``n_random`` random circuits per emotion, seeds derived
    from ``seed``. ``generate_kw``: more :func:`~emocircuits.core.generation.generate` options. ``system``:
    the emotion-free system prompt; ``prompt_system``: the prompting method's emotion instruction (a template
    name or a text with ``{emotion}``); ``site``: where residual steering reads its direction and adds it
    (:data:`STEER_SITES`).
    """
    from tqdm.auto import tqdm

    methods = list(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise EmocircuitsError(f"Unknown steering method {bad[0]!r}; use one of {', '.join(METHODS)}.")
    if "random" in methods and n_random < 1:
        raise EmocircuitsError(f"n_random must be at least 1 (got {n_random}).")
    prompt_system = system_template(prompt_system)
    _check_site(site)
    spec = spec_of(model)
    items = neutral_items(prompts, system)
    if max_prompts is not None:
        items = items.iloc[:max_prompts].reset_index(drop=True)
    if emotions is None:
        emotions = list(circuits or directions or {})
        if not emotions:
            raise EmocircuitsError("Pass emotions (or circuits/directions to take them from).")
    emotions = list(emotions)
    for m in methods:
        need = {"circuit": circuits, "random": circuits, "residual": directions}.get(m, {e: None for e in emotions})
        missing = [e for e in emotions if need is None or e not in need]
        if missing:
            what = "circuit" if m in ("circuit", "random") else "direction"
            raise EmocircuitsError(f"Method {m!r} needs a {what} for {missing[0]!r}; pass {what}s for every emotion.")
    band = list(band) if band is not None else residual_band(spec.n_layers)
    gen_kw = {"max_new_tokens": max_new_tokens, "max_tokens": max_tokens, **dict(generate_kw or {})}
    users = items["user"].tolist()
    jobs: list[tuple[str, int, str | None]] = []
    for m in methods:
        if m == "none":
            jobs.append((m, -1, None))
        elif m == "random":
            jobs += [(m, r, e) for e in emotions for r in range(n_random)]
        else:
            jobs += [(m, -1, e) for e in emotions]
    frames = []
    neutral_ids = encode_prompts(Runner(model, max_tokens=max_tokens), _messages(users, system))
    for m, variant, e in tqdm(jobs, desc="steer", disable=not progress):
        sys_prompt = prompt_system.format(emotion=e) if m == "prompt" else system
        if m == "random":
            comp = random_circuit(circuits[e], spec, derive_seed(seed, "random-circuit", e, variant))
            iv = method_intervention(m, e, circuit=comp, scale=scale)
        elif m in ("circuit", "residual"):
            iv = method_intervention(m, e, circuit=(circuits or {}).get(e), direction=(directions or {}).get(e),
                                     scale=scale if m == "circuit" else alpha, band=band, site=site)
        else:
            iv = None
        gen = _generate(model, users, sys_prompt, iv, gen_kw)
        ppl = reply_perplexity(model, neutral_ids, gen.token_ids, max_tokens=max_tokens)
        base = items[["skeleton", "valence", "user"]].copy() if "skeleton" in items else items[["user"]].copy()
        if "skeleton" not in base:
            base["skeleton"], base["valence"] = base.index.astype(str), ""
        base["reply"] = [t.strip() for t in gen.texts]
        base["finish"] = gen.finish
        base["n_new_tokens"] = [len(t) for t in gen.token_ids]
        base["empty"] = base["reply"].str.len() == 0
        base["cut_off"] = [f == "length" for f in gen.finish]
        base["ppl"] = ppl
        for target in ([e] if e is not None else emotions):
            f = base.copy()
            f.insert(0, "emotion", target)
            f.insert(0, "variant", variant)
            f.insert(0, "method", m)
            frames.append(f)
    replies = pd.concat(frames, ignore_index=True)
    judge_objs = judge_panel(judges, model=model, emotions=emotions)
    texts = replies["reply"].astype(str).tolist()
    targets = replies["emotion"].astype(str).tolist()
    for j in judge_objs:
        pred = j.judge(texts, targets).reset_index(drop=True)["predicted"].astype(str).to_numpy()
        replies[f"pred_{j.name}"] = pred
        replies[f"correct_{j.name}"] = pred == np.asarray(targets)
    names = [j.name for j in judge_objs]
    config = {"methods": methods, "emotions": emotions, "scale": scale, "alpha": alpha, "band": band,
              "n_random": n_random, "judges": names, "max_new_tokens": max_new_tokens, "system": system,
              "prompt_system": prompt_system, "site": site, "generate": dict(generate_kw or {}),
              "seed": seed, "n_prompts": len(items)}
    return SteerResult(replies, steer_accuracy(replies, names, n_boot=n_boot, seed=seed), steer_quality(replies),
                       config)


def steer_text(model: Any, text: str, emotion: str, method: str = "circuit", *, scale: float | None = None,
               circuit: Circuit | None = None, direction: Direction | None = None,
               band: Sequence[int] | None = None, max_new_tokens: int = 48, system: str = STEER_SYSTEM,
               prompt_system: str = SYSTEM_TEMPLATE, site: str = "resid.post", seed: int = 0,
               **generate_kw: Any) -> dict[str, Any]:
    """Steered and unsteered replies to one user ``text`` (for ``emocircuits steer``): ``{"method",
    "emotion", "scale", "steered", "unsteered", "finish_steered", "finish_unsteered"}``. ``method="random"``
    draws a random circuit like ``circuit`` with ``seed``."""

    if not str(text).strip():
        raise EmocircuitsError("The text to reply to is empty; pass a non-empty prompt.")
    prompt_system = system_template(prompt_system)
    _check_site(site)
    spec = spec_of(model)
    if method == "random":
        if circuit is None:
            raise EmocircuitsError("Method 'random' needs the circuit whose per-layer counts it copies.")
        circuit = random_circuit(circuit, spec, seed)
    iv = method_intervention(method, emotion, circuit=circuit, direction=direction, scale=scale, band=band,
                             n_layers=spec.n_layers, site=site)
    kw = {"max_new_tokens": max_new_tokens, **generate_kw}
    sys_prompt = prompt_system.format(emotion=emotion) if method == "prompt" else system
    steered = _generate(model, [text], sys_prompt, iv, kw)
    plain = _generate(model, [text], system, None, kw)
    used = scale if scale is not None else (RESIDUAL_ALPHA if method == "residual" else
                                            CIRCUIT_SCALE if method in ("circuit", "random") else None)
    return {"method": method, "emotion": emotion, "scale": used, "steered": steered.texts[0].strip(),
            "unsteered": plain.texts[0].strip(), "finish_steered": steered.finish[0],
            "finish_unsteered": plain.finish[0]}
