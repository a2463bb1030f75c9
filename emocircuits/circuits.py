"""Emotion circuits (Wang et al. 2025, arXiv 2510.11328), questions Q1–Q2a: elicitation, emotion
directions, local components (neurons and heads), and their validation by ablation/enhancement.

The pipeline, each step a function over the layers below it (runner, generation, judges, sites,
interventions), each result a small dataclass of pandas tables and components::

    el = elicit(model, load_data("builtin:sev"), limit=8, judges=("lexicon",))   # replies + verdicts
    dr = emotion_directions(model, el.replies)                                      # {emotion: Direction}
    co = local_components(model, dr.prompts, dr.directions, top_k=20)               # neuron/head scores
    dose = validate_components(model, dr.prompts, dr.directions, co.neuron_sets, co.head_sets)

**Elicitation.** For every SEV skeleton × valence × target emotion: system ``"Always reply in
{emotion}. Keep the reply to at most two sentences."``, user ``"{scenario}\\n{event}"``, greedy
generation. Each reply is judged; ``accepted`` = the acceptance judge(s) say it expresses the target.

**Directions (Q1).** The prompt only (chat-rendered, generation prompt added) is run forward and the
last prompt token read at ``resid.mid`` and ``resid.post`` of every layer. Activations ``x[g, e]``
are grouped by (skeleton, valence) = g; ``c_e = mean_g (x[g, e] − mean_e' x[g, e'])``;
``v_e = normalise(c_e − mean_e' c_e')``. By default only groups whose six replies were all accepted.

**Components (Q2a).** Neurons: ``β = W_down v_e(l)`` (``[d_mlp]``, ``v_e(l)`` the ``resid.post``
direction), contribution ``c_n = a_n β_n`` with ``a`` the ``neuron.gated`` value at the last prompt
token. Heads: the drop of ``⟨resid.mid(l), v_e(l)⟩`` when query head h's ``head.z`` slice is zeroed,
which (resid.mid being linear in that slice) equals ``(z_h @ W_O[h]) · v_e(l)``: every head of
every layer from one forward pass (checked against real ablation in the tests).

**Validation.** The top-k components scaled by s, against k random ones with the same per-layer
counts; metric: the final residual (``resid.post`` of the last layer) at the last prompt token
projected on a late reference direction (normalised, sign-aligned mean of the last sixth of layers'
``resid.post`` directions), under the emotion-instructed prompt.

Table schemas are in the docstrings of the result dataclasses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emocircuits.components import Direction, HeadSet, NeuronSet
from emocircuits.data import EKMAN6
from emocircuits.errors import EmocircuitsError
from emocircuits.models import load_for_config
from emocircuits.runs import finished_run

SYSTEM_TEMPLATE = "Always reply in {emotion}. Keep the reply to at most two sentences."
USER_TEMPLATE = "{scenario}\n{event}"
VALENCES: tuple[str, ...] = ("positive", "neutral", "negative")
DIRECTION_SITES: tuple[str, ...] = ("resid.mid", "resid.post")
SCALES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
ACCEPT_MODES = ("first", "all", "any")
GROUP_MODES = ("accepted", "all")
KINDS = ("neurons", "heads")


# ============================================================================ elicitation


def select_skeletons(data: Sequence[Any], limit: int | None = None) -> list[str]:
    """Skeleton ids of SEV examples (``Example.group``), first-seen order; with ``limit``, taken
    round-robin over themes (``meta["theme"]``) so a small run still spans every theme."""
    by_theme: dict[str, list[str]] = {}
    seen: set[str] = set()
    for ex in data:
        sk = str(ex.group)
        if sk in seen:
            continue
        seen.add(sk)
        by_theme.setdefault(str((ex.meta or {}).get("theme", "")), []).append(sk)
    if limit is None:
        return [sk for sks in by_theme.values() for sk in sks]
    if limit < 1:
        raise EmocircuitsError(f"limit must be at least 1 skeleton (got {limit}).")
    out: list[str] = []
    queues = [list(v) for v in by_theme.values()]
    while len(out) < limit and any(queues):
        for q in queues:
            if q and len(out) < limit:
                out.append(q.pop(0))
    return out


def elicitation_items(data: Sequence[Any], *, emotions: Sequence[str] = EKMAN6,
                      valences: Sequence[str] = VALENCES, limit: int | None = None,
                      system_template: str = SYSTEM_TEMPLATE, user_template: str = USER_TEMPLATE) -> pd.DataFrame:
    """One row per skeleton × valence × emotion: ``skeleton, valence, emotion, theme, scenario, event,
    system, user`` (skeleton order, then valence, then emotion). ``data``: SEV examples
    (``load_data("builtin:sev")``), whose ``meta`` holds ``scenario`` and ``events`` by valence."""
    emotions, valences = list(emotions), list(valences)
    if not emotions:
        raise EmocircuitsError("No emotions to elicit; pass at least one emotion.")
    keep = set(select_skeletons(data, limit))
    first: dict[str, Any] = {}
    for ex in data:
        meta = ex.meta or {}
        if "scenario" not in meta or "events" not in meta:
            raise EmocircuitsError(f"Example {ex.id!r} has no scenario/events in its meta; elicitation needs SEV "
                                   "skeletons (--data builtin:sev or sev:PATH).")
        if str(ex.group) in keep:
            first.setdefault(str(ex.group), ex)
    rows = []
    for sk, ex in first.items():
        meta = ex.meta
        for val in valences:
            event = meta["events"].get(val)
            if event is None:
                continue
            user = user_template.format(scenario=meta["scenario"], event=event)
            for emo in emotions:
                rows.append({"skeleton": sk, "valence": val, "emotion": emo, "theme": str(meta.get("theme", "")),
                             "scenario": meta["scenario"], "event": event,
                             "system": system_template.format(emotion=emo), "user": user})
    if not rows:
        raise EmocircuitsError("No skeleton has an event of the requested valences; check --data and the valences.")
    return pd.DataFrame(rows)


def messages(items: pd.DataFrame) -> list[list[dict[str, str]]]:
    """Chat messages (system + user) of each item row."""
    return [[{"role": "system", "content": s}, {"role": "user", "content": u}]
            for s, u in zip(items["system"], items["user"], strict=True)]


def prompt_ids(model: Any, items: pd.DataFrame, max_tokens: int = 4096) -> list[list[int]]:
    """Token ids of each item's chat-rendered prompt (generation prompt added): what generation sees."""
    from emocircuits.generation import encode_prompts
    from emocircuits.runner import Runner

    return encode_prompts(Runner(model, max_tokens=max_tokens), messages(items))


