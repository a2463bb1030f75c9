"""The "prior" calibration is fitted once per key, then read from memory or disk (tiny random model)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pandas as pd
import pytest
import torch

from emocircuits.base.constants import EKMAN6
from emocircuits.core import prior_cache
from emocircuits.core.interventions import AddDirection
from emocircuits.core.models import cache_dir
from emocircuits.core.prompts import get_template
from emocircuits.core.readout import LabelReadout, classify
from emocircuits.data import load_data
from emocircuits.jobs.classify import run_classify


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A fresh, empty prior cache per test: nothing in memory, files under tmp_path."""
    where = tmp_path / "priors"
    monkeypatch.setattr(prior_cache, "prior_cache_dir", lambda: where)
    monkeypatch.delenv(prior_cache.ENV_NO_CACHE, raising=False)
    prior_cache.clear_memory()
    yield where
    prior_cache.clear_memory()


@pytest.fixture()
def scored(monkeypatch):
    """The number of prompts the readout scores (one forward row each), per call of ``scores_of``."""
    calls: list[int] = []
    original = LabelReadout.scores_of

    def counting(self, token_ids, progress=None):
        calls.append(len(token_ids))
        return original(self, token_ids, progress)

    monkeypatch.setattr(LabelReadout, "scores_of", counting)
    return calls


@pytest.fixture(scope="module")
def train():
    return load_data("builtin:events", split="train", limit_per_label=1, seed=1)


def _cal(res):
    return res.metrics["calibration"]


def test_cache_is_not_the_user_cache(cache):
    assert prior_cache.prior_cache_dir() == cache
    assert cache_dir() not in cache.parents


def test_default_readout_fits_its_prior_once(tiny_llama, scored, cache):
    """classify(model, ["yay"]) with the default ensemble: the second call scores only the text, once per template."""
    bridge, _ = tiny_llama
    first = classify(bridge, ["yay"], progress=False)
    n_ref = len(load_data("builtin:events", split="train").limit_per_label(20, seed=0))
    assert sorted(scored) == [1, 1, n_ref, n_ref]
    scored.clear()
    second = classify(bridge, ["yay"], progress=False)
    assert scored == [1, 1]
    c1, c2 = _cal(first), _cal(second)
    assert c1["templates"] == ["chat_short", "chat_fewshot"]
    assert {t: c["source"] for t, c in c1["prior_cache"].items()} == {"chat_short": "computed", "chat_fewshot": "computed"}
    assert {t: c["source"] for t, c in c2["prior_cache"].items()} == {"chat_short": "memory", "chat_fewshot": "memory"}
    assert [c["key"] for c in c1["prior_cache"].values()] == [c["key"] for c in c2["prior_cache"].values()]
    assert c1["prior_cache"]["chat_short"]["key"] != c1["prior_cache"]["chat_fewshot"]["key"]
    assert c1["prior_logp"] == c2["prior_logp"]  # exact floats
    pd.testing.assert_frame_equal(first.predictions, second.predictions, check_exact=True)
    files = sorted(p.stem for p in cache.glob("*.json"))
    assert files == sorted(c["key"] for c in c1["prior_cache"].values())
    doc = json.loads((cache / f"{c1['prior_cache']['chat_short']['key']}.json").read_text())
    assert doc["prior_logp"] == list(c1["prior_logp"]["chat_short"].values())
    assert doc["fields"]["template"]["name"] == "chat_short" and doc["fields"]["labels"] == list(EKMAN6)


def test_disk_round_trip_in_a_fresh_session(tiny_llama, train, scored):
    bridge, _ = tiny_llama
    kw = {"template": "chat_short", "prior_examples": train, "progress": False}
    first = classify(bridge, ["yay", "oh no"], **kw)
    prior_cache.clear_memory()  # as a new Python session would start
    scored.clear()
    again = classify(bridge, ["yay", "oh no"], **kw)
    assert scored == [2]
    assert _cal(first)["prior_cache"]["source"] == "computed" and _cal(again)["prior_cache"]["source"] == "disk"
    assert _cal(again)["prior_cache"]["key"] == _cal(first)["prior_cache"]["key"]
    assert _cal(again)["prior_logp"] == _cal(first)["prior_logp"]
    pd.testing.assert_frame_equal(first.predictions, again.predictions, check_exact=True)
    fresh = classify(bridge, ["yay", "oh no"], prior_cache=False, **kw)  # fitted again: the same bits
    assert _cal(fresh)["prior_cache"]["source"] == "computed" and _cal(fresh)["prior_logp"] == _cal(first)["prior_logp"]
    pd.testing.assert_frame_equal(first.predictions, fresh.predictions, check_exact=True)


