"""Finding emotion neurons (Lee et al. 2025): per-emotion activation statistics streamed over a data set,
then the lowest-entropy neurons per emotion, their stability, the masking conditions and random controls.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from emocircuits.base.constants import DEFAULT_TEMPLATE, STABILITY_RESAMPLES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.seeds import derive_seed
from emocircuits.core.interventions import current_batch, observe
from emocircuits.core.models import spec_of
from emocircuits.core.readout import LabelReadout, _texts
from emocircuits.core.sites import READINGS, layer_range
from emocircuits.core.units import NeuronSet

TOKEN_MODES = ("all", "text", "last")


_TEXT_MARKER = "EMOCIRCUITSTEXTMARKER"


@dataclass
class NeuronStats:
    """Streamed activation counts. ``counts [n_layers, d_mlp, n_emotions]`` (int64), ``totals [n_emotions]``.

    With ``collect(chunks=G)`` also the same counts split into chunks of texts (each of one emotion), for
    the stability bootstrap: ``chunk_counts [n_chunks, n_layers, d_mlp]`` (int32), ``chunk_totals
    [n_chunks]``, ``chunk_labels [n_chunks]`` (emotion index); summed per emotion they equal ``counts``.
    """

    counts: torch.Tensor
    totals: torch.Tensor
    labels: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    chunk_counts: torch.Tensor | None = None
    chunk_totals: torch.Tensor | None = None
    chunk_labels: torch.Tensor | None = None

    def probabilities(self) -> torch.Tensor:
        """``P [n_layers, d_mlp, n_emotions]`` (float64): share of e's tokens on which u is active."""
        if (self.totals == 0).any():
            empty = [lab for lab, t in zip(self.labels, self.totals.tolist(), strict=True) if t == 0]
            raise EmocircuitsError(f"No tokens were counted for {empty}; give the data at least one text per emotion.")
        return self.counts.double() / self.totals.double()

    def select(self, top_rate: float = 0.01, assign: str = "argmax", filter_rate: float = 0.95,
               activation_bar: float = 0.95) -> Selection:
        """Lowest-entropy neurons per emotion; see the module docstring for the rules."""
        sel = select_neurons(self.probabilities(), self.labels, top_rate=top_rate, assign=assign,
                             filter_rate=filter_rate, activation_bar=activation_bar)
        sel.config.update({k: v for k, v in self.config.items() if k not in sel.config})
        return sel

    def tensors(self) -> dict[str, torch.Tensor]:
        p = self.probabilities()
        return {"counts": self.counts, "totals": self.totals, "P": p, "P_hat": normalise(p), "entropy": entropy(p)}


def normalise(p: torch.Tensor) -> torch.Tensor:
    """``P̂ = P / Σ_e P`` over the last axis, 0 where the sum is 0."""
    s = p.sum(-1, keepdim=True)
    return torch.where(s > 0, p / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(p))


def entropy(p: torch.Tensor) -> torch.Tensor:
    """``H [...]`` of the normalised distribution over the last axis; +inf where P is all zero."""
    q = normalise(p)
    h = -(torch.where(q > 0, q * torch.log(torch.where(q > 0, q, torch.ones_like(q))), torch.zeros_like(q))).sum(-1)
    return torch.where(p.sum(-1) > 0, h, torch.full_like(h, math.inf))


