"""The runner refuses to run on a key/value cache the model never fills (a transformers / transformer-lens
mismatch made every cached forward silently wrong)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.runner import check_cache


def test_filled_cache_passes(tiny_llama):
    model, _ = tiny_llama
    cache = DynamicCache()
    with torch.inference_mode():
        model(torch.arange(3, 10)[None], past_key_values=cache, use_cache=True)
    check_cache(cache, 7)


def test_empty_cache_is_one_sentence():
    with pytest.raises(EmocircuitsError, match=r"holds 0 positions after a forward over 7 tokens: transformers .* "
                                               r"and transformer-lens .* do not work together"):
        check_cache(DynamicCache(), 7)
