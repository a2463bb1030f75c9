"""Batched generation with interventions, over the forward runner.

Prompts run right-padded in token-budget batches with a key/value cache; the prompt's shared prefix
runs once per call. Inside :func:`~emocircuits.core.runner.clean_kv`, an unsteered generation keeps each
prompt's clean keys/values and a steered one over the same prompts prefills only from the first position its
interventions change (``last``, ``generated``: the prompt's last token). Every applied intervention acts on
every step. What positions mean while decoding:

==============  ===================================================================
``all``         every token: the prompt's and each new one
``prompt``      the prompt's tokens only
``prompt_last`` the prompt's last token only
``generated``   each new token only
``last``        the prompt's last token and then each new token (Wang et al.'s residual steering)
``(i, ...)``    absolute positions; negative ones count back from the newest token
==============  ===================================================================

A reply ends at the model's end-of-turn token (``eos``), a ``stop`` string (``stop``), after ``sentences``
complete sentences (``sentence``: a ``.``, ``!``, ``?`` or ``…``, with closing quotes or brackets, that ends the
text or is followed by white space; a full stop right after a digit ends a sentence only when white space
follows) or at ``max_new_tokens`` (``length``: cut off).

A generation is the same batched as one prompt at a time (greedy: token for token; sampling: each
prompt's random stream is seeded by ``seed`` and the prompt itself, not by its batch).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.interventions import BatchInfo, PrefixUnsafe, active_hook_count
from emocircuits.core.runner import FINAL, Batch, Runner, check_cache

Prompt = str | Sequence[int] | Sequence[Mapping[str, str]]

FINISHED = ("eos", "stop", "sentence")
"""The ``finish`` values of a reply that ended by itself; ``length`` is a reply cut off at the token limit."""

_SENTENCE_END = re.compile(r"(?:(?<![0-9])[.!?…]+|[0-9][.]*[!?…]+|[0-9]\.(?=\s))[\"'”’)\]]*(?=\s|$)")


def count_sentences(text: str) -> int:
    """Complete sentences in ``text``: sentence-final punctuation (``.!?…``, then any closing quotes or
    brackets) that ends the text or is followed by white space. ``"3."`` at the very end is not counted
    (it may be a number that goes on)."""
    return len(_SENTENCE_END.findall(text.strip()))


@dataclass
class Generation:
    """Generated replies, in input order: ``texts``, ``token_ids`` (new tokens, stop token excluded),
    ``prompt_ids`` and ``finish`` (``eos``, ``stop`` or ``length``) per prompt."""

    texts: list[str]
    token_ids: list[list[int]]
    prompt_ids: list[list[int]]
    finish: list[str]
    config: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


def encode_prompts(runner: Runner, prompts: Sequence[Prompt], system: str | None = None) -> list[list[int]]:
    """Token ids of each prompt: a string is plain text (the model's BOS convention), a list of ints is
    already tokenised, a list of ``{"role", "content"}`` messages goes through the chat template."""
    tok = runner.tokenizer
    out: list[list[int]] = []
    for p in prompts:
        if isinstance(p, str):
            if system is not None:
                out += encode_prompts(runner, [[{"role": "user", "content": p}]], system)
            else:
                out += runner.encode([p])
        elif len(p) and isinstance(p[0], Mapping):
            if not getattr(tok, "chat_template", None):
                raise EmocircuitsError("This model's tokenizer has no chat template; pass plain-text prompts instead.")
            msgs = ([{"role": "system", "content": system}] if system else []) + [dict(m) for m in p]
            text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            out += runner.encode([text], special=True)
        else:
            ids = [int(t) for t in p]
            if not ids:
                raise EmocircuitsError("A prompt has no tokens; give each prompt at least one token.")
            out.append(ids)
    return out


def _stop_ids(model: Any) -> set[int]:
    ids = {model.tokenizer.eos_token_id}
    gen_cfg = getattr(getattr(model, "original_model", None), "generation_config", None)
    extra = getattr(gen_cfg, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list | tuple) else [extra])
    return {int(i) for i in ids if i is not None}


def _banned_ngram(seq: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram of ``seq`` (HF's no_repeat_ngram_size rule)."""
    if n <= 0 or len(seq) < n:
        return set()
    tail = tuple(seq[len(seq) - n + 1:])
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == tail}


