"""Deterministic generator of the built-in datasets (``dialogues``, ``sev``, ``appraisal_events``).

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

from emocircuits.data import stratified_split
from emocircuits.data._banks import (
    APPRAISAL_DIMS,
    APPRAISAL_PROTOTYPES,
    APPRAISAL_STEMS,
    BANKS,
    EMOTIONS,
    KEYWORDS,
    PEOPLE,
    SEV_THEMES,
    TOPICS,
)

SEED = 20250
DIALOGUES_PER_EMOTION = 510
IMPLICIT_SHARE = 0.40
MIN_TURNS, MAX_TURNS = 4, 12
TEST_SHARE = 0.05
APPRAISAL_PER_EMOTION = 60
APPRAISAL_NOISE_SD = 0.7

_KW_PATTERNS: dict[str, re.Pattern[str]] = {
    e: re.compile(r"\b(" + "|".join(re.escape(w) for w in sorted(ws, key=len, reverse=True)) + r")\b", re.I)
    for e, ws in KEYWORDS.items()
}


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


def build_appraisal(seed: int = SEED, per_emotion: int = APPRAISAL_PER_EMOTION) -> list[dict]:
    """Appraisal events in crowd-enVENT's columns (``emotion`` uses ``joy`` for happiness)."""
    rng = random.Random(seed + 2)
    rows = []
    for emotion in EMOTIONS:
        stems, fillers = APPRAISAL_STEMS[emotion]
        items = [(s, f) for s in stems for f in fillers]
        rng.shuffle(items)
        if len(items) < per_emotion:
            raise AssertionError(f"only {len(items)} appraisal items for {emotion}")
        for stem, filler in items[:per_emotion]:
            text = stem.replace("{x}", filler)
            text = text[:1].upper() + text[1:]
            proto = APPRAISAL_PROTOTYPES[emotion]
            ratings = {
                d: int(min(5, max(1, round(p + rng.gauss(0.0, APPRAISAL_NOISE_SD)))))
                for d, p in zip(APPRAISAL_DIMS, proto, strict=True)
            }
            rows.append(
                {
                    "emotion": "joy" if emotion == "happiness" else emotion,
                    "generated_text": text,
                    "hidden_emo_text": text,
                    **ratings,
                }
            )
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows = [rows[i] for i in order]
    splits = stratified_split([r["emotion"] for r in rows], 0.2, seed)
    return [
        {"text_id": f"app-{i:04d}", **r, "split": s}
        for i, (r, s) in enumerate(zip(rows, splits, strict=True))
    ]


def _jsonl(records: Iterable[Mapping]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()


def _csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode("cp1252")


def keyword_baseline(records: Sequence[Mapping]) -> dict[str, float | int]:
    """Keyword matcher scores on dialogue records: accuracy overall / explicit / implicit (no hit = wrong)."""

    def acc(rs: Sequence[Mapping]) -> float:
        return sum(keyword_predict(r["dialogue"]) == r["label"] for r in rs) / max(1, len(rs))

    exp = [r for r in records if r["explicit"]]
    imp = [r for r in records if not r["explicit"]]
    no_hit = sum(keyword_predict(r["dialogue"]) is None for r in records)
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


def _appraisal_card(rows: list[dict], data_sha: str) -> str:
    counts = Counter(r["emotion"] for r in rows)
    means = {
        e: [round(sum(r[d] for r in rows if r["emotion"] == e) / counts[e], 2) for d in APPRAISAL_DIMS[:6]]
        for e in counts
    }
    tab = _table([[e, counts[e], *means[e]] for e in sorted(counts)], ["emotion", "n", *APPRAISAL_DIMS[:6]])
    return f"""# Data card: `appraisal_events` (built-in)

Short first-person event descriptions with 1-5 appraisal ratings, in the columns of crowd-enVENT
(Troiano et al., 2023) so that the same loader (`envent:`) reads both.

## How it was made
Written for emocircuits (`emocircuits/data/_banks.py`, `APPRAISAL_STEMS`): per emotion, 12 event stems
x 5 fillers, {APPRAISAL_PER_EMOTION} sampled per emotion (seed {SEED + 2}).
**The ratings are synthetic, not human judgements**: each is the emotion's prototype profile from
appraisal theory (`APPRAISAL_PROTOTYPES`) plus Gaussian noise (sd {APPRAISAL_NOISE_SD}), rounded and clipped to 1-5.
Use them to exercise appraisal code paths (probes, steering), not to draw conclusions about people.

## Fields (CSV, cp1252-compatible ASCII, header row)
`text_id`, `emotion` (crowd-enVENT labels: `joy` = happiness), `generated_text`, `hidden_emo_text`
(identical here: the texts do not name the emotion), one integer column per appraisal:
{", ".join(f"`{d}`" for d in APPRAISAL_DIMS)}; `split` (80/20 stratified).
As `Example`s: text = generated_text, label (joy -> happiness), meta = every rating as float.

## Counts and mean ratings (first six dimensions)
{tab}

## Licence
MIT. sha256 of `appraisal_events.csv`: `{data_sha}`.
"""


def build_all() -> dict[str, bytes]:
    """Every shipped file of ``data/``: name -> exact bytes."""
    dia = build_dialogues()
    sev = build_sev()
    app = build_appraisal()
    files = {
        "dialogues.jsonl": _jsonl(dia),
        "sev.jsonl": _jsonl(sev),
        "appraisal_events.csv": _csv(app),
    }
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    files["dialogues.md"] = _dialogue_card(dia, sha["dialogues.jsonl"]).encode()
    files["sev.md"] = _sev_card(sev, sha["sev.jsonl"]).encode()
    files["appraisal_events.md"] = _appraisal_card(app, sha["appraisal_events.csv"]).encode()
    return files
