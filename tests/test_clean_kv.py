"""Clean keys/values reused before the first changed token (issue: Speed III).

A runner that keeps clean keys/values reruns only each row's tokens from the first position the attached
interventions change. Every result must equal computing every position (to float rounding), the
interventions must still act, and an unknown footprint must fall back to the full pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emocircuits.core.interventions import (
    AddDirection,
    BatchInfo,
    Noise,
    PatchFrom,
    ScaleHeads,
    ScaleSite,
    ZeroNeurons,
    attached,
    capture,
    first_changed,
)
from emocircuits.core.runner import CleanKV
from emocircuits.core.sites import hook_name
from emocircuits.core.units import HeadSet
from emocircuits.data import Example
from emocircuits.methods.inference.patching import knockout, patch
from emocircuits.methods.inference.prepare import capture_sites, prepare

LABELS = ["a", "b", "c"]
TEXTS = ["I am so angry at this", "what a lovely day it was today, truly", "this is gross",
         "oh no I am scared of the dark night outside", "wow really", "so sad and alone tonight"]


def _prepared(bridge, template):
    ex = [Example(str(i), t, LABELS[i % 3]) for i, t in enumerate(TEXTS)]
    return prepare(bridge, ex, labels=LABELS, template=template, calibrate=False, only_correct=False)


def _full(prep, iv, rows=None):
    """The same prediction computing every position."""
    runner = prep.readout.runner
    kept, runner.clean = runner.clean, None
    try:
        return prep.predict(iv, rows=rows)
    finally:
        runner.clean = kept


def test_first_changed_hand_cases():
    info = BatchInfo(torch.arange(10)[None, :], torch.tensor([6, 10]), torch.tensor([6, 10]), torch.tensor([0, 1]),
                     torch.zeros(2, dtype=torch.long))
    assert first_changed("all", None, info).tolist() == [0, 0]
    assert first_changed("last", None, info).tolist() == [5, 9]
    assert first_changed((2, -3), None, info).tolist() == [2, 2]
    assert first_changed((-3, -1), None, info).tolist() == [3, 7]
    assert first_changed("last", (1,), info).tolist() == [6, 9]  # row 0 untouched: its length
    gen = BatchInfo(torch.arange(10)[None, :], torch.tensor([4, 7]), torch.tensor([6, 10]), torch.tensor([0, 1]),
                    torch.zeros(2, dtype=torch.long), generating=True)
    assert first_changed("last", None, gen).tolist() == [3, 6]
    assert first_changed("generated", None, gen).tolist() == [4, 7]


@pytest.mark.parametrize("template", ["chat_short", "raw"])
def test_last_token_interventions_rerun_one_token_and_equal_the_full_pass(tiny_any, template):
    bridge, spec = tiny_any
    prep = _prepared(bridge, template)
    runner = prep.readout.runner
    assert len(runner.clean.rows) == len(TEXTS)
    direction = {1: torch.randn(spec.d_model)}
    for iv in (None, ScaleSite("attn.out", (0, 1), 0.0, positions="last"),
               Noise("mlp.out", (1, 2), positions="last", seed=3),
               ScaleSite("resid.post", (1,), 0.5, positions=(-2, -1)),
               ScaleHeads(HeadSet([(1, 0)]), 0.0, positions="last"),
               AddDirection(direction, "resid.post", scale=4.0, positions="last") + ScaleSite("mlp.out", (2,), 0.0,
                                                                                          positions="last")):
        got = prep.predict(iv)
        assert runner.last_reused > 0
        torch.testing.assert_close(got, _full(prep, iv), atol=1e-5, rtol=1e-5)
        if iv is not None:
            assert not torch.allclose(got, prep.scores, atol=1e-4)  # the intervention acts
    # a write at every position gains nothing: every position is computed
    prep.predict(ZeroNeurons({1: (0, 3)}))
    assert runner.last_reused == 0


def test_knockout_and_patching_tables_equal_the_full_pass(tiny_llama):
    bridge, spec = tiny_llama
    prep = _prepared(bridge, "chat_short")
    fast = knockout(prep, sites=("attn.out", "mlp.out"), span=2, n_boot=50)
    fast_noise = knockout(prep, sites=("mlp.out",), span=2, mode="noise", n_boot=50)
    acts = capture_sites(bridge, prep.token_ids, ["resid.post"])
    pairs = np.array([[0, 1], [1, 2], [3, 5], [4, 0]])
    fast_patch = patch(prep, sites=("resid.post",), span=2, pairs=pairs, n_boot=50, acts=acts)
    prep.readout.runner.clean = None
    slow = knockout(prep, sites=("attn.out", "mlp.out"), span=2, n_boot=50)
    slow_noise = knockout(prep, sites=("mlp.out",), span=2, mode="noise", n_boot=50)
    slow_patch = patch(prep, sites=("resid.post",), span=2, pairs=pairs, n_boot=50, acts=acts)
    assert fast.equals(slow) and fast_noise.equals(slow_noise)
    numbers = [c for c in fast_patch.columns if c not in ("site", "logit_diff_change")]
    assert (fast_patch.site == slow_patch.site).all()
    np.testing.assert_allclose(fast_patch[numbers].to_numpy(dtype=float), slow_patch[numbers].to_numpy(dtype=float))
    np.testing.assert_allclose(fast_patch.logit_diff_change, slow_patch.logit_diff_change, atol=1e-5)


def test_a_subset_of_rows_and_a_last_token_capture_reuse_too(tiny_llama):
    bridge, spec = tiny_llama
    prep = _prepared(bridge, "chat_short")
    runner = prep.readout.runner
    src = {1: torch.randn(len(TEXTS), spec.d_model)}
    iv = PatchFrom("resid.post", src, positions="last")
    rows = [4, 1, 3]
    got = prep.predict(iv, rows=rows)
    assert runner.last_reused > 0
    torch.testing.assert_close(got, _full(prep, iv, rows=rows), atol=1e-5, rtol=1e-5)
    ids = prep.token_ids
    with capture(bridge, "resid.post", [1], "last") as got:
        runner.last_logits(ids)
    assert runner.last_reused > 0
    kept, runner.clean = runner.clean, None
    with capture(bridge, "resid.post", [1], "last") as want:
        runner.last_logits(ids)
    runner.clean = kept
    order = [r for b in runner.batches(ids) for r in b.rows]
    torch.testing.assert_close(torch.cat(got[1]), torch.cat(want[1]), atol=1e-5, rtol=1e-5)
    assert len(order) == len(ids)


def test_an_unknown_footprint_or_a_hand_attached_hook_computes_every_position(tiny_llama):
    bridge, _ = tiny_llama
    prep = _prepared(bridge, "chat_short")
    runner = prep.readout.runner
    name = hook_name(bridge, "resid.post", 0)
    with attached(bridge, [(name, lambda x, hook=None: x)]):  # no footprint given
        prep.predict()
    assert runner.last_reused == 0
    point = bridge.hook_dict[name]
    handle = point.add_hook(lambda x, hook=None: x)  # attached by hand, outside the toolkit
    try:
        prep.predict(ScaleSite("attn.out", (0,), 0.0, positions="last"))
    finally:
        handle.hook.remove()
        point.fwd_hooks.remove(handle)
    assert runner.last_reused == 0
    prep.predict(ScaleSite("attn.out", (0,), 0.0, positions="last"))
    assert runner.last_reused > 0


def test_the_store_keeps_to_its_budget(tiny_llama):
    bridge, _ = tiny_llama
    prep = _prepared(bridge, "chat_short")
    one = max(sum(k.numel() * 8 for k, _ in kv) for _, kv in prep.readout.runner.clean.rows.values())
    runner = prep.readout.runner
    runner.clean = CleanKV(budget=one)
    runner.last_logits(prep.token_ids)  # a clean pass: stores what fits
    assert 1 <= len(runner.clean.rows) < len(TEXTS) and runner.clean.used <= one
    prep.predict(ScaleSite("attn.out", (0,), 0.0, positions="last"))
    assert runner.last_reused == 0  # not every prompt is stored: the full pass


def test_generation_prefills_only_the_changed_tail_inside_clean_kv(tiny_any):
    from emocircuits.core.generation import generate
    from emocircuits.core.runner import clean_kv

    bridge, spec = tiny_any
    prompts = [[{"role": "user", "content": t}] for t in TEXTS[:4]]
    kw = {"max_new_tokens": 6, "system": "Answer in one short sentence."}
    from emocircuits.core.sites import weight

    steer = {spec.n_layers - 1: weight(bridge, "unembed")[:, 7].detach().clone()}  # pushes token 7
    ivs = [AddDirection(steer, "resid.post", scale=50.0, positions="last", unit=True),
           AddDirection(steer, "resid.post", scale=50.0, positions="generated", unit=True)]
    want = []
    for iv in ivs:
        with iv.apply(bridge):
            want.append(generate(bridge, prompts, **kw).token_ids)
    plain = generate(bridge, prompts, **kw).token_ids
    with clean_kv(bridge) as store:
        assert generate(bridge, prompts, **kw).token_ids == plain  # fills the store
        assert len(store.rows) == len(prompts) and store.served == 0
        for iv, expected in zip(ivs, want, strict=True):
            before = store.served
            with iv.apply(bridge):
                got = generate(bridge, prompts, **kw).token_ids
            assert store.served > before
            assert got == expected
        assert want[0] != plain  # the steering acts
        before = store.served
        with ZeroNeurons({0: (1, 2)}).apply(bridge):  # every position: the full prefill
            generate(bridge, prompts, **kw)
        assert store.served == before
    assert "_emocircuits_clean_kv" not in bridge.__dict__


def test_only_a_pass_that_reads_the_last_token_alone_reruns_a_tail(tiny_llama):
    """Perplexity and continuation scoring read many positions: their passes compute every one, and a tail
    pass refuses to hand out a position it did not compute."""
    from emocircuits.base.errors import EmocircuitsError

    bridge, _ = tiny_llama
    prep = _prepared(bridge, "chat_short")
    runner = prep.readout.runner
    batches = runner.batches(prep.token_ids)
    steps = list(runner.run(batches))
    assert runner.last_reused == 0 and all(isinstance(s.offset, int) for s in steps)
    tail = list(runner.run(batches, last_only=True))
    assert runner.last_reused > 0
    torch.testing.assert_close(tail[0].last(), steps[0].last(), atol=1e-5, rtol=1e-5)
    with pytest.raises(EmocircuitsError, match="reran only"):
        tail[0].at(torch.zeros(len(tail[0].batch), 1, dtype=torch.long))


@pytest.mark.parametrize("template", ["chat_short", "raw"])
def test_tail_reruns_batched_equal_one_prompt_at_a_time(tiny_any, template):
    """The same intervention at the last token or explicit positions gives the same scores whether the
    reused-tail pass holds every prompt in a batch or one prompt alone."""
    bridge, spec = tiny_any
    prep = _prepared(bridge, template)
    runner = prep.readout.runner
    for iv in (ScaleSite("attn.out", (0, 1), 0.0, positions="last"),
               Noise("mlp.out", (1,), positions="last", seed=5),
               ScaleSite("resid.post", (1,), 0.5, positions=(-2, -1))):
        batched = prep.predict(iv)
        assert runner.last_reused > 0
        for i in range(len(TEXTS)):
            alone = prep.predict(iv, rows=[i])  # a very short prompt alone may not pass the half-saved rule
            torch.testing.assert_close(alone[0], batched[i], atol=1e-5, rtol=1e-5)
