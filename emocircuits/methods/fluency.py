"""Fluency of generated replies, and the steering strength chosen on it (``auto``).

A steered reply is fluent when, against the unsteered replies to the same prompts, its perplexity under the
unsteered model is at most :data:`~emocircuits.base.constants.FLUENCY_MAX_PPL_RATIO` × theirs (geometric
means), its distinct-2 at least :data:`~emocircuits.base.constants.FLUENCY_MIN_DISTINCT2_RATIO` × theirs (each
reply's own distinct-2, averaged: :func:`reply_distinct_n`), and its share of empty replies at most
:data:`~emocircuits.base.constants.FLUENCY_MAX_EMPTY_RISE` above theirs. ``auto`` strength tries a grid
weakest first on a calibration split and keeps the strongest setting before the first that breaks the rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from emocircuits.base.constants import (
    FLUENCY_MAX_EMPTY_RISE,
    FLUENCY_MAX_PPL_RATIO,
    FLUENCY_MIN_DISTINCT2_RATIO,
)
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.generation import FINISHED, Generation, encode_prompts, generate
from emocircuits.core.runner import Runner

_WORD = re.compile(r"[a-z0-9']+")


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique word n-grams / word n-grams pooled over ``texts`` (lower-case words; NaN with no n-gram)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        w = _WORD.findall(str(t).lower())
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else math.nan


def reply_distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Mean over ``texts`` of each text's own distinct-n (texts with no n-gram left out; NaN if none has one).

    The fluency rule's distinct-2: it catches the loops over-steered replies fall into ("1.1.1.1…") and, unlike
    distinct-n pooled over replies, does not fall with the number of replies or when replies share the target
    emotion's words (the effect being measured)."""
    vals = [distinct_n([t], n) for t in texts]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def reply_perplexity(model: Any, prompt_ids: Sequence[Sequence[int]], reply_ids: Sequence[Sequence[int]], *,
                     max_tokens: int = 4096) -> np.ndarray:
    """``[n]`` perplexity ``exp(mean NLL)`` of each reply's tokens given its prompt, under the model as it is now
    (no hooks applied: the unsteered model); NaN for an empty reply."""

    out = np.full(len(prompt_ids), np.nan)
    todo = [i for i, r in enumerate(reply_ids) if len(r)]
    if not todo:
        return out
    runner = Runner(model, max_tokens=max_tokens)
    seqs = [list(prompt_ids[i]) + list(reply_ids[i]) for i in todo]
    plens = [len(prompt_ids[i]) for i in todo]
    batches = runner.batches_with_continuations(seqs, plens)
    with torch.inference_mode():
        for step in runner.run(batches):
            assert step.hidden is not None
            for j, r in enumerate(step.batch.rows):
                p, total = plens[r], len(seqs[r])
                h = step.hidden[j, p - 1 - step.offset: total - 1 - step.offset]  # [k, d]: states predicting the reply
                lp = torch.log_softmax(runner.logits(h), dim=-1)
                tgt = torch.tensor(seqs[r][p:total])
                nll = -lp[torch.arange(len(tgt)), tgt].double().mean()
                out[todo[r]] = float(torch.exp(nll))
    return out


