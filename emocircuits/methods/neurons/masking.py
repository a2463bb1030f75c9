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

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from emocircuits.base.constants import (
    CHECKPOINT_MEMORY,
    DEFAULT_CONTROLS,
    DEFAULT_TEMPLATE,
    FLOOR_ACC,
    LAYER_RANGES,
    MASK_RATIOS,
)
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.stats import bootstrap_ci, rank_p
from emocircuits.core.interventions import ZeroNeurons, current_batch, observe
from emocircuits.core.models import spec_of
from emocircuits.core.readout import LabelReadout
from emocircuits.core.sites import layer_range
from emocircuits.core.units import NeuronSet
from emocircuits.methods.neurons.find import (
    Condition,
    NeuronStats,
    Selection,
    _condition_seed,
    _label_indices,
    _labels_of,
    condition_set,
    random_control,
)

"""Random control sets per masked set in ``mask``, ``sweep``, ``neurons mask|sweep`` and the sweep analysis."""




"""Clean accuracy below which a label is flagged ``floor``: too rarely right to show a drop under masking."""


class MaskingEngine:
    """Classify one dataset under many neuron masks, sharing everything shareable.

    Tokenisation, batching and the clean (unmasked) pass happen once. The clean pass also keeps the
    residual entering *checkpoint* layers (the tokens after the shared prefix only, ``[b, p - prefix,
    d_model]`` per batch): ``checkpoints`` evenly spaced layers, by default (None) as many as fit in
    ``checkpoint_memory`` bytes, up to every layer. A mask whose lowest layer is L cannot change anything
    below L, so its pass starts from the highest checkpoint ≤ L instead of the embedding, and the blocks
    below it are not run — a masked pass over the top third of the layers costs about a third of a full
    one. A pass that starts below L also keeps the clean residual entering L (unchanged there, since
    nothing below L is masked), so the random controls of the same layout and every later mask with lowest
    layer L start exactly at L; these extra checkpoints stay within ``checkpoint_memory`` (least recently
    used dropped first). ``checkpoints=0`` turns all of this off. Scores are the same either way, to the
    bit (``tests/test_neurons.py``).
    """

    def __init__(self, model: Any, dataset: Sequence[Any], *, labels: Sequence[str] | None = None,
                 template: str = DEFAULT_TEMPLATE, scoring: str = "first_token", max_tokens: int = 4096,
                 checkpoints: int | None = None, checkpoint_memory: int = CHECKPOINT_MEMORY, share_prefix: bool = True,
                 prepend_bos: bool | None = None, progress: bool = True) -> None:

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
        if checkpoints is None:
            offset = self.readout.runner.shared_prefix(self.batches)
            one = sum(len(b) * (b.input_ids.shape[1] - offset) for b in self.batches) * self.spec.d_model
            one *= next(model.parameters()).element_size()
            checkpoints = min(n - 1, int(checkpoint_memory) // max(one, 1))
        stride = max(1, -(-n // (checkpoints + 1))) if checkpoints > 0 and scoring == "first_token" else n
        self.checkpoint_layers = [layer for layer in range(stride, n, stride)][:checkpoints]
        self._resid: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.checkpoint_layers}
        self._extra: list[int] = []  # layers of the extra checkpoints, least recently used first
        self.checkpoint_memory = int(checkpoint_memory) if self.checkpoint_layers else 0
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
        return max((c for c in self._resid if c <= lowest), default=0)

    def _checkpoint_bytes(self) -> int:
        first = next(iter(self._resid.values()), [])
        return sum(t.numel() * t.element_size() for t in first)

    def _make_room(self) -> bool:
        """Drop least recently used extra checkpoints until one more checkpoint fits ``checkpoint_memory``
        (the clean pass's count too); False when it cannot."""
        size = self._checkpoint_bytes()
        if not size or size > self.checkpoint_memory:
            return False
        while self._extra and (len(self._resid) + 1) * size > self.checkpoint_memory:
            del self._resid[self._extra.pop(0)]
        return (len(self._resid) + 1) * size <= self.checkpoint_memory

    def scores(self, neurons: NeuronSet | None = None) -> torch.Tensor:
        """Label scores ``[n_examples, n_labels]`` with ``neurons`` zeroed at every position (None = clean)."""
        if neurons is None or not len(neurons):
            return self.clean_scores.clone()
        neurons.validate(self.spec.n_layers, self.spec.d_mlp)
        start, lowest = self.start_layer(neurons), min(neurons.layers)
        if start in self._extra:
            self._extra.remove(start)
            self._extra.append(start)
        kept: list[torch.Tensor] = []

        def keep(_layer: int, value: torch.Tensor) -> None:
            if not current_batch().shared:
                kept.append(value.detach().clone())

        learn = lowest > start and self.checkpoint_layers and self._make_room()
        with contextlib.ExitStack() as stack:
            stack.enter_context(ZeroNeurons(neurons).apply(self.model))
            if learn:
                stack.enter_context(observe(self.model, "resid.pre", [lowest], keep))
            s = self.readout.scores(self.batches, start_layer=start, resid=self._resid[start] if start else None)
        if learn and len(kept) == len(self.batches):
            self._resid[lowest] = kept
            self._extra.append(lowest)
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
          ratios: Sequence[float | None] = MASK_RATIOS, layer_ranges: Sequence[str] = LAYER_RANGES,
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
