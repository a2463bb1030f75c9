"""Emotion neurons (Lee et al., 2025, on LAPE): streaming statistics, entropy selection, masking, sweeps.

Statistics: over texts labelled with emotion e, count per neuron u the tokens where its value is > 0:
``f[u, e]``; ``T[e]`` = tokens counted for e. Then

* ``P[u, e] = f[u, e] / T[e]``
* ``P̂[u, e] = P[u, e] / Σ_e' P[u, e']``  (0 where the sum is 0)
* ``H[u] = −Σ_e P̂[u, e] log P̂[u, e]``   (0·log 0 = 0; a neuron that never fires gets H = +inf)

Which tokens count (``tokens``, the *span*): ``all`` prompt tokens (the default: every token of the
model's input, as LAPE counts them, which keeps earlier runs comparable), ``text`` only the text's own
tokens (the template around it adds the same counts to every emotion and pulls every P̂ towards
uniform), or the ``last`` prompt token.

Selection keeps the global ``top_rate`` share of all ``n_layers·d_mlp`` neurons with the lowest H; a neuron
that never fires (H = +inf) is never a candidate. Ties are broken by (layer, index) ascending, so
selections are deterministic; ``config["n_tied_at_cut"]`` counts the candidates whose H equals the last
kept one's (``n_tied_kept`` of them kept). Assignment ``argmax`` gives each kept neuron to
``argmax_e P̂[u, e]`` (ties: the emotion listed first); ``lape`` first sets H = +inf for neurons whose
largest P is not above the ``filter_rate`` quantile of all P, then assigns a kept neuron to every emotion
whose P is above the ``activation_bar`` quantile (multi-assignment).

Overlap between emotion sets is reported two ways: Jaccard ``|A∩B| / |A∪B|`` and ``|A∩B| / min(|A|,|B|)``.
Stability (:func:`selection_stability`): a bootstrap over texts re-selects on resampled counts and reports
each emotion's Jaccard with the full-data set.

Masking compares each masked set with ``controls`` random sets of the same per-layer sizes (default
``DEFAULT_CONTROLS``): the CI of (masked − control) resamples examples *and* control sets, and ``rank_p``
is the masked effect's rank among the K control effects, ``(1 + #{k: control_k ≤ masked}) / (K + 1)``
(so never below ``1 / (K + 1)``). ``floor`` marks rows whose clean accuracy is below ``FLOOR_ACC``: a
label the readout rarely gets right cannot show a drop.
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

from emocircuits.components import NeuronSet
from emocircuits.errors import EmocircuitsError
from emocircuits.interventions import ZeroNeurons, current_batch, observe
from emocircuits.models import spec_of
from emocircuits.prompts import DEFAULT_TEMPLATE
from emocircuits.runs import derive_seed
from emocircuits.sites import LAYER_RANGES, READINGS, layer_range

TOKEN_MODES = ("all", "text", "last")
DEFAULT_CONTROLS = 5
"""Random control sets per masked set in ``mask``, ``sweep``, ``neurons mask|sweep`` and the sweep analysis."""
FLOOR_ACC = 0.2
"""Clean accuracy below which a label is flagged ``floor``: too rarely right to show a drop under masking."""
STABILITY_RESAMPLES = 20
"""Bootstrap resamples of :func:`selection_stability` that ``neurons find`` runs by default."""
STABILITY_CHUNKS = 32
"""Text chunks per emotion kept for the stability bootstrap (memory: emotions × chunks × n_layers × d_mlp × 4 B)."""
_TEXT_MARKER = "EMOCIRCUITSTEXTMARKER"
ASSIGN_MODES = ("argmax", "lape")
RATIO_MODES = ("truncate", "reselect")


# ============================================================================ statistics


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
    from emocircuits.readout import _texts

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
    from emocircuits.readout import LabelReadout

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


# ============================================================================ selection


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
    def from_json(cls, doc: Mapping[str, Any], source: str = "neurons.json") -> Selection:
        if "neurons" not in doc or not isinstance(doc["neurons"], Mapping):
            raise EmocircuitsError(f"{source} has no 'neurons' mapping (emotion → [[layer, index], ...]); "
                                   "pass a file written by `emocircuits neurons find`.")
        sets = {e: NeuronSet.from_pairs(p) for e, p in doc["neurons"].items()}
        ranked = {e: [tuple(p) for p in r] for e, r in (doc.get("ranked") or {}).items()}
        labels = tuple(doc.get("labels") or sets)
        n_layers = int(doc.get("n_layers") or max((max(s.layers, default=0) for s in sets.values()), default=0) + 1)
        d_mlp = int(doc.get("d_mlp") or 0)
        return cls(sets, ranked, labels, n_layers, d_mlp, dict(doc.get("config") or {}))

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        path = Path(path)
        if path.is_dir():
            path = path / "neurons.json"
        if not path.exists():
            raise EmocircuitsError(f"Neuron file {str(path)!r} does not exist; run `emocircuits neurons find` first.")
        try:
            doc = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EmocircuitsError(f"{str(path)!r} is not valid JSON (line {exc.lineno}); re-create it with "
                                   "`emocircuits neurons find`.") from exc
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


# ============================================================================ conditions and controls


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


# ============================================================================ masked evaluation


class MaskingEngine:
    """Classify one dataset under many neuron masks, sharing everything shareable.

    Tokenisation, batching and the clean (unmasked) pass happen once. The clean pass also keeps the
    residual entering a few *checkpoint* layers (``checkpoints`` evenly spaced layers, the tokens after
    the shared prefix only, ``[b, p - prefix, d_model]`` per batch). A mask whose lowest layer is L
    cannot change anything below L, so its pass starts from the highest checkpoint ≤ L instead of the
    embedding — a masked pass over the top third of the layers costs about a third of a full one.
    ``checkpoints=0`` turns this off (memory: ``checkpoints × tokens × d_model`` floats).
    """

    def __init__(self, model: Any, dataset: Sequence[Any], *, labels: Sequence[str] | None = None,
                 template: str = DEFAULT_TEMPLATE, scoring: str = "first_token", max_tokens: int = 4096,
                 checkpoints: int = 6, share_prefix: bool = True, prepend_bos: bool | None = None,
                 progress: bool = True) -> None:
        from emocircuits.readout import LabelReadout

        self.model, self.progress = model, progress
        self.spec = spec_of(model)
        self.examples = list(dataset)
        self.labels = _labels_of(dataset, labels)
        self.y = _label_indices(self.examples, self.labels).numpy()
        self.readout = LabelReadout(model, self.labels, template, scoring, max_tokens=max_tokens,
                                    share_prefix=share_prefix, prepend_bos=prepend_bos)
        self.batches = self.readout.batches(self.readout.encode(self.examples))
        self.order = torch.tensor([r for b in self.batches for r in b.rows], dtype=torch.long)
        n = self.spec.n_layers
        stride = max(1, -(-n // (checkpoints + 1))) if checkpoints > 0 and scoring == "first_token" else n
        self.checkpoint_layers = [layer for layer in range(stride, n, stride)][:checkpoints]
        self._resid: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.checkpoint_layers}
        self.clean_scores = self._clean_pass()
        self.clean = self.clean_scores.argmax(-1).numpy()

    def _in_input_order(self, scores: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(scores)
        out[self.order] = scores
        return out

    def _clean_pass(self) -> torch.Tensor:
        def keep(layer: int, value: torch.Tensor) -> None:
            if not current_batch().shared:
                self._resid[layer].append(value.detach().clone())

        with observe(self.model, "resid.pre", self.checkpoint_layers, keep):
            return self._in_input_order(self.readout.scores(self.batches))

    def start_layer(self, neurons: NeuronSet) -> int:
        """The checkpoint a masked pass of ``neurons`` starts from (0 = the embedding)."""
        lowest = min(neurons.layers) if len(neurons) else self.spec.n_layers
        return max((c for c in self.checkpoint_layers if c <= lowest), default=0)

    def scores(self, neurons: NeuronSet | None = None) -> torch.Tensor:
        """Label scores ``[n_examples, n_labels]`` with ``neurons`` zeroed at every position (None = clean)."""
        if neurons is None or not len(neurons):
            return self.clean_scores.clone()
        neurons.validate(self.spec.n_layers, self.spec.d_mlp)
        start = self.start_layer(neurons)
        with ZeroNeurons(neurons).apply(self.model):
            s = self.readout.scores(self.batches, start_layer=start, resid=self._resid[start] if start else None)
        return self._in_input_order(s)

    def predict(self, neurons: NeuronSet | None = None) -> np.ndarray:
        """Predicted label index per example ``[n_examples]`` with ``neurons`` zeroed (None = clean)."""
        return self.scores(neurons).argmax(-1).numpy()

    def evaluate(self, neuron_sets: Sequence[NeuronSet], desc: str = "masked passes") -> np.ndarray:
        """Predictions ``[n_sets, n_examples]``, one masked pass per set."""
        from tqdm.auto import tqdm

        out = np.empty((len(neuron_sets), len(self.examples)), dtype=np.int64)
        for i, s in enumerate(tqdm(neuron_sets, desc=desc, unit="mask", disable=not self.progress)):
            out[i] = self.predict(s)
        return out


def bootstrap_ci(normal: np.ndarray, masked: np.ndarray, control: np.ndarray | None, *, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``(acc_masked − acc_normal) − (acc_control − acc_normal)``.

    ``normal, masked [n]`` and ``control [K, n]`` are 0/1 correctness. Each resample draws the examples
    with replacement and, independently, K of the control sets with replacement (so the CI also counts
    how much the controls disagree); without controls the CI is of the masked effect alone.
    """
    n = len(normal)
    if n == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    eff = masked[idx].mean(1) - normal[idx].mean(1)
    if control is not None and len(control):
        k = len(control)
        per_set = np.stack([c[idx].mean(1) for c in control], 1)  # [n_boot, K]: each control's accuracy
        pick = rng.integers(0, k, size=(n_boot, k))
        eff = eff - (np.take_along_axis(per_set, pick, 1).mean(1) - normal[idx].mean(1))
    lo, hi = np.quantile(eff, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def rank_p(masked_acc: float, control_accs: np.ndarray) -> float:
    """Empirical p-value of a drop: ``(1 + #{k: control_k ≤ masked}) / (K + 1)`` over ``control_accs [K]``
    (NaN without controls; never below ``1 / (K + 1)``)."""
    k = len(control_accs)
    return (1 + int((np.asarray(control_accs) <= masked_acc).sum())) / (k + 1) if k else math.nan


@dataclass
class MaskResult:
    """Tables of a masking run (schemas in the README): effects, errors, per-example predictions."""

    effects: pd.DataFrame
    errors: pd.DataFrame
    predictions: pd.DataFrame
    sets: dict[str, NeuronSet]
    config: dict[str, Any]


def mask(model: Any, dataset: Sequence[Any], selection: Selection, *, emotions: Sequence[str] | None = None,
         layers: str = "all", ratio: float | None = None, ratio_mode: str = "truncate",
         stats: NeuronStats | None = None, controls: int = DEFAULT_CONTROLS, seed: int = 0, n_boot: int = 1000,
         template: str = DEFAULT_TEMPLATE, engine: MaskingEngine | None = None, prepend_bos: bool | None = None,
         progress: bool = True) -> MaskResult:
    """RQ2: mask each emotion's neurons and measure accuracy per (masked emotion × true label),
    against the clean run and against ``controls`` random sets of the same per-layer sizes.

    Effects columns: ``masked_emotion, true_label, n, n_neurons, acc_normal, acc_masked, acc_control``
    (mean of the K controls), ``delta_masked, delta_control, diff, ci_low, ci_high`` (:func:`bootstrap_ci`),
    ``k_controls, rank_p`` (:func:`rank_p`) and ``floor`` (``acc_normal < FLOOR_ACC``).
    """
    if controls < 0:
        raise EmocircuitsError(f"controls must be 0 or more random sets per condition, got {controls}.")
    spec = spec_of(model)
    selection.validate(spec.n_layers, spec.d_mlp, model=spec.model_id)
    unknown = [e for e in (emotions or []) if e not in selection.sets]
    if unknown:
        raise EmocircuitsError(f"No neuron set for {unknown}; this selection has {list(selection.sets)}.")
    engine = engine or MaskingEngine(model, dataset, labels=selection.labels, template=template,
                                     prepend_bos=prepend_bos, progress=progress)
    emotions = list(emotions or selection.labels)
    conds = [Condition(e, layers, ratio, ratio_mode) for e in emotions]
    sets = {c.emotion: condition_set(selection, c, stats) for c in conds}
    all_sets: list[NeuronSet] = []
    for c in conds:
        all_sets.append(sets[c.emotion])
        all_sets += [random_control(sets[c.emotion], engine.spec.d_mlp, _condition_seed(seed, c, k)) for k in range(controls)]
    preds = engine.evaluate(all_sets)
    y, labels = engine.y, engine.labels
    normal_ok = (engine.clean == y).astype(float)
    eff_rows, err_rows = [], []
    pred_frame: dict[str, Any] = {"id": [ex.id for ex in engine.examples], "true": [labels[i] for i in y],
                                  "normal": [labels[i] for i in engine.clean]}
    for ci, c in enumerate(conds):
        block = preds[ci * (controls + 1):(ci + 1) * (controls + 1)]
        masked_ok = (block[0] == y).astype(float)
        control_ok = (block[1:] == y[None, :]).astype(float)
        pred_frame[f"masked_{c.emotion}"] = [labels[i] for i in block[0]]
        for t_i, t in [(-1, "all"), *enumerate(labels)]:
            m = np.ones_like(y, dtype=bool) if t_i < 0 else (y == t_i)
            if not m.any():
                continue
            acc_n, acc_m = normal_ok[m].mean(), masked_ok[m].mean()
            acc_ck = control_ok[:, m].mean(1)  # [K]
            acc_c = acc_ck.mean() if controls else math.nan
            lo, hi = bootstrap_ci(normal_ok[m], masked_ok[m], control_ok[:, m] if controls else None,
                                  n_boot=n_boot, seed=_condition_seed(seed, c, "bootstrap", t))
            eff_rows.append({"masked_emotion": c.emotion, "true_label": t, "n": int(m.sum()),
                             "n_neurons": len(sets[c.emotion]), "acc_normal": acc_n, "acc_masked": acc_m,
                             "acc_control": acc_c, "delta_masked": acc_m - acc_n,
                             "delta_control": (acc_c - acc_n) if controls else math.nan,
                             "diff": (acc_m - acc_c) if controls else acc_m - acc_n, "ci_low": lo, "ci_high": hi,
                             "k_controls": controls, "rank_p": rank_p(acc_m, acc_ck), "floor": bool(acc_n < FLOOR_ACC)})
        wrong = block[0] != y
        for t_i, p_i in zip(y[wrong], block[0][wrong], strict=True):
            err_rows.append((c.emotion, labels[t_i], labels[p_i]))
    errors = (pd.DataFrame(err_rows, columns=["masked_emotion", "true_label", "predicted"])
              .value_counts().rename("count").reset_index()
              .sort_values(["masked_emotion", "true_label", "predicted"], ignore_index=True))
    config = {"layers": layers, "ratio": ratio, "ratio_mode": ratio_mode, "controls": controls, "seed": seed,
              "n_boot": n_boot, "template": template, "emotions": emotions}
    return MaskResult(pd.DataFrame(eff_rows), errors, pd.DataFrame(pred_frame), sets, config)


MASK_METRICS = ("acc_normal", "acc_masked", "acc_control", "delta_masked", "delta_control", "diff", "ci_low", "ci_high",
                "rank_p")
"""The metrics of a ``mask`` effects row; prefixed ``own_`` / ``all_`` they are the RQ3 results schema."""

SWEEP_AXES = ("emotion", "layers", "ratio", "ratio_mode", "seed")
"""The condition columns of the RQ3 results schema (the cell of a ``neuron_masking`` sweep)."""


def sweep_row(result: MaskResult, emotion: str, labels: Sequence[str], n_layers: int) -> dict[str, Any]:
    """The metric columns of one RQ3 row, from a ``mask`` result in which ``emotion`` was masked.

    ``n_neurons, n_examples, k_controls``, ``layer_first, layer_last`` (the span of the masked layer range),
    ``own_<metric>`` on the masked emotion's own texts and ``all_<metric>`` on every text (``MASK_METRICS``),
    ``own_floor, all_floor`` (clean accuracy below ``FLOOR_ACC``; None without own texts) and
    ``acc_masked_<label>`` for each of ``labels`` (NaN for a label without texts).
    """
    eff = result.effects[result.effects.masked_emotion == emotion]
    overall = eff[eff.true_label == "all"].iloc[0]
    own = eff[eff.true_label == emotion]
    span = layer_range(n_layers, result.config["layers"])
    row: dict[str, Any] = {"n_neurons": int(overall.n_neurons), "n_examples": int(overall.n),
                           "k_controls": int(overall.k_controls),
                           "layer_first": span[0] if span else None, "layer_last": span[-1] if span else None}
    row.update({f"own_{k}": float(own.iloc[0][k]) if len(own) else math.nan for k in MASK_METRICS})
    row.update({f"all_{k}": float(overall[k]) for k in MASK_METRICS})
    row.update({"own_floor": bool(own.iloc[0]["floor"]) if len(own) else None, "all_floor": bool(overall["floor"])})
    per_label = eff.set_index("true_label")["acc_masked"]
    for lab in labels:
        row[f"acc_masked_{lab}"] = float(per_label.get(lab, math.nan))
    return row


def sweep(model: Any, dataset: Sequence[Any], selection: Selection, *, emotions: Sequence[str] | None = None,
          ratios: Sequence[float | None] = (0.01, 0.02, 0.03, 0.04, 0.05), layer_ranges: Sequence[str] = LAYER_RANGES,
          ratio_mode: str = "truncate", stats: NeuronStats | None = None, controls: int = DEFAULT_CONTROLS, seed: int = 0,
          n_boot: int = 1000, template: str = DEFAULT_TEMPLATE, engine: MaskingEngine | None = None,
          progress: bool = True) -> pd.DataFrame:
    """RQ3: mask each emotion's neurons at every (layer range, ratio), with controls and CIs.

    One row per (emotion, layers, ratio) in grid order, in the schema of a ``neuron_masking`` sweep's
    ``results.parquet`` (less its ``cell_index, cell_id, status, error``): ``SWEEP_AXES`` then
    :func:`sweep_row`'s columns; the numbers equal that sweep's cells (same seeds, same passes). For
    a resumable, parallel run use ``emocircuits neurons sweep`` or :func:`emocircuits.sweeps.run_sweep`.
    """
    engine = engine or MaskingEngine(model, dataset, labels=selection.labels, template=template, progress=progress)
    rows = []
    for e in list(emotions or selection.labels):
        for lr in layer_ranges:
            for r in ratios:
                res = mask(model, dataset, selection, emotions=[e], layers=lr, ratio=r, ratio_mode=ratio_mode,
                           stats=stats, controls=controls, seed=seed, n_boot=n_boot, engine=engine, progress=False)
                rows.append({"emotion": e, "layers": lr, "ratio": r, "ratio_mode": ratio_mode, "seed": seed,
                             **sweep_row(res, e, engine.labels, engine.spec.n_layers)})
    return pd.DataFrame(rows)