def text_spans(readout: Any, examples: Sequence[Any], token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """``[n, 2]`` token positions ``[start, end)`` of each example's own text inside its prompt ``token_ids[i]``.

    The text is located in the rendered prompt by rendering the template around a marker, then mapped to
    tokens through the fast tokenizer's character offsets (a BOS the runner prepends shifts every position).
    A token that straddles the text's edge (a space merged with its first word) counts as the text's.
    """

    tok = readout.tokenizer
    if not getattr(tok, "is_fast", False):
        raise EmocircuitsError("tokens='text' needs a fast tokenizer (character offsets); use tokens='all' or 'last'.")
    parts = readout.template.render(_TEXT_MARKER, readout.labels, tok).split(_TEXT_MARKER)
    if len(parts) != 2:
        raise EmocircuitsError(f"Template {readout.template.name!r} does not place the text exactly once; "
                               "use tokens='all' or 'last' with it.")
    head, tail = parts
    spans = torch.zeros(len(examples), 2, dtype=torch.long)
    for i, (prompt, text, ids) in enumerate(zip(readout.render(examples), _texts(examples), token_ids, strict=True)):
        if prompt == head + text + tail:
            c0 = len(head)
        else:  # a chat template that trims the text: find it from the end (the text is the last user turn)
            text = text.strip()
            c0 = prompt.rfind(text)
            if c0 < 0:
                raise EmocircuitsError(f"Text {i} does not appear in its rendered prompt; use tokens='all' or 'last'.")
        c1 = c0 + len(text)
        enc = tok(prompt, add_special_tokens=False, return_offsets_mapping=True)
        shift = len(ids) - len(enc["input_ids"])
        if shift < 0 or list(ids[shift:]) != list(enc["input_ids"]):
            raise EmocircuitsError(f"Text {i}'s prompt tokenises differently with offsets; use tokens='all' or 'last'.")
        inside = [j for j, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < c1 and b > c0]
        if inside:
            spans[i] = torch.tensor([shift + inside[0], shift + inside[-1] + 1])
    return spans


def collect(model: Any, dataset: Sequence[Any], *, reading: str = "gated", tokens: str = "all",
            template: str = DEFAULT_TEMPLATE, labels: Sequence[str] | None = None, max_tokens: int = 4096,
            share_prefix: bool = True, prepend_bos: bool | None = None, chunks: int = 0,
            progress: bool = True) -> NeuronStats:
    """One batched pass over labelled texts counting, per layer/neuron/emotion, tokens where the neuron is > 0.

    ``reading``: gated (mlp.hook_post), silu_only (act(gate)) or pre (gate pre-activation).
    ``tokens`` (the span counted): ``all`` non-padding prompt tokens, ``text`` the text's own tokens
    (:func:`text_spans`), or the ``last`` prompt token. Memory is ``O(n_layers·d_mlp·n_emotions)`` whatever
    the dataset size; no activation is kept. With ``share_prefix`` the template's shared prefix runs once
    and its counts are added once per text (identical counts to running every prompt whole).
    ``chunks`` > 0 also keeps the counts of up to ``chunks`` chunks per emotion (text i of an emotion goes
    to chunk ``i mod chunks``) for :func:`selection_stability`: ``4 · chunks · n_emotions · n_layers · d_mlp``
    bytes more (SmolLM2-135M, 6 emotions, 32 chunks: 35 MB).
    """

    if reading not in READINGS:
        raise EmocircuitsError(f"Unknown reading {reading!r}; use one of {list(READINGS)}.")
    if tokens not in TOKEN_MODES:
        raise EmocircuitsError(f"Unknown token selection {tokens!r}; use one of {list(TOKEN_MODES)}.")
    if chunks < 0:
        raise EmocircuitsError(f"chunks must be 0 (none) or more chunks per emotion, got {chunks}.")
    spec = spec_of(model)
    labs = _labels_of(dataset, labels)
    y_all = _label_indices(dataset, labs)
    readout = LabelReadout(model, labs, template, share_prefix=share_prefix, max_tokens=max_tokens,
                           prepend_bos=prepend_bos)
    runner = readout.runner
    token_ids = readout.encode(list(dataset))
    lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.long)
    if tokens == "text":
        spans = text_spans(readout, list(dataset), token_ids)
    else:
        spans = torch.stack([lengths - 1 if tokens == "last" else torch.zeros_like(lengths), lengths], 1)
    start, end = spans[:, 0], spans[:, 1]  # [n_texts]: each text's counted positions are [start, end)
    counts = torch.zeros(spec.n_layers, len(labs), spec.d_mlp, dtype=torch.int64)
    totals = torch.bincount(y_all, weights=(end - start).double(), minlength=len(labs)).long()
    chunk_of, n_chunks, chunk_labels = _chunks(y_all, len(labs), chunks)
    per_chunk = torch.zeros(spec.n_layers, n_chunks, spec.d_mlp, dtype=torch.int32) if chunks else None

    def add(layer: int, rows: torch.Tensor, per_row: torch.Tensor) -> None:  # per_row: [rows, d_mlp] int64
        counts[layer].index_add_(0, y_all[rows], per_row)
        if per_chunk is not None:
            per_chunk[layer].index_add_(0, chunk_of[rows], per_row.to(torch.int32))

    pending: dict[int, tuple] = {}  # prefix counts (rows, span of each row, counts per span), kept only if the
    # pass's batches start after the prefix

    def count(layer: int, value: torch.Tensor) -> None:  # value: [batch, pos, d_mlp]
        info = current_batch()
        if info.shared:  # the shared prefix: one row standing for every text of the pass
            n = value.shape[1]
            cum = torch.cat([torch.zeros_like(value[0, :1], dtype=torch.int64),
                             (value[0] > 0).cumsum(0, dtype=torch.int64)]).cpu()  # [n + 1, d_mlp]
            s, e = start[info.rows].clamp(max=n), end[info.rows].clamp(max=n)
            pairs, inverse = torch.unique(torch.stack([s, e], 1), dim=0, return_inverse=True)
            contrib = cum[pairs[:, 1]] - cum[pairs[:, 0]]  # [unique spans, d_mlp]
            pending[layer] = (info.rows, inverse, contrib)
            return
        prefix = pending.pop(layer, None)
        if prefix is not None and int(info.abs_pos[0, 0]) > 0:  # (a prefix pass the runner gave up is dropped)
            rows, inverse, contrib = prefix
            for u, c in enumerate(contrib):  # rows sharing a span share its counts: bincount rows, not gather them
                r = rows[inverse == u]
                counts[layer] += torch.bincount(y_all[r], minlength=len(labs))[:, None] * c[None, :]
                if per_chunk is not None:
                    per_chunk[layer] += (torch.bincount(chunk_of[r], minlength=n_chunks)[:, None] * c[None, :]).int()
        pos, r = info.abs_pos, info.rows
        where = (pos >= start[r][:, None]) & (pos < end[r][:, None])  # [batch, pos]
        active = (value > 0) & where.to(value.device)[..., None]
        add(layer, r, active.sum(1, dtype=torch.int64).cpu())

    site = READINGS[reading]
    batches = runner.batches(token_ids)
    with observe(model, site, list(range(spec.n_layers)), count):
        for _ in runner.run(batches, stop=(site, spec.n_layers - 1),
                            progress=f"neuron stats ({reading}, {tokens})" if progress else None):
            pass
    config = {"reading": reading, "tokens": tokens, "template": template, "n_texts": len(token_ids),
              "prepend_bos": runner.prepend_bos, "model": spec.model_id, "weights_hash": spec.weights_hash}
    stats = NeuronStats(counts.permute(0, 2, 1).contiguous(), totals, labs, config)
    if per_chunk is not None:
        stats.chunk_counts = per_chunk.permute(1, 0, 2).contiguous()
        stats.chunk_totals = torch.zeros(n_chunks, dtype=torch.int64).index_add_(0, chunk_of, end - start)
        stats.chunk_labels = chunk_labels
    return stats