def accuracy_ci(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of the mean of ``correct [n]`` (0/1), via ``neurons.bootstrap_ci``."""
    from emocircuits.neurons import bootstrap_ci

    correct = np.asarray(correct, dtype=np.float64)
    return bootstrap_ci(np.zeros_like(correct), correct, None, n_boot=n_boot, seed=seed)


@dataclass
class Elicitation:
    """Result of :func:`elicit`.

    ``replies``: one row per prompt: ``skeleton, valence, emotion, theme, scenario, event, system, user,
    reply, finish, n_new_tokens, pred_<judge>`` per judge, ``accepted`` (bool).
    ``verdicts``: long, one row per prompt × judge: ``skeleton, valence, emotion, judge, predicted,
    correct, p_<label>``. ``accuracy``: ``judge, emotion, valence, n, accuracy, ci_low, ci_high``
    (``emotion``/``valence`` = ``"all"`` for pooled rows).
    """

    replies: pd.DataFrame
    verdicts: pd.DataFrame
    accuracy: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)


def _judge_objects(judges: Sequence[Any], model: Any, emotions: Sequence[str]) -> list[Any]:
    from emocircuits.judges import get_judge

    out = []
    for j in judges:
        out.append(get_judge(j, model=model, labels=tuple(emotions)) if isinstance(j, str) else j)
    if not out:
        raise EmocircuitsError("No judges given; pass at least one judge (e.g. lexicon).")
    return out


def judge_replies(replies: pd.DataFrame, judges: Sequence[Any], *, accept: str = "first", n_boot: int = 1000,
                  seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Judge ``replies.reply`` against ``replies.emotion`` with judge objects; returns
    ``(replies + pred_<judge> + accepted, verdicts, accuracy)`` (schemas: :class:`Elicitation`)."""
    if accept not in ACCEPT_MODES and accept not in [j.name for j in judges]:
        raise EmocircuitsError(f"accept {accept!r} is not valid; use one of {', '.join(ACCEPT_MODES)} or a judge name.")
    replies = replies.copy()
    targets = replies["emotion"].astype(str).tolist()
    texts = replies["reply"].astype(str).tolist()
    verdicts, correct = [], {}
    for j in judges:
        frame = j.judge(texts, targets).reset_index(drop=True)
        ok = frame["predicted"].astype(str).to_numpy() == np.asarray(targets)
        correct[j.name] = ok
        replies[f"pred_{j.name}"] = frame["predicted"].to_numpy()
        v = replies[["skeleton", "valence", "emotion"]].reset_index(drop=True).copy()
        v["judge"] = j.name
        v["predicted"] = frame["predicted"].to_numpy()
        v["correct"] = ok
        for c in frame.columns:
            if c.startswith("p_"):
                v[c] = frame[c].to_numpy()
        verdicts.append(v)
    names = list(correct)
    if accept == "first":
        acc = correct[names[0]]
    elif accept == "all":
        acc = np.logical_and.reduce([correct[n] for n in names])
    elif accept == "any":
        acc = np.logical_or.reduce([correct[n] for n in names])
    else:
        acc = correct[accept]
    replies["accepted"] = np.asarray(acc, dtype=bool)
    verdict_df = pd.concat(verdicts, ignore_index=True)
    return replies, verdict_df, accuracy_table(verdict_df, n_boot=n_boot, seed=seed)


def accuracy_table(verdicts: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Share judged as the target per judge × emotion × valence (plus pooled ``"all"`` rows), with
    bootstrap 95% CIs over prompts: ``judge, emotion, valence, n, accuracy, ci_low, ci_high``."""
    rows = []
    for judge, jd in verdicts.groupby("judge", sort=False):
        emos = list(dict.fromkeys(jd["emotion"])) + ["all"]
        vals = list(dict.fromkeys(jd["valence"])) + ["all"]
        for e in emos:
            for v in vals:
                m = np.ones(len(jd), dtype=bool)
                if e != "all":
                    m &= (jd["emotion"] == e).to_numpy()
                if v != "all":
                    m &= (jd["valence"] == v).to_numpy()
                ok = jd["correct"].to_numpy()[m].astype(np.float64)
                lo, hi = accuracy_ci(ok, n_boot, seed) if len(ok) else (math.nan, math.nan)
                rows.append({"judge": judge, "emotion": e, "valence": v, "n": int(len(ok)),
                             "accuracy": float(ok.mean()) if len(ok) else math.nan, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def elicit(model: Any, data: Sequence[Any], *, emotions: Sequence[str] = EKMAN6, valences: Sequence[str] = VALENCES,
           limit: int | None = None, judges: Sequence[Any] = ("lexicon",), accept: str = "first",
           max_new_tokens: int = 100, max_tokens: int = 8192, n_boot: int = 1000, seed: int = 0,
           progress: bool = False) -> Elicitation:
    """Prompt every skeleton × valence × emotion to reply in the emotion (greedy, batched), judge the
    replies and score accuracy. ``judges``: names for :func:`emocircuits.judges.get_judge` or judge
    objects; ``accept``: ``first`` (the first judge agrees), ``all``, ``any`` or a judge name."""
    from emocircuits.generation import generate

    items = elicitation_items(data, emotions=emotions, valences=valences, limit=limit)
    judge_objs = _judge_objects(judges, model, emotions)
    gen = generate(model, messages(items), max_new_tokens=max_new_tokens, max_tokens=max_tokens, progress=progress)
    items["reply"] = [t.strip() for t in gen.texts]
    items["finish"] = gen.finish
    items["n_new_tokens"] = [len(t) for t in gen.token_ids]
    replies, verdicts, acc = judge_replies(items, judge_objs, accept=accept, n_boot=n_boot, seed=seed)
    config = {"emotions": list(emotions), "valences": list(valences), "limit": limit,
              "judges": [j.name for j in judge_objs], "accept": accept, "max_new_tokens": max_new_tokens,
              "n_skeletons": int(replies["skeleton"].nunique())}
    return Elicitation(replies, verdicts, acc, config)


# ============================================================================ forward reads


def capture_last(model: Any, token_ids: Sequence[Sequence[int]], reads: Mapping[str, Sequence[int]], *,
                 max_tokens: int = 4096) -> dict[str, dict[int, Tensor]]:
    """Several sites at each prompt's last token from ONE forward pass, in input order:
    ``{site: {layer: [n, ...]}}`` (float32, CPU); see :meth:`Runner.capture_last`."""
    from emocircuits.runner import Runner

    return Runner(model, max_tokens=max_tokens).capture_last(token_ids, reads)


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
                       activations: Mapping[str, Tensor] | None = None) -> DirectionsResult:
    """Emotion directions from the prompts of an elicitation (Q1), with cosine tables and a control.

    ``replies``: :attr:`Elicitation.replies` (needs ``skeleton, valence, emotion, system, user`` and,
    for ``groups="accepted"``, ``accepted``). ``activations``: ``{site: [n, n_layers, d_model]}`` to skip
    the forward passes (tests). Bootstrap CIs resample groups (``n_boot``); the control shuffles the
    emotion labels within each group (``n_shuffle`` seeded shuffles).
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
        from emocircuits.models import spec_of

        n_layers = spec_of(model).n_layers
        got = capture_last(model, prompt_ids(model, replies, max_tokens), {s: range(n_layers) for s in sites},
                           max_tokens=max_tokens)
        activations = {s: torch.stack([got[s][layer] for layer in range(n_layers)], 1) for s in sites}
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
                                  "emotions": emotions})
                  for e, emo in enumerate(emotions)}
    used_set = set(used)
    prompts = replies.copy()
    prompts["used"] = [(a, b) in used_set and c in emotions for a, b, c in zip(sk, va, em, strict=True)]
    n_groups_total = len({(a, b) for a, b in zip(sk, va, strict=True)})
    summary = {"n_groups": len(used), "n_groups_total": n_groups_total, "groups_mode": groups,
               "groups_per_valence": {str(v): int(len(ix)) for v, ix in per_val.items()}, "sites": sites,
               "n_layers": n_layers}
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


