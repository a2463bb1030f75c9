"""Emotion-neuron statistics, selection and masking against hand-computed answers and direct references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.stats import bootstrap_ci
from emocircuits.core.readout import LabelReadout
from emocircuits.core.units import NeuronSet
from emocircuits.data import Example
from emocircuits.methods.neurons.find import (
    Condition,
    NeuronStats,
    Selection,
    collect,
    condition_set,
    entropy,
    normalise,
    random_control,
    select_neurons,
)
from emocircuits.methods.neurons.masking import MaskingEngine, mask

LABELS = ("a", "b", "c")


def _hand_p() -> torch.Tensor:
    """P for 1 layer x 5 neurons x 3 emotions with known P̂ and H."""
    return torch.tensor([[
        [0.5, 0.0, 0.0],   # n0: fires only on a -> H = 0
        [0.2, 0.2, 0.2],   # n1: uniform -> H = log 3
        [0.0, 0.0, 0.0],   # n2: never fires -> H = +inf (must not look selective)
        [0.3, 0.1, 0.0],   # n3: P̂ = (.75, .25, 0) -> H = -(.75 ln .75 + .25 ln .25)
        [0.0, 0.0, 0.4],   # n4: only c -> H = 0
    ]], dtype=torch.float64)


def test_normalise_and_entropy_hand_computed():
    p = _hand_p()
    q = normalise(p)
    torch.testing.assert_close(q[0, 3], torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    assert torch.all(q[0, 2] == 0)
    h = entropy(p)[0]
    assert h[0] == 0 and h[4] == 0
    assert math.isclose(h[1].item(), math.log(3))
    assert math.isinf(h[2].item())
    assert math.isclose(h[3].item(), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


def test_select_argmax_picks_lowest_entropy_and_breaks_ties_by_position():
    sel = select_neurons(_hand_p(), LABELS, top_rate=0.4, assign="argmax")  # k = round(0.4 * 5) = 2
    # n0 and n4 both have H = 0: both kept, never-firing n2 is not
    assert sel.sets["a"].pairs() == [[0, 0]]
    assert sel.sets["c"].pairs() == [[0, 4]]
    assert len(sel.sets["b"]) == 0
    sel3 = select_neurons(_hand_p(), LABELS, top_rate=0.6, assign="argmax")  # k = 3: adds n3 (H≈0.56)
    assert sel3.sets["a"].pairs() == [[0, 0], [0, 3]]
    assert sel3.ranked["a"][:2] == [(0, 0), (0, 3)]


def test_select_lape_filters_and_multi_assigns():
    p = torch.tensor([[[0.9, 0.8, 0.0], [0.01, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 0.95]]], dtype=torch.float64)
    # all P values sorted: the 75th percentile bar lets only the large values through
    sel = select_neurons(p, LABELS, top_rate=1.0, assign="lape", filter_rate=0.75, activation_bar=0.75)
    q = torch.quantile(p.reshape(-1).float(), 0.75).item()
    assert 0.5 < q < 0.9
    # n1 (tiny P) is filtered even though its entropy is 0; n0 belongs to a and b (multi-assignment)
    assert sel.sets["a"].pairs() == [[0, 0]]
    assert sel.sets["b"].pairs() == [[0, 0]]
    assert sel.sets["c"].pairs() == [[0, 3]]


def test_selection_json_round_trip_and_overlap():
    sel = select_neurons(_hand_p(), LABELS, top_rate=0.6)
    again = Selection.from_json(sel.to_json())
    assert again.sets == sel.sets and again.ranked == sel.ranked
    ov = sel.overlap().set_index(["a", "b"])
    assert ov.loc[("a", "a"), "jaccard"] == 1.0
    assert ov.loc[("a", "c"), "n_shared"] == 0
    table = sel.layer_table()
    assert table[table.emotion == "a"]["count"].sum() == 2


def test_random_control_keeps_per_layer_counts_and_is_seeded():
    s = NeuronSet({0: (1, 2, 3), 4: (7,)})
    c1, c2 = random_control(s, 20, seed=1), random_control(s, 20, seed=1)
    assert c1 == c2 and c1.counts(5) == s.counts(5)
    assert not set(c1.layers[0]) & set(s.layers[0])
    assert random_control(s, 20, seed=2) != c1


def test_condition_set_truncate_and_layers():
    sel = select_neurons(torch.rand(6, 10, 3, generator=torch.Generator().manual_seed(0)).double(), LABELS,
                         top_rate=0.1)
    full = condition_set(sel, Condition("a"))
    assert full == sel.sets["a"]
    half = condition_set(sel, Condition("a", ratio=0.05))
    assert len(half) == round(len(full) * 0.5)
    assert half.pairs() == [list(p) for p in sorted(sel.ranked["a"][: len(half)])]
    top = condition_set(sel, Condition("a", layers="top"))
    assert set(top.layers) <= {4, 5}
    with pytest.raises(EmocircuitsError, match="ratio mode"):
        condition_set(sel, Condition("a", ratio=0.05, ratio_mode="bogus"))


def test_bootstrap_ci_brackets_effect_and_is_seeded():
    normal = np.ones(200)
    masked = np.r_[np.zeros(100), np.ones(100)]
    lo, hi = bootstrap_ci(normal, masked, None, seed=0)
    assert lo < -0.5 < hi and bootstrap_ci(normal, masked, None, seed=0) == (lo, hi)


def _texts():
    return [Example(str(i), t, lab) for i, (t, lab) in enumerate([
        ("I am furious about the broken promise", "a"), ("That smell made me gag", "b"),
        ("What a lovely surprise party", "c"), ("He lied to my face again", "a"),
        ("Rotten food everywhere, so gross", "b"), ("We won the lottery today", "c"),
        ("They cancelled it", "a")])]


@pytest.mark.parametrize("tokens", ["all", "last"])
@pytest.mark.parametrize("reading", ["gated", "silu_only", "pre"])
def test_streamed_counts_equal_full_cache(tiny_any, tokens, reading):
    bridge, spec = tiny_any
    data = _texts()
    stats = collect(bridge, data, reading=reading, tokens=tokens, template="raw", labels=LABELS, max_tokens=24,
                    progress=False)
    ro = LabelReadout(bridge, LABELS, "raw")
    hook = {"gated": "mlp.hook_post", "silu_only": "mlp.hook_pre", "pre": "mlp.hook_pre"}[reading]
    if reading != "pre" and not spec.gated_mlp:
        hook = "mlp.hook_post"
    ref = torch.zeros(spec.n_layers, spec.d_mlp, len(LABELS), dtype=torch.int64)
    tot = torch.zeros(len(LABELS), dtype=torch.int64)
    for ex, ids in zip(data, ro.encode(data), strict=True):  # one text at a time, no padding at all
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(torch.tensor([ids]))
        e = LABELS.index(ex.label)
        for layer in range(spec.n_layers):
            v = cache[f"blocks.{layer}.{hook}"][0]  # [pos, d_mlp]
            v = v if tokens == "all" else v[-1:]
            ref[layer, :, e] += (v > 0).sum(0)
        tot[e] += len(ids) if tokens == "all" else 1
    assert torch.equal(stats.totals, tot)
    assert torch.equal(stats.counts, ref)


def test_engine_masks_exactly_chosen_neurons_and_mask_tables(tiny_llama):
    bridge, spec = tiny_llama
    data = _texts()
    engine = MaskingEngine(bridge, data, labels=LABELS, template="raw", progress=False)
    empty = engine.predict(NeuronSet())
    assert np.array_equal(empty, engine.clean)
    stats = NeuronStats(torch.randint(0, 5, (spec.n_layers, spec.d_mlp, 3)), torch.tensor([5, 5, 5]), LABELS)
    sel = stats.select(top_rate=0.05)
    res = mask(bridge, data, sel, controls=2, seed=3, n_boot=50, template="raw", engine=engine)
    eff = res.effects
    assert set(eff.masked_emotion) == set(LABELS)
    assert set(eff.true_label) == {"all", *LABELS}
    row = eff[(eff.masked_emotion == "a") & (eff.true_label == "all")].iloc[0]
    assert row.acc_normal == (engine.clean == engine.y).mean()
    assert row.ci_low <= row.ci_high
    again = mask(bridge, data, sel, controls=2, seed=3, n_boot=50, template="raw", engine=engine)
    assert again.effects.equals(eff)
    with pytest.raises(EmocircuitsError, match="neurons 0"):
        engine.predict(NeuronSet({0: (spec.d_mlp,)}))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_checkpointed_masked_passes_equal_full_passes(arch):
    """Starting a masked pass from the clean residual at a checkpoint ≤ the mask's lowest layer gives
    the same scores as running every layer (with and without the shared-prefix cache)."""
    from emocircuits.core.models import tiny_model

    bridge, spec = tiny_model(arch, n_layers=4)
    data = _texts()
    for template in ("raw", "chat_short"):
        fast = MaskingEngine(bridge, data, labels=LABELS, template=template, checkpoints=3, progress=False)
        slow = MaskingEngine(bridge, data, labels=LABELS, template=template, checkpoints=0, progress=False)
        assert fast.checkpoint_layers == [1, 2, 3] and slow.checkpoint_layers == []
        torch.testing.assert_close(fast.clean_scores, slow.clean_scores)
        for neurons in (NeuronSet({3: (1, 5)}), NeuronSet({2: (0,), 3: (7,)}), NeuronSet({0: (3,), 3: (4,)})):
            assert fast.start_layer(neurons) == min(neurons.layers)
            torch.testing.assert_close(fast.scores(neurons), slow.scores(neurons), atol=1e-4, rtol=1e-4)
            assert not torch.allclose(fast.scores(neurons), fast.clean_scores)  # the mask does something


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_masked_passes_learn_their_exact_start_and_skip_the_blocks_below(arch):
    """A pass that starts below its mask's lowest layer keeps the clean residual there; the next mask with
    that lowest layer starts there, the blocks below it never run, and the scores equal a full pass."""
    from emocircuits.core.interventions import current_batch, observe
    from emocircuits.core.models import tiny_model

    bridge, spec = tiny_model(arch, n_layers=4)
    data = _texts()
    fast = MaskingEngine(bridge, data, labels=LABELS, template="chat_short", checkpoints=1, progress=False)
    slow = MaskingEngine(bridge, data, labels=LABELS, template="chat_short", checkpoints=0, progress=False)
    assert fast.checkpoint_layers == [2]
    first, second = NeuronSet({3: (1, 5)}), NeuronSet({3: (2, 6, 9)})
    assert fast.start_layer(first) == 2
    torch.testing.assert_close(fast.scores(first), slow.scores(first), atol=1e-5, rtol=1e-5)
    assert fast.start_layer(second) == 3  # learned from the first pass
    ran: list[int] = []
    with observe(bridge, "neuron.gated", [0, 1, 2, 3], lambda layer, _v: ran.append(layer) if not current_batch().shared
                 else None):
        got = fast.scores(second)
    assert ran == [3] * len(fast.batches)  # the MLPs of blocks 0-2 never run
    torch.testing.assert_close(got, slow.scores(second), atol=1e-5, rtol=1e-5)
    fast.checkpoint_memory = 0  # no room: nothing more is kept, the results stay the same
    third = NeuronSet({1: (4,)})
    torch.testing.assert_close(fast.scores(third), slow.scores(third), atol=1e-5, rtol=1e-5)
    assert fast.start_layer(third) == 0


# ---------------------------------------------------------------------------- span, ties, controls (issue #14)


def test_text_spans_hand_cases(tiny_llama):
    from emocircuits.methods.neurons.find import text_spans

    bridge, _ = tiny_llama
    ex = [Example("0", "I am furious about it", "a"), Example("1", "I am so glad", "b")]
    dec = bridge.tokenizer.decode
    # raw template: the whole prompt is the text; a prepended BOS is not the text's
    for bos, first in ((False, 0), (True, 1)):
        ro = LabelReadout(bridge, LABELS, "raw", prepend_bos=bos)
        ids = ro.encode(ex)
        assert text_spans(ro, ex, ids).tolist() == [[first, len(ids[0])], [first, len(ids[1])]]
    # a user template: the space before the text is merged into its first token and counts as the text's
    ro = LabelReadout(bridge, LABELS, "Say: {text} now. Emotion:")
    ids = ro.encode(ex)
    (s, e), _ = text_spans(ro, ex, ids).tolist()
    assert dec(ids[0][s:e]) == " I am furious about it" and dec(ids[0][:s]) == "Say:"
    assert dec(ids[0][e:]) == " now. Emotion:"
    # chat template: the text sits between the template's own tokens
    ro = LabelReadout(bridge, LABELS, "chat_short")
    ids = ro.encode(ex)
    spans = text_spans(ro, ex, ids).tolist()
    for (s, e), x, t in zip(spans, ex, ids, strict=True):
        assert dec(t[s:e]) == x.text and dec(t[s - 1:s]) == "\n" and dec(t[e:e + 1]) == "\n"
    assert spans[0][0] == spans[1][0] > 8  # the same template head before both texts


def _prefix_texts():
    """Texts whose first words are shared, so the shared prompt prefix reaches into the text spans."""
    return [Example(str(i), t, lab) for i, (t, lab) in enumerate([
        ("I am furious about the broken promise", "a"), ("I am gagging, that smell", "b"),
        ("I am thrilled, a lovely surprise party", "c"), ("I am sure he lied to my face again", "a"),
        ("I am done: rotten food everywhere, so gross", "b"), ("I am lucky, we won the lottery today", "c")])]


@pytest.mark.parametrize("template", ["raw", "chat_short"])
def test_text_span_counts_equal_full_cache_on_the_span(tiny_llama, template):
    """tokens='text' counts exactly the text's own tokens, also when the shared prefix covers part of them."""
    from emocircuits.core.runner import common_prefix
    from emocircuits.methods.neurons.find import text_spans

    bridge, spec = tiny_llama
    data = _prefix_texts()
    ro = LabelReadout(bridge, LABELS, template)
    ids = ro.encode(data)
    spans = text_spans(ro, data, ids)
    if template == "chat_short":
        assert common_prefix(ids) > int(spans[:, 0].min())  # "I am" is inside the shared prefix
    stats = collect(bridge, data, tokens="text", template=template, labels=LABELS, max_tokens=64, progress=False)
    ref = torch.zeros(spec.n_layers, spec.d_mlp, len(LABELS), dtype=torch.int64)
    tot = torch.zeros(len(LABELS), dtype=torch.int64)
    for ex, t, (s, e) in zip(data, ids, spans.tolist(), strict=True):
        with torch.inference_mode():
            _, cache = bridge.run_with_cache(torch.tensor([t]))
        j = LABELS.index(ex.label)
        for layer in range(spec.n_layers):
            ref[layer, :, j] += (cache[f"blocks.{layer}.mlp.hook_post"][0, s:e] > 0).sum(0)
        tot[j] += e - s
    assert torch.equal(stats.totals, tot) and torch.equal(stats.counts, ref)
    allc = collect(bridge, data, tokens="all", template=template, labels=LABELS, max_tokens=64, progress=False)
    assert (allc.counts >= stats.counts).all() and (allc.totals > stats.totals).all() == (template != "raw")