def generate(
    model: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 48,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    stop: Sequence[str] = (),
    sentences: int = 0,
    system: str | None = None,
    max_tokens: int = 8192,
    share_prefix: bool = True,
    progress: bool = False,
) -> Generation:
    """Generate a reply to each prompt under the interventions applied now.

    ``prompts``: strings (plain text, or a user turn when ``system`` is given), token-id lists, or chat
    message lists. ``max_tokens`` budgets each batch as rows × (prompt + new tokens). Greedy unless
    ``do_sample``; ``stop`` strings end a reply (the text is cut before the stop string).
    """
    from tqdm.auto import tqdm

    if max_new_tokens < 1:
        raise EmocircuitsError(f"max_new_tokens must be at least 1 (got {max_new_tokens}).")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise EmocircuitsError(f"min_new_tokens must be in 0..{max_new_tokens} (got {min_new_tokens}).")
    if do_sample and (temperature <= 0 or not 0 < top_p <= 1):
        raise EmocircuitsError(f"Sampling needs temperature > 0 and top_p in (0, 1] (got {temperature}, {top_p}).")
    if repetition_penalty <= 0:
        raise EmocircuitsError(f"repetition_penalty must be > 0 (got {repetition_penalty}).")
    if sentences < 0:
        raise EmocircuitsError(f"sentences must be 0 (no sentence stop) or more (got {sentences}).")
    runner = Runner(model, max_tokens=max_tokens, share_prefix=share_prefix)
    ids = encode_prompts(runner, list(prompts), system)
    if not ids:
        raise EmocircuitsError("No prompts to generate from.")
    runner.fit_context(ids, max_new_tokens)
    settings = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, do_sample=do_sample,
                    temperature=temperature, top_p=top_p, seed=seed, repetition_penalty=repetition_penalty,
                    no_repeat_ngram_size=no_repeat_ngram_size, stop=list(stop), sentences=int(sentences))
    batches = runner.batches(ids, max_tokens=max(1, max_tokens - max_new_tokens))
    new = [[] for _ in ids]
    finish = ["length"] * len(ids)
    with torch.inference_mode():
        firsts = runner.reusable(batches, generating=True)
        store = runner.clean is not None and not active_hook_count(model)
        offset, prefix = 0, None
        if firsts is None:
            offset = runner.shared_prefix(batches)
            if offset:
                try:
                    prefix = runner.prefix_cache(batches, offset, FINAL, generating=True)
                except PrefixUnsafe:
                    offset = 0
        for i, batch in enumerate(tqdm(batches, desc="generate", unit="batch", disable=not progress)):
            _decode_batch(runner, batch, offset, prefix, new, finish, settings,
                          first=firsts[i] if firsts is not None else None, store=store)
    texts = []
    for toks in new:
        text = runner.tokenizer.decode(toks, skip_special_tokens=True)
        for s in stop:
            if s and s in text:
                text = text[: text.index(s)]
        texts.append(text)
    return Generation(texts, new, ids, finish, settings)


