"""The shipped built-in datasets: reproducible from the generator and meeting the issue's spec."""

from __future__ import annotations

import re
from collections import Counter

from emocircuits.data import EKMAN6, data_dir, load_data
from emocircuits.data._banks import KEYWORDS
from emocircuits.data.generate import build_all, keyword_counts, keyword_predict


def test_shipped_files_equal_a_fresh_build():
    for name, data in build_all().items():
        assert (data_dir() / name).read_bytes() == data, f"{name} differs: run python scripts/make_data.py"


def test_dialogues_spec():
    ds = load_data("builtin:dialogues")
    assert len(ds) >= 3000
    counts = Counter(e.label for e in ds)
    assert set(counts) == set(EKMAN6)
    mean = len(ds) / 6
    assert all(abs(c - mean) <= 0.1 * mean for c in counts.values())
    assert len({e.group for e in ds}) >= 150
    for e in ds:
        lines = e.text.split("\n")
        assert 4 <= len(lines) <= 12
        assert all(line.startswith(("A: ", "B: ")) for line in lines)
        assert [line[0] for line in lines] == ["A" if i % 2 == 0 else "B" for i in range(len(lines))]


def test_implicit_third_has_no_emotion_keywords():
    ds = load_data("builtin:dialogues")
    implicit = [e for e in ds if not e.meta["explicit"]]
    assert len(implicit) >= len(ds) / 3
    for e in implicit:
        assert sum(keyword_counts(e.text).values()) == 0, e.id
        assert keyword_predict(e.text) is None
    # explicit ones really name their emotion (so the flag means something)
    explicit = [e for e in ds if e.meta["explicit"]]
    assert all(keyword_counts(e.text)[e.label] > 0 for e in explicit)


def test_keyword_matcher_is_word_bounded():
    assert keyword_counts("I made a sadder remark")["anger"] == 0  # "mad" inside "made" is not a hit
    assert keyword_counts("I made a sadder remark")["sadness"] == 1
    assert keyword_counts("I can't believe it")["surprise"] == 1
    assert all(re.fullmatch(r"[a-z' ]+", w) for ws in KEYWORDS.values() for w in ws)


def test_sev_and_appraisal_spec():
    sev = load_data("builtin:sev")
    skeletons = {e.group for e in sev}
    assert len(skeletons) >= 120 and len({e.meta["theme"] for e in sev}) >= 6
    assert all(set(e.meta["events"]) == {"positive", "neutral", "negative"} for e in sev)
    tr, te = load_data("builtin:sev", split="train"), load_data("builtin:sev", split="test")
    assert {e.group for e in tr}.isdisjoint({e.group for e in te})
    app = load_data("builtin:appraisal_events")
    assert Counter(e.label for e in app) == dict.fromkeys(EKMAN6, 60)
    need = (
        "suddenness",
        "familiarity",
        "predict_event",
        "pleasantness",
        "unpleasantness",
        "goal_relevance",
        "self_responsblt",
        "other_responsblt",
        "self_control",
        "other_control",
    )
    for e in app:
        assert all(1.0 <= e.meta[k] <= 5.0 for k in need)
    # the prototype signal survives the noise: happiness is rated more pleasant than anger on average
    mean = {lab: sum(e.meta["pleasantness"] for e in app if e.label == lab) / 60 for lab in EKMAN6}
    assert mean["happiness"] > mean["anger"] + 2
