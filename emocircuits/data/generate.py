"""Deterministic generator of the built-in datasets (``dialogues``, ``sev``, ``appraisal_events``, ``events``).

Run ``python scripts/make_data.py`` to rebuild ``data/``; :func:`build_all` returns the exact bytes
of every shipped file (data and data cards), so a test can check the shipped files are reproducible.
Grow a set by raising the counts below (or adding lines to :mod:`emocircuits.data._banks`) and
rebuilding; every random choice draws from ``random.Random`` seeded with :data:`SEED`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from emocircuits.base.constants import TEST_SHARE
from emocircuits.data import APPRAISAL_COLUMNS, stratified_split
from emocircuits.data._banks import (
    APPRAISAL_AGENTS_ANY,
    APPRAISAL_AGENTS_CLOSE,
    APPRAISAL_CAUSE_SHARES,
    APPRAISAL_CORES,
    APPRAISAL_DEFAULTS,
    APPRAISAL_EXPLICIT,
    APPRAISAL_INTENT,
    APPRAISAL_ONSET_PREFIX,
    APPRAISAL_ONSET_SENTENCE,
    APPRAISAL_PHRASES,
    BANKS,
    EMOTIONS,
    EVENT_CLOSERS,
    EVENT_EXPLICIT,
    EVENT_FORMAL_SUBS,
    EVENT_OPENERS,
    EVENT_SEEDS,
    EVENT_SHARED_DETAILS,
    EVENT_TIME_TAGS,
    KEYWORDS,
    PEOPLE,
    SEV_THEMES,
    TOPICS,
)

SEED = 20250
DIALOGUES_PER_EMOTION = 510
IMPLICIT_SHARE = 0.40
MIN_TURNS, MAX_TURNS = 4, 12

APPRAISAL_PER_EMOTION = 150
APPRAISAL_NOISE_SD = 0.5
APPRAISAL_EXPLICIT_SHARE = 0.25  # share of generated_text naming the felt emotion (masked in hidden_emo_text)
APPRAISAL_TEST_SHARE = 0.2
# Share of onset levels per emotion ("unsaid": the text does not say whether it was sudden or expected).
_ONSET_SHARES: dict[str, dict[str, float]] = {
    "anger": {"sudden": 0.35, "expected": 0.25, "unsaid": 0.4},
    "disgust": {"sudden": 0.35, "expected": 0.2, "unsaid": 0.45},
    "fear": {"sudden": 0.5, "expected": 0.15, "unsaid": 0.35},
    "happiness": {"sudden": 0.2, "expected": 0.35, "unsaid": 0.45},
    "sadness": {"sudden": 0.25, "expected": 0.35, "unsaid": 0.4},
    "surprise": {"sudden": 0.7, "expected": 0.0, "unsaid": 0.3},
}
# Modifier factors (one sentence each when said) and how often each is picked among the 0-3 said.
_MODIFIER_WEIGHTS: dict[str, float] = {
    "outcome": 5.0,
    "stakes": 2.0,
    "control": 2.0,
    "familiarity": 1.5,
    "consequences": 1.0,
    "acceptance": 1.0,
}
_OUTCOME_SHIFT = {"severe": -0.8, "mitigated": 1.3, "boost": 0.6, "mixed": -1.5}

EVENTS_PER_EMOTION = 150
EVENTS_TEST_SHARE = 0.2  # of the situation seeds of each emotion
EVENT_REGISTERS = ("terse", "plain", "casual", "formal", "run-on")
EVENT_EXPLICIT_SHARE = 0.12
EVENT_SHARED_DETAIL_P = 0.3
EVENT_TYPO_P = 0.3
EVENT_MIN_WORDS, EVENT_MAX_WORDS = 6, 45

_KW_PATTERNS: dict[str, re.Pattern[str]] = {
    e: re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(ws, key=len, reverse=True)) + r")\b", re.I)
    for e, ws in KEYWORDS.items()
}
_KW_ANY = re.compile(
    r"\b("
    + "|".join(
        re.escape(w) for w in sorted({w for ws in KEYWORDS.values() for w in ws}, key=len, reverse=True)
    )
    + r")\b",
    re.I,
)


def keyword_counts(text: str) -> dict[str, int]:
    """Number of emotion-keyword hits per emotion in ``text`` (case-insensitive, whole words)."""
    return {e: len(p.findall(text)) for e, p in _KW_PATTERNS.items()}


def keyword_predict(text: str, fallback: str = EMOTIONS[0]) -> str | None:
    """The emotion with most keyword hits; ``None`` when no keyword occurs (ties: first in EKMAN6)."""
    counts = keyword_counts(text)
    best = max(counts.values())
    if best == 0:
        return None
    return next(e for e in EMOTIONS if counts[e] == best)


def _fill(line: str, topic: str, person: str) -> str:
    return (
        line.replace("{topic}", topic)
        .replace("{Topic}", topic[:1].upper() + topic[1:])
        .replace("{person}", person)
        .replace("{Person}", person[:1].upper() + person[1:])
    )


def _check_banks() -> None:
    for emotion, bank in BANKS.items():
        for kind, lines in bank.items():
            for line in lines:
                hits = {e: n for e, n in keyword_counts(line).items() if n}
                if kind == "explicit":
                    if not hits.get(emotion):
                        raise AssertionError(f"explicit {emotion} line names no {emotion} keyword: {line!r}")
                elif hits:
                    raise AssertionError(f"implicit {emotion}/{kind} line contains keywords {hits}: {line!r}")


def build_dialogues(per_emotion: int = DIALOGUES_PER_EMOTION, seed: int = SEED) -> list[dict]:
    """The ``dialogues`` records: id, topic, label, explicit, n_turns, split, dialogue (``A:``/``B:`` lines)."""
    _check_banks()
    rng = random.Random(seed)
    records: list[dict] = []
    topic_cycle: list[str] = []
    for emotion in EMOTIONS:
        bank = BANKS[emotion]
        n_implicit = round(IMPLICIT_SHARE * per_emotion)
        flags = [False] * n_implicit + [True] * (per_emotion - n_implicit)
        rng.shuffle(flags)
        for explicit in flags:
            if not topic_cycle:  # every topic is used before any repeats
                topic_cycle = list(TOPICS)
                rng.shuffle(topic_cycle)
            topic = topic_cycle.pop()
            person = rng.choice(PEOPLE)
            n_turns = rng.randint(MIN_TURNS, MAX_TURNS)
            replies = rng.sample(bank["reply"], len(bank["reply"]))
            mores = rng.sample(bank["more"], len(bank["more"]))
            lines = [rng.choice(bank["open"])]
            for turn in range(1, n_turns - 1):
                pool = replies if turn % 2 else mores
                lines.append(pool.pop() if pool else rng.choice(bank["more"]))
            lines.append(rng.choice(bank["close"]))
            if explicit:  # 1-3 turns (never the opener) replaced by lines that name the emotion
                k = rng.randint(1, min(3, n_turns - 1))
                slots = rng.sample(range(1, n_turns), k)
                named = rng.sample(bank["explicit"], k)
                for s, line in zip(slots, named, strict=True):
                    lines[s] = line
            text = "\n".join(
                f"{'A' if t % 2 == 0 else 'B'}: {_fill(line, topic, person)}" for t, line in enumerate(lines)
            )
            records.append(
                {"topic": topic, "label": emotion, "explicit": explicit, "n_turns": n_turns, "dialogue": text}
            )
    order = list(range(len(records)))
    rng.shuffle(order)
    records = [records[i] for i in order]
    splits = stratified_split([r["label"] for r in records], TEST_SHARE, seed)
    out = []
    for i, (r, s) in enumerate(zip(records, splits, strict=True)):
        out.append({"id": f"dlg-{i:05d}", **r, "split": s})
    return out


def build_sev(seed: int = SEED) -> list[dict]:
    """SEV skeletons: id, theme, scenario, events {positive, neutral, negative}, split (half per theme)."""
    rng = random.Random(seed + 1)
    out = []
    for theme, spec in SEV_THEMES.items():
        skels = [(s, ev) for s in spec["scenarios"] for ev in spec["events"]]
        split = ["train"] * (len(skels) // 2) + ["test"] * (len(skels) - len(skels) // 2)
        rng.shuffle(split)
        for j, ((scenario, (pos, neu, neg)), sp) in enumerate(zip(skels, split, strict=True)):
            out.append(
                {
                    "id": f"sev-{theme}-{j:02d}",
                    "theme": theme,
                    "scenario": scenario,
                    "events": {"positive": pos, "neutral": neu, "negative": neg},
                    "split": sp,
                }
            )
    return out


def _check_appraisal_banks() -> None:
    """Every factor phrase is free of emotion keywords; explicit words name their own emotion."""
    lines: list[str] = [*APPRAISAL_AGENTS_CLOSE, *APPRAISAL_AGENTS_ANY]
    for by_cause in APPRAISAL_CORES.values():
        lines += [c for cores in by_cause.values() for c, _ in cores]
    for bank in (APPRAISAL_ONSET_PREFIX, APPRAISAL_ONSET_SENTENCE, APPRAISAL_INTENT):
        lines += [x for xs in bank.values() for x in xs]
    lines += [x for levels in APPRAISAL_PHRASES.values() for xs in levels.values() for x in xs]
    for line in lines:
        if any(keyword_counts(line).values()):
            raise AssertionError(f"appraisal bank line contains an emotion keyword: {line!r}")
    for emotion, words in APPRAISAL_EXPLICIT.items():
        for w in words:
            if not keyword_counts(w)[emotion]:
                raise AssertionError(f"explicit word {w!r} is not a {emotion} keyword")


def _pick(rng: random.Random, shares: Mapping[str, float]) -> str:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


def _appraisal_factors(emotion: str, rng: random.Random) -> dict[str, str]:
    """One event's factors: cause, core, intent, onset and 0-3 of the modifier factors (rest unsaid)."""
    cause = _pick(rng, APPRAISAL_CAUSE_SHARES[emotion])
    core_i = rng.randrange(len(APPRAISAL_CORES[emotion][cause]))
    p0 = APPRAISAL_CORES[emotion][cause][core_i][1]
    f = {"cause": cause, "core": str(core_i), "onset": _pick(rng, _ONSET_SHARES[emotion])}
    if "{who}" in APPRAISAL_CORES[emotion][cause][core_i][0] and p0 < 3:
        f["intent"] = _pick(rng, {"deliberate": 0.4, "careless": 0.3, "unsaid": 0.3})
    k = rng.choices((0, 1, 2, 3), weights=(0.1, 0.35, 0.35, 0.2))[0]
    chosen: list[str] = []
    pool = dict(_MODIFIER_WEIGHTS)
    for _ in range(k):
        m = _pick(rng, pool)
        chosen.append(m)
        del pool[m]
    for m in _MODIFIER_WEIGHTS:
        if m not in chosen:
            f[m] = "unsaid"
        elif m == "outcome":
            f[m] = rng.choice(("boost", "mixed") if p0 > 3 else ("severe", "mitigated"))
        else:
            f[m] = rng.choice(tuple(APPRAISAL_PHRASES[m]))
    if f["outcome"] in ("severe", "boost") and f["stakes"] == "low":  # "it made my year" is no small thing
        f["stakes"] = "high"
    f["order"] = ",".join(chosen)
    return f