def _chunks(y: torch.Tensor, n_labels: int, chunks: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """``(chunk_of [n_texts], n_chunks, chunk_labels [n_chunks])``: text i of emotion e (in data order) goes to
    e's chunk ``i mod min(chunks, n_e)``; chunks are numbered emotion by emotion."""
    chunk_of = torch.zeros(len(y), dtype=torch.long)
    chunk_labels: list[int] = []
    for e in range(n_labels):
        idx = (y == e).nonzero().flatten()
        g = min(chunks, len(idx))
        chunk_of[idx] = len(chunk_labels) + torch.arange(len(idx)) % max(g, 1)
        chunk_labels += [e] * g
    return chunk_of, len(chunk_labels), torch.tensor(chunk_labels, dtype=torch.long)


def _labels_of(dataset: Sequence[Any], labels: Sequence[str] | None) -> tuple[str, ...]:
    labs = tuple(labels or getattr(dataset, "labels", ()) or sorted({ex.label for ex in dataset}))
    if not labs:
        raise EmocircuitsError("The dataset has no labels; emotion neurons need labelled texts.")
    return labs


def _label_indices(dataset: Sequence[Any], labels: Sequence[str]) -> torch.Tensor:
    index = {lab: i for i, lab in enumerate(labels)}
    bad = sorted({ex.label for ex in dataset if ex.label not in index})
    if bad:
        raise EmocircuitsError(f"Labels {bad} are not in the label scheme {list(labels)}; pass labels= to include them.")
    if len(dataset) == 0:
        raise EmocircuitsError("The dataset is empty; give at least one text per emotion.")
    return torch.tensor([index[ex.label] for ex in dataset], dtype=torch.long)





"""Bootstrap resamples of :func:`selection_stability` that ``neurons find`` runs by default."""


STABILITY_CHUNKS = 32


"""Text chunks per emotion kept for the stability bootstrap (memory: emotions × chunks × n_layers × d_mlp × 4 B)."""


ASSIGN_MODES = ("argmax", "lape")


RATIO_MODES = ("truncate", "reselect")


@dataclass
class Selection:
    """Emotion neuron sets. ``sets[e]`` is a NeuronSet; ``ranked[e]`` lists e's candidates by entropy."""

    sets: dict[str, NeuronSet]
    ranked: dict[str, list[tuple[int, int]]]
    labels: tuple[str, ...]
    n_layers: int
    d_mlp: int
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, emotion: str) -> NeuronSet:
        if emotion not in self.sets:
            raise EmocircuitsError(f"No neuron set for {emotion!r}; this selection has {list(self.sets)}.")
        return self.sets[emotion]

    def validate(self, n_layers: int, d_mlp: int, *, model: str = "this model", source: str = "the selection",
                 fix: str = "") -> Selection:
        """Check every (layer, index) of the sets and ranked lists against ``n_layers`` × ``d_mlp``, or raise
        one sentence naming the pair, the valid ranges and (``fix``) what to do."""
        for name, groups in (("set", self.sets.items()), ("ranked list", self.ranked.items())):
            for emotion, pairs in groups:
                for layer, index in (pairs.pairs() if isinstance(pairs, NeuronSet) else pairs):
                    what = None
                    if not 0 <= int(layer) < n_layers:
                        what = f"layer {layer}, but {model} has layers 0..{n_layers - 1}"
                    elif d_mlp and not 0 <= int(index) < d_mlp:
                        what = f"neuron {index} in layer {layer}, but {model} has neurons 0..{d_mlp - 1}"
                    if what:
                        raise EmocircuitsError(
                            f"{source} names {what} (in the {name} of {emotion!r}); "
                            + (fix or "pass the neurons found on this model, or re-run `emocircuits neurons find` on it.")
                        )
        return self

    def layer_table(self) -> pd.DataFrame:
        """Neurons per (emotion, layer): columns ``emotion, layer, count``."""
        rows = [{"emotion": e, "layer": layer, "count": c}
                for e, s in self.sets.items() for layer, c in enumerate(s.counts(self.n_layers))]
        return pd.DataFrame(rows)

    def overlap(self) -> pd.DataFrame:
        """Pairwise overlap: ``a, b, n_a, n_b, n_shared, jaccard (|A∩B|/|A∪B|), overlap_min (|A∩B|/min)``."""
        rows = []
        for a in self.labels:
            for b in self.labels:
                sa, sb = self.sets[a], self.sets[b]
                shared = len(sa.intersection(sb))
                union = len(sa) + len(sb) - shared
                rows.append({"a": a, "b": b, "n_a": len(sa), "n_b": len(sb), "n_shared": shared,
                             "jaccard": shared / union if union else 0.0,
                             "overlap_min": shared / min(len(sa), len(sb)) if min(len(sa), len(sb)) else 0.0})
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        """The ``neurons.json`` document: ``neurons`` (emotion → [[layer, index], ...]), ``ranked``, ``config``."""
        return {"neurons": {e: s.pairs() for e, s in self.sets.items()},
                "ranked": {e: [list(p) for p in r] for e, r in self.ranked.items()},
                "labels": list(self.labels), "n_layers": self.n_layers, "d_mlp": self.d_mlp, "config": self.config}

    @classmethod
    def from_json(cls, doc: Any, source: str = "neurons.json") -> Selection:
        """A selection from a ``neurons.json`` document, checked against its schema first: ``neurons`` maps
        each emotion of ``labels`` to pairs of two non-negative integers, not all sets empty; ``ranked`` the
        same; ``n_layers``/``d_mlp`` non-negative integers. Anything else is one sentence naming the file."""
        def bad(what: str) -> EmocircuitsError:
            return EmocircuitsError(f"{source}: {what}; re-create it with `emocircuits neurons find`.")

        def count(key: str) -> int | None:
            v = doc.get(key)
            if v is None:
                return None
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise bad(f"{key!r} is {v!r}, not a non-negative integer")
            return v

        def pairs(key: str, emotion: Any, value: Any) -> list[tuple[int, int]]:
            if not isinstance(value, list):
                raise bad(f"{key}[{emotion!r}] is {type(value).__name__}, not a list of [layer, index] pairs")
            out = []
            for j, pair in enumerate(value):
                if not (isinstance(pair, list) and len(pair) == 2 and all(
                        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in pair)):
                    raise bad(f"{key}[{emotion!r}] entry {j + 1} is {json.dumps(pair)}, not a pair of two "
                              "non-negative integers [layer, index]")
                out.append((pair[0], pair[1]))
            return out

        if not isinstance(doc, Mapping) or not isinstance(doc.get("neurons"), Mapping):
            raise EmocircuitsError(f"{source} has no 'neurons' mapping (emotion → [[layer, index], ...]); "
                                   "pass a file written by `emocircuits neurons find`.")
        raw_labels = doc.get("labels")
        if raw_labels is not None and not (isinstance(raw_labels, list) and raw_labels
                                           and all(isinstance(x, str) for x in raw_labels)):
            raise bad(f"'labels' is {json.dumps(raw_labels)[:60]}, not a list of emotion names")
        labels = tuple(raw_labels or [str(e) for e in doc["neurons"]])
        unknown = [e for e in doc["neurons"] if e not in labels]
        if unknown:
            raise bad(f"emotion(s) {', '.join(map(repr, unknown))} in 'neurons' are not in its labels "
                      f"({', '.join(labels)})")
        found = {e: pairs("neurons", e, v) for e, v in doc["neurons"].items()}
        if not any(found.values()):
            raise bad("every emotion's neuron set is empty, so it would mask nothing")
        ranked_doc = doc.get("ranked") or {}
        if not isinstance(ranked_doc, Mapping):
            raise bad("'ranked' is not a mapping of emotion to [layer, index] pairs")
        ranked = {e: pairs("ranked", e, r) for e, r in ranked_doc.items()}
        config = doc.get("config") or {}
        if not isinstance(config, Mapping):
            raise bad("'config' is not an object")
        sets = {e: NeuronSet.from_pairs(p) for e, p in found.items()}
        n_layers = count("n_layers") or max((max(s.layers, default=0) for s in sets.values()), default=0) + 1
        d_mlp = count("d_mlp") or 0
        return cls(sets, ranked, labels, n_layers, d_mlp, dict(config))

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        path = Path(path)
        if path.is_dir():
            path = path / "neurons.json"
        if not path.exists():
            raise EmocircuitsError(f"Neuron file {str(path)!r} does not exist; run `emocircuits neurons find` first.")
        try:
            doc = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as exc:
            raise EmocircuitsError(f"{str(path)!r} is not valid JSON (line {exc.lineno}); re-create it with "
                                   "`emocircuits neurons find`.") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise EmocircuitsError(f"{str(path)!r} cannot be read as UTF-8 text ({type(exc).__name__}); re-create "
                                   "it with `emocircuits neurons find`.") from exc
        return cls.from_json(doc, str(path))