# ============================================================================ local components


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
    from emocircuits.sites import weight

    layers = sorted(v_mid)
    z = capture_last(model, token_ids, {"head.z": layers}, max_tokens=max_tokens)["head.z"]
    return torch.stack([head_contributions(z[layer], weight(model, "attn.o", layer), v_mid[layer]) for layer in layers], 1)


def head_scores_ablation(model: Any, token_ids: Sequence[Sequence[int]], v_mid: Mapping[int, Tensor], *,
                         max_tokens: int = 4096) -> Tensor:
    """The same as :func:`head_scores_onepass` by real ablation: one pass per head with ``ZeroHeads``
    (reference implementation and benchmark baseline; ``n_layers × n_heads`` passes)."""
    from emocircuits.interventions import ZeroHeads
    from emocircuits.models import spec_of

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
    analogue of :func:`emocircuits.neurons.random_control`)."""
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
    from emocircuits.models import spec_of
    from emocircuits.sites import weight

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


# ============================================================================ validation


def _scale(kind: str, comp: Any, factor: float) -> Any:
    from emocircuits.interventions import ScaleHeads, ScaleNeurons

    return ScaleNeurons(comp, factor=factor) if kind == "neurons" else ScaleHeads(comp, factor=factor)


def random_like(kind: str, comp: Any, spec: Any, seed: int) -> Any:
    """k random components of ``kind`` with ``comp``'s per-layer counts (``neurons.random_control`` /
    :func:`random_heads`)."""
    from emocircuits.neurons import random_control

    return random_control(comp, spec.d_mlp, seed) if kind == "neurons" else random_heads(comp, spec.n_heads, seed)


def emotion_scores(model: Any, token_ids: Sequence[Sequence[int]], ref: Tensor, *, max_tokens: int = 4096) -> Tensor:
    """``[n]`` projection of the last layer's ``resid.post`` at each prompt's last token on ``ref [d_model]``."""
    from emocircuits.models import spec_of

    last = spec_of(model).n_layers - 1
    r = capture_last(model, token_ids, {"resid.post": [last]}, max_tokens=max_tokens)["resid.post"][last]
    return r @ ref.float()


def validate_cell(model: Any, token_ids: Sequence[Sequence[int]], ref: Tensor, kind: str, comp: Any, scale: float, *,
                  n_random: int = 5, seed: int = 0, n_boot: int = 1000, max_tokens: int = 4096,
                  base: np.ndarray | None = None) -> dict[str, Any]:
    """One dose-response point: the emotion score (:func:`emotion_scores` on ``ref [d_model]``) of
    ``token_ids`` with ``comp`` (a NeuronSet for ``kind="neurons"``, a HeadSet for ``"heads"``) scaled by
    ``scale``, against ``n_random`` random sets with the same per-layer counts (seeds ``seed*1000 + r``).

    Returns ``kind, scale, k, n, base, top, random, random_sd, diff, ci_low, ci_high``: ``top``/``random``
    are mean scores (random: over sets and prompts), ``diff`` = top − random and its CI is a bootstrap over
    prompts of that difference (``neurons.bootstrap_ci``). ``base`` (the clean scores ``[n]``) may be
    passed to save its pass.
    """
    from emocircuits.models import spec_of
    from emocircuits.neurons import bootstrap_ci

    if n_random < 1:
        raise EmocircuitsError(f"n_random must be at least 1 (got {n_random}).")
    if base is None:
        base = emotion_scores(model, token_ids, ref, max_tokens=max_tokens).numpy()
    if scale == 1.0:  # scaling by 1 is the identity (bit-exact): no pass needed
        top, rand = base, np.stack([base] * n_random)
    else:
        spec = spec_of(model)
        with _scale(kind, comp, scale).apply(model):
            top = emotion_scores(model, token_ids, ref, max_tokens=max_tokens).numpy()
        rand_list = []
        for r in range(n_random):
            with _scale(kind, random_like(kind, comp, spec, seed * 1000 + r), scale).apply(model):
                rand_list.append(emotion_scores(model, token_ids, ref, max_tokens=max_tokens).numpy())
        rand = np.stack(rand_list)
    lo, hi = bootstrap_ci(base, top, rand, n_boot=n_boot, seed=seed)
    return {"kind": kind, "scale": float(scale), "k": len(comp), "n": len(base), "base": float(base.mean()),
            "top": float(top.mean()), "random": float(rand.mean()),
            "random_sd": float(rand.mean(1).std()) if n_random > 1 else 0.0,
            "diff": float(top.mean() - rand.mean()), "ci_low": lo, "ci_high": hi}


def judged_cell(model: Any, items: pd.DataFrame, emotion: str, kind: str, comp: Any, scale: float, judge: Any, *,
                n_random: int = 5, seed: int = 0, max_new_tokens: int = 30, n_boot: int = 1000) -> dict[str, Any]:
    """The judged side of a dose-response point: greedy replies to ``items`` (emotion-instructed prompts:
    ``system, user``) with ``comp`` scaled by ``scale``, and with ``n_random`` random sets of the same per-layer
    counts (the seeds of :func:`validate_cell`), judged by ``judge`` (a name or judge object) against
    ``emotion``. Returns ``judged_base, judged_top, judged_random`` (share judged as ``emotion``) and
    ``judged_diff, judged_ci_low, judged_ci_high`` (bootstrap over prompts of top − random)."""
    from emocircuits.generation import generate
    from emocircuits.models import spec_of
    from emocircuits.neurons import bootstrap_ci

    judge_obj = _judge_objects([judge], model, EKMAN6)[0]
    msgs = messages(items)

    def correct(intervention: Any) -> np.ndarray:
        with intervention.apply(model) if intervention is not None else _nothing():
            texts = generate(model, msgs, max_new_tokens=max_new_tokens).texts
        pred = judge_obj.judge([t.strip() for t in texts], [emotion] * len(texts))["predicted"].astype(str)
        return (pred.to_numpy() == emotion).astype(float)

    spec = spec_of(model)
    base = correct(None)
    top = base if scale == 1.0 else correct(_scale(kind, comp, scale))
    rand = np.stack([base if scale == 1.0 else correct(_scale(kind, random_like(kind, comp, spec, seed * 1000 + r),
                                                              scale)) for r in range(n_random)])
    lo, hi = bootstrap_ci(base, top, rand, n_boot=n_boot, seed=seed)
    return {"judged_base": float(base.mean()), "judged_top": float(top.mean()), "judged_random": float(rand.mean()),
            "judged_diff": float(top.mean() - rand.mean()), "judged_ci_low": lo, "judged_ci_high": hi}


def _nothing() -> Any:
    import contextlib

    return contextlib.nullcontext()


def validate_components(model: Any, prompts: pd.DataFrame, directions: Mapping[str, Direction],
                        neuron_sets: Mapping[str, NeuronSet] | None = None,
                        head_sets: Mapping[str, HeadSet] | None = None, *, scales: Sequence[float] = SCALES,
                        n_random: int = 5, seed: int = 0, use: str = "used", max_prompts: int | None = None,
                        n_boot: int = 1000, max_tokens: int = 4096, progress: bool = False) -> pd.DataFrame:
    """Dose-response of scaling each emotion's top-k components by ``s`` against ``n_random`` random sets
    with the same per-layer counts, on the emotion score (:func:`emotion_scores` on the emotion's
    :func:`reference_direction`) under that emotion's prompts: :func:`validate_cell` for every emotion,
    kind and scale. Returns ``emotion`` + :func:`validate_cell`'s columns, one row per point.

    In one process; ``emocircuits circuits validate`` runs the same cells through the sweep engine
    (the ``component_validation`` analysis), resumable and on Ray.
    """
    from tqdm.auto import tqdm

    if n_random < 1:
        raise EmocircuitsError(f"n_random must be at least 1 (got {n_random}).")
    kinds = [(k, s) for k, s in (("neurons", neuron_sets), ("heads", head_sets)) if s]
    rows = []
    jobs = [(e, k, sets[e]) for e in directions for k, sets in kinds if e in sets and len(sets[e])]
    for emo, kind, comp in tqdm(jobs, desc="validate", disable=not progress):
        ids, ref = emotion_prompts(model, prompts, directions[emo], emo, use=use, max_prompts=max_prompts,
                                   max_tokens=max_tokens)
        base = emotion_scores(model, ids, ref, max_tokens=max_tokens).numpy()
        for s in scales:
            rows.append({"emotion": emo, **validate_cell(model, ids, ref, kind, comp, s, n_random=n_random, seed=seed,
                                                         n_boot=n_boot, max_tokens=max_tokens, base=base)})
    if not rows:
        raise EmocircuitsError("No components to validate; pass neuron or head sets for the directions' emotions.")
    return pd.DataFrame(rows)


def emotion_prompts(model: Any, prompts: pd.DataFrame, direction: Direction, emotion: str, *, use: str = "used",
                    max_prompts: int | None = None, max_tokens: int = 4096) -> tuple[list[list[int]], Tensor]:
    """The token ids of ``emotion``'s prompts (rows chosen by ``use``, at most ``max_prompts``) and the
    emotion's :func:`reference_direction` ``[d_model]``: the inputs of :func:`validate_cell`."""
    idx = prompt_rows(prompts.reset_index(drop=True), emotion, use)
    if max_prompts is not None:
        idx = idx[:max_prompts]
    return prompt_ids(model, prompts.reset_index(drop=True).iloc[idx], max_tokens), reference_direction(direction)


