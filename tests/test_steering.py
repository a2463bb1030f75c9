"""Emotion steering compared (Wang et al. 2025, Q3): methods, random controls, quality metrics, accuracy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Circuit, Direction
from emocircuits.core.generation import encode_prompts, generate
from emocircuits.core.interventions import AddDirection, AddToHeads, AddToNeurons
from emocircuits.core.runner import Runner
from emocircuits.core.units import HeadSet, NeuronSet
from emocircuits.data import load_data
from emocircuits.jobs.circuit_build import run_assemble, run_influence
from emocircuits.jobs.circuits import run_components, run_directions, run_elicit
from emocircuits.jobs.steer import run_steer
from emocircuits.methods import circuits as B
from emocircuits.methods import circuits as C
from emocircuits.methods import fluency as F
from emocircuits.methods.circuits import steer as S
from emocircuits.runs.circuit_files import read_circuits

EMOS = ["anger", "fear"]


@pytest.fixture(scope="module")
def items():
    return C.elicitation_items(load_data("builtin:sev"), limit=1, emotions=EMOS)  # 1 skeleton x 3 valences


def _circuit(spec, emotion, seed=0):
    g = torch.Generator().manual_seed(seed)
    neurons = NeuronSet({0: (1, 5, 7), 2: (3, 4)})
    heads = HeadSet(((1, 0), (1, 3), (2, 2)))
    return Circuit(emotion, neurons, heads,
                   {0: torch.randn(3, generator=g) * 5, 2: torch.randn(2, generator=g) * 5},
                   {1: torch.randn(2, spec.d_head, generator=g) * 5, 2: torch.randn(1, spec.d_head, generator=g) * 5})


def _direction(spec, emotion, seed=0):
    g = torch.Generator().manual_seed(seed + 10)
    return Direction({"resid.post": {layer: torch.randn(spec.d_model, generator=g) for layer in range(spec.n_layers)}},
                     emotion)


# ----------------------------------------------------------------------------- pieces


def test_residual_band_scales_the_paper():
    assert S.residual_band(28) == list(range(11, 21))
    assert S.residual_band(30) == list(range(12, 22))
    assert S.residual_band(3) == [1, 2]
    assert S.residual_band(1) == [0]


def test_distinct_n():
    assert F.distinct_n(["a b a b", "A b"]) == pytest.approx(2 / 4)  # (a,b) x3, (b,a) x1
    assert F.distinct_n(["one two three"]) == 1.0
    assert math.isnan(F.distinct_n(["", "word"]))


def test_random_circuit_counts_norms_and_seed(tiny_llama):
    _, spec = tiny_llama
    c = _circuit(spec, "fear")
    r1, r2, r1b = S.random_circuit(c, spec, 1), S.random_circuit(c, spec, 2), S.random_circuit(c, spec, 1)
    assert r1 == r1b and r1 != r2
    assert r1.neurons.counts(3) == c.neurons.counts(3)
    assert [len(v) for v in r1.heads.by_layer().values()] == [len(v) for v in c.heads.by_layer().values()]
    for layer, idx in r1.neurons.layers.items():
        assert not set(idx) & set(c.neurons.layers[layer])
        assert float(r1.neuron_shift[layer].norm()) == pytest.approx(float(c.neuron_shift[layer].norm()), rel=1e-5)
    for layer in r1.head_shift:
        torch.testing.assert_close(r1.head_shift[layer].norm(dim=-1), c.head_shift[layer].norm(dim=-1))
    assert r1.steerable


def test_method_interventions(tiny_llama):
    _, spec = tiny_llama
    c, d = _circuit(spec, "fear"), _direction(spec, "fear")
    iv = S.method_intervention("circuit", "fear", circuit=c, scale=2.0)
    neu, hd = iv.items
    assert isinstance(neu, AddToNeurons) and neu.positions == "last" and neu.scale == 2.0
    assert isinstance(hd, AddToHeads) and hd.positions == "all"
    res = S.method_intervention("residual", "fear", direction=d, n_layers=spec.n_layers)
    assert isinstance(res, AddDirection) and res.rms_scaled and res.unit and res.positions == "last"
    assert res.layers == (1, 2) and res.scale == 8.0
    assert S.method_intervention("prompt", "fear") is None and S.method_intervention("none", "fear") is None
    with pytest.raises(EmocircuitsError):
        S.method_intervention("circuit", "fear")
    with pytest.raises(EmocircuitsError):
        S.method_intervention("telepathy", "fear")


def test_reply_perplexity_by_hand(tiny_llama):
    model, _ = tiny_llama
    prompts = [[1, 20, 30, 40], [1, 50], [1, 20, 30, 40, 41, 42, 43, 44, 45]]
    replies = [[60, 70], [], [80, 81, 82]]
    ppl = F.reply_perplexity(model, prompts, replies)  # rows of different lengths share a batch

    def by_hand(p, r):
        with torch.inference_mode():
            lp = torch.log_softmax(model(torch.tensor([p + r])).float()[0], -1)
        return math.exp(-sum(float(lp[len(p) - 1 + i, t]) for i, t in enumerate(r)) / len(r))

    assert ppl[0] == pytest.approx(by_hand(prompts[0], replies[0]), rel=1e-4)
    assert ppl[2] == pytest.approx(by_hand(prompts[2], replies[2]), rel=1e-4)
    assert ppl[0] != pytest.approx(ppl[2], rel=1e-3)
    assert math.isnan(ppl[1])


def test_accuracy_and_quality_tables_by_hand():
    rep = pd.DataFrame({"method": ["circuit"] * 4, "variant": -1, "emotion": ["anger", "anger", "fear", "fear"],
                        "skeleton": "s", "valence": ["positive", "negative", "positive", "negative"], "user": "u",
                        "reply": ["mad mad", "", "scared now", "very scared now"], "finish": ["eos", "length", "eos",
                                                                                              "length"],
                        "empty": [False, True, False, False], "cut_off": [False, True, False, True],
                        "ppl": [2.0, np.nan, 4.0, 8.0], "correct_j": [True, False, True, True]})
    acc = S.steer_accuracy(rep, ["j"], n_boot=200).set_index(["emotion", "valence"])
    assert acc.loc[("anger", "all"), "accuracy"] == 0.5 and acc.loc[("all", "all"), "accuracy"] == 0.75
    assert acc.loc[("all", "all"), "n"] == 4 and acc.loc[("fear", "positive"), "n"] == 1
    assert acc.loc[("all", "all"), "ci_low"] <= 0.75 <= acc.loc[("all", "all"), "ci_high"]
    q = S.steer_quality(rep).set_index("emotion")
    assert q.loc["all", "ppl_mean"] == pytest.approx(14 / 3) and q.loc["all", "ppl_median"] == 4.0
    assert q.loc["all", "empty"] == 0.25 and q.loc["all", "cut_off"] == 0.5
    assert q.loc["fear", "distinct2"] == 1.0  # each reply's own bigrams are all distinct
    assert q.loc["anger", "distinct2"] == 1.0  # "mad mad": one bigram; "" has none and is left out
    assert S.steer_quality(rep.assign(reply=["a b a b", "", "x y", "p q"])).set_index("emotion").loc[
        "all", "distinct2"] == pytest.approx((2 / 3 + 1 + 1) / 3)


# ----------------------------------------------------------------------------- end to end


def test_steer_compare_tiny(tiny_llama, items):
    model, spec = tiny_llama
    circuits = {e: _circuit(spec, e, i) for i, e in enumerate(EMOS)}
    directions = {e: _direction(spec, e, i) for i, e in enumerate(EMOS)}
    res = S.steer_compare(model, items, emotions=EMOS, circuits=circuits, directions=directions, n_random=3,
                          max_new_tokens=3, n_boot=50, scale=1.0, alpha=8.0, sentences=0)
    r = res.replies
    n = 3  # prompts: one skeleton x three valences
    counts = r.groupby("method").size().to_dict()
    assert counts == {"circuit": 2 * n, "residual": 2 * n, "prompt": 2 * n, "none": 2 * n, "random": 2 * 3 * n}
    assert sorted(r[r.method == "random"].variant.unique()) == [0, 1, 2]
    neutral = B.neutral_items(items)
    users = neutral.user.tolist()
    msgs = [[{"role": "system", "content": S.STEER_SYSTEM}, {"role": "user", "content": u}] for u in users]
    # none = plain generation; circuit = generation under the circuit's steer intervention
    plain = generate(model, msgs, max_new_tokens=3)
    assert r[(r.method == "none") & (r.emotion == "fear")].reply.tolist() == [t.strip() for t in plain.texts]
    with circuits["fear"].intervention("steer").apply(model):
        steered = generate(model, msgs, max_new_tokens=3)
    assert r[(r.method == "circuit") & (r.emotion == "fear")].reply.tolist() == [t.strip() for t in steered.texts]
    # the prompt method uses the Circuits I instruction as system prompt
    pmsgs = [[{"role": "system", "content": C.SYSTEM_TEMPLATE.format(emotion="anger")}, {"role": "user", "content": u}]
             for u in users]
    assert r[(r.method == "prompt") & (r.emotion == "anger")].reply.tolist() == \
        [t.strip() for t in generate(model, pmsgs, max_new_tokens=3).texts]
    # residual steering with alpha 8 changes the replies of this model
    assert r[(r.method == "residual")].reply.tolist() != r[(r.method == "none")].reply.tolist()
    # perplexity is under the unsteered model given the neutral prompt
    ids = encode_prompts(Runner(model), msgs)
    circ = r[(r.method == "circuit") & (r.emotion == "fear")]
    np.testing.assert_allclose(circ.ppl.to_numpy(), F.reply_perplexity(model, ids, steered.token_ids), rtol=1e-6)
    assert (r.cut_off == (r.finish == "length")).all()
    # accuracy = mean of the judge's verdicts
    acc = res.accuracy.set_index(["judge", "method", "emotion", "valence"])
    assert acc.loc[("lexicon", "random", "all", "all"), "n"] == 2 * 3 * n
    for m, d in r.groupby("method"):
        assert acc.loc[("lexicon", m, "all", "all"), "accuracy"] == pytest.approx(d.correct_lexicon.mean())
    assert (r.pred_lexicon.isin(["none", *EKMAN6])).all()
    assert set(res.quality.method) == set(S.METHODS)
    with pytest.raises(EmocircuitsError):
        S.steer_compare(model, items, emotions=EMOS, methods=("circuit",), circuits=None)


def test_steer_text(tiny_llama):
    model, spec = tiny_llama
    d = _direction(spec, "fear")
    out = S.steer_text(model, "My dog ran away.", "fear", "residual", direction=d, max_new_tokens=3, scale=8.0,
                       sentences=0)
    assert out["scale"] == 8.0 and out["method"] == "residual"
    msgs = [[{"role": "system", "content": S.STEER_SYSTEM}, {"role": "user", "content": "My dog ran away."}]]
    assert out["unsteered"] == generate(model, msgs, max_new_tokens=3).texts[0].strip()
    with S.residual_intervention(d, S.residual_band(spec.n_layers)).apply(model):
        assert out["steered"] == generate(model, msgs, max_new_tokens=3).texts[0].strip()
    c = _circuit(spec, "fear")
    out2 = S.steer_text(model, "My dog ran away.", "fear", "random", circuit=c, max_new_tokens=3, seed=4, scale=1.0,
                        sentences=0)
    with S.random_circuit(c, spec, 4).intervention("steer").apply(model):
        assert out2["steered"] == generate(model, msgs, max_new_tokens=3).texts[0].strip()
    with pytest.raises(EmocircuitsError):
        S.steer_text(model, "  ", "fear", "none")


# ----------------------------------------------------------------------------- jobs


def test_jobs_influence_assemble_steer_and_rerun(tiny_llama, tmp_path):
    from emocircuits.runs.rundir import read_manifest
    from emocircuits.sweeps.rerun import registered_commands, rerun

    model, spec = tiny_llama
    pair = (model, spec)
    el, di, co = tmp_path / "el", tmp_path / "di", tmp_path / "co"
    run_elicit({"model": "tiny-llama", "data": "builtin:sev", "split": "all", "limit": 1, "judges": ["lexicon"],
                  "accept": "first", "emotions": EMOS, "max_new_tokens": 2, "dtype": "float32", "seed": 0}, el,
                 quiet=True, model_pair=pair)
    run_directions({"from": str(el), "model": None, "groups": "all", "n_boot": 0, "shuffles": 0, "seed": 0}, di,
                     quiet=True, model_pair=pair)
    run_components({"from": str(di), "model": None, "top_k": 2, "top_k_heads": None}, co, quiet=True,
                     model_pair=pair)
    inf = run_influence({"from": str(di), "alphas": "0.1,0.5", "max_prompts": 2}, tmp_path / "inf", quiet=True,
                          model_pair=pair)
    assert (tmp_path / "inf" / "influence.parquet").exists() and len(inf.raw) == 2 * spec.n_layers * 2 * 2
    asm = run_assemble({"influence": str(tmp_path / "inf"), "components": str(co), "k_total": 12}, tmp_path / "asm",
                         quiet=True, model_pair=pair)
    loaded = read_circuits(tmp_path / "asm")
    assert loaded == asm.circuits and all(len(c.neurons) + len(c.heads) == 12 for c in loaded.values())
    res = run_steer({"from": str(tmp_path / "asm"), "limit": 1, "methods": "circuit,none", "max_new_tokens": 2,
                       "judges": ["lexicon"]}, tmp_path / "st", quiet=True, model_pair=pair)
    assert set(res.replies.method) == {"circuit", "none"}
    assert read_manifest(tmp_path / "st")["status"] == "complete"
    assert {"circuits influence", "circuits assemble", "circuits steer"} <= set(registered_commands())
    again = rerun(tmp_path / "asm", tmp_path / "asm2")  # the manifest alone re-creates the run (model by name)
    assert again.circuits == asm.circuits
    with pytest.raises(EmocircuitsError):
        run_steer({"from": str(tmp_path / "asm"), "methods": "circuit,magic"}, tmp_path / "bad", model_pair=pair)
    with pytest.raises(EmocircuitsError):
        run_influence({"from": str(co)}, tmp_path / "bad2", model_pair=pair)
