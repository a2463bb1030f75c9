"""Emotion steering compared (Wang et al. 2025, Q3): circuit steering against residual steering, prompting,
no steering and random circuits, with emotion-expression accuracy and reply quality.

Every method replies to the same emotion-free prompts (system ``"Keep the reply to at most two
sentences."``, user ``"{scenario}\n{event}"``), greedy, batched, interventions active on every step:

==========  ============================================================================================
``circuit``  ``s·Δμ`` added at the circuit's neurons (``neuron.gated``) at the last prompt token and each
             generated token, and at its head slices (``head.z``) at every position (``Circuit.intervention``)
``residual`` ``α·RMS(h)·v_e(l)`` added to ``resid.post`` at the last position (prompt's last token, then each
             new token) over a band of middle layers (default the paper's 11–20 of 28, scaled); the paper's ``α = 8``
``prompt``   the Circuits I instruction ``"Always reply in {emotion}. ..."`` as system prompt, no hooks
``none``     the neutral prompt, no hooks (one generation per prompt, scored against every target)
``random``   per seed: random neurons and heads with the circuit's per-layer counts, random shifts with the
             same norms (per layer for neurons, per head for heads), added like ``circuit``
==========  ============================================================================================

Strength: ``s`` and ``α`` default to ``auto``, the strongest setting whose replies stay fluent on a calibration
split (:mod:`emocircuits.methods.fluency`); an explicit number is checked by the same rule on the evaluation
replies (``fluent`` in the quality table, and a note). ``doses`` adds a dose-response table: each steerable
method at multiples of its strength, so that methods can be compared at matched fluency.

Quality: perplexity of each reply under the unsteered model given the neutral prompt (geometric mean, and its
ratio to the unsteered replies'), distinct-2 (each reply's unique word bigrams / bigrams, averaged, and its
ratio), share of empty replies and of cut-off replies (``max_new_tokens`` reached before the reply ended).
Replies end after ``sentences`` sentences (default 2, as the system prompt asks) or at the end of turn.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from emocircuits.base.constants import (
    CALIBRATION_PROMPTS,
    STEER_MAX_NEW_TOKENS,
    STEER_SENTENCES,
    STRENGTH_GRIDS,
)
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.seeds import derive_seed
from emocircuits.core.components import Circuit, Direction
from emocircuits.core.generation import encode_prompts, generate
from emocircuits.core.interventions import AddDirection
from emocircuits.core.models import spec_of
from emocircuits.core.runner import Runner, clean_kv
from emocircuits.judges.panel import judge_panel
from emocircuits.methods.circuits.elicit import SYSTEM_TEMPLATE, pooled_accuracy, system_template
from emocircuits.methods.circuits.influence import NEUTRAL_SYSTEM, neutral_items
from emocircuits.methods.circuits.local_components import random_heads
from emocircuits.methods.fluency import (
    FluencyRule,
    StrengthChoice,
    calibrate_strength,
    geometric_mean,
    reply_distinct_n,
    reply_perplexity,
)
from emocircuits.methods.neurons.find import random_control

METHODS: tuple[str, ...] = ("circuit", "residual", "prompt", "none", "random")
STEER_SYSTEM = NEUTRAL_SYSTEM


RESIDUAL_ALPHA = 8.0


CIRCUIT_SCALE = 1.0


PAPER_BAND = (11, 20, 28)  # layers 11..20 of a 28-layer model


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


AUTO = "auto"
"""A strength of ``auto``: the strongest fluent setting on a calibration split (:mod:`emocircuits.methods.fluency`)."""

STRENGTH_OF = {"circuit": "scale", "random": "scale", "residual": "alpha"}
"""Which strength each steerable method takes (its grid: ``STRENGTH_GRIDS``)."""


def check_strength(value: Any, flag: str) -> float | None:
    """``None`` for ``auto``, else the finite number ``>= 0`` that ``value`` names (one sentence otherwise)."""
    if value is None or (isinstance(value, str) and value.strip().lower() == AUTO):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        x = math.nan
    if not (math.isfinite(x) and x >= 0):
        raise EmocircuitsError(f"{flag} {value!r} is not a strength; use auto or a finite number >= 0.")
    return x


@dataclass
class SteerResult:
    """Result of :func:`steer_compare`.

    ``replies``: one row per method × variant × target emotion × prompt × dose: ``method, variant`` (random seed,
    else -1), ``dose, strength`` (multiplier of the method's strength and the strength used; NaN for prompt and
    none), ``emotion, skeleton, valence, user, reply, finish, n_new_tokens, empty, cut_off, ppl``,
    ``pred_<judge>``, ``correct_<judge>``. ``accuracy``: at dose 1, ``judge, method, emotion, valence, n,
    accuracy, ci_low, ci_high`` (``"all"`` = pooled; bootstrap over replies). ``quality``: at dose 1, ``method,
    emotion, n, ppl_mean, ppl_median, ppl_geo, ppl_ratio, distinct2, distinct2_ratio, empty, cut_off, fluent``
    (``emotion="all"`` pooled; ratios against the unsteered replies). ``dose``: ``method, dose, strength, judge,
    n, accuracy, ci_low, ci_high, ppl_ratio, distinct2_ratio, empty, cut_off, fluent``. ``strengths``: the
    ``auto`` choices by strength name (``scale``, ``alpha``). ``notes``: warnings to print (a strength that
    breaks the fluency rule).
    """

    replies: pd.DataFrame
    accuracy: pd.DataFrame
    quality: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)
    dose: pd.DataFrame = field(default_factory=pd.DataFrame)
    strengths: dict[str, StrengthChoice] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def steer_accuracy(replies: pd.DataFrame, judge_names: Sequence[str], *, n_boot: int = 1000,
                   seed: int = 0) -> pd.DataFrame:
    """Accuracy per judge × method × emotion × valence (``"all"`` pooled) with bootstrap 95% CIs."""
    return pd.DataFrame([{"judge": judge, "method": method, **row} for judge in judge_names
                         for method, md in replies.groupby("method", sort=False)
                         for row in pooled_accuracy(md, f"correct_{judge}", n_boot=n_boot, seed=seed)])


def _reference(replies: pd.DataFrame) -> tuple[float, float, float]:
    """Geometric-mean perplexity, distinct-2 and empty share of the unsteered replies (one per prompt)."""
    d = replies.drop_duplicates(["skeleton", "valence", "user"])
    return geometric_mean(d["ppl"].to_numpy()), reply_distinct_n(d["reply"].tolist(), 2), float(d["empty"].mean())


def _quality_row(d: pd.DataFrame, ref: tuple[float, float, float], rule: FluencyRule, dedupe: bool) -> dict[str, Any]:
    """Fluency of one method's replies ``d`` against the unsteered ``ref`` (distinct-2: each reply's own, averaged)."""
    if dedupe:
        d = d.drop_duplicates(["skeleton", "valence", "user"])
    ppl = d["ppl"].to_numpy(dtype=np.float64)
    finite = ppl[np.isfinite(ppl)]
    geo = geometric_mean(ppl)
    d2 = reply_distinct_n(d["reply"].tolist(), 2)
    ppl_ratio = geo / ref[0] if ref[0] > 0 else math.nan
    d2_ratio = d2 / ref[1] if ref[1] > 0 else math.nan
    empty = float(d["empty"].mean()) if len(d) else math.nan
    return {"n": int(len(d)), "ppl_mean": float(finite.mean()) if len(finite) else math.nan,
            "ppl_median": float(np.median(finite)) if len(finite) else math.nan, "ppl_geo": geo,
            "ppl_ratio": ppl_ratio, "distinct2": d2, "distinct2_ratio": d2_ratio, "empty": empty,
            "cut_off": float(d["cut_off"].mean()) if len(d) else math.nan,
            "fluent": rule.holds(ppl_ratio, d2_ratio, empty - ref[2])}


def steer_quality(replies: pd.DataFrame, reference: pd.DataFrame | None = None,
                  rule: FluencyRule | None = None) -> pd.DataFrame:
    """Quality per method × emotion (``"all"`` pooled): ``n, ppl_mean, ppl_median, ppl_geo, ppl_ratio, distinct2,
    distinct2_ratio, empty, cut_off, fluent``. Ratios and ``fluent`` (:class:`FluencyRule`) compare with the
    unsteered replies ``reference`` (default: the ``none`` rows; without them the ratios are NaN)."""
    rule = rule or FluencyRule()
    if reference is None:
        reference = replies[replies["method"] == "none"]
    ref = _reference(reference) if len(reference) else (math.nan, math.nan, math.nan)
    rows = []
    for method, md in replies.groupby("method", sort=False):
        for e in list(dict.fromkeys(md["emotion"])) + ["all"]:
            d = md if e == "all" else md[md["emotion"] == e]
            rows.append({"method": method, "emotion": e,
                         **_quality_row(d, ref, rule, dedupe=method == "none")})
    return pd.DataFrame(rows)


def steer_dose(replies: pd.DataFrame, judge_names: Sequence[str], reference: pd.DataFrame,
               rule: FluencyRule | None = None, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Dose-response per steerable method × dose × judge: pooled accuracy with bootstrap 95% CIs and fluency
    against the unsteered ``reference`` replies (rows of ``replies`` with a finite ``strength``)."""
    rule = rule or FluencyRule()
    ref = _reference(reference) if len(reference) else (math.nan, math.nan, math.nan)
    rows = []
    steered = replies[np.isfinite(replies["strength"].to_numpy(dtype=np.float64))]
    for (method, dose), d in steered.groupby(["method", "dose"], sort=False):
        q = _quality_row(d, ref, rule, dedupe=False)
        for judge in judge_names:
            acc = next(r for r in pooled_accuracy(d, f"correct_{judge}", n_boot=n_boot, seed=seed)
                       if r["emotion"] == "all" and r["valence"] == "all")
            rows.append({"method": method, "dose": float(dose), "strength": float(d["strength"].iloc[0]),
                         "judge": judge, "n": acc["n"], "accuracy": acc["accuracy"], "ci_low": acc["ci_low"],
                         "ci_high": acc["ci_high"], "ppl_ratio": q["ppl_ratio"], "distinct2_ratio": q["distinct2_ratio"],
                         "empty": q["empty"], "cut_off": q["cut_off"], "fluent": q["fluent"]})
    cols = ["method", "dose", "strength", "judge", "n", "accuracy", "ci_low", "ci_high", "ppl_ratio",
            "distinct2_ratio", "empty", "cut_off", "fluent"]
    return pd.DataFrame(rows, columns=cols).sort_values(["method", "judge", "dose"], kind="stable").reset_index(drop=True)