def read_components(src: Path, top_k: int | None = None) -> tuple[dict[str, NeuronSet], dict[str, HeadSet]]:
    """The neuron and head sets of a ``circuits components`` run: the saved ones, or the top ``top_k`` re-picked
    from its score tables."""
    manifest = finished_run(Path(src), "neuron_scores.parquet", "circuits components")
    if top_k is not None:
        return top_sets(pd.read_parquet(Path(src) / "neuron_scores.parquet"),
                        pd.read_parquet(Path(src) / "head_scores.parquet"), top_k)
    comp = manifest.get("components", {})
    return ({e: NeuronSet.load(Path(src) / f) for e, f in comp.get("neurons", {}).items()},
            {e: HeadSet.load(Path(src) / f) for e, f in comp.get("heads", {}).items()})


# ============================================================================ jobs (re-runnable, one run directory each)
#
# ``run_<step>(config, out)`` is the work of ``emocircuits circuits <step>`` as a function of a plain config
# dict; the CLI builds the dict and ``emocircuits rerun`` calls the same function with a manifest's config.
# Options are checked before a model is loaded. Outputs (all in the run directory):
#   elicit:     replies.parquet, verdicts.parquet, accuracy.parquet
#   directions: directions/<emotion>.json|.safetensors (Direction), vectors.safetensors, prompts.parquet,
#               groups.parquet, cos_emotions / cos_layers / cos_valences / control .parquet
#   components: neuron_scores.parquet, head_scores.parquet, neurons/<emotion>.json (NeuronSet),
#               heads/<emotion>.json (HeadSet)
#   validate:   a `component_validation` sweep (emocircuits.sweeps.analyses.component_validation): results.parquet

