"""Interventions write exactly what they say, compose, serialise, and always remove their hooks."""

from __future__ import annotations

import contextlib

import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.interventions import (
    AddDirection,
    Intervention,
    Noise,
    PatchFrom,
    ScaleHeads,
    ScaleNeurons,
    ScaleSite,
    ZeroHeads,
    ZeroNeurons,
    active_hook_count,
    batch_context,
    capture,
    observe,
)
from emocircuits.core.sites import hook_name
from emocircuits.core.units import HeadSet, NeuronSet


def _run(bridge, ids):
    with torch.inference_mode():
        return bridge(ids)


def _record(bridge, site, layer, ids, intervention=None):
    """The site's value at ``layer`` during a forward pass (optionally under an intervention)."""
    got = []
    with contextlib.ExitStack() as stack:
        if intervention is not None:
            stack.enter_context(intervention.apply(bridge))  # attached first, so the observer sees its output
        stack.enter_context(observe(bridge, site, [layer], lambda _layer, v: got.append(v.clone())))
        _run(bridge, ids)
    return got[0]


def _down_proj_input(bridge, layer, ids, intervention=None):
    """The input of layer's down projection, read after every hook on the neuron value has run."""
    got = []
    point = bridge.blocks[layer].mlp.out.original_component  # the down-projection nn.Linear itself
    h = point.register_forward_pre_hook(lambda m, args: got.append(args[0].detach().clone()))
    try:
        if intervention is None:
            _run(bridge, ids)
        else:
            with intervention.apply(bridge):
                _run(bridge, ids)
    finally:
        h.remove()
    return got[0]


def test_zero_neuron_changes_exactly_that_down_proj_column(tiny_any, token_ids):
    bridge, spec = tiny_any
    clean = _down_proj_input(bridge, 1, token_ids)
    masked = _down_proj_input(bridge, 1, token_ids, ZeroNeurons({1: [5]}))
    changed = (masked != clean).any(dim=0).any(dim=0).nonzero().flatten().tolist()
    assert changed == [5]
    assert torch.all(masked[..., 5] == 0)
    assert active_hook_count(bridge) == 0


def test_zero_head_changes_exactly_that_head_slice(tiny_any, token_ids):
    bridge, spec = tiny_any
    o_in = []
    h = bridge.blocks[2].attn.o.original_component.register_forward_pre_hook(lambda m, a: o_in.append(a[0].detach().clone()))
    try:
        _run(bridge, token_ids)
        with ZeroHeads(HeadSet(((2, 1),))).apply(bridge):
            _run(bridge, token_ids)
    finally:
        h.remove()
    d_head = spec.d_head
    changed = (o_in[0] != o_in[1]).reshape(-1, o_in[0].shape[-1]).any(0).nonzero().flatten()
    assert changed.min().item() == d_head and changed.max().item() == 2 * d_head - 1


def test_scale_by_one_is_a_no_op(tiny_any, token_ids):
    bridge, spec = tiny_any
    clean = _run(bridge, token_ids)
    combo = ScaleNeurons({0: [1, 2], 2: [3]}, factor=1.0) + ScaleHeads(HeadSet(((1, 0),)), factor=1.0)
    with combo.apply(bridge):
        same = _run(bridge, token_ids)
    torch.testing.assert_close(same, clean, rtol=0, atol=0)


def test_hooks_removed_after_exception(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    with pytest.raises(RuntimeError, match="boom"):
        with ZeroNeurons({0: [1]}).apply(bridge):
            assert active_hook_count(bridge) == 1
            raise RuntimeError("boom")
    assert active_hook_count(bridge) == 0


def test_compose_and_nesting_remove_only_their_own_hooks(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    outer = ZeroNeurons({0: [1]})
    inner = ZeroHeads(HeadSet(((0, 0), (1, 2))))
    with outer.apply(bridge):
        with inner.apply(bridge):
            assert active_hook_count(bridge) == 3
        assert active_hook_count(bridge) == 1
    assert active_hook_count(bridge) == 0


def test_positions_last_uses_batch_context(tiny_llama):
    bridge, _ = tiny_llama
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 0, 0]])
    last = torch.tensor([3, 1])
    clean = _down_proj_input(bridge, 0, ids)
    with batch_context(last):
        masked = _down_proj_input(bridge, 0, ids, ZeroNeurons({0: [4]}, positions="last"))
    diff = (masked != clean)[..., 4]
    assert diff[0].nonzero().flatten().tolist() in ([3], [])  # zero may equal clean only if it was 0
    assert masked[0, 3, 4] == 0 and masked[1, 1, 4] == 0
    assert torch.equal(masked[0, :3], clean[0, :3]) and torch.equal(masked[1, 2:], clean[1, 2:])


