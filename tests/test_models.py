"""Model loading: spec resolution, bad input, the GGUF cache, ModelSpec, and bridge-vs-HF parity."""

from __future__ import annotations

import time

import pytest
import torch

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.interventions import ZeroHeads, ZeroNeurons, active_hook_count
from emocircuits.core.models import (
    dequantised_dir,
    embedded_gguf_path,
    load_model,
    resolve_spec,
    spec_of,
    tiny_model,
)
from emocircuits.core.sites import available_sites, hook_name, layer_range
from emocircuits.core.units import HeadSet


def test_unknown_specs_fail_fast_with_one_sentence(tmp_path):
    cases = {
        "no-such-model": "Unknown model spec",
        "someorg/not-cached-model-xyz": "not in the local Hugging Face cache",
        str(tmp_path / "missing.gguf"): "does not exist",
    }
    for spec, msg in cases.items():
        t0 = time.perf_counter()
        with pytest.raises(EmocircuitsError, match=msg) as err:
            resolve_spec(spec)
        assert time.perf_counter() - t0 < 10  # fails fast, never hangs on the network
        assert "\n" not in str(err.value)
    (tmp_path / "config.txt").write_text("x")
    with pytest.raises(EmocircuitsError, match="no config.json"):
        resolve_spec(str(tmp_path))


def test_corrupt_gguf_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOCIRCUITS_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(EmocircuitsError, match="Could not read GGUF file"):
        load_model(str(bad), progress=False)
    assert not list((tmp_path / "cache" / "gguf").glob("*/config.json"))  # nothing half-written


def test_tiny_model_specs():
    bridge, spec = tiny_model("llama")
    assert (spec.n_layers, spec.d_model, spec.d_mlp, spec.n_heads, spec.n_kv_heads, spec.d_head) == (3, 64, 96, 4, 2, 16)
    assert spec.gated_mlp and spec.act_fn == "silu"
    assert spec_of(bridge) is spec
    _, gspec = tiny_model("gpt2")
    assert not gspec.gated_mlp and gspec.n_kv_heads == gspec.n_heads
    assert tiny_model("llama", seed=0)[1].weights_hash == spec.weights_hash
    assert tiny_model("llama", seed=1)[1].weights_hash != spec.weights_hash
    with pytest.raises(EmocircuitsError, match="Unknown tiny architecture"):
        tiny_model("mamba")


def test_site_table_covers_both_families(tiny_llama, tiny_gpt2):
    for bridge, _ in (tiny_llama, tiny_gpt2):
        assert {"neuron.gated", "neuron.pre", "head.z", "resid.mid", "resid.post", "attn.out", "mlp.out"} <= set(
            available_sites(bridge))
    assert hook_name(tiny_llama[0], "silu_only", 1) == "blocks.1.mlp.hook_pre"  # act(gate) read from the gate
    assert hook_name(tiny_gpt2[0], "silu_only", 1) == "blocks.1.mlp.hook_post"  # collapses on plain MLPs
    with pytest.raises(EmocircuitsError, match=r"layers 0\.\.2"):
        hook_name(tiny_llama[0], "resid.post", 3)


def test_layer_ranges():
    assert layer_range(30, "bottom") == list(range(0, 10))
    assert layer_range(30, "middle") == list(range(10, 20))
    assert layer_range(30, "top") == list(range(20, 30))
    assert layer_range(30, "3-5") == [3, 4, 5]
    with pytest.raises(EmocircuitsError, match="out of range"):
        layer_range(30, "25-31")
    with pytest.raises(EmocircuitsError, match="Unknown layer range"):
        layer_range(30, "upper")


@pytest.mark.slow
def test_embedded_model_loads_from_cache_with_right_shape():
    assert embedded_gguf_path() is not None
    dequantised_dir(embedded_gguf_path(), progress=False)  # warm the cache (first time: ~25 s)
    t0 = time.perf_counter()
    bridge, spec = load_model("default", progress=False)
    elapsed = time.perf_counter() - t0
    print(f"cached load of the embedded model: {elapsed:.1f}s")
    assert (spec.n_layers, spec.d_model, spec.d_mlp, spec.n_heads, spec.n_kv_heads) == (30, 576, 1536, 9, 3)
    assert spec.gated_mlp and spec.architecture == "LlamaForCausalLM" and len(spec.weights_hash) == 64


@pytest.mark.slow
def test_bridge_logits_equal_transformers_logits(smol):
    bridge, _ = smol
    hf = bridge.original_model
    ids = bridge.tokenizer(["I just heard the news and I cannot stop smiling."], return_tensors="pt").input_ids
    with torch.inference_mode():
        ours = bridge(ids)
        ref = hf(ids).logits
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.mark.slow
def test_interventions_on_embedded_model(smol):
    bridge, spec = smol
    ids = bridge.tokenizer(["That was disgusting."], return_tensors="pt").input_ids
    seen = []
    down = bridge.blocks[12].mlp.out.original_component
    h = down.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    try:
        with torch.inference_mode():
            clean_logits = bridge(ids)
            with ZeroNeurons({12: [100]}).apply(bridge):
                bridge(ids)
            with ZeroHeads(HeadSet(((12, 4),)), factor=1.0).apply(bridge):
                same = bridge(ids)
    finally:
        h.remove()
    changed = (seen[0] != seen[1]).reshape(-1, spec.d_mlp).any(0).nonzero().flatten().tolist()
    assert changed == [100]
    torch.testing.assert_close(same, clean_logits, rtol=0, atol=0)
    assert active_hook_count(bridge) == 0
