"""Label readout on a tiny random model: padding, prefix sharing, unembed shortcut, metrics."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.readout import (
    LabelReadout,
    classify,
    generate_labels,
    metrics_from_predictions,
    parse_label,
)
from emocircuits.data import Example, load_data


@pytest.fixture(scope="module")
def examples():
    return list(load_data("builtin:dialogues", split="test", limit_per_label=2))[:8]


def _reference_first_token(bridge, ids, first):
    """Full forward (all positions, full vocabulary), one prompt at a time: [n, n_labels]."""
    out = []
    with torch.inference_mode():
        for i in ids:
            out.append(bridge(torch.tensor([i]))[0, -1].log_softmax(-1)[first])
    return torch.stack(out)


def _batched(ro, ids, max_tokens=4096):
    s = torch.empty(len(ids), len(ro.labels))
    for b in ro.batches(ids, max_tokens=max_tokens):
        s[b.rows] = ro.scores(b)
    return s


@pytest.mark.parametrize("share_prefix", [True, False])
def test_padded_batch_equals_single_and_full_forward(tiny_any, examples, share_prefix):
    bridge, _ = tiny_any
    ro = LabelReadout(bridge, EKMAN6, "chat", share_prefix=share_prefix)
    ids = ro.encode(examples)
    batches = list(ro.batches(ids, max_tokens=3000))
    assert any(bool((~b.pad_mask).any()) for b in batches)  # some rows really are padded
    batched = _batched(ro, ids, 3000)
    single = torch.cat([ro.scores(next(iter(ro.batches([i])))) for i in ids])
    ref = _reference_first_token(bridge, ids, ro.first_ids)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=0)
    torch.testing.assert_close(batched, ref, atol=1e-4, rtol=0)


def test_batches_structure(tiny_llama, examples):
    ro = LabelReadout(tiny_llama[0], EKMAN6, "chat")
    ids = ro.encode(examples)
    rows = []
    for b in ro.batches(ids, max_tokens=1500):
        assert b.input_ids.shape[0] * b.input_ids.shape[1] <= max(1500, b.input_ids.shape[1])
        assert torch.equal(b.pad_mask.sum(1), b.lengths) and torch.equal(b.last_index, b.lengths - 1)
        assert (b.input_ids[~b.pad_mask] == ro.runner.pad_id).all()
        for j, r in enumerate(b.rows):
            assert b.input_ids[j, : b.lengths[j]].tolist() == ids[r]
        rows += b.rows
    assert ro.runner.shared_prefix(ro.batches(ids, max_tokens=1500)) > 50  # system prompt and instructions
    assert sorted(rows) == list(range(len(ids)))


def test_full_label_equals_sum_of_token_logprobs(tiny_llama, examples):
    bridge, _ = tiny_llama
    ro = LabelReadout(bridge, EKMAN6, "chat_lee", scoring="full_label")
    assert any(len(f) > 1 for f in ro.full_ids)
    ids = ro.encode(examples[:3])
    got = _batched(ro, ids)
    ref = torch.zeros_like(got)
    with torch.inference_mode():
        for r, i in enumerate(ids):
            for j, full in enumerate(ro.full_ids):
                lp = bridge(torch.tensor([i + full]))[0].log_softmax(-1)
                ref[r, j] = sum(lp[len(i) - 1 + k, t] for k, t in enumerate(full))
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)


def test_scores_honour_attached_hooks(tiny_llama, examples):
    bridge, _ = tiny_llama
    ro = LabelReadout(bridge, EKMAN6, "chat")
    b = next(iter(ro.batches(ro.encode(examples[:4]))))
    base = ro.scores(b)

    def zero(x, hook):
        return torch.zeros_like(x)

    with bridge.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", zero)]):
        hooked = ro.scores(b)
        ref = _reference_first_token(
            bridge, [b.input_ids[j, : b.lengths[j]].tolist() for j in range(4)], ro.first_ids
        )
    assert not torch.allclose(base, hooked, atol=1e-3)
    torch.testing.assert_close(hooked, ref, atol=1e-4, rtol=0)
    assert not any(h._forward_hooks for h in bridge.hook_dict.values())  # capture hook removed


def test_shared_first_token_warns_and_switches(tiny_llama):
    with pytest.warns(UserWarning, match="share a first token"):
        ro = LabelReadout(tiny_llama[0], ["sad", "sadness"], "chat_lee")
    assert ro.scoring == "full_label"
    with pytest.raises(EmocircuitsError, match="Unknown scoring"):
        LabelReadout(tiny_llama[0], EKMAN6, scoring="softmax")


def test_predict_classify_and_calibration(tiny_llama, examples):
    bridge, _ = tiny_llama
    df = LabelReadout(bridge, EKMAN6, "chat").predict(examples, progress=False)
    assert list(df.columns) == ["id", "true", "predicted"] + [f"score_{lab}" for lab in EKMAN6]
    assert df["id"].tolist() == [e.id for e in examples]
    cols = [f"score_{lab}" for lab in EKMAN6]
    raw = torch.tensor(df[cols].values, dtype=torch.float32)
    ro = LabelReadout(bridge, EKMAN6, "chat", calibrate="content_free")
    cal = torch.tensor(ro.predict(examples, progress=False)[cols].values)
    torch.testing.assert_close(cal, raw - ro.content_free_logp()[None], atol=1e-4, rtol=0)
    ro = LabelReadout(bridge, EKMAN6, "chat", calibrate=True)
    with pytest.warns(UserWarning, match="Batch calibration on only 8"):
        bc = torch.tensor(ro.predict(examples, progress=False)[cols].values)
    logp = raw.log_softmax(-1)
    torch.testing.assert_close(bc, logp - logp.mean(0, keepdim=True), atol=1e-4, rtol=0)
    torch.testing.assert_close(bc.mean(0), torch.zeros(6), atol=1e-4, rtol=0)  # prior removed
    with pytest.raises(EmocircuitsError, match="Unknown calibration"):
        LabelReadout(bridge, EKMAN6, calibrate="platt")
    res = classify(bridge, load_data("builtin:dialogues", split="test", limit_per_label=1), progress=False)
    assert res.metrics["n"] == 6 and set(res.metrics["per_label"]) == set(EKMAN6)


def test_metrics_from_predictions():
    df = pd.DataFrame({"true": ["a", "a", "b", "b"], "predicted": ["a", "b", "b", None]})
    m = metrics_from_predictions(df, ["a", "b"])
    assert m["accuracy"] == 0.5 and m["n"] == 4
    assert m["per_label"] == {"a": 0.5, "b": 0.5}
    assert m["confusion"] == {"a": {"a": 1, "b": 1, "none": 0}, "b": {"a": 0, "b": 1, "none": 1}}


def test_parse_and_generate(tiny_llama):
    assert parse_label(" Anger.", EKMAN6) == "anger"
    assert parse_label("[happiness]", EKMAN6) == "happiness"
    assert parse_label("I think joy", EKMAN6) == "happiness"
    assert parse_label("no idea", EKMAN6) is None
    out = generate_labels(tiny_llama[0], [Example("1", "hi", "anger")], EKMAN6, max_new_tokens=2)
    assert len(out) == 1 and (out[0] is None or out[0] in EKMAN6)