def calibration_users(items: pd.DataFrame, n: int, seed: int, system: str = STEER_SYSTEM) -> list[str]:
    """``n`` user messages of ``items`` (one per skeleton × valence), a seeded choice in a fixed order."""
    users = neutral_items(items, system)["user"].tolist()
    if n < 1:
        raise EmocircuitsError(f"calibration_prompts must be at least 1 (got {n}).")
    rng = np.random.default_rng(derive_seed(seed, "calibration-prompts"))
    keep = sorted(rng.permutation(len(users))[: min(n, len(users))].tolist())
    return [users[i] for i in keep]


def choose_strength(model: Any, method: str, emotions: Sequence[str], users: Sequence[str], *,
                    circuits: Mapping[str, Circuit] | None = None, directions: Mapping[str, Direction] | None = None,
                    band: Sequence[int] | None = None, site: str = "resid.post", system: str = STEER_SYSTEM,
                    generate_kw: Mapping[str, Any] | None = None, grid: Sequence[float] | None = None,
                    rule: FluencyRule | None = None, max_tokens: int = 8192) -> StrengthChoice:
    """``auto`` strength of ``method`` (``circuit``/``random``: ``s``; ``residual``: ``α``): the strongest of
    ``grid`` (default ``STRENGTH_GRIDS``) whose replies to ``users``, steered toward each of ``emotions``, stay
    fluent (:func:`~emocircuits.methods.fluency.calibrate_strength`)."""
    name = STRENGTH_OF.get(method)
    if name is None:
        raise EmocircuitsError(f"Method {method!r} has no strength to choose; auto serves circuit, random and residual.")
    n_layers = spec_of(model).n_layers

    def at(x: float) -> list[Any]:
        return [method_intervention("circuit" if method == "random" else method, e,
                                    circuit=(circuits or {}).get(e), direction=(directions or {}).get(e),
                                    scale=x, band=band, n_layers=n_layers, site=site) for e in emotions]

    return calibrate_strength(model, _messages(users, system), at, grid=grid or STRENGTH_GRIDS[name], name=name,
                              rule=rule, generate_kw=generate_kw, max_tokens=max_tokens)


