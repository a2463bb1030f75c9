"""Attention heads: scale or ablate query heads and measure label accuracy, with bootstrap CIs.

    from emocircuits import heads
    table = heads.scale_heads(model, test, "top:all", factor=0.0)     # one row per true label, "all" first
    table.iloc[0][["clean_acc", "acc", "delta", "ci_low", "ci_high"]]

Heads are a :class:`~emocircuits.core.components.HeadSet`, a list of ``(layer, head)`` pairs, or the short form
``"LAYERS:HEADS"``: LAYERS a layer range (``bottom | middle | top | all | A-B | A``, see
:func:`emocircuits.core.sites.layer_range`), HEADS ``all`` or a comma list of query-head indices (``"0,3"``).

Nothing here is specific to heads: :class:`Evaluator` classifies one dataset under any intervention
(tokenisation and the clean pass happen once) and :func:`accuracy_table` turns clean and intervened
scores into the table below; the sweep ``intervention`` analysis uses both for every cell.

Accuracy table (one row per ``true_label``, ``"all"`` first, then each label with examples):
``true_label, n, clean_acc, acc, delta`` (acc − clean_acc), ``ci_low, ci_high`` (bootstrap 95% CI of
delta, resampling examples), ``changed`` (share of predictions that moved), ``changed_ci_low,
changed_ci_high``, ``clean_true_logp, true_logp`` (mean log-prob of the true label).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from emocircuits.base.constants import DEFAULT_TEMPLATE
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.seeds import derive_seed
from emocircuits.base.stats import bootstrap_ci
from emocircuits.core.interventions import ScaleHeads
from emocircuits.core.models import spec_of
from emocircuits.core.readout import LabelReadout
from emocircuits.core.sites import check_layer_range, layer_range
from emocircuits.core.units import HeadSet

POOLED = "all"


"""The ``true_label`` of the row pooled over every example."""


def _dims(spec: Any) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of a ModelSpec, its dict, or a model."""
    if isinstance(spec, Mapping):
        return int(spec["n_layers"]), int(spec["n_heads"])
    if not hasattr(spec, "n_heads"):

        spec = spec_of(spec)
    return int(spec.n_layers), int(spec.n_heads)


def check_heads(value: Any, key: str = "heads") -> None:
    """Check the short form ``"LAYERS:HEADS"`` (or a list of pairs) without a model; one sentence if bad."""
    if isinstance(value, HeadSet):
        return
    if isinstance(value, list | tuple):
        if not all(isinstance(p, list | tuple) and len(p) == 2 and all(isinstance(x, int) for x in p) for p in value):
            raise EmocircuitsError(f"Key {key!r} has value {value!r}; give [layer, head] pairs such as [[0, 1], [2, 3]].")
        return
    layers, colon, heads = str(value).partition(":")
    if not colon:
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; use 'LAYERS:HEADS' such as 'top:all' or '2-3:0,5'.")
    check_layer_range(layers, key)
    if heads != "all" and not all(h.strip().isdigit() for h in heads.split(",")):
        raise EmocircuitsError(f"Key {key!r} has heads {heads!r}; allowed values: 'all' or a comma list of head "
                               "indices such as '0,3'.")


def head_set(spec: Any, heads: HeadSet | str | Sequence[Sequence[int]]) -> HeadSet:
    """The HeadSet that ``heads`` names, checked against ``spec`` (a ModelSpec, its dict, or a model)."""
    n_layers, n_heads = _dims(spec)
    if isinstance(heads, HeadSet):
        return heads.validate(n_layers, n_heads)
    check_heads(heads)
    if isinstance(heads, list | tuple):
        return HeadSet(tuple(tuple(p) for p in heads)).validate(n_layers, n_heads)
    layers, _, which = str(heads).partition(":")
    idx = range(n_heads) if which == "all" else [int(h) for h in which.split(",")]
    pairs = tuple((layer, h) for layer in layer_range(n_layers, layers) for h in idx)
    return HeadSet(pairs).validate(n_layers, n_heads)


