"""Label readout: label scoring (first token, full label, calibrated) over the forward runner, and metrics.

Scoring reads the model at each prompt's last real token only, and unembeds only there
(``[b, d_model] @ W_U``), never at every position. Batching, padding, the shared prompt prefix and
the positions interventions see are the runner's job (:mod:`emocircuits.core.runner`), so a label score is
the same whether a prompt runs alone or in a batch, with or without a shared prefix.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from emocircuits.base.constants import (
    DEFAULT_CALIBRATION,
    DEFAULT_CLASSIFY_TEMPLATE,
    DEFAULT_TEMPLATE,
    EKMAN6,
    LABEL_ALIASES,
)
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.generation import generate
from emocircuits.core.prior_cache import fit_prior_cached
from emocircuits.core.prompts import PromptTemplate, ensemble_members, get_template, label_token_ids
from emocircuits.core.runner import Batch, Runner
from emocircuits.data import Dataset, Example, load_data

SCORINGS = ("first_token", "full_label")


CALIBRATIONS = (False, "batch", "content_free", "prior")


PRIOR_PER_LABEL = 20  # train examples per label that classify() fits a "prior" calibration on (seeded sample)


CONTENT_FREE = ("N/A", "", "[MASK]")  # contextual calibration inputs (Zhao et al., 2021)


def _texts(examples: Sequence[Example] | Sequence[str]) -> list[str]:
    return [ex.text if isinstance(ex, Example) else str(ex) for ex in examples]


class LabelReadout:
    """Score a fixed label set after a prompt template.

    Args:
        model: a TransformerBridge (with ``.tokenizer``).
        labels: label words, e.g. ``EKMAN6``.
        template: a template name, user string with ``{text}``, or a :class:`PromptTemplate`.
        scoring: ``"first_token"`` (log-prob of each label's first token at the last position) or
            ``"full_label"`` (sum of the log-probs of all the label's tokens). When labels share a
            first token, first-token scoring switches to full-label with a warning.
        calibrate: calibration against label priors, applied by :meth:`predict`. ``False``: none.
            ``"prior"``: subtract a label prior fitted beforehand on *other* (training) examples
            (:meth:`fit_prior`, or ``prior=``): the class-balanced mean of the label log-probs
            (renormalised over the labels); the predicted examples never enter it.
            ``True`` or ``"batch"``: batch calibration (Zhou et al., 2024): the same prior but estimated on
            the predicted examples themselves (unsupervised; needs many examples of mixed labels).
            ``"content_free"``: contextual calibration (Zhao et al., 2021): subtract the log of the label
            distribution the model gives content-free inputs ("N/A", "", "[MASK]"), under the hooks active
            at predict time.
        prior: a fitted label prior ``[n_labels]`` (log, as :attr:`prior_logp`) for ``calibrate="prior"``.
        share_prefix, max_tokens, prepend_bos: passed to the :class:`~emocircuits.core.runner.Runner`.
    """

    def __init__(
        self,
        model: Any,
        labels: Sequence[str],
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        scoring: str = "first_token",
        calibrate: bool | str = False,
        *,
        prior: Tensor | Sequence[float] | None = None,
        share_prefix: bool = True,
        max_tokens: int = 4096,
        prepend_bos: bool | None = None,
    ) -> None:
        if calibrate is True:
            calibrate = "batch"
        if calibrate not in CALIBRATIONS:
            raise EmocircuitsError(
                f"Unknown calibration {calibrate!r}; use False, 'prior', 'content_free' or 'batch' (True)."
            )
        if scoring not in SCORINGS:
            raise EmocircuitsError(f"Unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}.")
        if not labels:
            raise EmocircuitsError("LabelReadout needs at least one label; pass e.g. EKMAN6.")
        self.model = model
        self.runner = Runner(model, max_tokens=max_tokens, share_prefix=share_prefix, prepend_bos=prepend_bos)
        self.tokenizer = model.tokenizer
        self.labels = tuple(labels)
        self.template = get_template(template)
        self.first_ids, self.full_ids, shared = label_token_ids(
            self.tokenizer, self.labels, leading_space=self.template.label_space
        )
        if scoring == "first_token" and shared:
            warnings.warn(
                f"Labels {self.labels} share a first token under template {self.template.name!r}; "
                "using full-label scoring instead.",
                stacklevel=2,
            )
            scoring = "full_label"
        self.scoring = scoring
        self.calibrate = calibrate
        self.prior_logp: Tensor | None = None  # [n_labels]: the prior last subtracted (or fitted)
        if prior is not None:
            self.set_prior(prior)

    # ------------------------------------------------------------------ prompts and batches
    def render(self, examples: Sequence[Example] | Sequence[str]) -> list[str]:
        """The prompt string of each example."""
        return [self.template.render(t, self.labels, self.tokenizer) for t in _texts(examples)]

    def encode(self, examples: Sequence[Example] | Sequence[str]) -> list[list[int]]:
        """Token ids of each example's prompt (list of ``[p_i]`` id lists)."""
        return self.runner.encode(self.render(examples), special=self.template.kind == "chat")

    def batches(self, token_ids: Sequence[Sequence[int]], max_tokens: int | None = None) -> list[Batch]:
        """The runner's token-budget batches of ``token_ids``."""
        return self.runner.batches(token_ids, max_tokens)

    # ------------------------------------------------------------------ model calls
    def _logp(self, hidden: Tensor) -> Tensor:
        """Log-softmax over the vocabulary ``[..., d_vocab]`` from final hidden states ``[..., d_model]``."""
        return torch.log_softmax(self.runner.logits(hidden), dim=-1)

    def scores(self, batches: Sequence[Batch] | Batch, *, start_layer: int = 0,
               resid: Sequence[Tensor] | None = None, progress: str | None = None) -> Tensor:
        """Label scores ``[n, n_labels]`` of one pass over ``batches`` (rows in batch order, ``n`` = rows
        of all batches): log-probs of the first token or summed over the label's tokens.

        Honours every hook attached to the model; calibration (when on) is applied by :meth:`predict`.
        ``resid`` (one per batch, see :meth:`Runner.run`) starts each batch at ``start_layer``.
        """
        batches = [batches] if isinstance(batches, Batch) else list(batches)
        if resid is not None and self.scoring != "first_token":
            raise EmocircuitsError("Starting from a captured residual needs first_token scoring; use scoring='first_token'.")
        first = torch.tensor(self.first_ids)
        parts = []
        for step in self.runner.run(batches, start_at_layer=start_layer, resid=resid, progress=progress, last_only=True):
            parts.append(self._logp(step.last()).cpu()[:, first])
        out = torch.cat(parts)  # [n, n_labels]
        if self.scoring == "full_label":
            out = self._add_continuations(batches, out)
        return out

    def _add_continuations(self, batches: Sequence[Batch], out: Tensor) -> Tensor:
        """Add the log-probs of each multi-token label's later tokens (teacher-forced after the prompt)."""
        multi = [j for j, ids in enumerate(self.full_ids) if len(ids) > 1]
        if not multi:
            return out
        seqs, plens, where = [], [], []
        i = 0
        for b in batches:
            for r in range(len(b)):
                ids = b.input_ids[r, : int(b.lengths[r])].tolist()
                for j in multi:
                    seqs.append(ids + self.full_ids[j][:-1])
                    plens.append(len(ids))
                    where.append((i, j))
                i += 1
        out = out.clone()
        for step in self.runner.run(self.runner.batches_with_continuations(seqs, plens)):
            sub = step.batch
            n_extra = sub.lengths - sub.prompt_lengths  # label tokens after the first, per row
            k = torch.arange(int(n_extra.max()))[None, :]
            pos = (sub.prompt_lengths[:, None] + k).clamp(max=sub.input_ids.shape[1] - 1)  # [b', k]
            lp = self._logp(step.at(pos)).cpu()  # [b', k, vocab]
            for row, s in enumerate(sub.rows):
                r, j = where[s]
                toks = self.full_ids[j][1:]
                out[r, j] += sum(float(lp[row, t, tok]) for t, tok in enumerate(toks))
        return out

    def scores_of(self, token_ids: Sequence[Sequence[int]], progress: str | None = None) -> Tensor:
        """Label scores ``[n, n_labels]`` of ``token_ids`` in input order (one pass)."""
        batches = self.batches(token_ids)
        s = self.scores(batches, progress=progress)
        out = torch.empty_like(s)
        out[[r for b in batches for r in b.rows]] = s
        return out

    def content_free_logp(self) -> Tensor:
        """Mean label distribution (log, renormalised over labels) ``[n_labels]`` on content-free inputs."""
        p = torch.softmax(self.scores_of(self.encode(list(CONTENT_FREE))), dim=-1).mean(0)  # [n_labels]
        return torch.log(p / p.sum())

    def set_prior(self, prior: Tensor | Sequence[float]) -> None:
        """Use ``prior`` (log label prior ``[n_labels]``, e.g. a stored :attr:`prior_logp`) for ``"prior"``."""
        p = torch.as_tensor(prior, dtype=torch.float32).flatten()
        if p.shape != (len(self.labels),):
            raise EmocircuitsError(f"The prior has {p.numel()} values but there are {len(self.labels)} labels; "
                                   "pass one log-prob per label, in label order.")
        self.prior_logp = p

    def fit_prior(self, examples: Sequence[Example] | Sequence[str], progress: bool = False) -> Tensor:
        """Fit and store the label prior ``[n_labels]`` for ``calibrate="prior"`` on (training) ``examples``.

        The prior is the mean over examples of the label log-probs renormalised over the labels; for
        labelled examples the mean of the per-label means (so the train label mix does not enter it).
        """
        examples = list(examples)
        if not examples:
            raise EmocircuitsError("No examples to fit the label prior on; pass training examples.")
        logp = torch.log_softmax(
            self.scores_of(self.encode(examples), "prior" if progress else None), dim=-1
        )  # [n, n_labels]
        if all(isinstance(ex, Example) for ex in examples):
            groups: dict[str, list[int]] = {}
            for i, ex in enumerate(examples):
                groups.setdefault(ex.label, []).append(i)
            prior = torch.stack([logp[idx].mean(0) for idx in groups.values()]).mean(0)
        else:
            prior = logp.mean(0)
        self.prior_logp = prior
        return prior

    def calibrated(self, scores: Tensor, examples: Sequence[Example] | Sequence[str] = ()) -> Tensor:
        """``scores`` ``[n, n_labels]`` after this readout's calibration (sets :attr:`prior_logp`).

        ``examples`` (the rows' examples) are only read by batch calibration, to check their labels.
        """
        if self.calibrate == "content_free":
            self.prior_logp = self.content_free_logp()
            return scores - self.prior_logp[None, :]
        if self.calibrate == "prior":
            if self.prior_logp is None:
                raise EmocircuitsError(
                    "Prior calibration needs a fitted prior; call fit_prior(train_examples) or pass prior=."
                )
            return torch.log_softmax(scores, dim=-1) - self.prior_logp[None, :]
        if self.calibrate == "batch":
            true = {ex.label for ex in examples if isinstance(ex, Example)}
            if len(true) == 1 and examples and all(isinstance(ex, Example) for ex in examples):
                raise EmocircuitsError(
                    f"Batch calibration needs several labels in the data, but every text is labelled {true.pop()!r} "
                    "(it would force one prediction of each label); use calibrate='content_free' or no calibration."
                )
            if len(scores) < 5 * len(self.labels):
                warnings.warn(
                    f"Batch calibration on only {len(scores)} examples estimates the label prior poorly; "
                    "predict more examples at once or use calibrate='content_free'.",
                    stacklevel=3,
                )
            logp = torch.log_softmax(scores, dim=-1)  # [n, n_labels], renormalised over the labels
            self.prior_logp = logp.mean(0)
            return logp - self.prior_logp[None, :]
        return scores

    def predict_scores(self, examples: Sequence[Example] | Sequence[str], progress: bool = True) -> Tensor:
        """Calibrated label scores ``[n, n_labels]`` of ``examples`` in input order (log-probs minus the prior)."""
        examples = list(examples)
        if not examples:
            raise EmocircuitsError("No texts to classify; the dataset is empty.")
        scores = self.scores_of(self.encode(examples), f"readout {self.template.name}" if progress else None)
        return self.calibrated(scores, examples)

    def predict(self, examples: Sequence[Example] | Sequence[str], progress: bool = True) -> pd.DataFrame:
        """One row per example: ``id, true, predicted, score_<label>...`` in input order.

        ``true`` is None for plain strings. Scores are log-probs (calibrated: minus the label prior).
        """
        examples = list(examples)
        return prediction_frame(examples, self.labels, self.predict_scores(examples, progress))


def prediction_frame(examples: Sequence[Example] | Sequence[str], labels: Sequence[str], scores: Tensor) -> pd.DataFrame:
    """``id, true, predicted, score_<label>...`` from label scores ``[n, n_labels]`` (argmax = predicted)."""
    pred = scores.argmax(-1).tolist()
    frame: dict[str, Any] = {
        "id": [ex.id if isinstance(ex, Example) else str(i) for i, ex in enumerate(examples)],
        "true": [ex.label if isinstance(ex, Example) else None for ex in examples],
        "predicted": [labels[i] for i in pred],
    }
    for j, lab in enumerate(labels):
        frame[f"score_{lab}"] = scores[:, j].numpy()
    return pd.DataFrame(frame)


# ---------------------------------------------------------------------------------------- metrics
def metrics_from_predictions(df: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    """``accuracy``, ``per_label`` (label -> accuracy on that true label), ``confusion``
    (true -> predicted -> count; a ``"none"`` column appears when some prediction is missing), ``n``."""
    labels = list(labels)
    n = len(df)
    if n == 0:
        raise EmocircuitsError("No predictions to score; the dataset is empty.")
    pred = df["predicted"].where(df["predicted"].notna(), "none")
    correct = df["true"] == pred
    cols = labels + (["none"] if (pred == "none").any() else [])
    confusion = {t: {p: 0 for p in cols} for t in labels}
    for t, p in zip(df["true"], pred, strict=True):
        confusion.setdefault(t, {c: 0 for c in cols})
        confusion[t][p] = confusion[t].get(p, 0) + 1
    per_label = {}
    for lab in labels:
        m = df["true"] == lab
        per_label[lab] = float(correct[m].mean()) if m.any() else None
    return {"accuracy": float(correct.mean()), "per_label": per_label, "confusion": confusion, "n": int(n)}


@dataclass
class ClassifyResult:
    """Predictions (``id, true, predicted, score_<label>``) and their metrics."""

    predictions: pd.DataFrame
    metrics: dict[str, Any] = field(default_factory=dict)


def train_split_of(dataset: Any, labels: Sequence[str], per_label: int = PRIOR_PER_LABEL) -> Dataset | None:
    """A seeded sample (``per_label`` per label) of the train split matching ``dataset``'s test split.

    None unless ``dataset`` is the ``test`` split of a loaded dataset whose data has its own train split.
    """

    if not isinstance(dataset, Dataset) or dataset.split_name != "test":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train = load_data(dataset.name, split="train", labels=labels, drop_unknown=True)
    except EmocircuitsError:
        return None
    test_ids = {ex.id for ex in dataset}
    train = train.filter(lambda ex: ex.id not in test_ids)
    return train.limit_per_label(per_label, seed=0) if len(train) else None


REFERENCE_PRIOR_DATA = "builtin:events"


"""Where ``classify`` fits the ``"prior"`` calibration for data without a train split of its own: the train split
of the built-in short event descriptions (never a test text). In the readout study (docs/readout_study.md) a
prior fitted there and reused on other data kept the default ensemble at 0.673 mean accuracy against 0.692 with
each set's own train prior, while content-free calibration reached 0.605."""


def reference_prior_examples(labels: Sequence[str], per_label: int = PRIOR_PER_LABEL) -> Dataset | None:
    """A seeded sample of :data:`REFERENCE_PRIOR_DATA`'s train split in ``labels``; None unless every label is in it."""

    ref = load_data(REFERENCE_PRIOR_DATA, split="train")
    if not set(labels) <= set(ref.labels):
        return None
    with warnings.catch_warnings():  # the rows of other labels are dropped on purpose
        warnings.simplefilter("ignore")
        subset = load_data(REFERENCE_PRIOR_DATA, split="train", labels=list(labels), drop_unknown=True)
    return subset.limit_per_label(per_label, seed=0)


def prior_examples_for(dataset: Any, labels: Sequence[str]) -> tuple[Dataset | None, str | None]:
    """The examples a ``"prior"`` calibration of ``dataset`` is fitted on, and where they come from: a sample of
    its own train split (:func:`train_split_of`), else of :data:`REFERENCE_PRIOR_DATA`'s
    (:func:`reference_prior_examples`), else ``(None, None)``."""
    own = train_split_of(dataset, labels)
    if own is not None:
        return own, "train split"
    ref = reference_prior_examples(labels)
    return (ref, f"{REFERENCE_PRIOR_DATA} train (reference)") if ref is not None else (None, None)


def classify(
    model: Any,
    dataset: Dataset | Sequence[Example] | Sequence[str],
    *,
    template: str | PromptTemplate | Sequence[str | PromptTemplate] = DEFAULT_CLASSIFY_TEMPLATE,
    scoring: str = "first_token",
    calibrate: bool | str = DEFAULT_CALIBRATION,
    prior: Tensor | Sequence[float] | None = None,
    prior_examples: Sequence[Example] | Sequence[str] | None = None,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    system: str | None = None,
    share_prefix: bool = True,
    prepend_bos: bool | None = None,
    prior_cache: bool | None = None,
) -> ClassifyResult:
    """Classify labelled examples (or plain strings) with a :class:`LabelReadout` per template.

    ``template``: one template, or an ensemble (``"chat_short+chat_fewshot"``, the default, or a list): each
    member scores every text under its own calibration and the prediction is the argmax of the mean of the
    members' calibrated label log-probs (renormalised over the labels). ``system`` replaces each chat member's
    system prompt. Plain strings have no true label: their metrics hold only ``n`` and the predicted-label counts.
    Labels default to the dataset's scheme, or the Ekman six for plain strings.

    ``calibrate="prior"`` takes its label prior from ``prior`` (a stored ``[n_labels]`` log prior; one template
    only), else fits it on ``prior_examples``, else on a seeded sample (:data:`PRIOR_PER_LABEL` per label) of
    the train split when ``dataset`` is the test split of data with its own split, else on the train split of
    :data:`REFERENCE_PRIOR_DATA` when the labels are among its labels (data without a split of its own, plain
    strings); with none of these it falls back to ``"content_free"`` with a one-line warning.
    ``metrics["calibration"]`` records the method used, what the prior was fitted on and, per template, the
    prior subtracted (label -> log-prob).

    A fitted prior is computed once per model, template, labels, scoring and fitting sample, then kept in memory
    and on disk (:mod:`emocircuits.core.prior_cache`); ``metrics["calibration"]["prior_cache"]`` (per template for
    an ensemble) says where it came from (``source``: computed, memory or disk) and its ``key``.
    ``prior_cache=False`` (or ``EMOCIRCUITS_NO_PRIOR_CACHE=1``) fits it again and keeps nothing.
    """

    items = list(dataset)
    labelled = bool(items) and all(isinstance(ex, Example) for ex in items)
    labs = tuple(labels or getattr(dataset, "labels", ()) or (sorted({ex.label for ex in items}) if labelled else EKMAN6))
    members = [get_template(t, system=system) for t in ensemble_members(template)]
    if prior is not None and len(members) > 1:
        raise EmocircuitsError("A stored prior belongs to one template; pass one template with prior=, or "
                               "prior_examples= to fit one prior per template of the ensemble.")
    source = "given" if prior is not None else None
    if calibrate == "prior" and prior is None:
        if prior_examples is None:
            prior_examples, source = prior_examples_for(dataset, labs)
        else:
            source = "prior_examples"
        if prior_examples is None:
            warnings.warn("Prior calibration needs a train split or prior_examples, this data has neither and its "
                          f"labels are not all in {REFERENCE_PRIOR_DATA}; using content_free calibration instead.",
                          stacklevel=2)
            calibrate = "content_free"
    total: Tensor | None = None
    priors: dict[str, dict[str, float]] = {}
    cached: dict[str, dict[str, Any]] = {}
    method: str = "none"
    for t in members:
        ro = LabelReadout(model, labs, t, scoring, calibrate, prior=prior if calibrate == "prior" else None,
                          share_prefix=share_prefix, prepend_bos=prepend_bos)
        if calibrate == "prior" and prior is None:
            cached[t.name] = fit_prior_cached(ro, prior_examples, progress=progress, prior_cache=prior_cache)
        logp = torch.log_softmax(ro.predict_scores(items, progress=progress), dim=-1)  # [n, n_labels]
        total = logp if total is None else total + logp
        method = ro.calibrate or "none"
        if ro.prior_logp is not None:
            priors[t.name] = {lab: float(v) for lab, v in zip(labs, ro.prior_logp.tolist(), strict=True)}
    assert total is not None
    df = prediction_frame(items, labs, total / len(members))
    cal: dict[str, Any] = {"method": method, "templates": [t.name for t in members]}
    if priors:
        if calibrate == "prior" and prior is None:
            source = f"{source} (n={len(prior_examples)})"
        cal["prior_logp"] = priors if len(members) > 1 else next(iter(priors.values()))
        cal["fitted_on"] = source or {"batch": "the predicted examples", "content_free": "content-free inputs"}[method]
    if cached:
        cal["prior_cache"] = cached if len(members) > 1 else next(iter(cached.values()))
    if labelled:
        return ClassifyResult(df, {**metrics_from_predictions(df, labs), "calibration": cal})
    return ClassifyResult(df, {"n": len(df), "predicted_counts": df["predicted"].value_counts().to_dict(),
                               "calibration": cal})


# -------------------------------------------------------------------------------------- generation
def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The first word of ``text`` that is (a prefix-form of) a label, e.g. ``"Anger."`` -> ``anger``."""
    aliases = {
        **LABEL_ALIASES,
        "scared": "fear",
        "afraid": "fear",
        "surprised": "surprise",
        "disgusted": "disgust",
    }
    for word in re.findall(r"[a-zA-Z]+", text.lower()):
        for lab in labels:
            if word == lab.lower() or (len(word) >= 4 and lab.lower().startswith(word)):
                return lab
        if aliases.get(word) in labels:
            return aliases[word]
    return None


def generate_labels(
    model: Any,
    examples: Sequence[Example] | Sequence[str],
    labels: Sequence[str],
    max_new_tokens: int = 4,
    *,
    template: str | PromptTemplate = DEFAULT_TEMPLATE,
    progress: bool = False,
) -> list[str | None]:
    """Greedy-decode ``max_new_tokens`` after each prompt and parse the first label word (None if none).

    Batched generation (:func:`emocircuits.core.generation.generate`); hooks on the model act on every step.
    """

    ro = LabelReadout(model, labels, template, share_prefix=False)
    gen = generate(model, ro.encode(examples), max_new_tokens=max_new_tokens, progress=progress)
    return [parse_label(text, labels) for text in gen.texts]