def _appraisal_targets(emotion: str, f: Mapping[str, str]) -> dict[str, float]:
    """Expected 1-5 rating of every appraisal column given the factors (before noise and rounding)."""
    d = {k: v[emotion] for k, v in APPRAISAL_DEFAULTS.items()}
    cause, onset, stakes, control = f["cause"], f["onset"], f["stakes"], f["control"]
    intent = f.get("intent", "unsaid")
    p0 = APPRAISAL_CORES[emotion][cause][int(f["core"])][1]
    p = min(5.0, max(1.0, p0 + _OUTCOME_SHIFT.get(f["outcome"], 0.0)))
    neg = p < 3
    t = {
        "suddenness": {"sudden": 4.6, "expected": 1.6}.get(onset, d["suddenness"]),
        "familiarity": {"familiar": 4.4, "new": 1.3}.get(f["familiarity"], d["familiarity"])
        + (0.4 if onset == "expected" else 0.0),
        "predict_event": {"sudden": 1.3, "expected": 4.5}.get(onset, d["predict_event"]),
        "pleasantness": p,
        "unpleasantness": 6.0 - p,
        "goal_relevance": {"high": 4.7, "low": 1.7}.get(stakes, d["goal_relevance"]),
        "chance_responsblt": {"chance": 4.5, "self": 1.8}.get(cause, 2.2 if intent == "careless" else 1.6),
        "self_responsblt": {"self": 4.6, "other": 1.4}.get(cause, 1.5),
        "other_responsblt": {"deliberate": 4.9, "careless": 4.2}.get(intent, 4.6)
        if cause == "other"
        else (1.4 if cause == "self" else 1.6),
        "predict_conseq": {"known": 4.4, "unknown": 1.4}.get(
            f["consequences"], 2.8 + {"expected": 0.5, "sudden": -0.4}.get(onset, 0.0)
        ),
        "goal_support": 3.0 + (p - 3.0) * (0.5 if stakes == "low" else 1.0),
        "urgency": d["urgency"]
        + {"sudden": 0.6, "expected": -0.6}.get(onset, 0.0)
        + {"high": 0.6, "low": -1.0}.get(stakes, 0.0),
        "self_control": {"high": 4.4, "low": 1.3}.get(control, {"self": 3.4, "other": 1.9}.get(cause, 1.6)),
        "other_control": (4.6 if control == "low" else 4.3) if cause == "other" else 1.5,
        "chance_control": (2.8 if control == "high" else 4.2) if cause == "chance" else 1.7,
        "accept_conseq": {"accepted": 4.5, "rejected": 1.3}.get(f["acceptance"], 2.0 + 0.5 * (p - 1.0)),
        "standards": (
            {"self": 3.9, "chance": 1.6}.get(cause, 3.6 if intent == "deliberate" else 2.8) if neg else 1.3
        )
        + (0.5 if emotion == "disgust" else 0.0),
        "social_norms": (
            {"self": 2.2, "chance": 1.4}.get(cause, {"deliberate": 4.6, "careless": 3.2}.get(intent, 3.8))
            if neg
            else 1.2
        )
        + (0.3 if emotion == "disgust" and cause == "other" else 0.0),
        "attention": d["attention"] + {"high": 0.5, "low": -1.2}.get(stakes, 0.0),
        "not_consider": d["not_consider"]
        + {"accepted": 0.6, "rejected": -0.4}.get(f["acceptance"], 0.0)
        + {"high": -0.4, "low": 0.7}.get(stakes, 0.0)
        + (0.4 if f["outcome"] == "severe" else 0.0),
        "effort": d["effort"]
        + (0.9 if control == "high" and neg else 0.0)
        + {"high": 0.6, "low": -0.9}.get(stakes, 0.0)
        + (0.5 if f["outcome"] == "severe" else 0.0),
    }
    if set(t) != set(APPRAISAL_COLUMNS):
        raise AssertionError(f"appraisal targets {sorted(t)} do not match APPRAISAL_COLUMNS")
    return {c: t[c] for c in APPRAISAL_COLUMNS}


