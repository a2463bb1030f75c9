"""Emotion circuits II (Wang et al. 2025): sublayer influence, allocation, shift vectors, circuit assembly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.components import Circuit, Direction
from emocircuits.core.interventions import AddDirection, AddPerExample, batch_context, capture
from emocircuits.core.runner import Runner
from emocircuits.data import load_data
from emocircuits.methods import circuits as B
from emocircuits.methods import circuits as C
from emocircuits.runs.circuit_files import save_circuits


def _random_directions(spec, emotions=("anger", "fear"), seed=1):
    g = torch.Generator().manual_seed(seed)
    return {e: Direction({s: {layer: torch.randn(spec.d_model, generator=g) for layer in range(spec.n_layers)}
                          for s in ("resid.mid", "resid.post")}, e) for e in emotions}


PROMPTS = ["The cat sat on the mat while it rained outside", "Hello there, my old friend", "x"]


# ----------------------------------------------------------------------------- fast path == full recompute


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("readout", ["final.norm", "resid"])
def test_fast_path_equals_full_recompute(fixture, readout, request):
    model, spec = request.getfixturevalue(fixture)
    dirs = _random_directions(spec)
    ids = Runner(model).encode(PROMPTS)
    assert min(len(i) for i in ids) == 1 or len(ids[-1]) <= 2  # a prompt with (almost) no cached prefix
    refs = {e: B.influence_reference(d) for e, d in dirs.items()}
    plan = [B.Injection(e, layer, p, a, 2.0, B.local_direction(dirs[e], p, layer, refs[e]), refs[e])
            for e in dirs for layer in range(spec.n_layers) for p in B.SUBLAYERS for a in (0.1, 0.7)]
    base_f, inj_f = B.injection_scores_fast(model, ids, plan, readout=readout, max_rows=5)  # chunks of 5 rows
    base_u, inj_u = B.injection_scores_full(model, ids, plan, readout=readout)
    assert inj_f.shape == (len(ids), len(plan))
    assert (base_f - base_u).abs().max() <= 1e-4
    assert (inj_f - inj_u).abs().max() <= 1e-4
    # not vacuous: the injections move the readout, and differently per injection
    assert (inj_u - base_u).abs().max() > 1e-2
    assert (inj_u - base_u).std() > 1e-3


def test_sublayer_influence_tables(tiny_llama):
    model, spec = tiny_llama
    dirs = _random_directions(spec)
    ids = Runner(model).encode(PROMPTS[:2])
    res = B.sublayer_influence(model, None, dirs, token_ids=ids, alphas=(0.1, 0.5))
    L = spec.n_layers
    assert len(res.raw) == 2 * L * 2 * 2 and len(res.table) == 2 * L * 2
    assert list(res.raw.columns) == ["emotion", "layer", "sublayer", "alpha", "sigma", "dose", "base", "delta", "value"]
    np.testing.assert_allclose(res.raw.value, res.raw.delta / (res.raw.alpha * res.raw.sigma), rtol=1e-9)
    # sigma: mean over prompts of the RMS at the last token, by hand
    got = Runner(model).capture_last(ids, {"attn.out": [1], "mlp.out": [2]})
    want_attn = float(got["attn.out"][1].double().pow(2).mean(-1).sqrt().mean())
    want_mlp = float(got["mlp.out"][2].double().pow(2).mean(-1).sqrt().mean())
    s = res.sigma.set_index(["layer", "sublayer"]).sigma
    assert s[(1, "attn")] == pytest.approx(want_attn, rel=1e-6)
    assert s[(2, "mlp")] == pytest.approx(want_mlp, rel=1e-6)
    for _, t in res.table.groupby("emotion"):
        assert t.influence.sum() == pytest.approx(1.0) and (t.influence >= 0).all()
    # the fast and full methods give the same tables
    full = B.sublayer_influence(model, None, dirs, token_ids=ids, alphas=(0.1, 0.5), method="full")
    np.testing.assert_allclose(res.raw.delta, full.raw.delta, atol=1e-4)
    with pytest.raises(EmocircuitsError):
        B.sublayer_influence(model, None, dirs, token_ids=ids, readout="logits")
    with pytest.raises(EmocircuitsError):
        B.sublayer_influence(model, None, dirs, token_ids=ids, alphas=(0.0,))


def test_influence_table_hand_computed():
    raw = pd.DataFrame({
        "emotion": ["a"] * 6 + ["b"] * 2,
        "layer": [0, 0, 1, 1, 0, 0, 0, 0],
        "sublayer": ["attn", "attn", "attn", "attn", "mlp", "mlp", "attn", "attn"],
        "alpha": [0.1, 0.5] * 4,
        "sigma": [1.0] * 8,
        "value": [1.0, 3.0, -4.0, 0.0, 6.0, 6.0, -1.0, -3.0],
    })
    t = B.influence_table(raw).set_index(["emotion", "layer", "sublayer"])
    assert t.loc[("a", 0, "attn"), "raw"] == 2.0 and t.loc[("a", 1, "attn"), "raw"] == -2.0
    assert t.loc[("a", 0, "attn"), "influence"] == pytest.approx(2 / 8)
    assert t.loc[("a", 1, "attn"), "influence"] == 0.0  # clipped at 0
    assert t.loc[("a", 0, "mlp"), "influence"] == pytest.approx(6 / 8)
    assert t.loc[("b", 0, "attn"), "influence"] == 0.0  # nothing positive: all zero, not NaN


def test_reference_merges_sites_sign_aligned():
    e = torch.eye(4)
    d = Direction({"resid.post": {0: e[0], 1: e[1], 2: -e[1] * 3}, "resid.mid": {0: e[2], 1: e[0], 2: -e[2]}}, "x")
    # post-only equals Circuits I's reference direction
    torch.testing.assert_close(B.influence_reference(d, sites=("resid.post",), fraction=2 / 3),
                               C.reference_direction(d, fraction=2 / 3))
    # both sites, last 2 layers, anchor = post layer 2 (-e1): post1 e1 -> flipped, mid1 e0 (orthogonal, kept),
    # mid2 -e2 kept: sum = -e1 - e1 + e0 - e2
    want = torch.tensor([1.0, -2.0, -1.0, 0.0])
    torch.testing.assert_close(B.influence_reference(d, fraction=2 / 3), want / want.norm())
    v = B.local_direction(d, "mlp", 1, ref=-e[1])
    torch.testing.assert_close(v, -e[1])  # flipped to agree with the reference
    torch.testing.assert_close(B.local_direction(d, "attn", 0), e[2])
    with pytest.raises(EmocircuitsError):
        B.influence_reference(d, fraction=0)


# ----------------------------------------------------------------------------- allocation


def test_allocate_hand_example_minimums_and_cap():
    # base 2 each (8), 12 left: layer 2 wants 9 but its cap is floor(0.4*20)=8 (room 6); the excess flows to layer 1
    assert B.allocate([0, 1, 3, 0], 20, minimum=2, cap_ratio=0.4).tolist() == [2, 8, 8, 2]


def test_allocate_largest_remainder():
    # targets 3.5, 2.1, 1.4 -> floors 3, 2, 1 and the one left goes to the largest remainder
    assert B.allocate([0.5, 0.3, 0.2], 7, cap_ratio=1.0).tolist() == [4, 2, 1]
    assert B.allocate([1, 1, 1], 10, cap_ratio=1.0).tolist() == [4, 3, 3]  # tie -> first layer
    assert B.allocate([0, 0, 0, 0], 6, cap_ratio=1.0).tolist() == [2, 2, 1, 1]  # no weight: uniform
    assert B.allocate([-3, float("nan"), 1], 5, cap_ratio=1.0).tolist() == [0, 0, 5]  # negatives count as 0


def test_allocate_backfill_where_candidates_run_out():
    # layer 0 carries all the weight but has 1 candidate; the rest goes to the others by weight
    k = B.allocate([10, 1, 3, 0], 12, minimum=1, cap_ratio=1.0, available=[1, 10, 10, 10])
    assert k.tolist() == [1, 3, 7, 1] and k.sum() == 12
    # fewer candidates than the budget: everything available
    assert B.allocate([1, 1], 10, available=[3, 4]).tolist() == [3, 4]
    # the cap (floor(0.4*10) = 4) is raised just enough when the capped layers cannot hold the budget
    assert B.allocate([1, 0], 10, cap_ratio=0.4).tolist() == [5, 5]
    assert B.allocate([1, 0, 0], 10, cap_ratio=0.4).tolist() == [4, 3, 3]


def test_allocate_properties_random():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 12))
        total = int(rng.integers(0, 80))
        w = rng.exponential(size=n) * (rng.random(n) > 0.3)
        avail = rng.integers(0, 20, size=n) if rng.random() < 0.5 else None
        m = int(rng.integers(0, 5))
        k = B.allocate(w, total, minimum=m, cap_ratio=0.4, available=avail)
        a = np.full(n, total) if avail is None else avail
        assert k.sum() == min(total, a.sum())
        assert (k <= a).all() and (k >= 0).all()
        cap = np.minimum(a, math.floor(0.4 * min(total, a.sum()) + 1e-9))
        if cap.sum() >= min(total, a.sum()):
            assert (k <= cap).all()
            if np.minimum(cap, m).sum() <= total:
                assert (k >= np.minimum(cap, m)).all()


def test_allocate_lowers_minimum_when_budget_is_small():
    assert B.allocate([0, 5, 0], 4, minimum=2, cap_ratio=1.0).tolist() == [1, 2, 1]
    assert B.allocate([0, 5, 0], 2, minimum=4, cap_ratio=1.0).tolist() == [0, 2, 0]


def test_default_budget_scales_the_paper():
    assert B.default_budget(28) == (392, 168)
    assert B.default_budget(30) == (420, 180)
    assert B.default_budget(3) == (42, 18)
    assert B.default_budget(3, k_total=11, neuron_share=0.5) == (6, 5)
    with pytest.raises(EmocircuitsError):
        B.default_budget(3, neuron_share=1.5)


# ----------------------------------------------------------------------------- shift vectors


def test_group_weights_hand():
    W, G = B.group_weights(["s", "s", "s", "s", "t"], ["p", "p", "p", "p", "p"], ["a", "b", "a", "c", "a"],
                           ["a", "b"])
    assert G == 1  # group (t, p) lacks b
    assert W.tolist() == [[0.5, 0], [0, 1], [0.5, 0], [0, 0], [0, 0]]


def _shift_prompts():
    items = C.elicitation_items(load_data("builtin:sev"), limit=2, emotions=["anger", "fear", "sadness"])
    items["accepted"] = True
    items.loc[5, "accepted"] = False  # drops group (skeleton 0, neutral) under groups="accepted"
    return items


def test_shift_vectors_equal_grouped_mean_difference(tiny_llama):
    model, spec = tiny_llama
    items = _shift_prompts()
    emos = ["anger", "fear", "sadness"]
    sh = B.shift_vectors(model, items, groups="accepted")
    ids = C.prompt_ids(model, items)
    L = spec.n_layers
    got = Runner(model).capture_last(ids, {"neuron.gated": range(L), "head.z": range(L)})
    keep = items.accepted.tolist()
    for site, shifts in (("neuron.gated", sh.neurons), ("head.z", sh.heads)):
        acts = torch.stack([got[site][layer] for layer in range(L)], 1)  # [n, L, ...]
        X, groups = C.group_tensor(acts, items.skeleton, items.valence, items.emotion, emos, keep)
        assert len(groups) == sh.n_groups == 5
        want = (X.double() - X.double().mean(1, keepdim=True)).mean(0)  # [E, L, ...]
        torch.testing.assert_close(shifts.double(), want, atol=1e-5, rtol=1e-4)
    assert float(sh.neurons.abs().max()) > 1e-4
    with pytest.raises(EmocircuitsError):
        B.shift_vectors(model, items.drop(columns=["accepted"]), groups="accepted")


# ----------------------------------------------------------------------------- assembly


def _score_tables(emotion, n_layers, d_mlp, n_heads, seed=0):
    rng = np.random.default_rng(seed)
    ns = pd.DataFrame([{"emotion": emotion, "layer": layer, "neuron": i, "mean": float(rng.normal())}
                       for layer in range(n_layers) for i in range(d_mlp)])
    hs = pd.DataFrame([{"emotion": emotion, "layer": layer, "head": h, "score": float(rng.normal())}
                       for layer in range(n_layers) for h in range(n_heads)])
    return ns, hs


def test_assemble_circuit_top_components_and_shifts(tmp_path):
    L, d_mlp, H, dh = 3, 10, 4, 2
    ns, hs = _score_tables("fear", L, d_mlp, H)
    infl = pd.DataFrame({"emotion": "fear", "layer": [0, 0, 1, 1, 2, 2], "sublayer": ["attn", "mlp"] * 3,
                         "influence": [0.0, 0.1, 0.5, 0.0, 0.1, 0.3]})
    g = torch.Generator().manual_seed(0)
    shifts = B.Shifts(torch.randn(1, L, d_mlp, generator=g), torch.randn(1, L, H, dh, generator=g), ["fear"], 7)
    circ, alloc = B.assemble_circuit("fear", infl, ns, hs, shifts, n_layers=L, k_neurons=14, k_heads=7,
                                     min_neurons=2, min_heads=1, cap_ratio=0.5)
    a = alloc.set_index(["kind", "layer"]).k
    # neurons: weights (0.1, 0, 0.3), min 2, cap floor(0.5*14)=7: layer 2 wants 2+6, capped at 7; 1 more to layer 0
    assert [a[("neurons", layer)] for layer in range(L)] == B.allocate([0.1, 0, 0.3], 14, minimum=2,
                                                                       cap_ratio=0.5).tolist() == [5, 2, 7]
    # heads: weights (0, 0.5, 0.1), min 1, cap floor(0.5*7)=3: layer 1 fills to 3, the rest flows to layer 2
    assert [a[("heads", layer)] for layer in range(L)] == [1, 3, 3]
    assert len(circ.neurons) == 14 and len(circ.heads) == 7
    for layer, idx in circ.neurons.layers.items():
        d = ns[ns.layer == layer].sort_values("mean", ascending=False)
        assert set(idx) == set(d.neuron[: len(idx)])
        torch.testing.assert_close(circ.neuron_shift[layer], shifts.neurons[0, layer, list(idx)])
        torch.testing.assert_close(circ.scores["neurons"][layer],
                                   torch.tensor([float(d.set_index("neuron")["mean"][i]) for i in idx]))
    for layer, heads in circ.heads.by_layer().items():
        d = hs[hs.layer == layer].sort_values("score", ascending=False)
        assert set(heads) == set(d["head"][: len(heads)])
        torch.testing.assert_close(circ.head_shift[layer], shifts.heads[0, layer, list(heads)])
    assert circ.steerable
    path = circ.save(tmp_path / "fear")
    assert path.with_suffix(".safetensors").exists()
    assert Circuit.load(tmp_path / "fear") == circ


def test_assemble_circuits_on_tiny_model(tiny_llama, tmp_path):
    model, spec = tiny_llama
    items = _shift_prompts()
    dirs = C.emotion_directions(model, items, groups="all", n_boot=0, n_shuffle=0)
    co = C.local_components(model, dirs.prompts, dirs.directions, top_k=3)
    inf = B.sublayer_influence(model, dirs.prompts, dirs.directions, alphas=(0.5,), max_prompts=2)
    sh = B.shift_vectors(model, dirs.prompts)
    asm = B.assemble_circuits(inf.table, co.neuron_scores, co.head_scores, sh, n_layers=spec.n_layers)
    kn, kh = B.default_budget(spec.n_layers)
    assert set(asm.circuits) == {"anger", "fear", "sadness"}
    for c in asm.circuits.values():
        c.validate(spec)
        assert len(c.neurons) == kn
        assert len(c.heads) == min(kh, spec.n_layers * spec.n_heads)  # 12 heads exist: all taken (backfill)
        with c.intervention("steer").apply(model):
            pass
    files = save_circuits(asm.circuits, tmp_path)
    assert Circuit.load(files["fear"][: -len(".json")]) == asm.circuits["fear"]


# ----------------------------------------------------------------------------- AddPerExample


def test_add_per_example_equals_per_row_add_direction(tiny_llama):
    model, spec = tiny_llama
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(3, spec.d_model, generator=g)
    delta[1] = 0
    last = torch.tensor([3, 2, 3])
    with torch.inference_mode():
        with AddPerExample("mlp.out", {1: delta}, "last").apply(model), batch_context(last, 4), \
                capture(model, "resid.post", [2], "all") as a:
            model(ids)
        ref = []
        for r in range(3):
            with AddDirection(delta[r], "mlp.out", (1,), 1.0, "last", rows=(r,)).apply(model), \
                    batch_context(last, 4), capture(model, "resid.post", [2], "all") as b:
                model(ids)
            ref.append(b[2][0][r])
        with batch_context(last, 4), capture(model, "resid.post", [2], "all") as c:
            model(ids)
    torch.testing.assert_close(a[2][0], torch.stack(ref))
    torch.testing.assert_close(a[2][0][1], c[2][0][1])  # zero row: unchanged
    assert (a[2][0][0, 3] - c[2][0][0, 3]).abs().max() > 1e-3  # written at row 0's last token
    torch.testing.assert_close(a[2][0][0, :3], c[2][0][0, :3])  # and nowhere before it
