"""Batched results equal one-prompt-at-a-time results, for every intervention class × positions ×
entry point (classify, neuron statistics, masking engine, generation), with and without the shared
prompt prefix, on a gated (Llama) and a plain (GPT-2) tiny model; and for classify on the embedded model.

Before the forward runner, a "last"-position write landed on pad tokens in batched readouts (and the
batch-of-one prefix pass received position writes): these tests pin that it never can again.
"""

from __future__ import annotations

import functools

import pytest
import torch

from emocircuits.core.generation import generate
from emocircuits.core.interventions import (
    AddDirection,
    AddPerExample,
    AddToHeads,
    AddToNeurons,
    Noise,
    PatchFrom,
    ScaleHeads,
    ScaleNeurons,
    ScaleSite,
    ZeroHeads,
    ZeroNeurons,
)
from emocircuits.core.models import tiny_model
from emocircuits.core.readout import LabelReadout, classify
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.data import Example
from emocircuits.methods import neurons

TEXTS = [
    "They cancelled the trip again without asking anyone, and I only found out from a stranger at the station.",
    "Rotten milk.",
    "A door slammed upstairs although I live alone.",
]
LABELS = ("anger", "disgust", "fear")
POSITIONS = ["all", "last", (0,), (-1,)]
ATOL = 1e-4


@functools.cache
def _model(arch: str):
    return tiny_model(arch, seed=0)


def _vec(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _factories(spec):
    """name -> make(positions, example_rows) building the intervention for the given examples."""
    d, p_max = spec.d_model, 400

    def patch_source(rows, positions):
        full = torch.randn(len(TEXTS), p_max, d, generator=torch.Generator().manual_seed(3))
        return full[list(rows), -1] if positions == "last" else full[list(rows)]

    return {
        "ScaleNeurons": lambda pos, rows: ScaleNeurons(NeuronSet({0: (1, 5), 2: (7,)}), factor=3.0, positions=pos),
        "ZeroNeurons": lambda pos, rows: ZeroNeurons(NeuronSet({1: (0, 2, 4, 6)}), positions=pos),
        "ScaleHeads": lambda pos, rows: ScaleHeads(HeadSet(((0, 1), (2, 3))), factor=2.5, positions=pos),
        "ZeroHeads": lambda pos, rows: ZeroHeads(HeadSet(((1, 0),)), positions=pos),
        "AddDirection": lambda pos, rows: AddDirection(_vec(d, 1), layers=(1,), scale=4.0, positions=pos),
        "AddDirectionRMS": lambda pos, rows: AddDirection(_vec(d, 2), site="resid.mid", layers=(0, 2), scale=2.0,
                                                          positions=pos, rms_scaled=True, unit=True),
        "ScaleSite": lambda pos, rows: ScaleSite("mlp.out", layers=(1,), factor=0.0, positions=pos),
        "Noise": lambda pos, rows: Noise("attn.out", layers=(1,), positions=pos, seed=5),
        "PatchFrom": lambda pos, rows: PatchFrom("resid.post", {1: patch_source(rows, pos)}, positions=pos),
        "AddToNeurons": lambda pos, rows: AddToNeurons(NeuronSet({1: (2, 8)}), {1: _vec(2, 4)}, scale=3.0, positions=pos),
        "AddPerExample": lambda pos, rows: AddPerExample(
            "attn.out", {1: torch.randn(len(TEXTS), d, generator=torch.Generator().manual_seed(7))[list(rows)]},
            positions=pos),
        "AddToHeads": lambda pos, rows: AddToHeads(HeadSet(((2, 1),)), {2: _vec(spec.d_head, 6)[None, :]}, scale=2.0,
                                                   positions=pos),
    }


NAMES = list(_factories(type("S", (), {"d_model": 4, "d_head": 4})()).keys())


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_classify_and_generation_batched_equal_single(arch, share_prefix, name):
    model, spec = _model(arch)
    make = _factories(spec)[name]
    for pos in POSITIONS:
        with make(pos, range(len(TEXTS))).apply(model):
            batched = classify(model, TEXTS, labels=LABELS, template="chat_short", calibrate=False,
                               share_prefix=share_prefix, progress=False).predictions
            gen = generate(model, TEXTS, system="Reply briefly.", max_new_tokens=4, share_prefix=share_prefix)
        scores = batched[[f"score_{lab}" for lab in LABELS]].to_numpy()
        for i, text in enumerate(TEXTS):
            with make(pos, [i]).apply(model):
                one = classify(model, [text], labels=LABELS, template="chat_short", calibrate=False,
                               share_prefix=share_prefix, progress=False).predictions
                one_gen = generate(model, [text], system="Reply briefly.", max_new_tokens=4)
            got = torch.tensor(scores[i])
            want = torch.tensor(one[[f"score_{lab}" for lab in LABELS]].to_numpy()[0])
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0, msg=lambda m, pos=pos, i=i: f"{pos} row {i}: {m}")
            assert gen.token_ids[i] == one_gen.token_ids[0], (pos, i)


