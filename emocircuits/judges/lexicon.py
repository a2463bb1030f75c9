"""The NRC emotion-lexicon judge.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.judges.protocol import _argmax_labels, _check_inputs, _missing, verdict_frame

NRC_TO_EKMAN: dict[str, str] = {
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "joy": "happiness",
    "sadness": "sadness",
    "surprise": "surprise",
}


_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


_SUFFIXES = (("ies", "y"), ("ied", "y"), ("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"), ("es", ""),
             ("s", ""), ("ly", ""), ("d", ""))


def nrc_lexicon() -> dict[str, list[str]]:
    """The NRC word -> categories table shipped inside the ``nrclex`` package (read directly, no NLTK)."""
    from importlib.resources import files

    try:
        path = files("nrclex.data").joinpath("nrc_en.json")
        return json.loads(path.read_text(encoding="utf-8"))
    except ModuleNotFoundError as exc:
        raise _missing("nrclex", "lexicon") from exc
    except FileNotFoundError as exc:
        raise EmocircuitsError(
            "The installed nrclex has no data/nrc_en.json; reinstall it with `pip install --force-reinstall nrclex`."
        ) from exc


class LexiconJudge:
    """Counts NRC emotion words: ``p_<label>`` = share of the text's emotion-word hits in that label.

    Tokens are lower-case regex words; a word missing from the lexicon is retried without a common suffix
    (``-s``, ``-ed``, ``-ing``, ``-ly``...). ``category_map`` maps NRC categories to labels (default: joy ->
    happiness, the other five Ekman names to themselves). No hit -> ``"none"`` with all p = 0; ties go
    to the first label in ``labels`` order.
    """

    def __init__(self, labels: Sequence[str] = EKMAN6, *, category_map: Mapping[str, str] | None = None,
                 name: str = "lexicon") -> None:
        self.name = name
        self.labels = tuple(labels)
        self.category_map = dict(category_map or NRC_TO_EKMAN)
        self.lexicon = nrc_lexicon()
        self._col = {lab: j for j, lab in enumerate(self.labels)}

    def _lookup(self, word: str) -> list[str]:
        if word in self.lexicon:
            return self.lexicon[word]
        for suffix, repl in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                stem = word[: -len(suffix)] + repl
                if stem in self.lexicon:
                    return self.lexicon[stem]
        return []

    def counts(self, text: str) -> np.ndarray:
        """Emotion-word hits per label ``[n_labels]``."""
        c = np.zeros(len(self.labels))
        for word in _WORD.findall(text.lower()):
            for cat in self._lookup(word):
                lab = self.category_map.get(cat)
                if lab in self._col:
                    c[self._col[lab]] += 1
        return c

    def judge(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> pd.DataFrame:
        texts = _check_inputs(texts, targets, self.labels)
        counts = np.stack([self.counts(t) for t in texts]) if texts else np.zeros((0, len(self.labels)))
        total = counts.sum(axis=1, keepdims=True)
        probs = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
        return verdict_frame(probs, self.labels, _argmax_labels(probs, self.labels))
