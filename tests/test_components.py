"""Component value types (save/load, validate, union/restrict, interventions) and the weight table."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Circuit, Direction, from_dict, intervention, load
from emocircuits.core.interventions import (
    AddDirection,
    AddToHeads,
    AddToNeurons,
    Compose,
    Intervention,
    ScaleHeads,
    ScaleNeurons,
    ScaleSite,
    ZeroHeads,
    ZeroNeurons,
    active_hook_count,
    capture,
)
from emocircuits.core.sites import WEIGHTS, weight
from emocircuits.core.units import HeadSet, NeuronSet, SublayerSet

D_MODEL, D_HEAD = 64, 16  # the tiny models


def _direction(seed: int = 0, name: str = "anger") -> Direction:
    g = torch.Generator().manual_seed(seed)
    vectors = {site: {layer: torch.randn(D_MODEL, generator=g) for layer in (0, 2)} for site in ("resid.mid", "resid.post")}
    return Direction(vectors, name, {"model": "tiny-llama-seed0", "method": "mean-diff", "counts": {"anger": 3}})


def _circuit(neurons=None, heads=None, seed: int = 0) -> Circuit:
    neurons = NeuronSet({1: (5, 2, 9), 2: (0,)}) if neurons is None else neurons
    heads = HeadSet(((2, 3), (2, 0), (0, 1))) if heads is None else heads
    g = torch.Generator().manual_seed(seed)
    neuron_shift = {layer: torch.randn(len(idx), generator=g) for layer, idx in neurons.layers.items()}
    head_shift = {layer: torch.randn(len(hs), D_HEAD, generator=g) for layer, hs in heads.by_layer().items()}
    scores = {"neurons": {layer: torch.rand(len(idx), generator=g) for layer, idx in neurons.layers.items()}}
    return Circuit("anger", neurons, heads, neuron_shift, head_shift, scores, {"k": len(neurons) + len(heads)})


def _all_values():
    return [NeuronSet({0: (3, 1), 2: (7,)}), HeadSet(((1, 2), (0, 0))), SublayerSet(((2, "mlp"), (0, "attn"))),
            _direction(), _circuit()]


def _forward(bridge, ids):
    with torch.inference_mode():
        return bridge(ids)


# ----------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("value", _all_values(), ids=lambda v: type(v).__name__)
def test_save_load_round_trip(tmp_path, value):
    path = value.save(tmp_path / "thing")
    assert path == tmp_path / "thing.json"
    assert (tmp_path / "thing.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    doc = json.loads(path.read_text())
    assert doc["type"] == type(value).__name__ and doc["tensors"] == "thing.safetensors"
    assert "__tensor__" not in path.read_text()
    back = type(value).load(tmp_path / "thing.json")
    assert back == value and type(back) is type(value)
    assert load(tmp_path / "thing") == value


def test_json_names_tensors_never_inlines_them(tmp_path):
    circuit = _circuit()
    circuit.save(tmp_path / "c")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert all(isinstance(v, str) for v in doc["neuron_shift"].values())
    assert all(isinstance(v, str) for v in doc["head_shift"].values())
    assert doc["neurons"] == {"type": "NeuronSet", "neurons": [[1, 2], [1, 5], [1, 9], [2, 0]]}
    store: dict[str, torch.Tensor] = {}
    d = _direction()
    doc = d.to_dict(store)
    names = [n for per in doc["vectors"].values() for n in per.values()]
    assert sorted(names) == sorted(store) and len(store) == 4
    assert from_dict(doc, store) == d == Direction.from_dict(doc, store)


def test_shared_store_keeps_names_apart():
    store: dict[str, torch.Tensor] = {}
    a, b = _direction(0), _direction(1)  # same name, different vectors
    doc_a, doc_b = a.to_dict(store), b.to_dict(store)
    assert len(store) == 8
    assert Direction.from_dict(doc_a, store) == a and Direction.from_dict(doc_b, store) == b


def test_views_of_one_tensor_save(tmp_path):
    big = torch.randn(3, D_MODEL)
    d = Direction({"resid.post": {0: big[0], 1: big[1]}}, "joy")
    d.save(tmp_path / "d")
    assert Direction.load(tmp_path / "d") == d


def test_load_errors(tmp_path):
    with pytest.raises(EmocircuitsError, match="No component file"):
        load(tmp_path / "missing")
    NeuronSet({0: (1,)}).save(tmp_path / "n")
    with pytest.raises(EmocircuitsError, match="holds a NeuronSet, not a Circuit"):
        Circuit.load(tmp_path / "n")
    _circuit().save(tmp_path / "c")
    (tmp_path / "c.safetensors").unlink()
    with pytest.raises(EmocircuitsError, match="missing from the tensor store"):
        load(tmp_path / "c")
    with pytest.raises(EmocircuitsError, match="needs a tensor store"):
        _direction().to_dict()


def test_equality_and_repr():
    assert _circuit() == _circuit() and _circuit(seed=1) != _circuit()
    assert _direction() == _direction() and _direction(1) != _direction()
    assert _direction() != _direction(name="joy")
    assert SublayerSet(((1, "mlp"), (1, "mlp"))) == SublayerSet([(1, "mlp")])
    assert HeadSet(((2, 1), (0, 3))) == HeadSet(((0, 3), (2, 1)))
    assert repr(_circuit()) == "Circuit('anger', 4 neurons + 3 heads over 3 layers, steerable=True)"
    assert repr(_direction()) == "Direction('anger', resid.mid: 2 layers, resid.post: 2 layers, width=64)"
    assert repr(HeadSet(((0, 1), (2, 3)))) == "HeadSet(2 heads over 2 layers)"
    assert repr(SublayerSet([(0, "attn"), (2, "mlp")])) == "SublayerSet(attn=[0], mlp=[2])"


# ----------------------------------------------------------------------------- validation


def test_validate_messages_name_the_range(tiny_llama):
    _, spec = tiny_llama
    for value in _all_values():
        assert value.validate(spec) is value
    with pytest.raises(EmocircuitsError, match=r"layers 0\.\.2"):
        NeuronSet({3: (1,)}).validate(spec)
    with pytest.raises(EmocircuitsError, match=r"neurons 0\.\.95"):
        NeuronSet({0: (96,)}).validate(spec)
    with pytest.raises(EmocircuitsError, match=r"neurons 0\.\.95"):
        NeuronSet({0: (96,)}).validate(3, 96)  # the old positional form still works
    with pytest.raises(EmocircuitsError, match=r"query heads 0\.\.3"):
        HeadSet(((0, 4),)).validate(spec)
    with pytest.raises(EmocircuitsError, match=r"query heads 0\.\.3"):
        HeadSet(((0, 4),)).validate(3, 4)
    with pytest.raises(EmocircuitsError, match=r"layers 0\.\.2"):
        SublayerSet([(5, "attn")]).validate(spec)
    with pytest.raises(EmocircuitsError, match=r"d_model = 64"):
        Direction({"resid.post": {0: torch.zeros(65)}}).validate(spec)
    with pytest.raises(EmocircuitsError, match=r"layers 0\.\.2"):
        Direction({"resid.post": {3: torch.zeros(64)}}).validate(spec)
    with pytest.raises(EmocircuitsError, match=r"d_head = 16"):
        Circuit("anger", heads=HeadSet(((0, 1),)), head_shift={0: torch.zeros(1, 8)}).validate(spec)
    with pytest.raises(EmocircuitsError, match=r"query heads 0\.\.3"):
        _circuit(heads=HeadSet(((1, 4),))).validate(spec)


def test_malformed_values_fail_at_construction():
    with pytest.raises(EmocircuitsError, match="'attn' or 'mlp'"):
        SublayerSet([(0, "resid")])
    with pytest.raises(EmocircuitsError, match=r"it needs \[2\]"):
        Circuit("anger", NeuronSet({1: (3, 4)}), neuron_shift={1: torch.zeros(3)})
    with pytest.raises(EmocircuitsError, match=r"components sit in layers \[1\]"):
        Circuit("anger", NeuronSet({1: (3, 4)}), neuron_shift={2: torch.zeros(2)})
    with pytest.raises(EmocircuitsError, match=r"it needs \[1, d_head\]"):
        Circuit("anger", heads=HeadSet(((0, 1),)), head_shift={0: torch.zeros(16)})
    with pytest.raises(EmocircuitsError, match="keyed by"):
        Circuit("anger", scores={"layers": {}})
    with pytest.raises(EmocircuitsError, match="JSON-able"):
        Direction({}, provenance={"t": torch.zeros(1)})
    with pytest.raises(EmocircuitsError, match="directions live at one of"):
        Direction({"head.z": {0: torch.zeros(16)}})
    with pytest.raises(EmocircuitsError, match="Unknown site"):
        Direction({"resid.nope": {0: torch.zeros(16)}})
    with pytest.raises(EmocircuitsError, match="1-D"):
        Direction({"resid.post": {0: torch.zeros(2, 64)}})


# ----------------------------------------------------------------------------- union / restrict


def test_union_and_restrict_of_sets():
    a, b = HeadSet(((0, 1), (2, 3))), HeadSet(((2, 3), (1, 0)))
    assert a.union(b) == HeadSet(((0, 1), (1, 0), (2, 3)))
    assert a.restrict([2]) == HeadSet(((2, 3),))
    s = SublayerSet([(0, "attn"), (1, "mlp")])
    assert s.union(SublayerSet([(1, "attn")])).sublayers == ((0, "attn"), (1, "attn"), (1, "mlp"))
    assert s.restrict([1]) == SublayerSet([(1, "mlp")])
    assert NeuronSet({0: (1,)}).union(NeuronSet({0: (2,), 1: (0,)})) == NeuronSet({0: (1, 2), 1: (0,)})


def test_direction_union_restrict_unit_cosine():
    d = _direction()
    r = d.restrict([2])
    assert r.layers("resid.mid") == [2] and r.sites() == ["resid.mid", "resid.post"]
    assert torch.equal(r.vector("resid.post", 2), d.vector("resid.post", 2))
    mid_only = Direction({"resid.mid": d.vectors["resid.mid"]}, "anger", d.provenance)
    post_only = Direction({"resid.post": d.vectors["resid.post"]}, "anger", d.provenance)
    assert mid_only.union(post_only) == d
    with pytest.raises(EmocircuitsError, match="disagree at resid.mid layer 0"):
        d.union(_direction(1))
    with pytest.raises(EmocircuitsError, match="Cannot unite directions 'anger' and 'joy'"):
        d.union(_direction(name="joy"))
    with pytest.raises(EmocircuitsError, match="no vector at resid.post layer 1"):
        d.vector("resid.post", 1)
    u = d.unit()
    assert torch.allclose(u.vector("resid.mid", 0).norm(), torch.tensor(1.0))
    a = torch.tensor([1.0, 2.0, 0.0, -1.0] + [0.0] * (D_MODEL - 4))
    b = torch.tensor([2.0, -1.0, 3.0, 1.0] + [0.0] * (D_MODEL - 4))
    da, db = Direction({"resid.post": {1: a}}, "x"), Direction({"resid.post": {1: b}}, "y")
    hand = (1 * 2 + 2 * -1 + 0 * 3 + -1 * 1) / ((1 + 4 + 0 + 1) ** 0.5 * (4 + 1 + 9 + 1) ** 0.5)
    assert da.cosine(db, "resid.post", 1) == pytest.approx(hand, abs=1e-12)
    assert da.unit().cosine(db, "resid.post", 1) == pytest.approx(hand, abs=1e-7)
    assert da.cosine(da, "resid.post", 1) == pytest.approx(1.0)


def test_circuit_union_and_restrict():
    full = _circuit()
    low, high = full.restrict([0, 1]), full.restrict([2])
    assert low.neurons == NeuronSet({1: (2, 5, 9)}) and low.heads == HeadSet(((0, 1),))
    assert set(low.neuron_shift) == {1} and set(low.head_shift) == {0} and set(low.scores["neurons"]) == {1}
    assert low.union(high) == full
    assert full.union(low) == full  # overlapping components agree
    with pytest.raises(EmocircuitsError, match="disagree on the neuron shift"):
        full.union(_circuit(seed=1))
    with pytest.raises(EmocircuitsError, match="circuits of 'anger' and 'joy'"):
        full.union(Circuit("joy"))
    # splitting one layer's components across two circuits re-aligns the shifts by sorted index
    part_a = Circuit("anger", NeuronSet({1: (9, 2)}), neuron_shift={1: full.neuron_shift[1][[0, 2]]})
    part_b = Circuit("anger", NeuronSet({1: (5,)}), neuron_shift={1: full.neuron_shift[1][[1]]})
    assert torch.equal(part_a.union(part_b).neuron_shift[1], full.neuron_shift[1])
    # a side without shifts makes the union unsteerable, not wrong
    bare = Circuit("anger", NeuronSet({0: (1,)}))
    assert not bare.steerable and not full.union(bare).steerable


# ----------------------------------------------------------------------------- intervention()


def test_intervention_types():
    n, h = NeuronSet({0: (1,)}), HeadSet(((0, 1),))
    assert intervention(n, "zero") == ZeroNeurons(n)
    assert intervention(n, "scale", factor=2.0, positions="last") == ScaleNeurons(n, 2.0, "last")
    assert intervention(h, "zero", rows=(0,)) == ZeroHeads(h, rows=(0,))
    assert intervention(h, "scale", factor=0.5) == ScaleHeads(h, 0.5)
    s = SublayerSet([(0, "attn"), (2, "attn"), (1, "mlp")])
    assert intervention(s, "zero") == ScaleSite("attn.out", (0, 2), 0.0) + ScaleSite("mlp.out", (1,), 0.0)
    assert intervention(SublayerSet([(1, "mlp")]), "scale", factor=2.0) == ScaleSite("mlp.out", (1,), 2.0)
    assert intervention(SublayerSet(), "zero") == Compose(())
    d = _direction()
    add = d.intervention("add", site="resid.post", scale=4.0, positions="last", rms_scaled=True)
    assert isinstance(add, AddDirection) and add.layers == (0, 2) and add.rms_scaled and add.scale == 4.0
    assert torch.equal(add.direction[2], d.vector("resid.post", 2))
    assert d.intervention("add", site="resid.mid", layers=[2]).layers == (2,)
    c = _circuit()
    steer = c.intervention("steer", scale=0.5)
    assert steer == AddToNeurons(c.neurons, c.neuron_shift, 0.5, "last") + AddToHeads(c.heads, c.head_shift, 0.5, "all")
    assert c.intervention("zero") == ZeroNeurons(c.neurons) + ZeroHeads(c.heads)
    assert c.intervention("scale", factor=3.0) == ScaleNeurons(c.neurons, 3.0) + ScaleHeads(c.heads, 3.0)


def test_intervention_errors():
    with pytest.raises(EmocircuitsError, match=r"choose one of \['scale', 'zero'\]"):
        intervention(NeuronSet(), "steer")
    with pytest.raises(EmocircuitsError, match="needs factor="):
        intervention(HeadSet(), "scale")
    with pytest.raises(EmocircuitsError, match=r"Unknown option\(s\) \['factor'\]"):
        intervention(NeuronSet(), "zero", factor=2.0)
    with pytest.raises(EmocircuitsError, match="pass site="):
        _direction().intervention("add")
    with pytest.raises(EmocircuitsError, match="no shift vectors"):
        Circuit("anger", NeuronSet({0: (1,)})).intervention("steer")


def test_add_interventions_round_trip():
    c = _circuit()
    for x in (AddToNeurons(c.neurons, c.neuron_shift, 2.0, (-1, 0), rows=(1,)),
              AddToHeads(c.heads, c.head_shift, 0.5, "last"), c.intervention("steer")):
        doc = x.to_dict()
        assert Intervention.from_dict(json.loads(json.dumps(doc))) == x
    bf = AddToNeurons(NeuronSet({0: (1,)}), {0: torch.tensor([0.1], dtype=torch.bfloat16)})
    assert Intervention.from_dict(bf.to_dict()) == bf
    assert AddToNeurons(NeuronSet({0: (1,)}), {0: torch.tensor([0.1])}) != AddToNeurons(NeuronSet({0: (1,)}),
                                                                                         {0: torch.tensor([0.2])})


def test_add_interventions_check_shapes_before_attaching(tiny_llama):
    bridge, _ = tiny_llama
    bad = [AddToNeurons(NeuronSet({0: (1, 2)}), {0: torch.zeros(3)}),
           AddToNeurons(NeuronSet({0: (1,)}), {0: torch.zeros(1), 1: torch.zeros(1)}),
           AddToNeurons(NeuronSet({0: (96,)}), {0: torch.zeros(1)}),
           AddToHeads(HeadSet(((0, 1),)), {0: torch.zeros(1, 8)}),
           AddToHeads(HeadSet(((0, 1),)), {})]
    for x in bad:
        with pytest.raises(EmocircuitsError):
            with x.apply(bridge):
                pass
        assert active_hook_count(bridge) == 0


# ----------------------------------------------------------------------------- effects on tiny models


def test_circuit_steer_effects(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    circuit = _circuit(neurons=NeuronSet({1: (5, 2, 9)}), heads=HeadSet(((2, 0), (2, 3))))
    with capture(bridge, "neuron.gated", [1], positions="all") as base:
        base_logits = _forward(bridge, token_ids)
    with circuit.intervention("steer", scale=0.0).apply(bridge):
        assert torch.equal(_forward(bridge, token_ids), base_logits)
    steer = circuit.intervention("steer", scale=1.0, neuron_positions="all")
    with steer.apply(bridge), capture(bridge, "neuron.gated", [1], positions="all") as got:
        steered_logits = _forward(bridge, token_ids)
    assert active_hook_count(bridge) == 0
    before, after = base[1][0], got[1][0]
    ix = torch.tensor([2, 5, 9])
    assert torch.equal(after[..., ix], before[..., ix] + circuit.neuron_shift[1])
    others = torch.ones(before.shape[-1], dtype=torch.bool)
    others[ix] = False
    assert torch.equal(after[..., others], before[..., others])
    assert not torch.allclose(steered_logits, base_logits)


def test_circuit_steer_default_positions(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    circuit = _circuit(neurons=NeuronSet({0: (4,)}), heads=HeadSet())
    with capture(bridge, "neuron.gated", [0], positions="all") as base:
        _forward(bridge, token_ids)
    with circuit.intervention("steer").apply(bridge), capture(bridge, "neuron.gated", [0], positions="all") as got:
        _forward(bridge, token_ids)
    delta = got[0][0] - base[0][0]
    assert torch.equal(delta[:, :-1], torch.zeros_like(delta[:, :-1]))  # neuron_positions defaults to "last"
    assert delta[0, -1, 4] != 0 and torch.count_nonzero(delta) == 1


def test_add_to_heads_changes_exactly_the_chosen_slices(tiny_llama, token_ids):
    bridge, spec = tiny_llama
    heads = HeadSet(((1, 3), (1, 0)))
    shift = {1: torch.randn(2, spec.d_head, generator=torch.Generator().manual_seed(3))}
    with capture(bridge, "head.z", [1], positions="all") as base:
        _forward(bridge, token_ids)
    with AddToHeads(heads, shift, scale=2.0).apply(bridge), capture(bridge, "head.z", [1], positions="all") as got:
        _forward(bridge, token_ids)
    before, after = base[1][0], got[1][0]
    assert torch.equal(after[:, :, [0, 3]], before[:, :, [0, 3]] + 2.0 * shift[1])
    assert torch.equal(after[:, :, [1, 2]], before[:, :, [1, 2]])
    with AddToHeads(heads, shift, positions=(0,)).apply(bridge), capture(bridge, "head.z", [1], "all") as first:
        _forward(bridge, token_ids)
    assert torch.equal(first[1][0][:, 1:], before[:, 1:])
    assert not torch.equal(first[1][0][:, :1], before[:, :1])


def test_zero_and_scale_effects(tiny_gpt2, token_ids):
    bridge, _ = tiny_gpt2
    base = _forward(bridge, token_ids)
    for value in (NeuronSet({1: (0, 5)}), HeadSet(((0, 2),)), SublayerSet([(1, "attn"), (2, "mlp")]), _circuit()):
        with intervention(value, "scale", factor=1.0).apply(bridge):
            assert torch.allclose(_forward(bridge, token_ids), base, atol=1e-6)
        with intervention(value, "zero").apply(bridge):
            assert not torch.allclose(_forward(bridge, token_ids), base)
    with intervention(SublayerSet([(2, "mlp")]), "zero").apply(bridge), \
            capture(bridge, "mlp.out", [2], positions="all") as out:
        _forward(bridge, token_ids)
    assert torch.count_nonzero(out[2][0]) == 0
    assert active_hook_count(bridge) == 0


def test_direction_add_effect(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    d = _direction()
    with capture(bridge, "resid.post", [0], positions="all") as base:
        _forward(bridge, token_ids)
    with d.intervention("add", site="resid.post", layers=[0], scale=2.0).apply(bridge), \
            capture(bridge, "resid.post", [0], positions="all") as got:
        _forward(bridge, token_ids)
    assert torch.allclose(got[0][0] - base[0][0], (2.0 * d.vector("resid.post", 0)).expand_as(base[0][0]), atol=1e-5)


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize("layer", [0, 2])
def test_weight_identities_match_the_forward_pass(tiny_any, token_ids, layer):
    bridge, spec = tiny_any
    sites = ("neuron.gated", "mlp.out", "head.z", "attn.out")
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        got = {s: stack.enter_context(capture(bridge, s, [layer], positions="all")) for s in sites}
        final = stack.enter_context(capture(bridge, "final.norm", [None], positions="all"))
        logits = bridge(token_ids)
    down, down_b = weight(bridge, "mlp.down", layer), weight(bridge, "mlp.down.bias", layer)
    assert down.shape == (spec.d_mlp, spec.d_model)
    assert (down_b is None) == spec.gated_mlp  # Llama projections have no bias, GPT-2's do
    mlp = got["neuron.gated"][layer][0] @ down + (0 if down_b is None else down_b)
    assert (mlp - got["mlp.out"][layer][0]).abs().max() <= 1e-4
    o, o_b = weight(bridge, "attn.o", layer), weight(bridge, "attn.o.bias", layer)
    assert o.shape == (spec.n_heads, spec.d_head, spec.d_model)
    attn = torch.einsum("bphd,hdm->bpm", got["head.z"][layer][0], o) + (0 if o_b is None else o_b)
    assert (attn - got["attn.out"][layer][0]).abs().max() <= 1e-4
    unembed = weight(bridge, "unembed")
    assert unembed.shape == (spec.d_model, spec.d_vocab)
    assert (final[None][0] @ unembed - logits).abs().max() <= 1e-4
    assert active_hook_count(bridge) == 0


def test_weight_errors(tiny_llama):
    bridge, _ = tiny_llama
    with pytest.raises(EmocircuitsError, match="known weights are"):
        weight(bridge, "mlp.up", 0)
    with pytest.raises(EmocircuitsError, match=r"layers 0\.\.2"):
        weight(bridge, "mlp.down", 3)
    with pytest.raises(EmocircuitsError, match=r"layers 0\.\.2"):
        weight(bridge, "attn.o")
    with pytest.raises(EmocircuitsError, match="has no layer"):
        weight(bridge, "unembed", 0)
    assert not weight(bridge, "mlp.down", 0).requires_grad
    assert set(WEIGHTS) == {"mlp.down", "mlp.down.bias", "attn.o", "attn.o.bias", "unembed", "unembed.bias"}