def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise EmocircuitsError(f"--{name} {value!r} is not valid; use one of {', '.join(map(str, allowed))}.")

def _check_emotions(emotions: list[str]) -> None:
    bad = [e for e in emotions if e not in EKMAN6]
    if bad:
        raise EmocircuitsError(f"--emotion {bad[0]!r} is not an Ekman emotion; use one of {', '.join(EKMAN6)}.")

def _check_min(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise EmocircuitsError(f"--{name} must be at least {low} (got {value}).")

def parse_scales(text: str) -> list[float]:
    """``"0,0.5,1"`` → ``[0.0, 0.5, 1.0]`` (one sentence on bad input)."""
    try:
        vals = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise EmocircuitsError(f"--scales {text!r} is not a comma-separated list of numbers, e.g. 0,0.5,1,2.") from None
    if not vals or any(v < 0 for v in vals):
        raise EmocircuitsError(f"--scales {text!r} must list at least one factor, each >= 0.")
    return vals

def run_elicit(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Generate and judge the emotion-instructed replies; write replies, verdicts and accuracy into ``out``."""
    from emocircuits.data import load_data
    from emocircuits.judges import check_judge_name
    from emocircuits.runs import RunDir

    for j in config["judges"]:
        check_judge_name(j)
    _check_emotions(config["emotions"])
    _check_min("limit", config["limit"], 1)
    _check_min("max-new-tokens", config["max_new_tokens"], 1)
    if config["accept"] not in ACCEPT_MODES and config["accept"] not in config["judges"]:
        raise EmocircuitsError(f"--accept {config['accept']!r} is not valid; use one of "
                               f"{', '.join(ACCEPT_MODES)} or one of the --judge names.")
    split = None if config["split"] in (None, "all") else config["split"]
    data = load_data(config["data"], split=split)
    bridge, spec = load_for_config(config, quiet, model_pair)
    with RunDir.create(out, command="circuits elicit", config=config, model_spec=spec, seed=config["seed"]) as run:
        el = elicit(bridge, data, emotions=config["emotions"], limit=config["limit"],
                             judges=config["judges"], accept=config["accept"],
                             max_new_tokens=config["max_new_tokens"], seed=config["seed"], progress=not quiet)
        run.write_table("replies", el.replies, "one row per skeleton x valence x emotion: prompt, reply, "
                        "pred_<judge>, accepted")
        run.write_table("verdicts", el.verdicts, "skeleton, valence, emotion, judge, predicted, correct, p_<label>")
        run.write_table("accuracy", el.accuracy, "judge, emotion, valence, n, accuracy, ci_low, ci_high")
        pooled = el.accuracy[(el.accuracy.emotion == "all") & (el.accuracy.valence == "all")]
        run.update(summary={"accuracy": dict(zip(pooled.judge, pooled.accuracy, strict=True)),
                            "accepted_share": float(el.replies.accepted.mean()), **el.config})
    return el

def run_directions(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Emotion directions from an elicit run's prompts; writes Direction files and cosine tables."""
    import pandas as pd

    from emocircuits.runs import RunDir

    src = Path(config["from"])
    manifest = finished_run(src, "replies.parquet", "circuits elicit")
    _check_choice("groups", config["groups"], GROUP_MODES)
    _check_min("n-boot", config["n_boot"], 0)
    _check_min("shuffles", config["shuffles"], 0)
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    replies = pd.read_parquet(src / "replies.parquet")
    bridge, spec = load_for_config(config, quiet, model_pair)
    with RunDir.create(out, command="circuits directions", config=config, model_spec=spec,
                       seed=config["seed"]) as run:
        dr = emotion_directions(bridge, replies, groups=config["groups"], n_boot=config["n_boot"],
                                         n_shuffle=config["shuffles"], seed=config["seed"])
        write_directions(run, dr)
    return dr

def write_directions(run: Any, dr: Any) -> None:
    files = {}
    for emo, d in dr.directions.items():
        files[emo] = str(d.save(run.path / "directions" / emo).relative_to(run.path))
    run.write_tensors("vectors", dr.vectors, "{site: [emotion, layer, d_model]} unit directions (emotion order: "
                      "summary.emotions)")
    run.write_table("prompts", dr.prompts, "the elicit replies with `used` (row in a group used for the directions)")
    run.write_table("groups", dr.groups, "skeleton, valence of the groups used")
    run.write_table("cos_emotions", dr.cos_emotions, "site, layer, a, b, cosine, ci_low, ci_high")
    run.write_table("cos_layers", dr.cos_layers, "site, emotion, layer_a, layer_b, cosine, ci_low, ci_high")
    run.write_table("cos_valences", dr.cos_valences, "site, layer, emotion, valence_a, valence_b, n_a, n_b, cosine, "
                    "ci_low, ci_high (directions computed per valence)")
    run.write_table("control", dr.control, "site, layer, real, control_mean, control_q95, beats: mean cross-valence "
                    "cosine vs emotion labels shuffled within groups")
    run.update(summary={**dr.summary, "emotions": dr.emotions}, directions=files)

def run_components(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None) -> Any:
    """Neuron and head scores for every emotion; writes score tables and top-k NeuronSet/HeadSet files."""
    from emocircuits.runs import RunDir

    src = Path(config["from"])
    manifest = finished_run(src, "prompts.parquet", "circuits directions")
    _check_min("top-k", config["top_k"], 1)
    _check_min("top-k-heads", config["top_k_heads"], 1)
    config = {**config, "model": config.get("model") or manifest["config"]["model"],
              "dtype": config.get("dtype") or manifest["config"].get("dtype", "float32")}
    prompts, directions = read_directions(src)
    bridge, spec = load_for_config(config, quiet, model_pair)
    for d in directions.values():
        d.validate(spec)
    with RunDir.create(out, command="circuits components", config=config, model_spec=spec,
                       seed=config.get("seed")) as run:
        co = local_components(bridge, prompts, directions, top_k=config["top_k"],
                                       top_k_heads=config["top_k_heads"])
        write_components(run, co)
    return co

def read_directions(path: Path) -> tuple[Any, dict[str, Any]]:
    """The prompts table and ``{emotion: Direction}`` of a directions run."""
    import pandas as pd

    from emocircuits.components import Direction
    from emocircuits.runs import read_manifest

    manifest = read_manifest(path)
    prompts = pd.read_parquet(Path(path) / "prompts.parquet")
    return prompts, {e: Direction.load(Path(path) / f) for e, f in manifest.get("directions", {}).items()}

def write_components(run: Any, co: Any) -> None:
    run.write_table("neuron_scores", co.neuron_scores, "emotion, layer, neuron, mean, pos, neg, n, rank, rank_layer")
    run.write_table("head_scores", co.head_scores, "emotion, layer, head, score, std, pos, neg, n, rank, rank_layer")
    files = {"neurons": {}, "heads": {}}
    for e, s in co.neuron_sets.items():
        files["neurons"][e] = str(s.save(run.path / "neurons" / e).relative_to(run.path))
    for e, s in co.head_sets.items():
        files["heads"][e] = str(s.save(run.path / "heads" / e).relative_to(run.path))
    top_heads = {e: [list(h) for h in s.heads] for e, s in co.head_sets.items()}
    run.update(components=files, summary={**co.config, "top_heads": top_heads})

def _register_jobs() -> None:
    from emocircuits.runs import register_command

    register_command("circuits elicit", lambda cfg, out: run_elicit(dict(cfg), Path(out), quiet=True))
    register_command("circuits directions", lambda cfg, out: run_directions(dict(cfg), Path(out), quiet=True))
    register_command("circuits components", lambda cfg, out: run_components(dict(cfg), Path(out), quiet=True))


_register_jobs()
