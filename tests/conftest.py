"""Shared fixtures: tiny random models (fast tier) and the embedded SmolLM2 (slow tier)."""

from __future__ import annotations

import pytest
import torch

from emocircuits.core.models import load_model, tiny_model

_DEFAULT_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _threads(request):
    """Tiny models run on one thread: their matmuls are too small to split, and two OpenMP threads on a
    busy 2-core machine made them 100x slower. Tests on the embedded model keep every core."""
    slow = request.node.get_closest_marker("slow") is not None
    torch.set_num_threads(_DEFAULT_THREADS if slow else 1)
    yield


@pytest.fixture(autouse=True, scope="session")
def _prior_cache_outside_user_cache(tmp_path_factory):
    """Label priors that classify() caches on disk go to a session temp dir, never the user's cache."""
    from emocircuits.core import prior_cache

    where = tmp_path_factory.mktemp("priors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prior_cache, "prior_cache_dir", lambda: where)
        yield


@pytest.fixture(scope="session")
def tiny_llama():
    """(bridge, spec) of a 3-layer random Llama-style model (GQA 4 query / 2 KV heads, gated SiLU MLP)."""
    return tiny_model("llama", seed=0)


@pytest.fixture(scope="session")
def tiny_gpt2():
    """(bridge, spec) of a 3-layer random GPT-2-style model (plain GELU MLP)."""
    return tiny_model("gpt2", seed=0)


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_any(request):
    return tiny_model(request.param, seed=0)


@pytest.fixture(scope="session")
def smol():
    """(bridge, spec) of the embedded SmolLM2-135M-Instruct in float32."""
    return load_model("default", dtype=torch.float32, progress=False)


@pytest.fixture()
def token_ids(tiny_llama):
    bridge, _ = tiny_llama
    return bridge.tokenizer(["I cannot believe they cancelled the trip again"], return_tensors="pt").input_ids