def test_rows_restrict_writes(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    ids = token_ids.repeat(2, 1)
    masked = _down_proj_input(bridge, 1, ids, ZeroNeurons({1: [0, 1]}, rows=(1,)))
    clean = _down_proj_input(bridge, 1, ids)
    assert torch.equal(masked[0], clean[0])
    assert torch.all(masked[1, :, :2] == 0)


def test_add_direction_adds_exactly_at_resid(tiny_llama, token_ids):
    bridge, spec = tiny_llama
    v = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(0))
    clean = _record(bridge, "resid.post", 1, token_ids)
    steered = _record(bridge, "resid.post", 1, token_ids, AddDirection(v, layers=(1,), scale=2.0, positions="last"))
    torch.testing.assert_close(steered[0, -1] - clean[0, -1], 2.0 * v)
    torch.testing.assert_close(steered[0, :-1], clean[0, :-1])
    rms_steered = _record(bridge, "resid.post", 1, token_ids,
                          AddDirection(v, layers=(1,), scale=1.0, positions="all", rms_scaled=True, unit=True))
    expected = clean + clean.pow(2).mean(-1, keepdim=True).sqrt() * (v / v.norm())
    torch.testing.assert_close(rms_steered, expected)


def test_patch_from_copies_source_last_token(tiny_llama):
    bridge, _ = tiny_llama
    a = torch.tensor([[5, 6, 7, 8]])
    b = torch.tensor([[9, 10, 11, 12]])
    with capture(bridge, "resid.post", [1], positions="last") as cap:
        _run(bridge, a)
    src = {1: cap[1][0]}
    patched = _record(bridge, "resid.post", 1, b, PatchFrom("resid.post", src, positions="last"))
    clean_b = _record(bridge, "resid.post", 1, b)
    torch.testing.assert_close(patched[0, -1], src[1][0])
    torch.testing.assert_close(patched[0, :-1], clean_b[0, :-1])


def test_noise_matches_norm_and_is_seeded(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    clean = _record(bridge, "attn.out", 0, token_ids)
    n1 = _record(bridge, "attn.out", 0, token_ids, Noise("attn.out", (0,), positions="last", seed=3))
    n2 = _record(bridge, "attn.out", 0, token_ids, Noise("attn.out", (0,), positions="last", seed=3))
    torch.testing.assert_close(n1, n2)
    torch.testing.assert_close(n1[0, -1].norm(), clean[0, -1].norm())
    assert not torch.allclose(n1[0, -1], clean[0, -1])
    torch.testing.assert_close(n1[0, :-1], clean[0, :-1])


def test_scale_site_knockout(tiny_llama, token_ids):
    bridge, _ = tiny_llama
    out = _record(bridge, "mlp.out", 2, token_ids, ScaleSite("mlp.out", (2,), factor=0.0, positions="last"))
    assert torch.all(out[0, -1] == 0)


def test_serialisation_round_trip():
    items = [
        ZeroNeurons(NeuronSet({3: (1, 2)}), positions="last"),
        ScaleHeads(HeadSet(((1, 2),)), factor=1.5),
        AddDirection(torch.tensor([1.0, 0.0]), layers=(2, 3), scale=4.0, rms_scaled=True),
        Noise("attn.out", (1, 2), seed=7),
    ]
    combo = items[0] + items[1] + items[2] + items[3]
    again = Intervention.from_dict(combo.to_dict())
    assert again == combo
    assert "ZeroNeurons" in repr(combo)


def test_bad_input_is_one_sentence(tiny_llama):
    bridge, spec = tiny_llama
    with pytest.raises(EmocircuitsError, match=r"layers 0\.\.2"):
        with ZeroNeurons({7: [1]}).apply(bridge):
            pass
    with pytest.raises(EmocircuitsError, match=r"neurons 0\.\.95"):
        with ZeroNeurons({0: [96]}).apply(bridge):
            pass
    with pytest.raises(EmocircuitsError, match=r"query heads 0\.\.3"):
        with ZeroHeads(HeadSet(((0, 4),))).apply(bridge):
            pass
    with pytest.raises(EmocircuitsError, match="known sites"):
        hook_name(bridge, "resid.middle", 0)
    with pytest.raises(EmocircuitsError, match="cannot be written"):
        ScaleSite("attn.pattern", (0,)).hooks(bridge)
    with pytest.raises(EmocircuitsError, match="Unknown intervention type"):
        Intervention.from_dict({"type": "Explode"})
    assert active_hook_count(bridge) == 0


def test_interventions_save_in_the_components_format(tmp_path):
    """One save format for value objects: a JSON header naming tensors, the tensors in safetensors beside it."""
    import json

    from emocircuits.core.components import Direction
    from emocircuits.core.interventions import AddDirection, AddToNeurons, Intervention, ZeroHeads
    from emocircuits.core.units import HeadSet, NeuronSet

    shift = {0: torch.arange(2.0), 2: torch.ones(1)}
    combo = (AddToNeurons(NeuronSet({0: (1, 3), 2: (0,)}), shift, 0.5, "last")
             + ZeroHeads(HeadSet(((1, 0),))) + AddDirection({1: torch.randn(8)}, "resid.post", (1,), 2.0))
    path = combo.save(tmp_path / "combo")
    doc = json.loads(path.read_text())
    assert doc["format"] == "emocircuits.component" and (tmp_path / "combo.safetensors").is_file()
    assert "__tensor__" in json.dumps(doc) and "[0.0, 1.0]" not in json.dumps(doc)  # tensors by name, not inline
    assert Intervention.load(tmp_path / "combo") == combo
    direction = Direction({"resid.post": {0: torch.ones(4)}}, "d")
    direction.save(tmp_path / "d")
    assert json.loads((tmp_path / "d.json").read_text())["format"] == doc["format"]