def geometric_mean(values: Sequence[float] | np.ndarray) -> float:
    """Geometric mean of the finite positive values (NaN when there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.exp(np.log(v).mean())) if len(v) else math.nan


@dataclass(frozen=True)
class FluencyRule:
    """When steered replies count as fluent, against the unsteered replies to the same prompts."""

    max_ppl_ratio: float = FLUENCY_MAX_PPL_RATIO
    min_distinct2_ratio: float = FLUENCY_MIN_DISTINCT2_RATIO
    max_empty_rise: float = FLUENCY_MAX_EMPTY_RISE

    def holds(self, ppl_ratio: float, distinct2_ratio: float, empty_rise: float) -> bool:
        """True when all three criteria hold (a NaN ratio fails: nothing to judge fluency on)."""
        return bool(ppl_ratio <= self.max_ppl_ratio and distinct2_ratio >= self.min_distinct2_ratio
                    and empty_rise <= self.max_empty_rise)

    def describe(self) -> str:
        return (f"perplexity ratio <= {self.max_ppl_ratio:g}, distinct-2 ratio >= {self.min_distinct2_ratio:g}, "
                f"empty share at most {self.max_empty_rise:g} above unsteered")

    def as_dict(self) -> dict[str, float]:
        return {"max_ppl_ratio": self.max_ppl_ratio, "min_distinct2_ratio": self.min_distinct2_ratio,
                "max_empty_rise": self.max_empty_rise}


@dataclass
class Fluency:
    """Fluency of one set of replies: ``ppl`` (geometric mean), ``distinct2`` (each reply's own, averaged),
    ``empty`` and ``cut_off`` shares, ``n`` replies."""

    ppl: float
    distinct2: float
    empty: float
    cut_off: float
    n: int


def measure(model: Any, neutral_ids: Sequence[Sequence[int]], gens: Sequence[Generation], *,
            max_tokens: int = 4096) -> Fluency:
    """Fluency of ``gens`` (one :class:`Generation` per group, e.g. per emotion, each over the same prompts
    whose neutral-prompt token ids are ``neutral_ids``): perplexity under the model as it is now."""
    ppl, texts, empty, cut = [], [], [], []
    for g in gens:
        ppl.append(reply_perplexity(model, neutral_ids, g.token_ids, max_tokens=max_tokens))
        texts += list(g.texts)
        empty += [not t.strip() for t in g.texts]
        cut += [f not in FINISHED for f in g.finish]
    return Fluency(geometric_mean(np.concatenate(ppl)) if ppl else math.nan, reply_distinct_n(texts, 2),
                   float(np.mean(empty)) if empty else math.nan, float(np.mean(cut)) if cut else math.nan, len(texts))


CURVE_COLUMNS = ["strength", "ppl", "ppl_ratio", "distinct2", "distinct2_ratio", "empty", "cut_off", "n", "fluent"]


@dataclass
class StrengthChoice:
    """The outcome of :func:`calibrate_strength`.

    ``chosen``: the strongest fluent strength (the weakest tried when none is fluent, then ``fluent`` is
    False); ``curve``: one row per strength tried, :data:`CURVE_COLUMNS` (the reference, unsteered, has
    strength 0); ``rule``: the :class:`FluencyRule`."""

    name: str
    chosen: float
    fluent: bool
    curve: pd.DataFrame
    rule: FluencyRule = field(default_factory=FluencyRule)
    n_prompts: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-ready: ``name, chosen, fluent, rule, n_prompts, curve`` (list of rows)."""
        return {"name": self.name, "chosen": self.chosen, "fluent": self.fluent, "rule": self.rule.describe(),
                "n_prompts": self.n_prompts,
                "curve": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                           for k, v in row.items()} for row in self.curve.to_dict("records")]}

    def line(self) -> str:
        """One line for the terminal: the choice, the rule and the curve."""
        pts = ", ".join(f"{r.strength:g}: ppl×{r.ppl_ratio:.2f} d2×{r.distinct2_ratio:.2f}"
                        + ("" if r.fluent else " (not fluent)")
                        for r in self.curve.itertuples() if r.strength != 0)
        verdict = "" if self.fluent else " — no strength tried keeps replies fluent; the weakest is used"
        return (f"{self.name} auto = {self.chosen:g} on {self.n_prompts} calibration prompt(s) "
                f"({self.rule.describe()}){verdict}; tried {pts}")


def curve_row(strength: float, fl: Fluency, ref: Fluency, rule: FluencyRule) -> dict[str, Any]:
    """One row of a strength curve: ``fl`` against the unsteered reference ``ref``."""
    ppl_ratio = fl.ppl / ref.ppl if ref.ppl > 0 else math.nan
    d2_ratio = fl.distinct2 / ref.distinct2 if ref.distinct2 > 0 else math.nan
    return {"strength": float(strength), "ppl": fl.ppl, "ppl_ratio": ppl_ratio, "distinct2": fl.distinct2,
            "distinct2_ratio": d2_ratio, "empty": fl.empty, "cut_off": fl.cut_off, "n": fl.n,
            "fluent": rule.holds(ppl_ratio, d2_ratio, fl.empty - ref.empty)}


def calibrate_strength(model: Any, prompts: Sequence[Any], interventions_at: Callable[[float], Sequence[Any]], *,
                       grid: Sequence[float], name: str = "strength", rule: FluencyRule | None = None,
                       generate_kw: Mapping[str, Any] | None = None, neutral: Sequence[Any] | None = None,
                       max_tokens: int = 4096) -> StrengthChoice:
    """The strongest strength of ``grid`` whose steered replies stay fluent (:class:`FluencyRule`).

    ``prompts``: what :func:`~emocircuits.core.generation.generate` takes (chat message lists); ``neutral``:
    the same prompts as the perplexity is conditioned on (default ``prompts``). ``interventions_at(s)``: the
    interventions of strength ``s``, one per group (e.g. per emotion), each generating over every prompt
    (``None`` = no hooks). Strengths are tried weakest first; the search stops at the first that breaks the
    rule.
    """
    grid = sorted(float(x) for x in grid)
    if not grid or not all(math.isfinite(x) and x > 0 for x in grid):
        raise EmocircuitsError(f"The {name} grid must hold finite strengths > 0 (got {list(grid)}).")
    if not len(prompts):
        raise EmocircuitsError(f"No calibration prompts to choose the {name} on; give at least one prompt.")
    rule = rule or FluencyRule()
    kw = {"max_tokens": max_tokens, **dict(generate_kw or {})}
    runner = Runner(model, max_tokens=max_tokens)
    neutral_ids = encode_prompts(runner, list(neutral if neutral is not None else prompts))
    ref = measure(model, neutral_ids, [generate(model, prompts, **kw)], max_tokens=max_tokens)
    rows = [{**curve_row(0.0, ref, ref, rule), "fluent": True}]
    chosen, fluent = grid[0], False
    for s in grid:
        gens = []
        for iv in interventions_at(s):
            if iv is None:
                gens.append(generate(model, prompts, **kw))
            else:
                with iv.apply(model):
                    gens.append(generate(model, prompts, **kw))
        row = curve_row(s, measure(model, neutral_ids, gens, max_tokens=max_tokens), ref, rule)
        rows.append(row)
        if not row["fluent"]:
            break
        chosen, fluent = s, True
    return StrengthChoice(name, chosen, fluent, pd.DataFrame(rows, columns=CURVE_COLUMNS), rule, len(prompts))
