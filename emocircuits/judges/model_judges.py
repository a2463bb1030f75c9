"""Judges that are language models: the model itself, a Hugging Face classifier, another LLM.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from emocircuits.base.constants import DEFAULT_TEMPLATE, EKMAN6, LABEL_ALIASES
from emocircuits.base.errors import EmocircuitsError, spell
from emocircuits.core.prompts import PromptTemplate
from emocircuits.core.readout import LabelReadout
from emocircuits.judges.protocol import NONE, _argmax_labels, _check_inputs, _softmax, verdict_frame

JUDGE_SYSTEM = "You are a careful judge of the emotional tone of short texts."


JUDGE_QUESTION = (
    "Here is a reply:\n\n{text}\n\nDoes the emotional tone of this reply express {emotion}? "
    "Answer yes or no."
)


class SelfJudge:
    """A loaded model's own label readout: ``p`` = softmax over ``labels`` of the label log-probs.

    ``template``/``scoring``/``calibrate`` are passed to :class:`emocircuits.core.readout.LabelReadout`.
    """

    def __init__(self, model: Any, labels: Sequence[str] = EKMAN6, *, template: Any = None,
                 scoring: str = "first_token", calibrate: bool | str = False, name: str = "self") -> None:

        if model is None:
            raise EmocircuitsError(f"The self judge needs a loaded model; pass {spell('model=...', '--model SPEC')}.")
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


class LLMJudge:
    """A chat model asked, per emotion E, whether a reply's emotional tone expresses E (yes/no).

    One :class:`~emocircuits.core.readout.LabelReadout` per emotion, labels ``answers`` (``("yes", "no")``),
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
        """The chat :class:`~emocircuits.core.prompts.PromptTemplate` that asks about ``emotion``."""

        user = self.question.replace("{emotion}", self.emotion_words[emotion])
        return PromptTemplate(f"judge-{emotion}", kind="chat", system=self.system, user=user,
                              answer_prefix="Answer:", label_space=True, add_special_tokens=False)

    def readout(self, emotion: str) -> Any:
        """The (cached) yes/no :class:`~emocircuits.core.readout.LabelReadout` for ``emotion``."""
        if emotion not in self._readouts:

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
