"""``head_scaling``: multiply attention heads' outputs by a factor and measure label accuracy.

Cell = (layers, heads, factor): the query heads ``heads`` ("all" or "0,3") in every layer of ``layers``
(bottom | middle | top | all | A-B | A) have their ``head.z`` output scaled by ``factor`` (0 = ablation,
> 1 = enhancement). Metrics: clean and scaled accuracy (overall and per true label), their difference,
and the share of predictions that changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emocircuits.errors import EmocircuitsError
from emocircuits.readout import SCORINGS
from emocircuits.sweeps.base import Analysis
from emocircuits.sweeps.config import choice
from emocircuits.sweeps.shared import ReadoutState, accuracy_metrics, prepare_readout

LAYER_NAMES = ("bottom", "middle", "top", "all")
_LAYERS_RE = re.compile(r"^\d+(-\d+)?$")
_HEADS_RE = re.compile(r"^\d+(,\d+)*$")


@dataclass(frozen=True)
class HeadScalingParams:
    """``[analysis]`` of head_scaling."""

    scoring: str = "first_token"
    max_tokens: int = 4096
    share_prefix: bool = True
    save_predictions: bool = True


@dataclass(frozen=True)
class HeadScalingCell:
    """One condition: scale ``heads`` in ``layers`` by ``factor``."""

    layers: str = "all"
    heads: str = "all"
    factor: float = 0.0


def check_layers_syntax(key: str, value: str) -> None:
    """Layer range syntax (checked against the model's depth once it is loaded)."""
    if value not in LAYER_NAMES and not _LAYERS_RE.match(value):
        raise EmocircuitsError(f"Key {key!r} has value {value!r}; allowed values: {', '.join(LAYER_NAMES)}, "
                               "'A-B' (inclusive) or a single layer 'A'.")


class HeadScaling(Analysis):
    name = "head_scaling"
    Params = HeadScalingParams
    Cell = HeadScalingCell
    default_cells_per_task = 2

    def validate(self, cfg: Any) -> None:
        choice("analysis.scoring", cfg.params.scoring, SCORINGS)
        for v in cfg.grid.get("layers", []):
            check_layers_syntax("grid.layers", v)
        for v in cfg.grid.get("heads", []):
            if v != "all" and not _HEADS_RE.match(v):
                raise EmocircuitsError(f"Key 'grid.heads' has value {v!r}; allowed values: 'all' or a comma list "
                                       "of head indices such as '0,3'.")

    save_predictions = True

    def prepare(self, cfg: Any, shared: dict[str, Any], *, progress: bool = False) -> ReadoutState:
        p = cfg.params
        self.save_predictions = p.save_predictions
        return prepare_readout(cfg, scoring=p.scoring, share_prefix=p.share_prefix, max_tokens=p.max_tokens,
                               progress=progress)

    def run(self, state: ReadoutState, cells: Sequence[HeadScalingCell]) -> list[dict[str, Any]]:
        from emocircuits.components import HeadSet
        from emocircuits.interventions import ScaleHeads
        from emocircuits.sites import layer_range

        out = []
        spec = state.spec
        for cell in cells:
            layers = layer_range(spec.n_layers, cell.layers)
            heads = range(spec.n_heads) if cell.heads == "all" else [int(h) for h in cell.heads.split(",")]
            hs = HeadSet(tuple((layer, h) for layer in layers for h in heads)).validate(spec.n_layers, spec.n_heads)
            with ScaleHeads(hs, factor=cell.factor).apply(state.model):
                scores = state.scores()
            pred = scores.argmax(-1)
            metrics: dict[str, Any] = {"n_heads": len(hs), "n_examples": int(len(pred))}
            metrics.update(accuracy_metrics(state, state.clean_pred, "clean_"))
            metrics.update(accuracy_metrics(state, pred))
            metrics["delta"] = metrics["acc"] - metrics["clean_acc"]
            metrics["changed"] = float(np.mean(pred != state.clean_pred))
            metrics["mean_true_logp"] = float(scores[np.arange(len(pred)), state.y_true].mean())
            if self.save_predictions:
                metrics["__arrays__"] = {"predicted": pred.astype(np.int64), "scores": scores.astype(np.float32)}
            out.append(metrics)
        return out
