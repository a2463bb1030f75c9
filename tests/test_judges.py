"""Judges of the emotion a text expresses: lexicon, embedding head, hf:DIR, self, llm:SPEC, metrics, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.app import app
from emocircuits.data import load_data
from emocircuits.judges.embedding import EmbeddingJudge
from emocircuits.judges.model_judges import LLMJudge
from emocircuits.judges.panel import accuracy, agreement, get_judge, judge_dataset
from emocircuits.judges.protocol import NONE, Judge

# One clear text per Ekman label, in EKMAN6 order.
CLEAR = [
    "I am furious, this is an outrage and I want to scream at them!",
    "The smell was revolting; the rotten meat made me want to vomit.",
    "I was terrified, trembling in the dark and afraid to move.",
    "What a wonderful, joyful day, I love my friends so much!",
    "She cried all night, heartbroken and lonely after the funeral.",
    "Wow, I never expected that, what a shock, I'm totally amazed!",
]
NEUTRAL = "The meeting is on Tuesday at noon in room four."


def _p(frame: pd.DataFrame, labels=EKMAN6) -> np.ndarray:
    return frame[[f"p_{lab}" for lab in labels]].to_numpy()


def _check_consistent(frame: pd.DataFrame, labels=EKMAN6, threshold: float = 0.0) -> None:
    """predicted is the label of the row's largest p (above threshold), else "none"."""
    for pred, row in zip(frame["predicted"], _p(frame, labels), strict=True):
        if np.nanmax(row) > threshold:
            assert pred == labels[int(np.nanargmax(row))]
        else:
            assert pred == NONE


# ----------------------------------------------------------------------------- lexicon


def test_lexicon_known_labels_and_none_on_neutral_text():
    judge = get_judge("lexicon")
    assert isinstance(judge, Judge) and judge.labels == EKMAN6
    df = judge.judge(CLEAR + [NEUTRAL])
    assert list(df.columns) == ["predicted"] + [f"p_{lab}" for lab in EKMAN6] and len(df) == 7
    assert list(df["predicted"]) == list(EKMAN6) + [NONE]
    assert np.allclose(_p(df)[:6].sum(1), 1.0) and np.allclose(_p(df)[6], 0.0)
    _check_consistent(df)
    # inflected forms fall back to their stem ("screamed" -> "scream"), and joy maps to happiness
    assert judge.counts("screamed")[EKMAN6.index("anger")] >= 1
    assert judge.judge(["pure joy"])["predicted"][0] == "happiness"


def test_lexicon_rejects_bad_targets_and_single_string():
    judge = get_judge("lexicon")
    with pytest.raises(EmocircuitsError, match="not among"):
        judge.judge(["x"], targets=["rage"])
    with pytest.raises(EmocircuitsError, match="one target per text"):
        judge.judge(["x", "y"], targets=["anger"])
    with pytest.raises(EmocircuitsError, match="list of texts"):
        judge.judge("a single string")


def test_missing_optional_package_gives_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "nrclex", None)
    monkeypatch.setitem(sys.modules, "nrclex.data", None)
    with pytest.raises(EmocircuitsError, match=r"pip install nrclex"):
        get_judge("lexicon")


# ----------------------------------------------------------------------------- embedding


@pytest.fixture(scope="module")
def small_train():
    return list(load_data("builtin:dialogues", split="train", limit_per_label=10, seed=0))


@pytest.fixture(scope="module")
def embedding_judge(tmp_path_factory, small_train):
    cache = tmp_path_factory.mktemp("judge-cache")
    return EmbeddingJudge(train=small_train, cache=cache), cache


def test_embedding_judge_classifies_clear_texts(embedding_judge):
    judge, _ = embedding_judge
    assert judge.trained and judge.cache_path.exists()
    df = judge.judge(CLEAR)
    assert np.allclose(_p(df).sum(1), 1.0)
    _check_consistent(df)
    assert accuracy(df, EKMAN6)["accuracy"] >= 5 / 6


def test_embedding_head_is_cached_and_reused(embedding_judge, small_train):
    judge, cache = embedding_judge
    mtime = judge.cache_path.stat().st_mtime_ns
    again = EmbeddingJudge(train=small_train, cache=cache)
    assert not again.trained and again.cache_path == judge.cache_path
    assert judge.cache_path.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again.judge(CLEAR[:2]), judge.judge(CLEAR[:2]))
    head = json.loads(judge.cache_path.read_text())
    assert head["key"] == judge.key and len(head["coef"]) == 6 and len(head["coef"][0]) == 384
    # a different head setting is a different cache entry
    other = EmbeddingJudge(train=small_train, cache=cache, C=0.5)
    assert other.trained and other.cache_path != judge.cache_path
    assert len(list((cache / "judges").glob("embedding-*.json"))) == 2


