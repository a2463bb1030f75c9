"""The forward runner: the one way prompts reach the model.

encode (the model's own BOS convention) → batches by token budget, right-padded, longest first →
optional shared-prefix key/value cache → a :class:`~emocircuits.core.interventions.BatchInfo` for every
forward pass → forward, stopping at a site (no logits unless asked) or starting at a layer from a
captured residual → optional gradients.

Every analysis (label readout, neuron statistics, the masking engine, token views, generation,
directions, probes, patching) runs its prompts through :class:`Runner`; nobody else builds batches.

**Shared prefix.** Classification and elicitation prompts start with the same system/instruction tokens.
A pass computes those tokens once (batch size 1) under the hooks attached at that moment and reuses
their keys/values for every batch of the pass. Hooks fire on that prefix forward too, with a batch
context marked ``shared``: a write that is the same for every row (zeroing neurons everywhere, adding a
direction at every position) is applied once; a write that differs between rows on the prefix (a
``rows=`` restriction, per-row noise or patching there) makes the runner run that pass without
sharing — the numbers never depend on whether the prefix was shared.

**Clean keys/values.** A runner asked to :meth:`~Runner.keep_clean` (or any runner inside
:func:`clean_kv`) stores each prompt's keys/values, within a memory budget, from passes that read only the
last token (``last_only``: the label readout) run with no hooks attached, and from clean generation
prefills. A later such pass over stored prompts, under interventions that leave each row's tokens before
position ``q`` untouched (knockout or patching at the last token: ``q`` = the last token), reuses the stored
keys/values there and runs only each row's tokens from ``q`` on. The footprint comes from the interventions
themselves (:func:`~emocircuits.core.interventions.first_position_attached`); a hook whose footprint is
unknown, or one attached by hand, makes the pass compute every position.

**Positions** given to interventions are absolute positions of each row's own sequence; padding, the
shared prefix and reused keys/values are invisible to them (``tests/test_batch_invariance.py``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from emocircuits.base.constants import KV_MEMORY
from emocircuits.base.errors import EmocircuitsError, spell
from emocircuits.core.interventions import (
    BatchInfo,
    PrefixUnsafe,
    active_hook_count,
    batch_context,
    blocks_skipped,
    capture,
    first_position_attached,
    observe,
    run_until,
)
from emocircuits.core.models import spec_of
from emocircuits.core.sites import hook_name, weight

MIN_SHARED_PREFIX = 8


"""Shared prefixes shorter than this are not worth a separate forward."""


Stop = tuple[str, int | None]


FINAL: Stop = ("final.norm", None)


@dataclass
class Batch:
    """A right-padded batch: ``input_ids [b, p]``, ``lengths [b]`` real tokens per row, ``rows``: each
    row's index in the list of prompts the batch was made from, ``keys [b]``: a stable key per prompt.
    ``prompt_lengths [b]`` (optional): when the rows are prompts followed by a teacher-forced continuation
    (full-label scoring), the prompt part's length; positions after it count as generated."""

    input_ids: Tensor
    lengths: Tensor
    rows: list[int]
    keys: Tensor
    prompt_lengths: Tensor | None = None

    @property
    def last_index(self) -> Tensor:
        """``[b]`` position of each row's last real token."""
        return self.lengths - 1

    @property
    def pad_mask(self) -> Tensor:
        """``[b, p]`` True on real tokens."""
        return torch.arange(self.input_ids.shape[1])[None, :] < self.lengths[:, None]

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Step:
    """One batch's forward inside a pass: its columns start at absolute position ``offset`` (an int, or
    ``[b]`` per row when the pass reused clean keys/values before each row's first changed token).

    ``hidden [b, n, d_model]``: the final normalised residual when the pass stops at ``final.norm``
    (else None).
    """

    batch: Batch
    offset: int | Tensor
    hidden: Tensor | None = None

    def at(self, positions: Tensor) -> Tensor:
        """Final hidden states ``[b, k, d_model]`` at absolute ``positions [b, k]``."""
        if self.hidden is None:
            raise EmocircuitsError("This pass did not run to final.norm; pass stop=FINAL to read hidden states.")
        offset = self.offset[:, None].to(self.hidden.device) if isinstance(self.offset, Tensor) else self.offset
        idx = positions.to(self.hidden.device) - offset
        if isinstance(self.offset, Tensor) and bool((idx < 0).any()):
            raise EmocircuitsError("This pass reran only each row's tokens from its first changed one; read "
                                   "positions from there on, or run the pass with last_only=False.")
        idx = idx.clamp(min=0)
        return torch.gather(self.hidden, 1, idx[..., None].expand(-1, -1, self.hidden.shape[-1]))

    def last(self) -> Tensor:
        """Final hidden state at each row's last real token ``[b, d_model]``."""
        return self.at(self.batch.last_index[:, None])[:, 0]