def test_every_key_field_invalidates(tiny_llama, train, scored, monkeypatch):
    bridge, spec = tiny_llama
    base = {"template": "chat_short", "prior_examples": train, "progress": False}
    key0 = _cal(classify(bridge, ["yay"], **base))["prior_cache"]["key"]
    assert _cal(classify(bridge, ["yay"], **base))["prior_cache"]["source"] == "memory"
    other_train = load_data("builtin:events", split="train", limit_per_label=1, seed=2)
    changes = {
        "template": {**base, "template": "chat_fewshot"},
        "template text, same name": {**base, "template": get_template("chat_short", system="Say {labels}.")},
        "labels": {**base, "labels": ["anger", "fear", "happiness"],
                   "prior_examples": [ex for ex in train if ex.label in ("anger", "fear", "happiness")]},
        "examples": {**base, "prior_examples": other_train},
        "example labels": {**base, "prior_examples": [dataclasses.replace(ex, label=EKMAN6[(EKMAN6.index(ex.label) + 1) % 6])
                                                      for ex in train]},
        "scoring": {**base, "scoring": "full_label"},
        "prepend_bos": {**base, "prepend_bos": not spec.prepend_bos},
    }
    keys = {key0}
    for what, kw in changes.items():
        scored.clear()
        cal = _cal(classify(bridge, ["yay"], **kw))["prior_cache"]
        assert cal["source"] == "computed", what
        assert sum(scored) > 1, what
        keys.add(cal["key"])
    monkeypatch.setattr(bridge, "_emocircuits_spec", dataclasses.replace(spec, weights_hash="0" * 64))
    cal = _cal(classify(bridge, ["yay"], **base))["prior_cache"]
    assert cal["source"] == "computed"
    keys.add(cal["key"])
    assert len(keys) == len(changes) + 2


@pytest.mark.parametrize("content", ["{not json", json.dumps({"key": "x", "prior_logp": [0.0]}), ""])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(tiny_llama, train, cache, content):
    bridge, _ = tiny_llama
    kw = {"template": "chat_short", "prior_examples": train, "progress": False}
    first = _cal(classify(bridge, ["yay"], **kw))
    path = cache / f"{first['prior_cache']['key']}.json"
    path.write_text(content)
    prior_cache.clear_memory()
    with pytest.warns(UserWarning, match="Ignoring the label-prior cache file"):
        again = _cal(classify(bridge, ["yay"], **kw))
    assert again["prior_cache"]["source"] == "computed" and again["prior_logp"] == first["prior_logp"]
    assert json.loads(path.read_text())["prior_logp"] == list(first["prior_logp"].values())  # rewritten
    prior_cache.clear_memory()
    assert _cal(classify(bridge, ["yay"], **kw))["prior_cache"]["source"] == "disk"


def test_a_file_of_other_key_fields_is_not_read(tiny_llama, train, cache):
    bridge, _ = tiny_llama
    kw = {"template": "chat_short", "prior_examples": train, "progress": False}
    first = _cal(classify(bridge, ["yay"], **kw))
    path = cache / f"{first['prior_cache']['key']}.json"
    doc = json.loads(path.read_text())
    doc["fields"]["labels"] = ["x"] * 6
    doc["prior_logp"] = [9.0] * 6
    path.write_text(json.dumps(doc))
    prior_cache.clear_memory()
    with pytest.warns(UserWarning, match="key fields do not match"):
        again = _cal(classify(bridge, ["yay"], **kw))
    assert again["prior_cache"]["source"] == "computed" and again["prior_logp"] == first["prior_logp"]


def test_bypass_by_argument_env_and_hooks(tiny_llama, train, scored, cache, monkeypatch):
    bridge, spec = tiny_llama
    kw = {"template": "chat_short", "prior_examples": train, "progress": False}
    for _ in range(2):
        cal = _cal(classify(bridge, ["yay"], prior_cache=False, **kw))["prior_cache"]
        assert cal["source"] == "computed" and cal["cache"].startswith("off") and cal["key"]
    assert not list(cache.glob("*.json")) and sum(scored) == 2 * (len(train) + 1)
    monkeypatch.setenv(prior_cache.ENV_NO_CACHE, "1")
    for _ in range(2):
        assert _cal(classify(bridge, ["yay"], **kw))["prior_cache"]["source"] == "computed"
    assert not list(cache.glob("*.json"))
    monkeypatch.delenv(prior_cache.ENV_NO_CACHE)
    clean = _cal(classify(bridge, ["yay"], **kw))
    assert clean["prior_cache"]["source"] == "computed"
    direction = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(0))
    with AddDirection(direction, layers=(1,), scale=4.0).apply(bridge):  # a prior fitted under hooks is not cached
        hooked = _cal(classify(bridge, ["yay"], **kw))
    assert hooked["prior_cache"]["source"] == "computed" and hooked["prior_cache"]["key"] is None
    assert hooked["prior_logp"] != clean["prior_logp"]
    assert _cal(classify(bridge, ["yay"], **kw))["prior_logp"] == clean["prior_logp"]


def test_classify_job_records_where_the_prior_came_from(tmp_path):
    """The ``classify`` job with the config ``emocircuits classify`` builds; ``prior_cache: False`` in the config is
    what the branch's ``--no-prior-cache`` flag set (the flag itself is pending in emocircuits/cli)."""
    config = {"model": "tiny-llama", "data": "builtin:events", "split": "test", "labels": None, "drop_unknown": False,
              "limit_per_label": 1, "template": "chat_short", "system": None, "scoring": "first_token",
              "calibrate": "prior", "prepend_bos": None, "seed": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_classify(dict(config), tmp_path / "a", quiet=True)
        run_classify(dict(config), tmp_path / "b", quiet=True)
        run_classify({**config, "prior_cache": False}, tmp_path / "c", quiet=True)
    a, b, c = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "abc")
    assert a["calibration"]["prior_cache"]["source"] == "computed"
    assert b["calibration"]["prior_cache"]["source"] in ("memory", "disk")
    assert c["calibration"]["prior_cache"]["source"] == "computed" and c["config"]["prior_cache"] is False
    assert "prior_cache" not in a["config"]
    assert a["calibration"]["prior_cache"]["key"] == b["calibration"]["prior_cache"]["key"]
    assert a["calibration"]["prior_logp"] == b["calibration"]["prior_logp"] == c["calibration"]["prior_logp"]