def _appraisal_text(emotion: str, f: Mapping[str, str], rng: random.Random) -> tuple[str, bool]:
    """``generated_text`` of an event: onset + core (+ intent), modifier sentences, maybe the emotion word."""
    core, p0 = APPRAISAL_CORES[emotion][f["cause"]][int(f["core"])]
    if "{who}" in core:
        core = core.replace("{who}", rng.choice(APPRAISAL_AGENTS_CLOSE if p0 > 3 else APPRAISAL_AGENTS_ANY))
    if f.get("intent", "unsaid") != "unsaid":
        core += rng.choice(APPRAISAL_INTENT[f["intent"]])
    explicit = rng.random() < APPRAISAL_EXPLICIT_SHARE
    explicit_prefix = explicit and rng.random() < 0.5
    onset_prefix = f["onset"] != "unsaid" and not explicit_prefix and rng.random() < 0.5
    if explicit_prefix:
        head = f"I felt {rng.choice(APPRAISAL_EXPLICIT[emotion])} when {core}."
    elif onset_prefix:
        head = rng.choice(APPRAISAL_ONSET_PREFIX[f["onset"]]) + core + "."
    else:
        head = core[:1].upper() + core[1:] + "."
    sentences = [head]
    if f["onset"] != "unsaid" and not onset_prefix:
        sentences.append(rng.choice(APPRAISAL_ONSET_SENTENCE[f["onset"]]))
    for m in filter(None, f["order"].split(",")):
        sentences.append(rng.choice(APPRAISAL_PHRASES[m][f[m]]))
    if explicit and not explicit_prefix:
        sentences.append(f"I was {rng.choice(APPRAISAL_EXPLICIT[emotion])}.")
    return " ".join(sentences), explicit


def mask_emotion_words(text: str) -> str:
    """``text`` with every emotion keyword (any class) replaced by ``...`` (crowd-enVENT's hidden_emo_text)."""
    return _KW_ANY.sub("...", text)


