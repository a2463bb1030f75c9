"""Loaders, validation and splits (no model needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.data import Dataset, Example, load_data, stratified_split

FIX = Path(__file__).parent / "fixtures" / "data"


def test_emoprism_jsonl_and_gz_agree():
    a = load_data(f"emoprism:{FIX / 'emoprism.jsonl'}")
    b = load_data(f"emoprism:{FIX / 'emoprism.json.gz'}")
    assert [(e.text, e.label, e.group) for e in a] == [(e.text, e.label, e.group) for e in b]
    assert len(a) == 4 and a.labels == EKMAN6
    fear = next(e for e in a if e.group == "Basement")
    assert fear.label == "fear"  # case-normalised
    assert fear.meta["claude_label"] == "surprise"  # labeller fields kept in meta
    turns = next(e for e in a if e.group == "Leftovers").text
    assert turns.splitlines()[0].startswith("A: ") and turns.splitlines()[1].startswith("B: ")


def test_malformed_line_names_file_and_line():
    with pytest.raises(EmocircuitsError, match=r"emoprism_malformed\.jsonl, line 3: invalid JSON"):
        load_data(f"emoprism:{FIX / 'emoprism_malformed.jsonl'}")


def test_unknown_label_lists_allowed_or_drops_and_counts():
    with pytest.raises(
        EmocircuitsError, match=r"line 2: unknown label 'boredom'; allowed labels are anger, disgust"
    ):
        load_data(f"emoprism:{FIX / 'emoprism_unknown.jsonl'}")
    with pytest.warns(UserWarning, match="dropped 1 row"):
        ds = load_data(f"emoprism:{FIX / 'emoprism_unknown.jsonl'}", drop_unknown=True)
    assert len(ds) == 1 and ds.info["dropped"] == {"boredom": 1}


def test_empty_file_is_an_error():
    with pytest.raises(EmocircuitsError, match="yielded no examples"):
        load_data(f"jsonl:{FIX / 'empty.jsonl'}")


def test_missing_field_and_bad_csv_rows():
    with pytest.raises(EmocircuitsError, match=r"line 1: missing field\(s\) label"):
        load_data(f"jsonl:{FIX / 'generic_missing_label.jsonl'}")
    with pytest.raises(
        EmocircuitsError, match=r"generic_bad_columns\.csv, line 3: 5 fields but the header has 3"
    ):
        load_data(f"csv:{FIX / 'generic_bad_columns.csv'}")


def test_missing_file_and_unknown_kind():
    with pytest.raises(EmocircuitsError, match="does not exist"):
        load_data("jsonl:/nonexistent/file.jsonl")
    with pytest.raises(EmocircuitsError, match="Unknown data kind 'xml'"):
        load_data("xml:foo")
    with pytest.raises(EmocircuitsError, match="Unknown built-in dataset 'nope'; known: dialogues"):
        load_data("builtin:nope")
    with pytest.raises(EmocircuitsError, match="Unknown split"):
        load_data("builtin:dialogues", split="validation")


def test_generic_jsonl_and_csv_meta():
    j = load_data(f"jsonl:{FIX / 'generic.jsonl'}")
    assert [e.id for e in j] == ["g1", "g2"] and j[0].meta == {"source": "fixture"}
    c = load_data(f"csv:{FIX / 'generic.csv'}")
    assert c[0].text == "My sister got engaged, finally!" and c[0].meta == {"rater": "r1"}
    assert c[1].label == "disgust"


def test_ids_kept_as_given_even_zero_else_numbered_by_row(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": 0, "text": "a", "label": "anger"}\n{"text": "b", "label": "fear"}\n'
                    '{"id": "", "text": "c", "label": "fear"}\n')
    assert [e.id for e in load_data(f"jsonl:{path}")] == ["0", "jsonl-000001", "jsonl-000002"]


def test_custom_label_scheme():
    ds = load_data(f"csv:{FIX / 'generic.csv'}", labels=["happiness", "disgust"])
    assert ds.labels == ("happiness", "disgust") and len(ds) == 2
    with pytest.raises(EmocircuitsError, match="allowed labels are happiness, sadness"):
        load_data(f"csv:{FIX / 'generic.csv'}", labels=["happiness", "sadness"])


def test_envent_cp1252_joy_mapping_and_drops():
    with pytest.warns(UserWarning, match=r"dropped 2 row\(s\)"):
        ds = load_data(f"envent:{FIX / 'envent.csv'}")
    assert ds.info["dropped"] == {"no-emotion": 1, "pride": 1}
    assert [e.label for e in ds] == ["happiness", "anger", "fear"]
    assert "café" in ds[0].text and "\u201cborrowed\u201d" in ds[1].text  # cp1252 decoded
    assert ds[0].meta["pleasantness"] == 5.0 and ds[0].meta["other_control"] == 1.0
    with pytest.warns(UserWarning):
        hidden = load_data(f"envent:{FIX / 'envent.csv'}", text_field="hidden_emo_text")
    assert hidden[0].text.startswith("I felt ... when")
    with pytest.raises(EmocircuitsError, match="text column 'story' not found"):
        load_data(f"envent:{FIX / 'envent.csv'}", text_field="story")


def test_sev_loader_records_and_texts():
    ds = load_data(f"sev:{FIX / 'sev.jsonl'}")
    assert ds.labels == ("positive", "neutral", "negative") and len(ds) == 12
    ex = ds[0]
    assert ex.id == "k1:positive" and ex.group == "k1"
    assert ex.text == "You are repotting a plant on the patio. A seedling you gave up on sprouts."
    assert ex.meta["events"]["negative"] == "Slugs have eaten every leaf." and ex.meta["scenario"]
    train, test = (
        load_data(f"sev:{FIX / 'sev.jsonl'}", split="train"),
        load_data(f"sev:{FIX / 'sev.jsonl'}", split="test"),
    )
    assert {e.group for e in train}.isdisjoint({e.group for e in test})  # split by skeleton
    assert len(train) + len(test) == 12
    with pytest.raises(EmocircuitsError, match="unknown valence"):
        load_data(f"sev:{FIX / 'sev_bad_valence.jsonl'}")


def test_stratified_split_deterministic_and_balanced():
    labels = [EKMAN6[i % 6] for i in range(600)]
    a, b = stratified_split(labels), stratified_split(labels)
    assert a == b
    for lab in EKMAN6:
        assert sum(1 for x, s in zip(labels, a, strict=True) if x == lab and s == "test") == 5
    assert stratified_split(labels, seed=1) != a


def test_builtin_splits_disjoint_stratified_deterministic():
    train = load_data("builtin:dialogues", split="train")
    test = load_data("builtin:dialogues", split="test")
    assert {e.id for e in train}.isdisjoint({e.id for e in test})
    assert len(train) + len(test) == len(load_data("builtin:dialogues"))
    per = {k: len(v) for k, v in test.by_label().items()}
    assert set(per) == set(EKMAN6) and max(per.values()) - min(per.values()) <= 1
    assert 0.04 <= len(test) / (len(train) + len(test)) <= 0.06
    assert [e.id for e in load_data("builtin:dialogues", split="test")] == [e.id for e in test]


def test_limit_per_label_stratified_and_seeded():
    ds = load_data("builtin:dialogues", split="train")
    a = ds.limit_per_label(7, seed=3)
    assert {k: len(v) for k, v in a.by_label().items()} == dict.fromkeys(EKMAN6, 7)
    assert [e.id for e in a] == [e.id for e in ds.limit_per_label(7, seed=3)]
    assert [e.id for e in a] != [e.id for e in ds.limit_per_label(7, seed=4)]
    b = load_data("builtin:dialogues", split="train", limit_per_label=7, seed=3)
    assert [e.id for e in a] == [e.id for e in b]
    with pytest.raises(EmocircuitsError, match="positive integer"):
        ds.limit_per_label(0)


def test_dataset_sequence_and_frame():
    ds = Dataset("x", ["a", "b"], [Example("1", "t1", "a"), Example("2", "t2", "b", "g", {"k": 1})])
    assert len(ds) == 2 and ds[1].group == "g" and isinstance(ds[:1], Dataset) and len(ds[:1]) == 1
    df = ds.to_frame()
    assert list(df.columns[:4]) == ["id", "text", "label", "group"] and df["k"].tolist()[1] == 1


def test_data_dir_env_override(tmp_path, monkeypatch):
    shutil.copy(FIX / "sev.jsonl", tmp_path / "sev.jsonl")
    monkeypatch.setenv("EMOCIRCUITS_DATA_DIR", str(tmp_path))
    assert len(load_data("builtin:sev")) == 12
    with pytest.raises(EmocircuitsError, match="Built-in data file .* is missing"):
        load_data("builtin:dialogues")