def _decode_batch(runner: Runner, batch: Batch, offset: int, prefix: Any, new: list[list[int]], finish: list[str],
                  s: dict[str, Any], *, first: Tensor | None = None, store: bool = False) -> None:
    """Prefill one batch and decode until every row stops; writes into ``new`` and ``finish``.

    ``first [b]``: prefill only each row's tokens from there on, over the runner's stored clean keys/values;
    ``store``: keep this (clean) prefill's keys/values in the runner's store."""
    from transformers import DynamicCache

    model, dev = runner.model, runner.device()
    b, p = batch.input_ids.shape
    rows = torch.tensor(batch.rows, dtype=torch.long)
    stop_ids = _stop_ids(model)
    lengths = batch.lengths
    if first is not None:
        x, info, kwargs = runner.tail_inputs(batch, first, generating=True)
        cache, attn = kwargs["past_key_values"], kwargs["attention_mask"].cpu()
        h = runner.forward(x.to(dev), FINAL, info=info, **kwargs)
        logits = runner.logits(h[torch.arange(b), lengths - 1 - first])  # [b, vocab]
    else:
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            cache.batch_repeat_interleave(b)
        else:
            cache = DynamicCache()
        info = BatchInfo(torch.arange(offset, p)[None, :], lengths, lengths, rows, batch.keys, generating=True)
        h = runner.forward(batch.input_ids[:, offset:].to(dev), FINAL, info=info, past_key_values=cache,
                           use_cache=True)
        check_cache(cache, p)
        if store and runner.clean is not None:
            runner.clean.keep(batch, cache)
        logits = runner.logits(h[torch.arange(b), lengths - 1 - offset])  # [b, vocab]
        attn = batch.pad_mask.long()
    gens = [torch.Generator().manual_seed((s["seed"] * 1_000_003 + int(k)) & 0x7FFF_FFFF_FFFF_FFFF) for k in batch.keys]
    seqs = [batch.input_ids[j, : int(lengths[j])].tolist() for j in range(b)]
    done = [False] * b
    for t in range(s["max_new_tokens"]):
        nxt = []
        for j in range(b):
            if done[j]:
                nxt.append(runner.pad_id)
                continue
            tok = _choose(logits[j].clone(), seqs[j], len(new[batch.rows[j]]), stop_ids, gens[j], s)
            nxt.append(tok)
            if tok in stop_ids:
                done[j], finish[batch.rows[j]] = True, "eos"
                continue
            new[batch.rows[j]].append(tok)
            seqs[j].append(tok)
            if s["stop"] or s["sentences"]:
                text = runner.tokenizer.decode(new[batch.rows[j]], skip_special_tokens=True)
                if s["stop"] and any(x and x in text for x in s["stop"]):
                    done[j], finish[batch.rows[j]] = True, "stop"
                elif s["sentences"] and count_sentences(text) >= s["sentences"]:
                    done[j], finish[batch.rows[j]] = True, "sentence"
        if all(done) or t == s["max_new_tokens"] - 1:
            break
        attn = torch.cat([attn, torch.ones(b, 1, dtype=attn.dtype)], dim=1)
        pos = (lengths + t)[:, None]
        info = BatchInfo(pos, lengths, lengths + t + 1, rows, batch.keys, generating=True)
        h = runner.forward(torch.tensor(nxt, device=dev)[:, None], FINAL, info=info, past_key_values=cache,
                           use_cache=True, attention_mask=attn.to(dev), position_ids=pos.to(dev))
        logits = runner.logits(h[:, -1])


def _choose(logits: Tensor, seq: list[int], n_new: int, stop_ids: set[int], gen: torch.Generator,
            s: dict[str, Any]) -> int:
    """The next token from one row's logits ``[vocab]`` under the generation settings."""
    if s["repetition_penalty"] != 1.0 and seq:
        idx = torch.tensor(sorted(set(seq)), dtype=torch.long)
        vals = logits[idx]
        logits[idx] = torch.where(vals < 0, vals * s["repetition_penalty"], vals / s["repetition_penalty"])
    banned = _banned_ngram(seq, s["no_repeat_ngram_size"])
    if n_new < s["min_new_tokens"]:
        banned |= stop_ids
    if banned:
        logits[torch.tensor(sorted(banned), dtype=torch.long)] = -float("inf")
    if not s["do_sample"]:
        return int(logits.argmax())
    probs = torch.softmax(logits / s["temperature"], dim=-1)
    if s["top_p"] < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < s["top_p"]
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))