def build_appraisal(seed: int = SEED, per_emotion: int = APPRAISAL_PER_EMOTION) -> list[dict]:
    """Appraisal events in crowd-enVENT's columns (``emotion`` uses ``joy`` for happiness).

    Each event is composed from factors (cause, onset, outcome, stakes, control, familiarity,
    consequences, acceptance, intent); the text says them and every rating is a function of them plus
    Gaussian noise (sd :data:`APPRAISAL_NOISE_SD`), rounded and clipped to 1-5. ``factors`` lists the
    factors a text states (``unsaid`` ones are left out).
    """
    _check_appraisal_banks()
    rng = random.Random(seed + 2)
    rows = []
    seen: set[str] = set()
    for emotion in EMOTIONS:
        n = 0
        while n < per_emotion:
            f = _appraisal_factors(emotion, rng)
            text, explicit = _appraisal_text(emotion, f, rng)
            if text in seen:
                continue
            seen.add(text)
            hidden = mask_emotion_words(text)
            if not explicit and hidden != text:
                raise AssertionError(f"implicit appraisal event contains an emotion keyword: {text!r}")
            ratings = {
                c: int(min(5, max(1, round(v + rng.gauss(0.0, APPRAISAL_NOISE_SD)))))
                for c, v in _appraisal_targets(emotion, f).items()
            }
            factors = ";".join(f"{k}={v}" for k, v in f.items() if v != "unsaid" and k != "order")
            rows.append(
                {
                    "emotion": "joy" if emotion == "happiness" else emotion,
                    "generated_text": text,
                    "hidden_emo_text": hidden,
                    **ratings,
                    "factors": factors,
                }
            )
            n += 1
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows = [rows[i] for i in order]
    splits = stratified_split([r["emotion"] for r in rows], APPRAISAL_TEST_SHARE, seed)
    return [
        {"text_id": f"app-{i:04d}", **r, "split": s}
        for i, (r, s) in enumerate(zip(rows, splits, strict=True))
    ]


# ------------------------------------------------------------------------------------------- events
def _check_event_banks() -> None:
    lines = [x for seeds in EVENT_SEEDS.values() for p, t, ds in seeds for x in (p, t, *ds)]
    lines += [x for xs in EVENT_SHARED_DETAILS.values() for x in xs]
    lines += [x for xs in (*EVENT_OPENERS.values(), *EVENT_CLOSERS.values()) for x in xs]
    lines += [*EVENT_FORMAL_SUBS.values(), *EVENT_TIME_TAGS]
    for line in lines:
        if any(keyword_counts(line).values()):
            raise AssertionError(f"events bank line contains an emotion keyword: {line!r}")
    for emotion, phrases in EVENT_EXPLICIT.items():
        for ph in phrases:
            if keyword_predict(ph) != emotion:
                raise AssertionError(f"explicit phrase {ph!r} does not name {emotion}")


_CONTRACT = (
    ("did not", "didn't"),
    ("do not", "don't"),
    ("was not", "wasn't"),
    ("could not", "couldn't"),
    ("would not", "wouldn't"),
    ("I am", "I'm"),
    ("is not", "isn't"),
    ("has not", "hasn't"),
    ("have not", "haven't"),
)


def _contract(text: str) -> str:
    for a, b in _CONTRACT:
        text = re.sub(rf"\b{a}\b", b, text)
    return text


def _expand(text: str) -> str:
    for a, b in _CONTRACT:
        text = re.sub(rf"\b{re.escape(b)}", a, text)
    text = re.sub(r"\bcan't\b", "cannot", text)
    text = re.sub(r"\bwon't\b", "will not", text)
    text = re.sub(r"\bI've\b", "I have", text)
    text = re.sub(r"\b(it|that|there)'s (ever|been)\b", r"\1 has \2", text)
    text = re.sub(r"\b(it|that|there)'s\b", r"\1 is", text)
    text = re.sub(r"\b(he|I)'d (\w+ed|had|been|already|never)\b", r"\1 had \2", text)
    for a, b in sorted(EVENT_FORMAL_SUBS.items(), key=lambda kv: -len(kv[0])):
        text = re.sub(rf"\b{re.escape(a)}\b", b, text)
        text = re.sub(rf"\b{re.escape(a[:1].upper() + a[1:])}\b", b[:1].upper() + b[1:], text)
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _typos(text: str, rng: random.Random) -> str:
    """Casual typing: no apostrophes, a lower-case ``i``, one or two swapped letters."""
    text = text.replace("'", "")
    text = re.sub(r"\bI\b", "i", text)
    words = text.split(" ")
    long_idx = [i for i, w in enumerate(words) if len(w) >= 5 and w.isalpha()]
    for i in rng.sample(long_idx, min(len(long_idx), rng.randint(1, 2))):
        w = words[i]
        j = rng.randrange(1, len(w) - 2)
        words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2 :]
    return " ".join(words)


def _n_words(text: str) -> int:
    return len(text.split())