def steer_compare(model: Any, prompts: pd.DataFrame, *, emotions: Sequence[str] | None = None,
                  methods: Sequence[str] = METHODS, circuits: Mapping[str, Circuit] | None = None,
                  directions: Mapping[str, Direction] | None = None, scale: float | str = AUTO,
                  alpha: float | str = AUTO, band: Sequence[int] | None = None, n_random: int = 3,
                  judges: Sequence[Any] = ("lexicon",), max_new_tokens: int = STEER_MAX_NEW_TOKENS,
                  sentences: int = STEER_SENTENCES, max_prompts: int | None = None,
                  system: str = STEER_SYSTEM, prompt_system: str = SYSTEM_TEMPLATE, site: str = "resid.post",
                  seed: int = 0, n_boot: int = 1000, max_tokens: int = 8192,
                  generate_kw: Mapping[str, Any] | None = None, calibration: pd.DataFrame | None = None,
                  calibration_prompts: int = CALIBRATION_PROMPTS, doses: Sequence[float] = (),
                  rule: FluencyRule | None = None, progress: bool = False) -> SteerResult:
    """Generate with every method for every target emotion, judge, and score accuracy and fluency.

    ``prompts``: SEV items or any table with ``skeleton, valence`` and ``user`` (or ``scenario, event``); one
    prompt per (skeleton, valence). ``circuits`` (for ``circuit``/``random``) and ``directions`` (for
    ``residual``, ``resid.post`` vectors) by emotion. ``scale`` (circuit, random) and ``alpha`` (residual): a
    number or ``"auto"``, chosen on ``calibration_prompts`` prompts of ``calibration`` (default: of
    ``prompts``; say so when you report) by :func:`choose_strength`. ``doses``: extra multipliers of each
    steerable method's strength for a dose-response table (dose 1 is always run). ``n_random`` random circuits
    per emotion, seeds derived from ``seed``. ``sentences``: a reply ends after that many sentences (0 = at its
    end of turn only); ``generate_kw``: more :func:`~emocircuits.core.generation.generate` options.
    ``system``: the emotion-free system prompt; ``prompt_system``: the prompting method's emotion instruction
    (a template name or a text with ``{emotion}``); ``site``: where residual steering reads its direction and
    adds it (:data:`STEER_SITES`).
    """
    with clean_kv(model):  # unsteered replies keep the prompts' keys/values; last-token steering reuses them
        from tqdm.auto import tqdm

        methods = list(methods)
        bad = [m for m in methods if m not in METHODS]
        if bad:
            raise EmocircuitsError(f"Unknown steering method {bad[0]!r}; use one of {', '.join(METHODS)}.")
        if "random" in methods and n_random < 1:
            raise EmocircuitsError(f"n_random must be at least 1 (got {n_random}).")
        fixed = {"scale": check_strength(scale, "scale"), "alpha": check_strength(alpha, "alpha")}
        doses = sorted({float(x) for x in doses} - {1.0})
        if not all(math.isfinite(x) and x >= 0 for x in doses):
            raise EmocircuitsError(f"Doses must be finite multipliers >= 0 (got {list(doses)}).")
        prompt_system = system_template(prompt_system)
        _check_site(site)
        rule = rule or FluencyRule()
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
        gen_kw = {"max_new_tokens": max_new_tokens, "max_tokens": max_tokens, "sentences": sentences,
                  **dict(generate_kw or {})}
        strengths: dict[str, StrengthChoice] = {}
        used: dict[str, float] = {}
        for name, meths in (("scale", ("circuit", "random")), ("alpha", ("residual",))):
            present = [m for m in methods if m in meths]
            if not present:
                continue
            if fixed[name] is not None:
                used[name] = fixed[name]
                continue
            users_cal = calibration_users(calibration if calibration is not None else prompts, calibration_prompts,
                                          seed, system)
            choice = choose_strength(model, "circuit" if present[0] == "random" else present[0], emotions, users_cal,
                                     circuits=circuits, directions=directions, band=band, site=site, system=system,
                                     generate_kw={k: v for k, v in gen_kw.items() if k != "max_tokens"}, rule=rule,
                                     max_tokens=max_tokens)
            strengths[name] = choice
            used[name] = choice.chosen
        users = items["user"].tolist()
        jobs: list[tuple[str, int, str | None, float]] = []
        for dose in [1.0, *doses]:
            for m in methods:
                if dose != 1.0 and m not in STRENGTH_OF:
                    continue
                if m == "none":
                    jobs.append((m, -1, None, dose))
                elif m == "random":
                    jobs += [(m, r, e, dose) for e in emotions for r in range(n_random)]
                else:
                    jobs += [(m, -1, e, dose) for e in emotions]
        frames = []
        neutral_ids = encode_prompts(Runner(model, max_tokens=max_tokens), _messages(users, system))
        reference = None
        for m, variant, e, dose in tqdm(jobs, desc="steer", disable=not progress):
            sys_prompt = prompt_system.format(emotion=e) if m == "prompt" else system
            strength = used[STRENGTH_OF[m]] * dose if m in STRENGTH_OF else math.nan
            if m == "random":
                comp = random_circuit(circuits[e], spec, derive_seed(seed, "random-circuit", e, variant))
                iv = method_intervention(m, e, circuit=comp, scale=strength)
            elif m in ("circuit", "residual"):
                iv = method_intervention(m, e, circuit=(circuits or {}).get(e), direction=(directions or {}).get(e),
                                         scale=strength, band=band, site=site)
            else:
                iv = None
            f = _reply_frame(model, items, users, sys_prompt, iv, gen_kw, neutral_ids, max_tokens)
            f.insert(0, "strength", strength)
            f.insert(0, "dose", dose if m in STRENGTH_OF else math.nan)
            if m == "none":
                reference = f
            for target in ([e] if e is not None else emotions):
                g = f.copy()
                g.insert(0, "emotion", target)
                g.insert(0, "variant", variant)
                g.insert(0, "method", m)
                frames.append(g)
        if reference is None:  # the unsteered replies every fluency ratio compares with
            reference = _reply_frame(model, items, users, system, None, gen_kw, neutral_ids, max_tokens)
        replies = pd.concat(frames, ignore_index=True)
        judge_objs = judge_panel(judges, model=model, emotions=emotions)
        texts = replies["reply"].astype(str).tolist()
        targets = replies["emotion"].astype(str).tolist()
        for j in judge_objs:
            pred = j.judge(texts, targets).reset_index(drop=True)["predicted"].astype(str).to_numpy()
            replies[f"pred_{j.name}"] = pred
            replies[f"correct_{j.name}"] = pred == np.asarray(targets)
        names = [j.name for j in judge_objs]
        main = replies[(replies["dose"] == 1.0) | replies["dose"].isna()]  # dose 1 and the methods without one
        quality = steer_quality(main, reference.assign(emotion="all"), rule)
        notes = [f"{m} at {STRENGTH_OF[m]} {used[STRENGTH_OF[m]]:g} breaks the fluency rule ({rule.describe()}): "
                 f"perplexity ×{r.ppl_ratio:.2f}, distinct-2 ×{r.distinct2_ratio:.2f}; its replies are marked fluent=False"
                 for r in quality[quality.emotion == "all"].itertuples() for m in [r.method]
                 if m in STRENGTH_OF and not r.fluent]
        dose_table = steer_dose(replies, names, reference.assign(emotion="all"), rule, n_boot=n_boot, seed=seed)
        config = {"methods": methods, "emotions": emotions, "scale": used.get("scale", fixed["scale"]),
                  "alpha": used.get("alpha", fixed["alpha"]), "auto": sorted(strengths), "band": band,
                  "n_random": n_random, "judges": names, "max_new_tokens": max_new_tokens, "sentences": sentences,
                  "system": system, "prompt_system": prompt_system, "site": site, "generate": dict(generate_kw or {}),
                  "seed": seed, "n_prompts": len(items), "doses": [1.0, *doses], "fluency_rule": rule.as_dict(),
                  "calibration": "given" if calibration is not None else "the evaluation prompts",
                  "strength_choice": {k: v.summary() for k, v in strengths.items()}}
        return SteerResult(replies, steer_accuracy(main, names, n_boot=n_boot, seed=seed), quality, config,
                           dose_table, strengths, notes)


