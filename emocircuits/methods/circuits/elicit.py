"""Elicitation (Wang et al. 2025): emotion-instructed prompts, greedy replies, judged acceptance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emocircuits.base.constants import DEFAULT_EMOTION_SYSTEM, EKMAN6, EMOTION_SYSTEMS, VALENCES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.stats import accuracy_ci
from emocircuits.core.generation import encode_prompts, generate
from emocircuits.core.runner import Runner
from emocircuits.judges.panel import judge_panel

SYSTEM_TEMPLATE = EMOTION_SYSTEMS[DEFAULT_EMOTION_SYSTEM]


def system_template(spec: str | None) -> str:
    """The emotion-instruction system template of ``spec``: None (the default), a name of
    :data:`~emocircuits.base.constants.EMOTION_SYSTEMS`, or a text containing ``{emotion}`` (one sentence
    on anything else)."""
    if spec is None:
        return SYSTEM_TEMPLATE
    if spec in EMOTION_SYSTEMS:
        return EMOTION_SYSTEMS[spec]
    try:
        ok = "{emotion}" in spec and spec.format(emotion="anger") != spec
    except (KeyError, IndexError, ValueError):
        ok = False
    if not ok:
        raise EmocircuitsError(f"The system prompt {spec!r} is neither a template name ({', '.join(EMOTION_SYSTEMS)}) "
                               "nor a text with exactly one kind of placeholder, {emotion}.")
    return spec


USER_TEMPLATE = "{scenario}\n{event}"




ACCEPT_MODES = ("first", "all", "any")


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
        raise EmocircuitsError("No skeleton has an event of the requested valences; check the data (its SEV skeletons) and the valences.")
    return pd.DataFrame(rows)


def messages(items: pd.DataFrame) -> list[list[dict[str, str]]]:
    """Chat messages (system + user) of each item row."""
    return [[{"role": "system", "content": s}, {"role": "user", "content": u}]
            for s, u in zip(items["system"], items["user"], strict=True)]


def prompt_ids(model: Any, items: pd.DataFrame, max_tokens: int = 4096) -> list[list[int]]:
    """Token ids of each item's chat-rendered prompt (generation prompt added): what generation sees."""

    return encode_prompts(Runner(model, max_tokens=max_tokens), messages(items))


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


def pooled_accuracy(frame: pd.DataFrame, correct: str, *, n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Share of ``frame[correct]`` per emotion × valence, plus pooled ``"all"`` rows, with bootstrap 95% CIs over
    rows: ``[{emotion, valence, n, accuracy, ci_low, ci_high}, ...]`` (emotions and valences in first-seen order)."""
    rows = []
    for e in list(dict.fromkeys(frame["emotion"])) + ["all"]:
        for v in list(dict.fromkeys(frame["valence"])) + ["all"]:
            m = np.ones(len(frame), dtype=bool)
            if e != "all":
                m &= (frame["emotion"] == e).to_numpy()
            if v != "all":
                m &= (frame["valence"] == v).to_numpy()
            ok = frame[correct].to_numpy()[m].astype(np.float64)
            lo, hi = accuracy_ci(ok, n_boot, seed) if len(ok) else (math.nan, math.nan)
            rows.append({"emotion": e, "valence": v, "n": int(len(ok)),
                         "accuracy": float(ok.mean()) if len(ok) else math.nan, "ci_low": lo, "ci_high": hi})
    return rows


def accuracy_table(verdicts: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Share judged as the target per judge × emotion × valence (plus pooled ``"all"`` rows), with
    bootstrap 95% CIs over prompts: ``judge, emotion, valence, n, accuracy, ci_low, ci_high``."""
    return pd.DataFrame([{"judge": judge, **row} for judge, jd in verdicts.groupby("judge", sort=False)
                         for row in pooled_accuracy(jd, "correct", n_boot=n_boot, seed=seed)])


def elicit(model: Any, data: Sequence[Any], *, emotions: Sequence[str] = EKMAN6, valences: Sequence[str] = VALENCES,
           limit: int | None = None, system: str = SYSTEM_TEMPLATE, judges: Sequence[Any] = ("lexicon",),
           accept: str = "first",
           max_new_tokens: int = 100, max_tokens: int = 8192, n_boot: int = 1000, seed: int = 0,
           progress: bool = False) -> Elicitation:
    """Prompt every skeleton × valence × emotion to reply in the emotion (greedy, batched), judge the
    replies and score accuracy. ``judges``: names for :func:`emocircuits.judges.get_judge` or judge
    objects; ``accept``: ``first`` (the first judge agrees), ``all``, ``any`` or a judge name. ``system``: the
    emotion instruction, a template name or a text with ``{emotion}`` (see :func:`system_template`)."""

    system = system_template(system)
    items = elicitation_items(data, emotions=emotions, valences=valences, limit=limit, system_template=system)
    judge_objs = judge_panel(judges, model=model, emotions=emotions)
    gen = generate(model, messages(items), max_new_tokens=max_new_tokens, max_tokens=max_tokens, progress=progress)
    items["reply"] = [t.strip() for t in gen.texts]
    items["finish"] = gen.finish
    items["n_new_tokens"] = [len(t) for t in gen.token_ids]
    replies, verdicts, acc = judge_replies(items, judge_objs, accept=accept, n_boot=n_boot, seed=seed)
    config = {"emotions": list(emotions), "valences": list(valences), "limit": limit,
              "judges": [j.name for j in judge_objs], "accept": accept, "max_new_tokens": max_new_tokens,
              "system": system,
              "n_skeletons": int(replies["skeleton"].nunique())}
    return Elicitation(replies, verdicts, acc, config)