def test_ties_at_the_cut_are_counted():
    from emocircuits.methods.neurons.find import tie_summary

    one = select_neurons(_hand_p(), LABELS, top_rate=0.2)  # k = 1: n0 and n4 both have H = 0, n0 kept by position
    assert one.config["n_tied_at_cut"] == 2 and one.config["n_tied_kept"] == 1 and one.config["cut_entropy"] == 0
    assert one.sets["a"].pairs() == [[0, 0]] and len(one.sets["c"]) == 0
    assert tie_summary(one).startswith("2 candidates tie at the cut") and "1 left out" in tie_summary(one)
    two = select_neurons(_hand_p(), LABELS, top_rate=0.4)  # k = 2: both kept
    assert (two.config["n_tied_at_cut"], two.config["n_tied_kept"]) == (2, 2)
    assert tie_summary(two).startswith("no tie at the cut")
    assert two.config["n_never_active"] == 1  # n2 (H = +inf) is never a candidate
    everything = select_neurons(_hand_p(), LABELS, top_rate=1.0)
    assert everything.config["n_selected"] == 4


def test_bootstrap_ci_resamples_control_sets():
    """Same mean control accuracy (0.8): identical controls vs controls that disagree (1.0 and 0.6)."""
    normal = np.ones(100)
    masked = np.r_[np.zeros(50), np.ones(50)]
    c8 = np.r_[np.zeros(20), np.ones(80)]
    agree = bootstrap_ci(normal, masked, np.stack([c8, c8]), seed=1)
    # identical control sets: resampling them changes nothing, the CI is that of one control
    assert agree == bootstrap_ci(normal, masked, c8[None], seed=1)
    disagree = bootstrap_ci(normal, masked, np.stack([np.ones(100), np.r_[np.zeros(40), np.ones(60)]]), seed=1)
    assert disagree[1] - disagree[0] > (agree[1] - agree[0]) + 0.05
    assert disagree[0] < -0.3 < disagree[1] and agree[0] < -0.3 < agree[1]


