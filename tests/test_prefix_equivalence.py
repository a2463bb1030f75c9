"""Shared-prefix reuse changes no number: the same pass with ``share_prefix=True`` and ``share_prefix=False``.

``tests/test_batch_invariance.py`` compares a batched pass with one-prompt passes (a pass of one prompt
never shares its prefix) under every intervention, allowing a couple of count flips. What it leaves out
and this file pins, without interventions:

* neuron statistics are *identical* (fp32) with and without prefix reuse, for every reading and token
  mode, when the pass spans several token-budget batches (the prefix's counts are added exactly once),
  for a chat and a plain few-shot template;
* label readout gives the same predictions (and scores within float rounding) over several batches,
  first-token and full-label scoring;
* the masking engine gives the same clean and masked predictions, including masks whose pass starts
  from a checkpoint residual captured after the shared prefix;
* on the embedded model (slow): the same three on a few texts of Lee et al.'s prompt.
"""

from __future__ import annotations

import pytest
import torch

from emocircuits.core.readout import LabelReadout
from emocircuits.core.units import NeuronSet
from emocircuits.data import load_data
from emocircuits.methods import neurons

ATOL = 1e-4


@pytest.fixture(scope="module")
def texts():
    """12 short labelled texts (2 per Ekman emotion)."""
    return load_data("builtin:appraisal_events", limit_per_label=2, seed=0)


def _stats(model, data, share, **kw):
    return neurons.collect(model, data, share_prefix=share, progress=False, **kw)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("template", ["chat_short", "fewshot"])
def test_stats_identical_with_and_without_prefix(request, texts, arch, template):
    model, spec = request.getfixturevalue(arch)
    readings = ["gated", "silu_only", "pre"] if spec.gated_mlp else ["gated"]
    ro = LabelReadout(model, texts.labels, template, max_tokens=600)
    ids = ro.encode(texts)
    assert len(ro.batches(ids)) >= 3  # several batches: the prefix counts must be added exactly once
    assert ro.runner.shared_prefix(ro.batches(ids)) >= 8
    for reading in readings:
        for tokens in ("all", "last"):
            kw = dict(reading=reading, tokens=tokens, template=template, max_tokens=600)
            shared, whole = _stats(model, texts, True, **kw), _stats(model, texts, False, **kw)
            assert torch.equal(shared.totals, whole.totals), (reading, tokens)
            assert torch.equal(shared.counts, whole.counts), (reading, tokens, int((shared.counts != whole.counts).sum()))
            if tokens == "all":  # the prefix really was counted once per text
                assert int(shared.totals.sum()) == sum(len(i) for i in ids)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("scoring", ["first_token", "full_label"])
def test_readout_same_with_and_without_prefix(request, texts, arch, scoring):
    model, _ = request.getfixturevalue(arch)
    ids = None
    got = {}
    for share in (True, False):
        ro = LabelReadout(model, texts.labels, "chat", scoring, share_prefix=share, max_tokens=600)
        ids = ids or ro.encode(texts)
        got[share] = ro.scores_of(ids)
        assert (ro.runner.last_offset > 0) == share
    torch.testing.assert_close(got[True], got[False], atol=ATOL, rtol=0)
    assert torch.equal(got[True].argmax(-1), got[False].argmax(-1))


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_masking_engine_same_with_and_without_prefix(request, texts, arch):
    model, spec = request.getfixturevalue(arch)
    engines = {share: neurons.MaskingEngine(model, texts, share_prefix=share, max_tokens=600, checkpoints=2,
                                            progress=False) for share in (True, False)}
    assert engines[True].readout.runner.last_offset > 0 and engines[False].readout.runner.last_offset == 0
    torch.testing.assert_close(engines[True].clean_scores, engines[False].clean_scores, atol=ATOL, rtol=0)
    masks = [NeuronSet({0: (1, 4, 9)}), NeuronSet({2: tuple(range(0, 40, 3))}),  # from the embedding / a checkpoint
             NeuronSet({1: (0, 2), 2: (5,)})]
    assert any(engines[True].start_layer(m) > 0 for m in masks)
    for m in masks:
        a, b = engines[True].scores(m), engines[False].scores(m)
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
        assert (engines[True].predict(m) == engines[False].predict(m)).all()


@pytest.mark.slow
def test_prefix_reuse_on_embedded_model(smol):
    model, spec = smol
    data = load_data("builtin:appraisal_events", limit_per_label=1, seed=0)
    kw = dict(reading="gated", tokens="all", template="chat_lee", max_tokens=700)  # 6 texts in 2 batches
    shared, whole = _stats(model, data, True, **kw), _stats(model, data, False, **kw)
    assert torch.equal(shared.totals, whole.totals)
    gap = (shared.counts.long() - whole.counts.long()).abs()
    n_diff = int((gap > 0).sum())
    # a real model's value within float rounding of 0 may flip between two matmul shapes: each flip moves one
    # count by one, and flips stay rare (at most 1 in 10,000 of the ~276k counts: 30 layers x 1536 neurons x
    # 6 emotions; 12 were seen with transformers 5.23 and torch 2.13 on a 2-core machine)
    assert int(gap.max()) <= 1 and n_diff <= 1e-4 * gap.numel(), (int(gap.max()), n_diff)
    preds = {}
    for share in (True, False):
        ro = LabelReadout(model, data.labels, "chat_lee", share_prefix=share)
        preds[share] = ro.scores_of(ro.encode(data))
    torch.testing.assert_close(preds[True], preds[False], atol=ATOL, rtol=0)
    assert torch.equal(preds[True].argmax(-1), preds[False].argmax(-1))
    mask = NeuronSet({20: tuple(range(0, 1536, 7))})
    engines = {share: neurons.MaskingEngine(model, data, share_prefix=share, template="chat_lee", progress=False)
               for share in (True, False)}
    assert engines[True].start_layer(mask) > 0
    torch.testing.assert_close(engines[True].scores(mask), engines[False].scores(mask), atol=ATOL, rtol=0)
    assert (engines[True].predict(mask) == engines[False].predict(mask)).all()