def _render_event(emotion: str, seed_i: int, register: str, rng: random.Random) -> tuple[str, bool, bool]:
    """One text of a seed in a register; returns (text, explicit, typos)."""
    plain, terse, own = EVENT_SEEDS[emotion][seed_i]
    details = list(own)
    rng.shuffle(details)
    if rng.random() < EVENT_SHARED_DETAIL_P:
        details.insert(rng.randrange(2), rng.choice(EVENT_SHARED_DETAILS[emotion]))
    explicit = rng.random() < EVENT_EXPLICIT_SHARE
    tail = rng.choice(EVENT_EXPLICIT[emotion])
    typos = register in ("casual", "run-on", "terse") and rng.random() < EVENT_TYPO_P
    # The emotion phrase goes in as a placeholder, so typing noise never garbles it.
    slot = "\x00" if explicit else ""
    lower = False
    if register == "terse":
        text = terse
        if _n_words(text) < 6 or rng.random() < 0.3:
            extra = min(details[:2], key=_n_words) if rng.random() < 0.6 else rng.choice(EVENT_TIME_TAGS)
            text += ". " + extra
        text += (". " + slot if slot else "") + rng.choice((".", "", ""))
    elif register == "plain":
        text = _cap(plain) + "."
        for d in details[: rng.choice((0, 1, 1, 2))]:
            text += " " + _cap(d) + "."
        text += " " + slot + "." if slot else ""
    elif register == "casual":
        text = rng.choice(EVENT_OPENERS["casual"]) + _contract(plain)
        for d in details[: rng.choice((0, 1, 1, 2))]:
            text += rng.choice((" and ", ". ", " - ", ", ")) + d
        text += (rng.choice((". ", " - ", ", ")) + slot if slot else "") + rng.choice(EVENT_CLOSERS["casual"])
        text = text if rng.random() < 0.5 else _cap(text)
    elif register == "formal":
        opener = rng.choice(EVENT_OPENERS["formal"])
        text = opener + (plain if opener else _cap(plain)) + "."
        for d in details[: rng.choice((1, 1, 2))]:
            text += " " + _cap(d) + "."
        text = _expand(text) + (" " + slot + "." if slot else "")
    else:  # run-on: one long breathless sentence, cut to EVENT_MAX_WORDS by dropping details
        opener, closer = rng.choice(EVENT_OPENERS["run-on"]), rng.choice(EVENT_CLOSERS["run-on"])
        lower = rng.random() < 0.6
        k = rng.choice((2, 3, 3))
        while True:
            text = opener + plain
            for j, d in enumerate(details[:k]):
                text += (" and then " if j == 1 else " and ") + d
            text += (" and " + slot if slot else "") + closer
            if k == 0 or _n_words(text) + _n_words(tail) * explicit <= EVENT_MAX_WORDS:
                break
            k -= 1
        text = text.lower() if lower else text
    if typos:
        text = _typos(text, rng)
    if slot:
        if register in ("plain", "formal"):
            tail = _cap(tail)
        elif register == "run-on" and lower:
            tail = tail.lower()
        text = text.replace(slot, tail)
    return text, explicit, typos


def _length_bucket(n: int) -> str:
    return "short" if n <= 12 else ("medium" if n <= 25 else "long")


def build_events(seed: int = SEED, per_emotion: int = EVENTS_PER_EMOTION) -> list[dict]:
    """The ``events`` records: id, label, group (situation seed), register, length_bucket, n_words,
    explicit, typos, split (by seed: a situation is wholly train or wholly test), text."""
    _check_event_banks()
    rng = random.Random(seed + 3)
    seed_ids = [(e, i) for e in EMOTIONS for i in range(len(EVENT_SEEDS[e]))]
    seed_split = dict(
        zip(seed_ids, stratified_split([e for e, _ in seed_ids], EVENTS_TEST_SHARE, seed), strict=True)
    )
    records: list[dict] = []
    seen: set[str] = set()
    for emotion in EMOTIONS:
        n_seeds = len(EVENT_SEEDS[emotion])
        jobs = [(k % n_seeds, EVENT_REGISTERS[k % len(EVENT_REGISTERS)]) for k in range(per_emotion)]
        rng.shuffle(jobs)
        for seed_i, register in jobs:
            for _ in range(50):
                text, explicit, typos = _render_event(emotion, seed_i, register, rng)
                if text not in seen and EVENT_MIN_WORDS <= _n_words(text) <= EVENT_MAX_WORDS:
                    break
            else:
                raise AssertionError(f"could not render a new {register} text for {emotion} seed {seed_i}")
            seen.add(text)
            if not explicit and any(keyword_counts(text).values()):
                raise AssertionError(f"implicit event text contains an emotion keyword: {text!r}")
            n = _n_words(text)
            records.append(
                {
                    "label": emotion,
                    "group": f"{emotion}-{seed_i:02d}",
                    "register": register,
                    "length_bucket": _length_bucket(n),
                    "n_words": n,
                    "explicit": explicit,
                    "typos": typos,
                    "split": seed_split[(emotion, seed_i)],
                    "text": text,
                }
            )
    order = list(range(len(records)))
    rng.shuffle(order)
    return [{"id": f"evt-{i:05d}", **records[j]} for i, j in enumerate(order)]