def prompt_key(ids: Sequence[int]) -> int:
    """A stable 63-bit key of a token sequence (seeds per-prompt noise and sampling)."""
    digest = hashlib.sha256(",".join(map(str, ids)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all sequences share, at most (shortest length − 1)."""
    if len(seqs) < 2:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(max(n, 0)):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return max(n, 0)


def check_cache(cache: Any, n_tokens: int) -> None:
    """Raise unless ``cache`` holds keys/values for ``n_tokens`` positions after a cached forward.

    Some transformers / transformer-lens pairs accept a cache and never fill it; every cached forward
    would then silently attend to nothing before its own tokens.
    """
    got = cache.get_seq_length()
    if got != n_tokens:
        from importlib.metadata import version

        raise EmocircuitsError(
            f"The model's key/value cache holds {got} positions after a forward over {n_tokens} tokens: "
            f"transformers {version('transformers')} and transformer-lens {version('transformer-lens')} "
            "do not work together; install the versions pyproject.toml allows (pip install -e .)."
        )


class CleanKV:
    """Each stored prompt's clean keys/values: ``{prompt key: (ids, [(k [h, p, d], v [h, p, d]) per layer])}``,
    within ``budget`` bytes (prompts past it are not stored)."""

    def __init__(self, budget: int = KV_MEMORY) -> None:
        self.budget = int(budget)
        self.used = 0
        self.served = 0  # positions handed out to passes instead of being computed, over the store's life
        self.rows: dict[int, tuple[tuple[int, ...], list[tuple[Tensor, Tensor]]]] = {}

    def keep(self, batch: Batch, cache: Any) -> None:
        """Store every row of ``batch`` from the cache of its clean forward (all layers, all positions)."""
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        for j, key in enumerate(batch.keys.tolist()):
            n = int(batch.lengths[j])
            ids = tuple(batch.input_ids[j, :n].tolist())
            if key in self.rows:
                continue
            kv = [(k[j, :, :n].clone(), v[j, :, :n].clone()) for k, v in layers]
            size = sum(k.numel() * k.element_size() * 2 for k, _ in kv)
            if self.used + size > self.budget:
                return
            self.rows[key] = (ids, kv)
            self.used += size

    def has(self, batch: Batch) -> bool:
        return all(int(k) in self.rows and len(self.rows[int(k)][0]) == int(n)
                   for k, n in zip(batch.keys.tolist(), batch.lengths.tolist(), strict=True))

    def cache(self, batch: Batch, first: Tensor) -> tuple[Any, Tensor]:
        """A key/value cache ``[b, h, q_max, d]`` per layer holding each row's first ``first[j]`` positions
        (zeros after them), and the 0/1 mask ``[b, q_max]`` of those positions."""
        from transformers import DynamicCache

        rows = [self.rows[int(k)][1] for k in batch.keys.tolist()]
        q_max = int(first.max())
        self.served += int(first.sum())
        mask = (torch.arange(q_max)[None, :] < first[:, None]).long()
        layers = []
        for li in range(len(rows[0])):
            k0 = rows[0][li][0]
            k = k0.new_zeros(len(rows), k0.shape[0], q_max, k0.shape[-1])
            v = torch.zeros_like(k)
            for j, kv in enumerate(rows):
                q = int(first[j])
                k[j, :, :q] = kv[li][0][:, :q]
                v[j, :, :q] = kv[li][1][:, :q]
            layers.append((k, v))
        return DynamicCache(layers), mask


SHARED_STORE = "_emocircuits_clean_kv"


@contextlib.contextmanager
def clean_kv(model: Any, budget: int = KV_MEMORY) -> Iterator[CleanKV]:
    """Inside the block, every runner on ``model`` (readouts, generation) shares one store of clean keys/values:
    passes and prefills run with no hooks attached fill it, and later passes and prefills over the same prompts
    reuse it before the first position their interventions change (e.g. steering at the last prompt token
    and the new tokens). Keys/values belong to the weights: change no weight inside the block."""
    before = model.__dict__.get(SHARED_STORE)
    store = before if before is not None else CleanKV(budget)
    model.__dict__[SHARED_STORE] = store
    try:
        yield store
    finally:
        if before is None:
            model.__dict__.pop(SHARED_STORE, None)


class Runner:
    """Batches prompts for one model and runs them under whatever interventions are applied.

    Args:
        model: a TransformerBridge loaded by :func:`emocircuits.load_model`.
        max_tokens: token budget per batch (rows × padded length).
        share_prefix: compute the prefix every prompt of a pass shares once (see module docstring).
        prepend_bos: put BOS before plain-text prompts; None = what the model's own tokenizer does
            (``ModelSpec.prepend_bos``). Chat-rendered prompts carry their special tokens already.
        grad: run with gradients (attribution patching); default inference mode.
    """

    def __init__(self, model: Any, *, max_tokens: int = 4096, share_prefix: bool = True,
                 prepend_bos: bool | None = None, grad: bool = False) -> None:
        if max_tokens < 1:
            raise EmocircuitsError(f"max_tokens must be at least 1 (got {max_tokens}).")
        self.model = model
        self.spec = spec_of(model)
        self.tokenizer = model.tokenizer
        self.max_tokens = int(max_tokens)
        self.share_prefix = share_prefix
        self.prepend_bos = self.spec.prepend_bos if prepend_bos is None else bool(prepend_bos)
        self.grad = grad
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self.last_offset = 0  # the shared prefix length the latest pass used (0 = none)
        self.clean: CleanKV | None = model.__dict__.get(SHARED_STORE)  # clean keys/values (keep_clean, clean_kv)
        self.last_reused = 0  # positions the latest pass took from clean keys/values instead of computing

    def keep_clean(self, budget: int = KV_MEMORY) -> Runner:
        """From now on store each prompt's clean keys/values (at most ``budget`` bytes) from ``last_only`` passes
        run with no hooks attached, and reuse them in later ``last_only`` passes before the first position the
        interventions change."""
        if self.clean is None or self.clean.budget != budget:
            self.clean = CleanKV(budget)
        return self

    # ------------------------------------------------------------------ prompts
    def encode(self, prompts: Sequence[str], *, special: bool = False) -> list[list[int]]:
        """Token ids ``[[p_i], ...]``. ``special=False``: plain text, BOS per ``prepend_bos``;
        ``special=True``: a rendered chat prompt that already holds its special tokens."""
        bos = self.tokenizer.bos_token_id
        out = []
        for s in prompts:
            ids = list(self.tokenizer.encode(s, add_special_tokens=False))
            if not special and self.prepend_bos and bos is not None:
                ids = [int(bos)] + ids
            if not ids:
                raise EmocircuitsError("A prompt tokenised to no tokens; check the template and texts are non-empty.")
            out.append(ids)
        return out

    def fit_context(self, token_ids: Sequence[Sequence[int]], new_tokens: int = 0) -> None:
        """Refuse (one sentence naming the prompt by its place and words and the model's context length) a prompt
        whose tokens, plus ``new_tokens`` to generate, do not fit the model's context (``ModelSpec.n_ctx``).
        Texts are refused, not truncated: a cut text would be classified or steered as if it were whole."""
        n_ctx = self.spec.n_ctx
        if not n_ctx:
            return
        for i, ids in enumerate(token_ids):
            if len(ids) + new_tokens <= n_ctx:
                continue
            middle = len(ids) // 2  # inside the text, past a template's opening
            words = " ".join(self.tokenizer.decode(list(ids[middle:middle + 16]), skip_special_tokens=True).split())
            where = f"Prompt {i + 1} of {len(token_ids)} (in the order given; it reads '...{words[:50]}...')"
            if len(ids) >= n_ctx or not new_tokens:
                raise EmocircuitsError(f"{where} is {len(ids)} tokens long, more than the context length {n_ctx} "
                                       f"of {self.spec.model_id}; shorten or remove that text, or use a model with "
                                       "a longer context.")
            flag = spell("max_new_tokens", "--max-new-tokens")
            raise EmocircuitsError(f"{where} is {len(ids)} tokens long, so {flag} {new_tokens} goes past the context "
                                   f"length {n_ctx} of {self.spec.model_id}; use {flag} {n_ctx - len(ids)} or less.")

    def batches(self, token_ids: Sequence[Sequence[int]], max_tokens: int | None = None) -> list[Batch]:
        """Right-padded batches within the token budget (``b · p ≤ max_tokens``), longest prompts first;
        a prompt longer than the budget gets a batch of its own; a prompt longer than the model's context is
        refused (:meth:`fit_context`)."""
        self.fit_context(token_ids)
        budget = max_tokens or self.max_tokens
        order = sorted(range(len(token_ids)), key=lambda i: (-len(token_ids[i]), i))
        out, group = [], []
        for i in order:
            width = len(token_ids[group[0]]) if group else len(token_ids[i])
            if group and (len(group) + 1) * width > budget:
                out.append(self._make(token_ids, group))
                group = []
            group.append(i)
        if group:
            out.append(self._make(token_ids, group))
        return out

    def batches_with_continuations(self, token_ids: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                                   max_tokens: int | None = None) -> list[Batch]:
        """Batches of prompt + continuation sequences; ``prompt_lengths[i]`` tokens of ``token_ids[i]`` are the
        prompt (interventions see the rest as generated tokens, as during generation)."""
        out = self.batches(token_ids, max_tokens)
        plen = torch.as_tensor(list(prompt_lengths), dtype=torch.long)
        for b in out:
            b.prompt_lengths = plen[b.rows]
            b.keys = torch.tensor([prompt_key(token_ids[r][: int(plen[r])]) for r in b.rows], dtype=torch.long)
        return out

    def _make(self, token_ids: Sequence[Sequence[int]], rows: list[int]) -> Batch:
        lengths = torch.tensor([len(token_ids[r]) for r in rows], dtype=torch.long)
        ids = torch.full((len(rows), int(lengths.max())), self.pad_id, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(token_ids[r])] = torch.tensor(token_ids[r], dtype=torch.long)
        keys = torch.tensor([prompt_key(token_ids[r]) for r in rows], dtype=torch.long)
        return Batch(ids, lengths, list(rows), keys)

    # ------------------------------------------------------------------ passes
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def grad_mode(self) -> contextlib.AbstractContextManager:
        return torch.enable_grad() if self.grad else torch.inference_mode()

    def shared_prefix(self, batches: Sequence[Batch]) -> int:
        """Tokens every prompt of the pass starts with (0 when sharing is off or not worth it)."""
        if not self.share_prefix or sum(len(b) for b in batches) < 2:
            return 0
        seqs = [b.input_ids[j, : int(b.lengths[j])].tolist() for b in batches for j in range(len(b))]
        n = common_prefix(seqs)
        return n if n >= MIN_SHARED_PREFIX else 0

    def prefix_info(self, batches: Sequence[Batch], offset: int, generating: bool = False) -> BatchInfo:
        """The batch info of the shared-prefix forward: one physical row standing for every row of the pass."""
        lengths = torch.cat([b.lengths for b in batches])
        prompts = torch.cat([b.lengths if b.prompt_lengths is None else b.prompt_lengths for b in batches])
        return BatchInfo(torch.arange(offset)[None, :], prompts, lengths,
                         torch.tensor([r for b in batches for r in b.rows], dtype=torch.long),
                         torch.cat([b.keys for b in batches]), shared=True,
                         generating=generating or any(b.prompt_lengths is not None for b in batches))

    def batch_info(self, batch: Batch, offset: int) -> BatchInfo:
        """The batch info of a batch's forward over its columns from ``offset`` on."""
        p = batch.input_ids.shape[1]
        prompts = batch.lengths if batch.prompt_lengths is None else batch.prompt_lengths
        return BatchInfo(torch.arange(offset, p)[None, :], prompts, batch.lengths,
                         torch.tensor(batch.rows, dtype=torch.long), batch.keys,
                         generating=batch.prompt_lengths is not None)

    def prefix_cache(self, batches: Sequence[Batch], offset: int, stop: Stop | None, generating: bool = False) -> Any:
        """Keys/values of the shared prefix under the hooks attached now (raises PrefixUnsafe)."""
        from transformers import DynamicCache

        cache = DynamicCache()
        ids = batches[0].input_ids[:1, :offset].to(self.device())
        self.forward(ids, stop, info=self.prefix_info(batches, offset, generating), past_key_values=cache, use_cache=True)
        check_cache(cache, offset)
        return cache

    def forward(self, x: Tensor, stop: Stop | None, *, info: BatchInfo | None = None, **kwargs: Any) -> Tensor:
        """One raw forward of ``x [b, n]`` (token ids, or a residual with ``start_at_layer``) up to ``stop``.

        Returns the output of the ``stop`` site ``[b, n, ...]`` (``FINAL``: the final-norm hidden states;
        None: the full model's logits). ``info``: the batch context interventions see (absolute positions,
        lengths, rows); without one the caller must have set it. ``kwargs`` go to the model
        (``past_key_values``, ``attention_mask``, ``position_ids``, ``start_at_layer``: the blocks below it are
        skipped, not run). For passes over whole prompts use
        :meth:`run`; this is for callers that manage a key/value cache themselves (generation, last-token
        re-runs).
        """
        with contextlib.ExitStack() as stack:
            if info is not None:
                stack.enter_context(batch_context(info))
            if kwargs.get("start_at_layer"):
                stack.enter_context(blocks_skipped(self.model, kwargs["start_at_layer"]))
            if stop is None:
                return self.model(x, **kwargs)
            got: dict[str, Tensor] = {}
            with observe(self.model, stop[0], [stop[1]], lambda _l, h: got.__setitem__("h", h)):
                run_until(self.model, x, stop[0], stop[1], **kwargs)
        if "h" not in got:
            raise EmocircuitsError(f"The model never reached {stop[0]}; is it a TransformerBridge causal LM?")
        return got["h"]

    def run(self, batches: Sequence[Batch], *, stop: Stop | None = FINAL, start_at_layer: int = 0,
            resid: Sequence[Tensor] | None = None, progress: str | None = None,
            last_only: bool = False) -> Iterator[Step]:
        """One pass over ``batches`` under the hooks attached now (keep them fixed during the pass).

        ``stop``: a ``(site, layer)`` to stop after (``FINAL`` = the final norm, whose output each
        :class:`Step` carries; None = the full model, logits discarded). ``last_only``: the caller reads
        nothing but each row's last position (:meth:`Step.last`, a ``last`` capture), so a runner with
        stored clean keys/values may rerun only each row's changed tail, and a clean pass stores them. With
        ``resid`` (one ``[b, p - offset, d_model]`` per batch, the residual entering ``start_at_layer`` as read by an
        earlier pass with the same prefix offset) each batch starts at that layer. ``progress``: a
        description to show a progress bar over the pass's examples.
        """
        from tqdm.auto import tqdm

        batches = list(batches)
        if not batches:
            return
        if stop is not None and stop != FINAL:
            hook_name(self.model, *stop)  # validate before running
        self.last_reused = 0
        if last_only and stop == FINAL and resid is None and not self.grad:
            firsts = self.reusable(batches)
            if firsts is not None:
                yield from self._run_tails(batches, firsts, progress)
                return
        store = (last_only and self.clean is not None and not self.grad and stop in (FINAL, None)
                 and not start_at_layer and not active_hook_count(self.model))
        dev = self.device()
        offset = self.shared_prefix(batches)
        cache = None
        with self.grad_mode():
            if offset:
                try:
                    cache = self.prefix_cache(batches, offset, stop)
                except PrefixUnsafe:
                    offset, cache = 0, None
            self.last_offset = offset
            bar = tqdm(total=sum(len(b) for b in batches), desc=progress, unit="ex", disable=progress is None)
            for i, batch in enumerate(batches):
                kwargs: dict[str, Any] = {}
                if cache is not None:
                    c = copy.deepcopy(cache)
                    c.batch_repeat_interleave(len(batch))
                    kwargs.update(past_key_values=c, use_cache=True)
                elif store:
                    from transformers import DynamicCache

                    kwargs.update(past_key_values=DynamicCache(), use_cache=True)
                x = batch.input_ids[:, offset:].to(dev)
                if resid is not None and start_at_layer:
                    r = resid[i]
                    if r.shape[:2] != x.shape[:2]:
                        raise EmocircuitsError(
                            f"A captured residual has shape {tuple(r.shape)} but batch {i} needs "
                            f"[{x.shape[0]}, {x.shape[1]}, d_model]; capture it from a pass over the same batches."
                        )
                    x = r.to(dev)
                    kwargs["start_at_layer"] = start_at_layer
                hidden = self.forward(x, stop, info=self.batch_info(batch, offset), **kwargs)
                if store and self.clean is not None:
                    self.clean.keep(batch, kwargs["past_key_values"])
                bar.update(len(batch))
                yield Step(batch, offset, hidden if stop == FINAL else None)
            bar.close()

    def reusable(self, batches: Sequence[Batch], *, generating: bool = False) -> list[Tensor] | None:
        """Per batch, ``[b]`` the first position each row must compute under the hooks attached now, when
        stored clean keys/values can stand for everything before it and that saves at least half the
        positions; else None. ``generating``: the prefill of a generation (positions mean what they mean
        while decoding)."""
        if self.clean is None or self.grad or not all(self.clean.has(b) for b in batches):
            return None
        firsts = []
        for b in batches:
            info = self.batch_info(b, 0)
            if generating:
                info = dataclasses.replace(info, generating=True)
            first = first_position_attached(self.model, info)
            if first is None:
                return None
            firsts.append(torch.minimum(first.long(), b.last_index).clamp(min=0))
        total = sum(int(b.lengths.sum()) for b in batches)
        computed = sum(int((b.lengths - f).sum()) for b, f in zip(batches, firsts, strict=True))
        return firsts if 2 * computed <= total else None

    def _run_tails(self, batches: Sequence[Batch], firsts: Sequence[Tensor], progress: str | None) -> Iterator[Step]:
        """Run each row's tokens from ``first`` on over its stored clean keys/values (stop: the final norm)."""
        from tqdm.auto import tqdm

        assert self.clean is not None
        dev = self.device()
        bar = tqdm(total=sum(len(b) for b in batches), desc=progress, unit="ex", disable=progress is None)
        with self.grad_mode():
            for batch, first in zip(batches, firsts, strict=True):
                x, info, kwargs = self.tail_inputs(batch, first)
                hidden = self.forward(x.to(dev), FINAL, info=info, **kwargs)
                bar.update(len(batch))
                yield Step(batch, first, hidden)
        bar.close()

    def tail_inputs(self, batch: Batch, first: Tensor, *, generating: bool = False
                    ) -> tuple[Tensor, BatchInfo, dict[str, Any]]:
        """The forward of each row's tokens from ``first [b]`` on over its stored clean keys/values:
        token ids ``[b, width]`` (right-padded), the batch info, and the model kwargs (cache, the 0/1
        attention mask ``[b, q_max + width]``, absolute ``position_ids``)."""
        assert self.clean is not None
        dev = self.device()
        n = batch.lengths - first  # tokens to compute per row, >= 1
        cols = torch.arange(int(n.max()))[None, :]
        pos = first[:, None] + cols  # [b, width] absolute positions
        take = pos.clamp(max=batch.input_ids.shape[1] - 1)
        x = torch.where(cols < n[:, None], torch.gather(batch.input_ids, 1, take), self.pad_id)
        new = (cols < n[:, None]).long()
        kwargs: dict[str, Any] = {"position_ids": pos.to(dev), "use_cache": generating}
        if int(first.max()) > 0:
            cache, seen = self.clean.cache(batch, first)
            kwargs.update(past_key_values=cache, use_cache=True, attention_mask=torch.cat([seen, new], 1).to(dev))
        elif generating:
            from transformers import DynamicCache

            kwargs.update(past_key_values=DynamicCache(), attention_mask=new.to(dev))
        prompts = batch.lengths if batch.prompt_lengths is None else batch.prompt_lengths
        info = BatchInfo(pos, prompts, batch.lengths, torch.tensor(batch.rows, dtype=torch.long), batch.keys,
                         generating=generating or batch.prompt_lengths is not None)
        self.last_reused += int(first.sum())
        return x, info, kwargs

    # ------------------------------------------------------------------ conveniences
    def logits(self, hidden: Tensor) -> Tensor:
        """Unembed final hidden states ``[..., d_model]`` → logits ``[..., d_vocab]`` (float32); one sentence
        when they are not finite (an intervention scaled the activations past what floats hold)."""
        logits = hidden @ weight(self.model, "unembed")
        bias = weight(self.model, "unembed.bias")
        if bias is not None:
            logits = logits + bias
        if not bool(torch.isfinite(logits).all()):
            raise EmocircuitsError(f"The outputs of {self.spec.model_id} became infinite or NaN under the "
                                   "intervention applied now; use a smaller steering or scaling factor.")
        return logits.float()

    def last_logits(self, token_ids: Sequence[Sequence[int]]) -> Tensor:
        """Log-softmax logits at each prompt's last token ``[n, d_vocab]``, in input order."""
        out: Tensor | None = None
        for step in self.run(self.batches(token_ids), last_only=True):
            lp = torch.log_softmax(self.logits(step.last()), dim=-1).detach().cpu()
            if out is None:
                out = torch.empty(len(token_ids), lp.shape[-1])
            out[step.batch.rows] = lp
        assert out is not None
        return out

    def capture_last(self, token_ids: Sequence[Sequence[int]],
                     reads: dict[str, Sequence[int]] | Any) -> dict[str, dict[int, Tensor]]:
        """Several sites at each prompt's last token from one pass, in input order:
        ``{site: {layer: [n, ...]}}`` (float32, CPU). ``reads`` maps a site to its layers; the pass stops
        after the highest layer read (no unembedding)."""

        reads = {s: [int(x) for x in ls] for s, ls in dict(reads).items()}
        if not reads or not all(reads.values()):
            raise EmocircuitsError("capture_last needs at least one site with at least one layer to read.")
        batches = self.batches(token_ids)
        rows = [r for b in batches for r in b.rows]
        with contextlib.ExitStack() as stack:
            got = {s: stack.enter_context(capture(self.model, s, ls, "last")) for s, ls in reads.items()}
            for _ in self.run(batches, stop=("resid.post", max(max(ls) for ls in reads.values()))):
                pass
        out: dict[str, dict[int, Tensor]] = {}
        for s, ls in reads.items():
            out[s] = {}
            for layer in ls:
                vals = torch.cat([v.float().cpu() for v in got[s][layer]])
                full = torch.empty_like(vals)
                full[rows] = vals
                out[s][layer] = full
        return out

    def capture(self, token_ids: Sequence[Sequence[int]], site: str, layers: Sequence[int],
                positions: str = "last") -> dict[int, Tensor]:
        """A site's readings in input order: ``{layer: [n, ...]}`` at each prompt's last token
        (``positions="last"``), or ``{layer: [n, p_max, ...]}`` by absolute position, zero-padded."""

        if positions not in ("last", "all"):
            raise EmocircuitsError(f"Runner.capture reads positions 'last' or 'all', not {positions!r}.")
        layers = list(layers)
        batches = self.batches(token_ids)
        last_layer = max((x for x in layers if x is not None), default=None)
        stop = (site, last_layer) if last_layer is not None else FINAL
        out: dict[int, Tensor] = {}
        with capture(self.model, site, layers, positions) as got:
            for _ in self.run(batches, stop=stop):
                pass
        p_max = max(len(t) for t in token_ids)
        for layer in layers:
            rows = [r for b in batches for r in b.rows]
            parts = got[layer]
            if positions == "last":
                vals = torch.cat([v.float().cpu() for v in parts])
                full = torch.empty_like(vals)
                full[rows] = vals
            else:
                full = torch.zeros(len(token_ids), p_max, *parts[0].shape[2:])
                i = 0
                for v in parts:
                    full[rows[i:i + v.shape[0]], : v.shape[1]] = v.float().cpu()
                    i += v.shape[0]
            out[layer] = full
        return out