def _reply_frame(model: Any, items: pd.DataFrame, users: Sequence[str], system: str, iv: Any,
                 gen_kw: Mapping[str, Any], neutral_ids: Sequence[Sequence[int]], max_tokens: int) -> pd.DataFrame:
    """Replies to ``users`` under ``iv``: ``skeleton, valence, user, reply, finish, n_new_tokens, empty,
    cut_off, ppl`` (perplexity under the unsteered model given the neutral prompt)."""
    gen = _generate(model, users, system, iv, gen_kw)
    base = items[["skeleton", "valence", "user"]].copy() if "skeleton" in items else items[["user"]].copy()
    if "skeleton" not in base:
        base["skeleton"], base["valence"] = base.index.astype(str), ""
    base["reply"] = [t.strip() for t in gen.texts]
    base["finish"] = gen.finish
    base["n_new_tokens"] = [len(t) for t in gen.token_ids]
    base["empty"] = base["reply"].str.len() == 0
    base["cut_off"] = [f == "length" for f in gen.finish]
    base["ppl"] = reply_perplexity(model, neutral_ids, gen.token_ids, max_tokens=max_tokens)
    return base


def steer_text(model: Any, text: str, emotion: str, method: str = "circuit", *, scale: float | str | None = None,
               circuit: Circuit | None = None, direction: Direction | None = None,
               band: Sequence[int] | None = None, max_new_tokens: int = STEER_MAX_NEW_TOKENS,
               sentences: int = STEER_SENTENCES, system: str = STEER_SYSTEM,
               prompt_system: str = SYSTEM_TEMPLATE, site: str = "resid.post", seed: int = 0,
               calibration_users: Sequence[str] | None = None, **generate_kw: Any) -> dict[str, Any]:
    """Steered and unsteered replies to one user ``text`` (for ``emocircuits steer``): ``{"method",
    "emotion", "scale", "steered", "unsteered", "finish_steered", "finish_unsteered", "strength_choice"}``.
    ``scale`` ``None``/``"auto"``: chosen on ``calibration_users`` (:func:`choose_strength`; needed then for
    circuit, random and residual); ``strength_choice`` is its :class:`StrengthChoice` (None for a number).
    ``method="random"`` draws a random circuit like ``circuit`` with ``seed``."""

    if not str(text).strip():
        raise EmocircuitsError("The text to reply to is empty; pass a non-empty prompt.")
    prompt_system = system_template(prompt_system)
    _check_site(site)
    spec = spec_of(model)
    if method == "random":
        if circuit is None:
            raise EmocircuitsError("Method 'random' needs the circuit whose per-layer counts it copies.")
        circuit = random_circuit(circuit, spec, seed)
    kw = {"max_new_tokens": max_new_tokens, "sentences": sentences, **generate_kw}
    used, choice = check_strength(scale, "scale"), None
    if used is None and method in STRENGTH_OF:
        if not calibration_users:
            raise EmocircuitsError("An auto strength needs calibration prompts; pass calibration_users or a number.")
        layers = band if band is not None else residual_band(spec.n_layers)
        choice = choose_strength(model, "circuit" if method == "random" else method, [emotion], calibration_users,
                                 circuits={emotion: circuit} if circuit is not None else None,
                                 directions={emotion: direction} if direction is not None else None, band=layers,
                                 site=site, system=system, generate_kw=kw)
        used = choice.chosen
    iv = method_intervention(method, emotion, circuit=circuit, direction=direction, scale=used, band=band,
                             n_layers=spec.n_layers, site=site)
    sys_prompt = prompt_system.format(emotion=emotion) if method == "prompt" else system
    steered = _generate(model, [text], sys_prompt, iv, kw)
    plain = _generate(model, [text], system, None, kw)
    return {"method": method, "emotion": emotion, "scale": used if method in STRENGTH_OF else None,
            "steered": steered.texts[0].strip(), "unsteered": plain.texts[0].strip(),
            "finish_steered": steered.finish[0], "finish_unsteered": plain.finish[0], "strength_choice": choice}