def _examples():
    return [Example(id=str(i), text=t, label=LABELS[i]) for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("name", NAMES)
def test_neuron_stats_and_masking_batched_equal_single(arch, share_prefix, name):
    model, spec = _model(arch)
    make = _factories(spec)[name]
    exs = _examples()
    mask = NeuronSet({2: (0, 3, 9)})
    for pos in POSITIONS:
        with make(pos, range(len(exs))).apply(model):
            stats = neurons.collect(model, exs, labels=LABELS, share_prefix=share_prefix, progress=False)
            engine = neurons.MaskingEngine(model, exs, labels=LABELS, share_prefix=share_prefix, progress=False)
            masked = engine.scores(mask)
        counts = torch.zeros_like(stats.counts)
        for i, ex in enumerate(exs):
            with make(pos, [i]).apply(model):
                counts += neurons.collect(model, [ex], labels=LABELS, share_prefix=share_prefix, progress=False).counts
                one = neurons.MaskingEngine(model, [ex], labels=LABELS, progress=False)
                torch.testing.assert_close(masked[i], one.scores(mask)[0], atol=ATOL, rtol=0)
                torch.testing.assert_close(engine.clean_scores[i], one.clean_scores[0], atol=ATOL, rtol=0)
        diff = (counts - stats.counts).abs()
        # counts are integers of `value > 0`: allow a value within float rounding of 0 to flip
        assert int(diff.sum()) <= max(2, int(1e-4 * stats.counts.sum())), (pos, int(diff.sum()))


def test_shared_prefix_falls_back_for_row_dependent_writes(tiny_llama):
    model, spec = tiny_llama
    ro = LabelReadout(model, LABELS, "chat_short")
    ids = ro.encode(TEXTS)
    assert ro.runner.shared_prefix(ro.batches(ids)) >= 8
    with Noise("attn.out", layers=(0,), positions=(0,), seed=1).apply(model):
        ro.scores_of(ids)
    assert ro.runner.last_offset == 0  # noise differs per row on the prefix: that pass ran whole
    with ZeroNeurons(NeuronSet({0: (1,)}), positions=(0,)).apply(model):
        ro.scores_of(ids)
    assert ro.runner.last_offset > 0  # the same write for every row: the prefix stays shared


def test_rows_select_examples_of_the_pass(tiny_llama):
    model, _ = tiny_llama
    clean = classify(model, TEXTS, labels=LABELS, calibrate=False, progress=False).predictions
    with ZeroNeurons(NeuronSet({1: tuple(range(40))}), rows=(2,)).apply(model):
        hit = classify(model, TEXTS, labels=LABELS, calibrate=False, progress=False).predictions
    cols = [f"score_{lab}" for lab in LABELS]
    changed = (clean[cols] - hit[cols]).abs().max(axis=1) > 1e-6
    assert changed.tolist() == [False, False, True]


@pytest.mark.slow
def test_classify_batched_equals_single_on_embedded_model(smol):
    model, spec = smol
    v = _vec(spec.d_model, 0)
    for iv in [AddDirection(v, layers=(10,), scale=8.0, positions="last"),
               ZeroNeurons(NeuronSet({5: tuple(range(100))}), positions=(-1,)),
               Noise("attn.out", layers=(12,), positions="last", seed=0)]:
        with iv.apply(model):  # the default readout: a two-template ensemble, each with a fitted prior
            kw = {"labels": LABELS, "calibrate": "prior", "prior_examples": _examples(), "progress": False}
            batched = classify(model, TEXTS, **kw).predictions
            singles = [classify(model, [t], **kw).predictions for t in TEXTS]
        cols = [f"score_{lab}" for lab in LABELS]
        for i, one in enumerate(singles):
            torch.testing.assert_close(torch.tensor(batched[cols].to_numpy()[i]), torch.tensor(one[cols].to_numpy()[0]),
                                       atol=ATOL, rtol=0)
