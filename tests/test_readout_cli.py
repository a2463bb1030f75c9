"""`classify_cmd` end to end on the tiny model (fast) and accuracy on the embedded model (slow)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.classify import classify_cmd
from emocircuits.core.readout import classify
from emocircuits.data import load_data


def test_classify_cmd_writes_metrics_and_predictions(tmp_path):
    out = tmp_path / "run"
    classify_cmd(
        model="tiny-llama",
        data="builtin:dialogues",
        split="test",
        limit_per_label=1,
        template="raw",
        scoring="first_token",
        calibrate=False,
        calibration="batch",
        seed=0,
        out=out,
        quiet=True,
    )
    m = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "per_label", "confusion", "n"} <= set(m) and m["n"] == 6
    assert set(m["confusion"]) == set(EKMAN6)
    df = pd.read_parquet(out / "predictions.parquet")
    assert list(df.columns[:3]) == ["id", "true", "predicted"] and len(df) == 6
    with pytest.raises(EmocircuitsError, match="Unknown scoring"):
        classify_cmd(
            model="tiny-llama",
            data="builtin:dialogues",
            split="test",
            limit_per_label=1,
            template="raw",
            scoring="argmax",
            calibrate=False,
            calibration="batch",
            seed=0,
            out=out,
            quiet=True,
        )


@pytest.mark.slow
def test_embedded_model_accuracy_chat_short(smol):
    bridge, _ = smol
    ds = load_data("builtin:dialogues", split="test", limit_per_label=5, seed=0)
    res = classify(bridge, ds, template="chat_short", calibrate=True, progress=False)
    assert res.metrics["n"] == 30 and res.metrics["accuracy"] >= 0.7


@pytest.mark.slow
def test_embedded_model_default_readout_on_event_text(smol):
    """The default (calibrated two-template ensemble) on short event reports, prior from their train split."""
    bridge, _ = smol
    ds = load_data("builtin:events", split="test", limit_per_label=8, seed=0)
    res = classify(bridge, ds, progress=False)
    cal = res.metrics["calibration"]
    assert cal["templates"] == ["chat_short", "chat_fewshot"] and set(cal["prior_logp"]) == set(cal["templates"])
    assert res.metrics["n"] == 48 and res.metrics["accuracy"] >= 0.45  # full split: 0.604; chance 0.167


def test_classify_cmd_system_prompt_and_prior(tmp_path):
    out = tmp_path / "run"
    classify_cmd(model="tiny-llama", data="builtin:events", split="test", limit_per_label=1,
                 template="chat:Which emotion? {text}", system="Options: {labels}.", scoring="first_token",
                 calibrate=None, calibration="prior", seed=0, out=out, quiet=True)
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["system"] == "Options: {labels}." and m["calibration"]["method"] == "prior"
    assert set(m["calibration"]["prior_logp"]) == set(EKMAN6) and m["calibration"]["fitted_on"].startswith("train")
    with pytest.raises(EmocircuitsError, match="Unknown calibration"):
        classify_cmd(model="tiny-llama", data="builtin:events", split="test", limit_per_label=1, template="raw",
                     system=None, scoring="first_token", calibrate=None, calibration="platt", seed=0,
                     out=tmp_path / "r2", quiet=True)