class Evaluator:
    """Classify one dataset under many interventions, sharing tokenisation, batches and the clean pass.

    ``y [n]``: true label index per example; ``clean_scores [n, n_labels]`` (log-probs) and
    ``clean_pred [n]`` of the unmodified model, in input order.
    """

    def __init__(self, model: Any, dataset: Sequence[Any], *, labels: Sequence[str] | None = None,
                 template: str = DEFAULT_TEMPLATE, scoring: str = "first_token", max_tokens: int = 4096,
                 share_prefix: bool = True, prepend_bos: bool | None = None) -> None:

        self.model = model
        self.examples = list(dataset)
        if not self.examples:
            raise EmocircuitsError("The dataset is empty; give at least one labelled text.")
        self.labels = tuple(labels or getattr(dataset, "labels", ()) or sorted({ex.label for ex in self.examples}))
        unknown = sorted({ex.label for ex in self.examples} - set(self.labels))
        if unknown:
            raise EmocircuitsError(f"Data labels {unknown} are outside the scheme {list(self.labels)}; pass labels=.")
        self.y = np.array([self.labels.index(ex.label) for ex in self.examples], dtype=np.int64)
        self.readout = LabelReadout(model, self.labels, template, scoring, share_prefix=share_prefix,
                                    max_tokens=max_tokens, prepend_bos=prepend_bos)
        self.token_ids = self.readout.encode(self.examples)
        self.batches = self.readout.batches(self.token_ids)
        self.order = torch.tensor([r for b in self.batches for r in b.rows], dtype=torch.long)
        self.clean_scores = self.scores()
        self.clean_pred = self.clean_scores.argmax(-1)

    @property
    def spec(self) -> Any:
        return self.readout.runner.spec

    def scores(self, intervention: Any = None) -> np.ndarray:
        """Label scores ``[n, n_labels]`` in input order with ``intervention`` applied (None = clean)."""
        with intervention.apply(self.model) if intervention is not None else contextlib.nullcontext():
            s = self.readout.scores(self.batches)
        out = torch.empty_like(s)
        out[self.order] = s
        return out.numpy()

    def activations(self, site: str, layer: int, intervention: Any = None) -> np.ndarray:
        """A site's value at each prompt's last token ``[n, width]`` (input order) under ``intervention``."""
        with intervention.apply(self.model) if intervention is not None else contextlib.nullcontext():
            acts = self.readout.runner.capture(self.token_ids, site, [layer])[layer]
        return acts.float().numpy()

    def effect(self, intervention: Any, *, n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
        """``(accuracy table, scores [n, n_labels])`` of ``intervention`` against the clean pass."""
        scores = self.scores(intervention)
        return accuracy_table(self.y, self.labels, self.clean_scores, scores, n_boot=n_boot, seed=seed), scores


def accuracy_table(y: np.ndarray, labels: Sequence[str], clean_scores: np.ndarray, scores: np.ndarray, *,
                   n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Clean vs intervened accuracy per true label (schema in the module docstring).

    ``y [n]`` true label indices; ``clean_scores, scores [n, n_labels]`` label log-probs. CIs resample
    examples with seeds derived from ``seed`` and the row's label (independent of other rows).
    """

    y = np.asarray(y)
    clean_pred, pred = clean_scores.argmax(-1), scores.argmax(-1)
    clean_ok, ok = (clean_pred == y).astype(float), (pred == y).astype(float)
    changed = (pred != clean_pred).astype(float)
    rows = np.arange(len(y))
    clean_true, true = clean_scores[rows, y], scores[rows, y]
    out = []
    for j, lab in [(-1, POOLED), *enumerate(labels)]:
        m = np.ones_like(y, dtype=bool) if j < 0 else y == j
        if not m.any():
            continue
        lo, hi = bootstrap_ci(clean_ok[m], ok[m], None, n_boot=n_boot, seed=derive_seed(seed, "bootstrap", lab))
        clo, chi = bootstrap_ci(np.zeros(int(m.sum())), changed[m], None, n_boot=n_boot,
                                seed=derive_seed(seed, "bootstrap-changed", lab))
        out.append({"true_label": lab, "n": int(m.sum()), "clean_acc": float(clean_ok[m].mean()),
                    "acc": float(ok[m].mean()), "delta": float(ok[m].mean() - clean_ok[m].mean()),
                    "ci_low": lo, "ci_high": hi, "changed": float(changed[m].mean()), "changed_ci_low": clo,
                    "changed_ci_high": chi, "clean_true_logp": float(clean_true[m].mean()),
                    "true_logp": float(true[m].mean())})
    return pd.DataFrame(out)


def scale_heads(model: Any, dataset: Sequence[Any], heads: HeadSet | str | Sequence[Sequence[int]],
                factor: float = 0.0, *, positions: Any = "all", template: str = DEFAULT_TEMPLATE,
                scoring: str = "first_token", labels: Sequence[str] | None = None, n_boot: int = 1000,
                seed: int = 0, evaluator: Evaluator | None = None) -> pd.DataFrame:
    """Multiply the outputs (``head.z``) of ``heads`` by ``factor`` (0 = ablation) and compare label accuracy
    with the clean model: the accuracy table of the module docstring.

    Pass an :class:`Evaluator` to reuse one clean pass over several calls.
    """

    ev = evaluator or Evaluator(model, dataset, labels=labels, template=template, scoring=scoring)
    hs = head_set(ev.spec, heads)
    table, _ = ev.effect(ScaleHeads(hs, factor=factor, positions=positions), n_boot=n_boot, seed=seed)
    table.attrs.update(heads=[list(h) for h in hs.heads], factor=factor)
    return table
