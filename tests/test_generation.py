"""Batched generation with interventions: batched = one at a time, cache = no cache, seeded sampling,
the decoding position names, and tokenisation as the model's own tokenizer does it."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from emocircuits.core.generation import generate
from emocircuits.core.interventions import AddDirection, ZeroNeurons, capture
from emocircuits.core.models import dequantised_dir, embedded_gguf_path, tiny_model
from emocircuits.core.prompts import TEMPLATES
from emocircuits.core.readout import LabelReadout
from emocircuits.core.runner import Runner
from emocircuits.core.units import NeuronSet

PROMPTS = [
    "Write one word.",
    "The train was late again and",
    "My grandmother's garden in the spring smelled of",
    "When the results came back, everyone in the room",
    "I opened the box and",
    "The meeting ended with",
    "She looked out of the window at the rain falling on the empty street and thought about",
    "Tomorrow",
    "He laughed because",
    "After twelve hours in the waiting room, the nurse finally called my name, and I",
    "The dog barked at",
    "Our team lost the final by one point, so",
    "The letter said",
    "I could not believe the price of",
    "At midnight the lights went out and",
    "The cake",
    "Nobody told me that the exam had been moved to",
    "My neighbour keeps parking in front of my garage, which",
    "The concert was",
    "We finally reached the top of the mountain and the view",
    "Hello",
]


def _no_cache_greedy(model, ids: list[int], n: int, stop_ids: set[int]) -> list[int]:
    """Reference: a full forward over the whole sequence for every new token (no cache, no batching)."""
    seq, out = list(ids), []
    with torch.inference_mode():
        for _ in range(n):
            tok = int(model(torch.tensor([seq]))[0, -1].argmax())
            if tok in stop_ids:
                break
            out.append(tok)
            seq.append(tok)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_batched_equals_single_and_no_cache(arch):
    model, spec = tiny_model(arch)
    v = torch.randn(spec.d_model, generator=torch.Generator().manual_seed(0))
    for iv in [None, AddDirection(v, layers=(1,), scale=6.0, positions="last")]:
        ctx = iv.apply(model) if iv is not None else _null()
        with ctx:
            batched = generate(model, PROMPTS, max_new_tokens=8, max_tokens=600)
            singles = [generate(model, [p], max_new_tokens=8) for p in PROMPTS]
            stop = {model.tokenizer.eos_token_id}
            refs = [_no_cache_greedy(model, ids, 8, stop) for ids in batched.prompt_ids[:6]]
        for i, one in enumerate(singles):
            assert batched.token_ids[i] == one.token_ids[0], (iv, i)
            assert batched.texts[i] == one.texts[0]
        for i, ref in enumerate(refs):
            assert batched.token_ids[i] == ref, (iv, i)
    assert len({len(p) for p in batched.prompt_ids}) >= 10  # the prompts really differ in length


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_sampling_is_seeded_and_batch_independent(tiny_llama):
    model, _ = tiny_llama
    a = generate(model, PROMPTS[:6], max_new_tokens=6, do_sample=True, temperature=1.3, top_p=0.9, seed=3)
    b = generate(model, PROMPTS[:6], max_new_tokens=6, do_sample=True, temperature=1.3, top_p=0.9, seed=3)
    c = generate(model, PROMPTS[:6], max_new_tokens=6, do_sample=True, temperature=1.3, top_p=0.9, seed=4)
    one = generate(model, [PROMPTS[2]], max_new_tokens=6, do_sample=True, temperature=1.3, top_p=0.9, seed=3)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids
    assert a.token_ids[2] == one.token_ids[0]


def test_min_new_tokens_stop_strings_and_penalties(tiny_llama):
    model, _ = tiny_llama
    g = generate(model, PROMPTS[:4], max_new_tokens=12, min_new_tokens=12, no_repeat_ngram_size=2)
    for toks in g.token_ids:
        assert len(toks) == 12
        grams = [tuple(toks[i:i + 2]) for i in range(len(toks) - 1)]
        assert len(grams) == len(set(grams))
    first = g.texts[0]
    cut = first[len(first) // 2:][:3]
    if cut.strip():
        h = generate(model, PROMPTS[:1], max_new_tokens=12, min_new_tokens=12, no_repeat_ngram_size=2, stop=[cut])
        assert cut not in h.texts[0] and h.finish[0] == "stop"


@pytest.mark.parametrize("positions, expect", [
    ("prompt", {"prompt": True, "gen": False}),
    ("prompt_last", {"prompt_last_only": True, "gen": False}),
    ("generated", {"prompt": False, "gen": True}),
    ("last", {"prompt_last_only": True, "gen": True}),
    ("all", {"prompt": True, "gen": True}),
])
def test_decoding_position_names(tiny_llama, positions, expect):
    """Where a neuron write lands while decoding, read back from the down-projection input."""
    model, spec = tiny_llama
    neuron = NeuronSet({1: (5,)})
    seen: list[torch.Tensor] = []
    with ZeroNeurons(neuron, positions=positions).apply(model), capture(model, "neuron.gated", [1], "all") as got:
        g = generate(model, [PROMPTS[1]], max_new_tokens=4, min_new_tokens=4, share_prefix=False)
    seen = [x[0, :, 5] for x in got[1]]  # prefill [p], then one value per decoding step
    n_prompt = len(g.prompt_ids[0])
    prompt_vals, gen_vals = seen[0], torch.cat(seen[1:])
    if "prompt" in expect:
        assert bool((prompt_vals == 0).all()) == expect["prompt"]
    if expect.get("prompt_last_only"):
        assert prompt_vals[-1] == 0 and bool((prompt_vals[:-1] != 0).all())
    assert bool((gen_vals == 0).all()) == expect["gen"]
    assert prompt_vals.shape[0] == n_prompt


def _native_tokenizer(prepend_bos: bool):
    path = embedded_gguf_path()
    directory, _ = dequantised_dir(path, progress=False)
    tok = AutoTokenizer.from_pretrained(str(directory))
    if prepend_bos:
        tok.add_bos_token = True
    return tok


@pytest.mark.parametrize("arch, prepend_bos", [("llama", False), ("gpt2", False), ("llama", True)])
def test_template_ids_equal_native_tokenizer(arch, prepend_bos):
    model, spec = tiny_model(arch, prepend_bos=prepend_bos or None)
    assert spec.prepend_bos == prepend_bos
    native = _native_tokenizer(prepend_bos)
    text = "I finally got the letter I had been waiting for."
    for name, tpl in TEMPLATES.items():
        ro = LabelReadout(model, ("anger", "happiness"), name)
        got = ro.encode([text])[0]
        rendered = ro.render([text])[0]
        if tpl.kind == "chat":
            want = native.encode(rendered, add_special_tokens=False)
        else:
            want = native.encode(rendered)
        assert got == want, name
    assert (Runner(model).encode(["hi"])[0][0] == native.bos_token_id) == prepend_bos


@pytest.mark.slow
def test_embedded_model_native_tokenisation(smol):
    model, spec = smol
    assert spec.prepend_bos is False  # SmolLM2's own tokenizer adds no BOS to plain text
    native = _native_tokenizer(False)
    for name in ("raw", "fewshot", "chat_short"):
        ro = LabelReadout(model, ("anger", "happiness"), name)
        rendered = ro.render(["It rained all day."])[0]
        want = native.encode(rendered, add_special_tokens=TEMPLATES[name].kind != "chat")
        assert ro.encode(["It rained all day."])[0] == want


def test_prepend_bos_option_adds_exactly_one_counted_token_per_text(tiny_llama):
    from emocircuits.data import Example
    from emocircuits.methods import neurons

    model, _ = tiny_llama
    exs = [Example(id=str(i), text=t, label=lab) for i, (t, lab) in
           enumerate([("The bus left.", "anger"), ("Mould on the bread.", "disgust"), ("A noise upstairs.", "anger")])]
    native = neurons.collect(model, exs, labels=("anger", "disgust"), template="raw", progress=False)
    bos = neurons.collect(model, exs, labels=("anger", "disgust"), template="raw", prepend_bos=True, progress=False)
    assert native.config["prepend_bos"] is False and bos.config["prepend_bos"] is True
    assert (bos.totals - native.totals).tolist() == [2, 1]  # one BOS per text, counted under its label
