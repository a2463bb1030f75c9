"""The Judge protocol and the helpers every judge shares (input checks, verdict tables).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from emocircuits.base.errors import EmocircuitsError

NONE = "none"


@runtime_checkable
class Judge(Protocol):
    """Anything with ``name``, ``labels`` and ``judge(texts, targets=None) -> DataFrame``."""

    name: str
    labels: tuple[str, ...]

    def judge(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> pd.DataFrame: ...


def _missing(package: str, judge: str) -> EmocircuitsError:
    return EmocircuitsError(
        f"The {judge} judge needs the optional package {package!r}; install it with `pip install {package}`."
    )


def _check_inputs(texts: Sequence[str], targets: Sequence[str] | None, labels: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise EmocircuitsError("judge() takes a list of texts, not one string; wrap it as [text].")
    texts = [str(t) for t in texts]
    if targets is not None:
        if len(targets) != len(texts):
            raise EmocircuitsError(f"Got {len(targets)} targets for {len(texts)} texts; pass one target per text.")
        bad = sorted({t for t in targets if t not in labels})
        if bad:
            raise EmocircuitsError(f"Targets {bad} are not among the judge's labels {list(labels)}.")
    return texts


def verdict_frame(probs: np.ndarray, labels: Sequence[str], predicted: Sequence[str]) -> pd.DataFrame:
    """The judge output: ``predicted`` and ``p_<label>`` columns from ``probs [n, n_labels]``."""
    frame: dict[str, Any] = {"predicted": list(predicted)}
    for j, lab in enumerate(labels):
        frame[f"p_{lab}"] = np.asarray(probs[:, j], dtype=np.float64) if len(probs) else np.zeros(0)
    return pd.DataFrame(frame)


def _argmax_labels(probs: np.ndarray, labels: Sequence[str], threshold: float = 0.0) -> list[str]:
    """Label of each row's largest probability (first in label order on ties); "none" at or below threshold."""
    out = []
    for row in probs:
        j = int(np.nanargmax(row)) if np.isfinite(row).any() else -1
        out.append(labels[j] if j >= 0 and row[j] > threshold else NONE)
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)
