"""Work shared by every cell of a worker: one model load, one tokenisation, one clean pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from emocircuits.errors import EmocircuitsError

_MODELS: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}


def cached_model(model_cfg: Any, *, progress: bool = False) -> tuple[Any, Any]:
    """``(bridge, ModelSpec)`` for a ``[model]`` config, loaded once per process (one model kept)."""
    from emocircuits.models import load_model

    key = (model_cfg.spec, model_cfg.dtype, model_cfg.device, model_cfg.device_map)
    if key not in _MODELS:
        _MODELS.clear()
        if not progress:
            import transformers

            transformers.utils.logging.disable_progress_bar()
        _MODELS[key] = load_model(model_cfg.spec, dtype=model_cfg.dtype, device=model_cfg.device,
                                  progress=progress, device_map=model_cfg.device_map or None)
    return _MODELS[key]


@dataclass
class ReadoutState:
    """A worker's shared state for label-accuracy analyses.

    ``batches``: the tokenised prompts in token-budget batches (built once); ``y_true [n]`` label index
    of each example; ``clean_scores [n, n_labels]`` and ``clean_pred [n]`` from the unmodified model.
    """

    model: Any
    spec: Any
    dataset: Any
    readout: Any
    batches: list[Any]
    y_true: np.ndarray
    clean_scores: np.ndarray
    clean_pred: np.ndarray

    @property
    def labels(self) -> tuple[str, ...]:
        return self.readout.labels

    def scores(self) -> np.ndarray:
        """Label scores ``[n, n_labels]`` of every example under whatever hooks are attached now."""
        n = len(self.y_true)
        out = torch.empty(n, len(self.labels))
        for batch in self.batches:
            out[batch.rows] = self.readout.scores(batch)
        return out.numpy()


def prepare_readout(cfg: Any, *, scoring: str = "first_token", share_prefix: bool = True, max_tokens: int = 4096,
                    progress: bool = False) -> ReadoutState:
    """Load model and data, tokenise once, and run the clean pass once."""
    from emocircuits.readout import LabelReadout

    torch.manual_seed(cfg.seed)
    model, spec = cached_model(cfg.model, progress=progress)
    dataset = cfg.data.load(seed=cfg.seed)
    labels = dataset.labels
    unknown = sorted({ex.label for ex in dataset} - set(labels))
    if unknown:
        raise EmocircuitsError(f"Data labels {unknown} are outside the scheme {list(labels)}; set data.labels.")
    readout = LabelReadout(model, labels, cfg.data.template, scoring, share_prefix=share_prefix, max_tokens=max_tokens)
    token_ids = readout.encode(list(dataset))
    batches = list(readout.batches(token_ids))
    y_true = np.array([labels.index(ex.label) for ex in dataset], dtype=np.int64)
    state = ReadoutState(model, spec, dataset, readout, batches, y_true, np.zeros((0,)), np.zeros((0,)))
    state.clean_scores = state.scores()
    state.clean_pred = state.clean_scores.argmax(-1)
    return state


def accuracy_metrics(state: ReadoutState, pred: np.ndarray, prefix: str = "") -> dict[str, float]:
    """``acc`` and ``acc_<label>`` (accuracy on each true label; NaN when a label has no examples)."""
    correct = pred == state.y_true
    out = {f"{prefix}acc": float(correct.mean())}
    for j, lab in enumerate(state.labels):
        m = state.y_true == j
        out[f"{prefix}acc_{lab}"] = float(correct[m].mean()) if m.any() else float("nan")
    return out