def _jsonl(records: Iterable[Mapping]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("cp1252")


def keyword_baseline(records: Sequence[Mapping], text_field: str = "dialogue") -> dict[str, float | int]:
    """Keyword matcher scores on generated records (``dialogue`` or ``text`` field): accuracy overall /
    explicit / implicit (no keyword hit = wrong) and the share of texts without a keyword."""

    def acc(rs: Sequence[Mapping]) -> float:
        return sum(keyword_predict(r[text_field]) == r["label"] for r in rs) / max(1, len(rs))

    exp = [r for r in records if r["explicit"]]
    imp = [r for r in records if not r["explicit"]]
    no_hit = sum(keyword_predict(r[text_field]) is None for r in records)
    return {
        "n": len(records),
        "accuracy": round(acc(records), 4),
        "accuracy_explicit": round(acc(exp), 4),
        "accuracy_implicit": round(acc(imp), 4),
        "share_no_keyword": round(no_hit / len(records), 4),
    }


def _table(rows: list[list], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _kb_row(name: str, kb: Mapping) -> str:
    cells = [
        kb["n"],
        *(f"{kb[k]:.3f}" for k in ("accuracy", "accuracy_explicit", "accuracy_implicit", "share_no_keyword")),
    ]
    return f"| {name} | " + " | ".join(str(c) for c in cells) + " |"


def _dialogue_card(recs: list[dict], data_sha: str) -> str:
    counts = Counter((r["label"], r["split"]) for r in recs)
    rows = [
        [
            e,
            counts[(e, "train")],
            counts[(e, "test")],
            sum(1 for r in recs if r["label"] == e and not r["explicit"]),
        ]
        for e in EMOTIONS
    ]
    kb_all = keyword_baseline(recs)
    kb_test = keyword_baseline([r for r in recs if r["split"] == "test"])
    turns = Counter(r["n_turns"] for r in recs)
    n_imp = sum(not r["explicit"] for r in recs)
    n_topics = len({r["topic"] for r in recs})
    return f"""# Data card: `dialogues` (built-in)

Two-speaker emotional dialogues for emotion classification and emotion-neuron finding, in the style of
the synthetic corpus of Lee et al. (2025). Load with `load_data("builtin:dialogues", split="train")`.

## How it was made
Generated by `scripts/make_data.py` (code in `emocircuits/data/generate.py`, phrase banks in
`emocircuits/data/_banks.py`, all written for emocircuits; seed {SEED}). For each emotion, {DIALOGUES_PER_EMOTION}
dialogues are assembled: an opening turn describing an event about a topic, then alternating listener
replies and speaker elaborations drawn without repetition from that emotion's banks, and a closing turn;
length 4-12 turns. Topics ({len(TOPICS)}) are cycled so every topic is used before any repeats; a person slot
is filled from {len(PEOPLE)} names. In an *explicit* dialogue 1-3 turns (never the first) are replaced by lines
that name the emotion; *implicit* dialogues ({n_imp} of {len(recs)}, {n_imp / len(recs):.1%}) contain no emotion
keyword of any class (checked by the generator against the keyword list in `_banks.KEYWORDS`) and convey
the emotion through events, bodily reactions and behaviour.
Rebuild or grow: edit the counts/banks, run `python scripts/make_data.py`; `tests/test_data_builtin.py`
checks the shipped file is byte-identical to a fresh build.

## Fields (JSON lines, UTF-8)
`id` (dlg-NNNNN), `topic`, `label` (one of anger, disgust, fear, happiness, sadness, surprise),
`explicit` (bool), `n_turns`, `split` (train/test), `dialogue` (turns separated by newlines, each
starting `A: ` or `B: `). As `Example`: text = dialogue, group = topic, meta = explicit, n_turns, topic.

## Counts
{_table(rows, ["label", "train", "test", "implicit"])}

Total {len(recs)}; topics {n_topics}; turns per dialogue: {dict(sorted(turns.items()))}.
Split: 95/5 stratified by label with a fixed seed ({SEED}).

## Keyword baseline
Predict the emotion whose keywords occur most often (ties: first in Ekman order); no keyword = wrong.

| subset | n | accuracy | explicit | implicit | no keyword |
|---|---|---|---|---|---|
{_kb_row("all", kb_all)}
{_kb_row("test", kb_test)}

## Limitations
Template-assembled, so phrasing repeats across dialogues (a classifier can memorise banks: evaluate
on held-out human-written text too). English only; one emotion per dialogue by construction.

## Licence
MIT, like the emocircuits code. sha256 of `dialogues.jsonl`: `{data_sha}`.
"""


def _sev_card(recs: list[dict], data_sha: str) -> str:
    counts = Counter((r["theme"], r["split"]) for r in recs)
    rows = [[t, counts[(t, "train")], counts[(t, "test")]] for t in SEV_THEMES]
    return f"""# Data card: `sev` (built-in)

Scenario-event-valence skeletons in the style of the SEV set of Wang et al. (2025): each skeleton is a
neutral second-person scenario plus a positive, a neutral and a negative event.

## How it was made
Written for emocircuits (`emocircuits/data/_banks.py`, `SEV_THEMES`): per theme, 5 neutral scenarios and
4 event triples written to fit every scenario of the theme; a skeleton is one scenario x one triple.
Split by skeleton: half of each theme's skeletons to train, half to test (seeded shuffle, seed {SEED + 1}).

## Fields (JSON lines)
`id`, `theme`, `scenario`, `events` (`positive`, `neutral`, `negative`), `split`.
As `Example`s (`load_data("builtin:sev")`): one per skeleton x valence, id `<skeleton>:<valence>`,
text = scenario + " " + event, label = valence, group = skeleton id, meta = theme, scenario, events,
valence, event.

## Counts
{_table(rows, ["theme", "train", "test"])}

Total {len(recs)} skeletons, {3 * len(recs)} (skeleton, valence) texts, {len(SEV_THEMES)} themes.

## Licence
MIT. sha256 of `sev.jsonl`: `{data_sha}`.
"""


def _within_share(rows: Sequence[Mapping], col: str, key: str = "emotion") -> float:
    """Share of the variance of ``col`` that lies within the groups of ``key`` (1 - R² of the group means)."""
    ys = [float(r[col]) for r in rows]
    mean = sum(ys) / len(ys)
    total = sum((y - mean) ** 2 for y in ys)
    groups: dict[str, list[float]] = {}
    for r, y in zip(rows, ys, strict=True):
        groups.setdefault(str(r[key]), []).append(y)
    within = sum(sum((y - sum(g) / len(g)) ** 2 for y in g) for g in groups.values())
    return within / total if total else 0.0


def _appraisal_card(rows: list[dict], data_sha: str) -> str:
    counts = Counter((r["emotion"], r["split"]) for r in rows)
    emos = sorted({r["emotion"] for r in rows})
    n_e = {e: counts[(e, "train")] + counts[(e, "test")] for e in emos}
    show = (
        "pleasantness",
        "predict_event",
        "self_responsblt",
        "other_responsblt",
        "chance_responsblt",
        "self_control",
    )
    means = {e: [f"{sum(r[d] for r in rows if r['emotion'] == e) / n_e[e]:.2f}" for d in show] for e in emos}
    tab = _table(
        [[e, counts[(e, "train")], counts[(e, "test")], *means[e]] for e in emos],
        ["emotion", "train", "test", *show],
    )
    within = _table(
        [[c, f"{_within_share(rows, c):.2f}"] for c in APPRAISAL_COLUMNS],
        ["appraisal", "within-emotion share"],
    )
    n_exp = sum(r["generated_text"] != r["hidden_emo_text"] for r in rows)
    n_hidden_kw = sum(any(keyword_counts(r["hidden_emo_text"]).values()) for r in rows)
    causes = Counter(f.split("=")[1] for r in rows for f in r["factors"].split(";") if f.startswith("cause="))
    return f"""# Data card: `appraisal_events` (built-in)

Short first-person event descriptions with 1-5 ratings on the 21 appraisal dimensions of crowd-enVENT
(Troiano et al., 2023), in its column names, so that the same loader (`envent:`) reads both. The ratings
**follow the text**: events of one emotion differ in their ratings as their texts differ, so an
appraisal probe has more to find than the emotion label.

## How it was made
Generated by `scripts/make_data.py` (code: `build_appraisal` in `emocircuits/data/generate.py`; phrase
banks `APPRAISAL_*` in `emocircuits/data/_banks.py`, all written for emocircuits; seed {SEED + 2}).
Each event is composed from appraisal **factors**, and the text says them:

| factor | levels (how the text says it) |
|---|---|
| cause | `self` ("I forgot to ...", "I took a shortcut ..."), `other` ("my coworker deleted ...", "a driver ran a red light ..."), `chance` ("the train was cancelled ...", "a flood destroyed ...") |
| core event | one of 18-20 written per emotion (6-8 per cause), each with a base pleasantness |
| intent (other-caused, unpleasant) | `deliberate` ("..., and they did it on purpose"), `careless` ("..., though I doubt they meant any harm"), or unsaid |
| onset | `sudden` ("Out of nowhere, ...", "There was no warning at all."), `expected` ("Exactly as I had expected, ..."), or unsaid |
| outcome | unpleasant events: `severe` ("It ruined the rest of my week."), `mitigated` ("Luckily it all turned out fine in the end."); pleasant ones: `boost`, `mixed` ("..., but it also reminded me of what I had lost.") |
| stakes | `high` ("A lot depended on it."), `low` ("It was a small thing, really.") |
| control | `high` ("I was able to deal with it on my own."), `low` ("There was nothing I could do about it.") |
| familiarity | `familiar` ("I know this situation all too well."), `new` ("Nothing like it had ever happened to me before.") |
| consequences | `known` ("I knew exactly what would follow."), `unknown` ("I could not tell what would happen next.") |
| acceptance | `accepted` ("I have made my peace with it."), `rejected` ("I still cannot accept it.") |

Cause shares follow appraisal theory per emotion (anger mostly other-caused, sadness mostly chance,
...; overall {dict(sorted(causes.items()))}); 0-3 of the six modifier factors are said per event.
**Ratings are derived from the factors, not from the label** (`_appraisal_targets`): e.g.
`self_responsblt` 4.6 when self-caused, else 1.4-1.5; `other_responsblt` 4.9/4.2/4.6 when other-caused
(deliberate/careless/unsaid intent), else 1.4-1.6; `predict_event` 1.3 sudden, 4.5 expected;
`pleasantness` = the core's base value shifted by the outcome (severe -0.8, mitigated +1.3, boost +0.6,
mixed -1.5), `unpleasantness` = 6 - that; `goal_support` follows pleasantness, damped when stakes are
low; control, norms, urgency, attention and effort follow cause, intent, stakes and control. A factor
the text leaves unsaid takes an emotion-typical value (`APPRAISAL_DEFAULTS`), which is where the label
still shapes the ratings. Each expected value gets Gaussian noise (sd {APPRAISAL_NOISE_SD}) and is
rounded and clipped to 1-5.
**The ratings are synthetic, not human judgements**: use them to exercise appraisal code paths
(probes, steering) and to check that a probe reads more than the label, not to draw conclusions about people.

About {APPRAISAL_EXPLICIT_SHARE:.0%} of `generated_text` name the felt emotion ("I felt angry when ...",
"I was terrified."; {n_exp} of {len(rows)}); `hidden_emo_text` masks every emotion keyword (any class,
`_banks.KEYWORDS`) with `...`, as crowd-enVENT does, so {n_hidden_kw} hidden texts contain one.

## Fields (CSV, cp1252-compatible ASCII, header row)
`text_id`, `emotion` (crowd-enVENT labels: `joy` = happiness), `generated_text`, `hidden_emo_text`,
one integer column per appraisal in `emocircuits.data.APPRAISAL_COLUMNS` order:
{", ".join(f"`{d}`" for d in APPRAISAL_COLUMNS)};
`factors` (the factors the text states, `key=value;...`; `core` indexes `APPRAISAL_CORES`), `split`
(80/20 stratified by emotion, seed {SEED}).
As `Example`s: text = generated_text (or `text_field="hidden_emo_text"`), label (joy -> happiness),
meta = every rating as float plus the other columns.

## Counts and mean ratings
{tab}

Total {len(rows)}.

## How much of each rating lies within emotions
Share of a rating's variance left after subtracting the emotion means (0 = the label explains it all).
`tests/test_data_builtin.py` checks that a bag-of-words ridge regression on `hidden_emo_text` predicts
`pleasantness`, `predict_event`, `self_responsblt` and `other_responsblt` within emotions (cross-validated R² >= 0.3).

{within}

## Licence
MIT. sha256 of `appraisal_events.csv`: `{data_sha}`.
"""


def _events_card(recs: list[dict], data_sha: str) -> str:
    counts = Counter((r["label"], r["split"]) for r in recs)
    rows = [
        [
            e,
            counts[(e, "train")],
            counts[(e, "test")],
            sum(1 for r in recs if r["label"] == e and not r["explicit"]),
            len({r["group"] for r in recs if r["label"] == e}),
        ]
        for e in EMOTIONS
    ]
    regs = Counter(r["register"] for r in recs)
    buckets = Counter(r["length_bucket"] for r in recs)
    words = [r["n_words"] for r in recs]
    n_no_kw = sum(not any(keyword_counts(r["text"]).values()) for r in recs)
    kb_all = keyword_baseline(recs, "text")
    kb_test = keyword_baseline([r for r in recs if r["split"] == "test"], "text")
    return f"""# Data card: `events` (built-in)

Short first-person descriptions of events, in the style of crowd-written event reports (one or a few
sentences, mostly without an emotion word), labelled with one of Ekman's six emotions. A harder,
differently styled companion to `builtin:dialogues`. Load with `load_data("builtin:events", split="test")`.

## How it was made
Generated by `scripts/make_data.py` (code: `build_events` in `emocircuits/data/generate.py`; banks
`EVENT_*` in `emocircuits/data/_banks.py`, all written for emocircuits; seed {SEED + 3}). Per emotion,
{len(EVENT_SEEDS[EMOTIONS[0]])} situation seeds, each written as a plain first-person clause, a terse fragment and three follow-up
details. A text renders one seed in one of five registers, cycled so each has a fifth of the texts:
- **terse**: the fragment, sometimes with one detail ("landlord kept the whole deposit over an old scratch");
- **plain**: the clause and 0-2 details as sentences;
- **casual**: fillers ("ok so", "not gonna lie"), contractions, dashes, closers ("lol", "idk"), half lower-case;
- **formal**: a time opener ("Some years ago, "), no contractions, formal words (mother, children, ...);
- **run-on**: one breathless sentence of clause and 2-3 details joined by "and" / "and then", mostly lower-case.
About {EVENT_TYPO_P:.0%} of terse, casual and run-on texts get typing noise (no apostrophes, lower-case "i",
one or two swapped letters). With probability {EVENT_SHARED_DETAIL_P} a text also gets a detail shared with a
confusable emotion (anger/disgust: "I had to walk out of the room"; fear/surprise: "my heart was pounding";
happiness/sadness: "I didn't know what to say").

What makes it hard, like real reports: anger and disgust share situations (a flatmate's dirty dishes,
a man's feet on the bus seat: blocked and wronged vs. revolted), and so do fear and surprise (a hand on
the shoulder in the dark, a bang at night); many happiness texts are understated ("my dad called just
to chat", "the tomatoes I planted in spring finally came in"); sadness and happiness meet in family
moments. Only {EVENT_EXPLICIT_SHARE:.0%} of texts (chosen at random) add a phrase naming the emotion from
`EVENT_EXPLICIT`; every other text is checked by the generator to contain no emotion keyword of any class
(`_banks.KEYWORDS`, the list the dialogues use).

## Fields (JSON lines, UTF-8)
`id` (evt-NNNNN), `label`, `group` (situation seed, e.g. `anger-03`), `register`
(terse/plain/casual/formal/run-on), `length_bucket` (short <= 12 words, medium 13-25, long >= 26),
`n_words`, `explicit` (bool: names the emotion), `typos` (bool), `split`, `text`.
As `Example`: text, label, group = seed; meta = register, length_bucket, n_words, explicit, typos.

## Counts
{_table(rows, ["label", "train", "test", "implicit", "seeds"])}

Total {len(recs)}. Split by seed: {EVENTS_TEST_SHARE:.0%} of each emotion's seeds (seeded, stratified) go wholly
to test, so no test situation is seen in training. Registers: {dict(sorted(regs.items()))}.
Length buckets: {dict(sorted(buckets.items()))}; words per text {min(words)}-{max(words)}
(mean {sum(words) / len(words):.1f}).

**Implicit share**: {n_no_kw} of {len(recs)} texts ({n_no_kw / len(recs):.1%}) contain no emotion keyword of any class.

## Keyword baseline
Predict the emotion whose keywords occur most often (ties: first in Ekman order); no keyword = wrong.

| subset | n | accuracy | explicit | implicit | no keyword |
|---|---|---|---|---|---|
{_kb_row("all", kb_all)}
{_kb_row("test", kb_test)}

## Limitations
Assembled from {len(EVENT_SEEDS[EMOTIONS[0]]) * len(EMOTIONS)} written situations, so wording repeats across texts of one seed; registers are
imitated with fixed openers, closers and substitutions, not written by many people. Labels are the
emotion the seed was written for; some texts are plausibly another emotion, on purpose. English only.

## Licence
MIT, like the emocircuits code. sha256 of `events.jsonl`: `{data_sha}`.
"""


def build_all() -> dict[str, bytes]:
    """Every shipped file of ``data/``: name -> exact bytes."""
    dia = build_dialogues()
    sev = build_sev()
    app = build_appraisal()
    evt = build_events()
    files = {
        "dialogues.jsonl": _jsonl(dia),
        "sev.jsonl": _jsonl(sev),
        "appraisal_events.csv": _csv(app),
        "events.jsonl": _jsonl(evt),
    }
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    files["dialogues.md"] = _dialogue_card(dia, sha["dialogues.jsonl"]).encode()
    files["sev.md"] = _sev_card(sev, sha["sev.jsonl"]).encode()
    files["appraisal_events.md"] = _appraisal_card(app, sha["appraisal_events.csv"]).encode()
    files["events.md"] = _events_card(evt, sha["events.jsonl"]).encode()
    return files