def select_neurons(p: torch.Tensor, labels: Sequence[str], *, top_rate: float = 0.01, assign: str = "argmax",
                   filter_rate: float = 0.95, activation_bar: float = 0.95, ranked_factor: int = 5) -> Selection:
    """Select emotion neurons from ``P [n_layers, d_mlp, n_emotions]``.

    ``ranked[e]`` keeps e's candidates (finite H, assigned to e) in selection order, up to
    ``ranked_factor × |S_e|`` entries (enough for ratio sweeps up to ``ranked_factor × top_rate``).
    """
    if assign not in ASSIGN_MODES:
        raise EmocircuitsError(f"Unknown assignment {assign!r}; use one of {list(ASSIGN_MODES)}.")
    if not 0 < top_rate <= 1:
        raise EmocircuitsError(f"top_rate {top_rate} is out of range; use a share in (0, 1], e.g. 0.01.")
    n_layers, d_mlp, n_e = p.shape
    if n_e != len(labels):
        raise EmocircuitsError(f"P has {n_e} emotions but {len(labels)} labels were given.")
    h = entropy(p).reshape(-1)  # [n_layers*d_mlp]
    flat = p.reshape(-1, n_e)
    if assign == "lape":
        filter_q = torch.quantile(flat.reshape(-1).float(), filter_rate).double()
        bar_q = torch.quantile(flat.reshape(-1).float(), activation_bar).double()
        h = torch.where(flat.max(-1).values > filter_q, h, torch.full_like(h, math.inf))
        member = flat > bar_q  # [N, E]
    else:
        member = torch.zeros_like(flat, dtype=torch.bool)
        member[torch.arange(flat.shape[0]), normalise(flat).argmax(-1)] = True  # argmax: first max wins
    k = max(1, round(top_rate * n_layers * d_mlp))
    # stable sort by entropy; equal entropies keep (layer, index) order
    order = torch.from_numpy(np.argsort(h.numpy(), kind="stable"))
    finite = order[torch.isfinite(h[order])]
    kept = finite[:k]
    sets, ranked = {}, {}
    for j, e in enumerate(labels):
        chosen = kept[member[kept, j]]
        sets[e] = NeuronSet.from_pairs([(int(i) // d_mlp, int(i) % d_mlp) for i in chosen])
        cand = finite[member[finite, j]][: max(ranked_factor * len(chosen), ranked_factor)]
        ranked[e] = [(int(i) // d_mlp, int(i) % d_mlp) for i in cand]
    h_cut = float(h[kept[-1]]) if len(kept) else math.inf
    config = {"top_rate": top_rate, "assign": assign, "filter_rate": filter_rate, "activation_bar": activation_bar,
              "n_selected": int(len(kept)), "n_never_active": int(torch.isinf(entropy(p)).sum()),
              "cut_entropy": h_cut if len(kept) else None, "n_tied_at_cut": int((h[finite] == h_cut).sum()),
              "n_tied_kept": int((h[kept] == h_cut).sum())}
    return Selection(sets, ranked, tuple(labels), n_layers, d_mlp, config)


def tie_summary(selection: Selection) -> str:
    """One line on the candidates whose entropy equals the last kept one's (kept in (layer, index) order)."""
    c = selection.config
    tied, kept = c.get("n_tied_at_cut", 0), c.get("n_tied_kept", 0)
    if tied <= kept:
        return "no tie at the cut" + (f" (entropy {c['cut_entropy']:.4g})" if c.get("cut_entropy") is not None else "")
    return (f"{tied} candidates tie at the cut (entropy {c['cut_entropy']:.4g}); {kept} kept by (layer, index) order, "
            f"{tied - kept} left out")


def selection_stability(stats: NeuronStats, selection: Selection, *, n_resamples: int = STABILITY_RESAMPLES,
                        seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Bootstrap over texts: how far each emotion's set would move on other data.

    Each resample draws every emotion's text chunks (``stats.chunk_counts``, from ``collect(chunks=...)``)
    with replacement, re-selects with ``selection``'s settings and takes the Jaccard of each emotion's set
    with the full-data one (1 when both are empty). Columns ``emotion, n_neurons`` (full-data set size),
    ``jaccard_mean, jaccard_low, jaccard_high`` (percentile interval at ``level``), ``n_resamples, n_chunks``.
    """
    if stats.chunk_counts is None or stats.chunk_totals is None or stats.chunk_labels is None:
        raise EmocircuitsError("These statistics keep no per-chunk counts; collect them with chunks > 0 "
                               "(e.g. chunks=32) to measure selection stability.")
    if n_resamples < 1:
        raise EmocircuitsError(f"n_resamples must be 1 or more bootstrap resamples, got {n_resamples}.")
    c = selection.config
    params = {k: c[k] for k in ("top_rate", "assign", "filter_rate", "activation_bar") if k in c}
    rng = np.random.default_rng(derive_seed(seed, "stability"))
    n_e = len(stats.labels)
    members = [(stats.chunk_labels == e).nonzero().flatten() for e in range(n_e)]
    scores = np.zeros((n_resamples, n_e))
    for b in range(n_resamples):
        counts = torch.zeros(stats.counts.shape, dtype=torch.int64)  # [n_layers, d_mlp, n_emotions]
        totals = torch.zeros(n_e, dtype=torch.int64)
        for e, idx in enumerate(members):
            pick = idx[torch.from_numpy(rng.integers(0, len(idx), size=len(idx)))]
            counts[..., e] = stats.chunk_counts[pick].sum(0, dtype=torch.int64)
            totals[e] = stats.chunk_totals[pick].sum()
        again = NeuronStats(counts, totals, stats.labels).select(**params)
        for e, lab in enumerate(stats.labels):
            a, r = selection.sets[lab], again.sets[lab]
            shared = len(a.intersection(r))
            union = len(a) + len(r) - shared
            scores[b, e] = shared / union if union else 1.0
    lo, hi = np.quantile(scores, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return pd.DataFrame({"emotion": list(stats.labels), "n_neurons": [len(selection.sets[e]) for e in stats.labels],
                         "jaccard_mean": scores.mean(0), "jaccard_low": lo, "jaccard_high": hi,
                         "n_resamples": n_resamples, "n_chunks": [len(m) for m in members]})


@dataclass(frozen=True)
class Condition:
    """One masking condition: an emotion's neurons, restricted to a layer range, at a ratio."""

    emotion: str
    layers: str = "all"
    ratio: float | None = None
    ratio_mode: str = "truncate"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def condition_set(selection: Selection, cond: Condition, stats: NeuronStats | None = None) -> NeuronSet:
    """The NeuronSet a condition masks.

    ``ratio=None``: the emotion's selected set. ``truncate``: the first ``round(|S_e|·ratio/top_rate)``
    neurons of e's entropy-ranked list. ``reselect``: re-run the selection with ``top_rate = ratio``
    (needs ``stats``). The layer range is applied last.
    """
    if cond.ratio_mode not in RATIO_MODES:
        raise EmocircuitsError(f"Unknown ratio mode {cond.ratio_mode!r}; use one of {list(RATIO_MODES)}.")
    base = selection[cond.emotion]
    if cond.ratio is None:
        chosen = base
    elif cond.ratio_mode == "reselect":
        if stats is None:
            raise EmocircuitsError("ratio_mode 'reselect' needs the neuron statistics; use truncate or pass stats.")
        chosen = stats.select(top_rate=cond.ratio, assign=selection.config.get("assign", "argmax"))[cond.emotion]
    else:
        top_rate = float(selection.config.get("top_rate", 0.01))
        n = round(len(base) * cond.ratio / top_rate)
        ranked = selection.ranked.get(cond.emotion) or base.pairs()
        if n > len(ranked):
            raise EmocircuitsError(
                f"Ratio {cond.ratio} needs {n} ranked neurons for {cond.emotion} but the selection keeps {len(ranked)}; "
                "use a smaller ratio or ratio_mode 'reselect'."
            )
        chosen = NeuronSet.from_pairs(ranked[:n])
    # validate before restricting, so a pair outside the model is an error and never silently dropped
    chosen.validate(selection.n_layers, selection.d_mlp or max((i for v in chosen.layers.values() for i in v),
                                                                 default=0) + 1)
    return chosen.restrict(layer_range(selection.n_layers, cond.layers))


def random_control(neurons: NeuronSet, d_mlp: int, seed: int) -> NeuronSet:
    """Random neurons with the same per-layer counts as ``neurons``, disjoint from it, seeded."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer, idx in neurons.layers.items():
        pool = np.setdiff1d(np.arange(d_mlp), np.asarray(idx))
        out[layer] = tuple(int(i) for i in rng.choice(pool, size=min(len(idx), len(pool)), replace=False))
    return NeuronSet(out)


def _condition_seed(seed: int, cond: Condition, *parts: Any) -> int:
    """A seed for one random choice of a condition (its k-th control, a bootstrap), independent of which
    other conditions run alongside it."""
    return derive_seed(seed, cond.emotion, cond.layers, cond.ratio, cond.ratio_mode, *parts)