@pytest.mark.slow
def test_embedding_judge_on_builtin_test_split():
    judge = get_judge("embedding")  # the head trained on the full train split, cached in cache_dir()
    test = load_data("builtin:dialogues", split="test")
    df = judge.judge([ex.text for ex in test])
    assert accuracy(df, [ex.label for ex in test])["accuracy"] >= 0.8


# ----------------------------------------------------------------------------- hf:DIR


def _tiny_classifier(path, id2label, bias=None):
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "am", "so", "happy", "angry", "the", "day", "was"]
    path.mkdir()
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt")).save_pretrained(str(path))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=len(id2label),
                     id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = BertForSequenceClassification(cfg)
    if bias is not None:
        with torch.no_grad():
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(str(path))
    return path


def test_hf_judge_maps_model_labels(tmp_path):
    path = _tiny_classifier(tmp_path / "clf", {0: "JOY", 1: "rage", 2: "meh"})
    texts = ["i am so happy", "i am so angry", "the day was", "happy happy day"]
    judge = get_judge(f"hf:{path}", label_map={"JOY": "happiness", "rage": "anger"})
    assert judge.name == f"hf:{path}"
    df = judge.judge(texts)
    assert df.shape == (4, 7)
    mp = judge.model_probs(texts)  # [4, 3] softmax over the model's labels
    assert np.allclose(df["p_happiness"], mp[:, 0]) and np.allclose(df["p_anger"], mp[:, 1])
    assert np.allclose(df[["p_disgust", "p_fear", "p_sadness", "p_surprise"]], 0.0)
    assert (_p(df).sum(1) < 1).all()  # the unmapped label's share is "none"
    expect = [{0: "happiness", 1: "anger", 2: NONE}[int(k)] for k in mp.argmax(1)]
    assert list(df["predicted"]) == expect
    # an unmapped label that dominates gives "none"; without a label_map, names map by alias (JOY -> happiness)
    loud = _tiny_classifier(tmp_path / "loud", {0: "JOY", 1: "rage", 2: "meh"}, bias=[0.0, 0.0, 20.0])
    assert set(get_judge(f"hf:{loud}").judge(texts)["predicted"]) == {NONE}
    bare = get_judge(f"hf:{path}")
    assert bare.mapping == {"JOY": "happiness", "rage": NONE, "meh": NONE}
    with pytest.raises(EmocircuitsError, match="no config.json"):
        get_judge(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(EmocircuitsError, match="label_map targets"):
        get_judge(f"hf:{path}", label_map={"JOY": "glee"})


# ----------------------------------------------------------------------------- self and llm


def test_self_judge_on_tiny_model(tiny_llama):
    bridge, _ = tiny_llama
    df = get_judge("self", model=bridge).judge(CLEAR[:3])
    assert df.shape == (3, 7)
    p = _p(df)
    assert ((p > 0) & (p < 1)).all() and np.allclose(p.sum(1), 1.0)
    _check_consistent(df)
    with pytest.raises(EmocircuitsError, match="needs a loaded model"):
        get_judge("self")


@pytest.fixture(scope="module")
def llm_judge():
    return get_judge("llm:tiny-llama")


def test_llm_judge_targets_change_the_question(llm_judge):
    assert llm_judge.name == "llm:tiny-llama"
    p_anger, p_fear = llm_judge.prompt(CLEAR[0], "anger"), llm_judge.prompt(CLEAR[0], "fear")
    assert "express anger?" in p_anger and "express fear?" in p_fear and CLEAR[0] in p_anger
    a = llm_judge.judge(CLEAR[:2], targets=["anger", "anger"])
    f = llm_judge.judge(CLEAR[:2], targets=["fear", "fear"])
    assert a.shape == (2, 7)
    assert a["p_anger"].notna().all() and a.drop(columns=["predicted", "p_anger"]).isna().all().all()
    assert f["p_fear"].notna().all() and f["p_anger"].isna().all()
    assert not np.allclose(a["p_anger"], f["p_fear"])  # a different question, a different answer
    for frame, lab in ((a, "anger"), (f, "fear")):
        assert frame[f"p_{lab}"].between(0, 1).all()
        assert list(frame["predicted"]) == [lab if p > 0.5 else NONE for p in frame[f"p_{lab}"]]
    mixed = llm_judge.judge(CLEAR[:2], targets=["anger", "fear"])
    assert np.isclose(mixed["p_anger"][0], a["p_anger"][0], atol=1e-5)
    assert np.isclose(mixed["p_fear"][1], f["p_fear"][1], atol=1e-5)


def test_llm_judge_without_targets_asks_every_label(llm_judge):
    df = llm_judge.judge(CLEAR[:2])
    p = _p(df)
    assert df.shape == (2, 7) and np.isfinite(p).all() and ((p > 0) & (p < 1)).all()
    _check_consistent(df, threshold=0.5)


def test_llm_decision_rule(tiny_llama):
    class Fixed(LLMJudge):
        def p_yes(self, texts, emotion):
            table = {("t1", "anger"): 0.7, ("t1", "fear"): 0.9, ("t2", "sadness"): 0.3}
            return np.array([table.get((t, emotion), 0.2) for t in texts])

    judge = Fixed(tiny_llama[0], spec="fixed")
    df = judge.judge(["t1", "t2"])
    assert list(df["predicted"]) == ["fear", NONE]
    df = judge.judge(["t1", "t2"], targets=["anger", "sadness"])
    assert list(df["predicted"]) == ["anger", NONE]
    assert df["p_anger"][0] == 0.7 and df["p_sadness"][1] == 0.3 and np.isnan(df["p_fear"][0])


# ----------------------------------------------------------------------------- metrics


def test_accuracy_and_agreement_on_hand_made_frames():
    a = pd.DataFrame({"predicted": ["anger", "anger", "fear", NONE]})
    b = pd.DataFrame({"predicted": ["anger", "fear", "fear", NONE]})
    acc = accuracy(a, ["anger", "fear", "fear", "sadness"])
    assert acc == {"accuracy": 0.5, "per_label": {"anger": 1.0, "fear": 0.5, "sadness": 0.0},
                   "none_rate": 0.25, "n": 4}
    k = agreement({"a": a, "b": b})
    # p_o = 3/4; p_e = (2*1 + 1*2 + 1*1) / 16 = 5/16; kappa = (3/4 - 5/16) / (1 - 5/16) = 7/11
    assert list(k.index) == ["a", "b"] and k.loc["a", "a"] == 1.0
    assert k.loc["a", "b"] == pytest.approx(7 / 11) and k.loc["b", "a"] == pytest.approx(7 / 11)
    with pytest.raises(EmocircuitsError, match="different lengths"):
        agreement({"a": a, "c": a.iloc[:2]})


def test_judge_dataset_writes_long_verdicts():
    data = load_data("builtin:dialogues", split="test", limit_per_label=2, seed=0)
    run = judge_dataset([get_judge("lexicon")], data)
    assert list(run.verdicts.columns[:4]) == ["id", "true", "judge", "predicted"] and len(run.verdicts) == 12
    assert run.metrics["judges"]["lexicon"]["n"] == 12 and run.metrics["kappa"]["lexicon"]["lexicon"] == 1.0


def test_get_judge_errors_are_one_sentence():
    with pytest.raises(EmocircuitsError, match="Unknown judge 'gpt'.*self, lexicon, embedding, hf:DIR, llm:SPEC"):
        get_judge("gpt")
    with pytest.raises(EmocircuitsError, match="unknown option"):
        get_judge("lexicon", temperature=0.5)


# ----------------------------------------------------------------------------- CLI


def test_cli_judge_writes_run_dir(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["judge", "--judge", "lexicon", "--data", "jsonl:tests/fixtures/data/generic.jsonl",
                                 "--split", "all", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "lexicon" in r.output
    verdicts = pd.read_parquet(out / "verdicts.parquet")
    assert list(verdicts.columns) == ["id", "true", "judge", "predicted"] + [f"p_{lab}" for lab in EKMAN6]
    assert list(verdicts["id"]) == ["g1", "g2"] and list(verdicts["true"]) == ["surprise", "sadness"]
    assert list(verdicts["predicted"]) == [NONE, "sadness"]  # "lost" is an NRC sadness word
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judges"]["lexicon"]["accuracy"] == 0.5 and metrics["kappa"] == {"lexicon": {"lexicon": 1.0}}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "judge" and manifest["status"] == "complete" and manifest["model"] is None
    assert set(manifest["files"]) == {"verdicts.parquet", "metrics.json"}
    from emocircuits.sweeps.rerun import rerun

    rerun(out, tmp_path / "again")  # the run re-creates from its manifest alone
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again" / "verdicts.parquet"), verdicts)


def test_cli_bad_judge_name_exits_2_with_one_sentence(tmp_path):
    args = ["judge", "--judge", "lexicon", "--judge", "oracle", "--data", "builtin:dialogues", "--out", str(tmp_path)]
    r = CliRunner().invoke(app, args)
    assert isinstance(r.exception, EmocircuitsError) and "Unknown judge 'oracle'" in str(r.exception)
    code = "from emocircuits.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emocircuits: error: Unknown judge 'oracle'")
    assert not (tmp_path / "manifest.json").exists()