def test_rank_p_hand_computed():
    from emocircuits.base.stats import rank_p

    assert rank_p(0.5, np.array([0.4, 0.5, 0.6, 0.7])) == (1 + 2) / 5  # ties count against the mask
    assert rank_p(0.1, np.full(5, 0.5)) == 1 / 6  # the smallest p K = 5 controls can give
    assert rank_p(0.9, np.full(5, 0.5)) == 1.0
    assert math.isnan(rank_p(0.5, np.array([])))


def test_mask_effects_have_rank_p_k_controls_and_floor(tiny_llama):
    from emocircuits.base.constants import DEFAULT_CONTROLS, FLOOR_ACC

    bridge, spec = tiny_llama
    data = _texts()
    engine = MaskingEngine(bridge, data, labels=LABELS, template="raw", progress=False)
    stats = NeuronStats(torch.randint(0, 5, (spec.n_layers, spec.d_mlp, 3), generator=torch.Generator().manual_seed(1)),
                        torch.tensor([5, 5, 5]), LABELS)
    sel = stats.select(top_rate=0.05)
    eff = mask(bridge, data, sel, emotions=["a"], controls=3, seed=0, n_boot=50, engine=engine).effects
    assert (eff.k_controls == 3).all()
    assert set(eff.rank_p.round(6)) <= {round(j / 4, 6) for j in range(1, 5)}
    assert (eff.floor == (eff.acc_normal < FLOOR_ACC)).all()
    none = mask(bridge, data, sel, emotions=["a"], controls=0, n_boot=50, engine=engine).effects
    assert none.rank_p.isna().all() and (none.k_controls == 0).all()
    import inspect

    from emocircuits.methods.neurons.masking import sweep

    assert DEFAULT_CONTROLS == 5
    for fn in (mask, sweep):
        assert inspect.signature(fn).parameters["controls"].default == DEFAULT_CONTROLS
