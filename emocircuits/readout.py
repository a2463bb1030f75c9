"""Label readout: batched label scoring (first token, full label, calibrated), generation, metrics.

Scoring reads the model at the last real prompt position only. Batches are RIGHT-padded: with a causal
model, pad tokens after a prompt cannot influence its real positions, so no attention mask is needed for
the logits read here (``tests/test_readout.py`` checks padded-batch scores equal single-prompt scores).
The unembedding is applied only at the read position (``[b, d_model] @ W_U``), never to every position.

Shared prefixes (``share_prefix=True``, the default): the tokens that every prompt of a batch starts with
(the system prompt and instructions of a chat template) are run once per batch at batch size 1 and their
keys/values reused for the batch. Hooks attached to the model fire on both passes, so interventions that
act on every position (zeroing or scaling neurons, heads, adding a direction everywhere) are applied
exactly as in a plain forward; an intervention that addresses absolute positions should pass
``share_prefix=False`` (hooks then see each prompt in one forward of shape ``[b, p]``).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from emocircuits.data import Dataset, Example
from emocircuits.errors import EmocircuitsError
from emocircuits.interventions import observe, run_until
from emocircuits.prompts import DEFAULT_TEMPLATE, PromptTemplate, get_template, label_token_ids

__all__ = [
    "ClassifyResult",
    "LabelReadout",
    "PromptBatch",
    "classify",
    "generate_labels",
    "metrics_from_predictions",
    "parse_label",
]

SCORINGS = ("first_token", "full_label")
CALIBRATIONS = (False, "batch", "content_free")
CONTENT_FREE = ("N/A", "", "[MASK]")  # contextual calibration inputs (Zhao et al., 2021)
MIN_SHARED_PREFIX = 8


@dataclass
class PromptBatch:
    """A right-padded batch of prompts.

    ``input_ids [b, p]`` (pad = the tokenizer's pad id), ``lengths [b]`` real tokens per row,
    ``last_index [b]`` = lengths - 1, ``rows``: index of each row in the list given to ``batches``,
    ``pad_mask [b, p]`` True on real tokens, ``prefix_len``: tokens every row of the batch shares.
    """

    input_ids: Tensor
    lengths: Tensor
    last_index: Tensor
    rows: list[int]
    pad_mask: Tensor
    prefix_len: int = 0


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
            ``True`` or ``"batch"``: batch calibration (Zhou et al., 2024): renormalise the scores over the
            labels and subtract their mean over the predicted examples (the model's label prior on this
            input distribution; unsupervised, needs many examples of mixed labels). ``"content_free"``:
            contextual calibration (Zhao et al., 2021): subtract the log of the label distribution the
            model gives content-free inputs ("N/A", "", "[MASK]"), under the hooks active at predict time.
        share_prefix: run the prefix shared by a batch once (see module docstring).
        max_tokens: token budget per batch (rows x padded length).
    """

    def __init__(
        self,
        model: Any,
        labels: Sequence[str],
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        scoring: str = "first_token",
        calibrate: bool | str = False,
        *,
        share_prefix: bool = True,
        max_tokens: int = 4096,
    ) -> None:
        if calibrate is True:
            calibrate = "batch"
        if calibrate not in CALIBRATIONS:
            raise EmocircuitsError(
                f"Unknown calibration {calibrate!r}; use False, True, 'batch' or 'content_free'."
            )
        if scoring not in SCORINGS:
            raise EmocircuitsError(f"Unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}.")
        if not labels:
            raise EmocircuitsError("LabelReadout needs at least one label; pass e.g. EKMAN6.")
        self.model = model
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
        self.share_prefix = share_prefix
        self.max_tokens = max_tokens
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.tokenizer.eos_token_id or 0))
        self.prior_logp: Tensor | None = None  # [n_labels], set by predict() when calibrating

    # ------------------------------------------------------------------ prompts and batches
    def render(self, examples: Sequence[Example] | Sequence[str]) -> list[str]:
        """The prompt string of each example."""
        return [self.template.render(t, self.labels, self.tokenizer) for t in _texts(examples)]

    def encode(self, examples: Sequence[Example] | Sequence[str]) -> list[list[int]]:
        """Token ids of each example's prompt (list of ``[p_i]`` id lists)."""
        out = []
        for s in self.render(examples):
            ids = list(self.tokenizer.encode(s, add_special_tokens=self.template.add_special_tokens))
            if not ids:
                raise EmocircuitsError(
                    "A prompt tokenised to no tokens; check the template and texts are non-empty."
                )
            out.append(ids)
        return out

    def batches(
        self, token_ids: Sequence[Sequence[int]], max_tokens: int | None = None
    ) -> Iterator[PromptBatch]:
        """Right-padded batches within a token budget (``b * p <= max_tokens``), longest prompts first.

        ``rows`` maps each batch row back to its index in ``token_ids``; a prompt longer than the
        budget gets a batch of its own.
        """
        budget = max_tokens or self.max_tokens
        order = sorted(range(len(token_ids)), key=lambda i: (-len(token_ids[i]), i))
        group: list[int] = []
        for i in order:
            width = len(token_ids[group[0]]) if group else len(token_ids[i])
            if group and (len(group) + 1) * width > budget:
                yield self._make_batch(token_ids, group)
                group = []
            group.append(i)
        if group:
            yield self._make_batch(token_ids, group)

    def _make_batch(self, token_ids: Sequence[Sequence[int]], rows: list[int]) -> PromptBatch:
        lengths = torch.tensor([len(token_ids[r]) for r in rows], dtype=torch.long)
        p = int(lengths.max())
        ids = torch.full((len(rows), p), self.pad_id, dtype=torch.long)
        for j, r in enumerate(rows):
            ids[j, : len(token_ids[r])] = torch.tensor(token_ids[r], dtype=torch.long)
        pad_mask = torch.arange(p)[None, :] < lengths[:, None]
        prefix = _common_prefix([token_ids[r] for r in rows])
        return PromptBatch(ids, lengths, lengths - 1, list(rows), pad_mask, prefix)

    # ------------------------------------------------------------------ model calls
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def final_hidden(self, input_ids: Tensor, positions: Tensor, prefix_len: int = 0, *, start_layer: int = 0,
                     resid: Tensor | None = None) -> Tensor:
        """Final normalised residual ``[b, k, d_model]`` at ``positions [b, k]`` of ``input_ids [b, p]``.

        Runs the model (with every attached hook) up to ``ln_final`` and stops before the unembedding.
        With ``prefix_len`` > 0 the shared first ``prefix_len`` tokens run once at batch size 1 and
        their key/value cache serves the whole batch; ``positions`` are absolute either way.
        With ``resid`` (``[b, p - offset, d_model]``, the residual entering block ``start_layer`` for the
        non-prefix tokens, as captured by an earlier pass of this method) the non-prefix tokens start at
        ``start_layer`` instead of the embedding; the prefix still runs from its tokens.
        """
        dev = self._device()
        input_ids = input_ids.to(dev)
        got: dict[str, Tensor] = {}
        kwargs: dict[str, Any] = {}
        offset = 0
        use_prefix = self.share_prefix and prefix_len >= MIN_SHARED_PREFIX and input_ids.shape[0] > 1
        with torch.inference_mode():
            if use_prefix:
                offset = min(prefix_len, int(positions.min()))
                _, cache = self.model(input_ids[:1, :offset], use_cache=True, return_type="logits_and_cache")
                if cache is None:  # model without an HF cache: fall back to the plain forward
                    offset = 0
                else:
                    cache = copy.deepcopy(cache)
                    cache.batch_repeat_interleave(input_ids.shape[0])
                    kwargs["past_key_values"] = cache
            with observe(self.model, "final.norm", [None], lambda _layer, h: got.__setitem__("h", h)):
                if resid is None:
                    run_until(self.model, input_ids[:, offset:], "final.norm", None, **kwargs)
                else:
                    if resid.shape[:2] != (input_ids.shape[0], input_ids.shape[1] - offset):
                        raise EmocircuitsError(
                            f"resid has shape {tuple(resid.shape)} but this batch needs "
                            f"[{input_ids.shape[0]}, {input_ids.shape[1] - offset}, d_model]; capture it from the same batch."
                        )
                    run_until(self.model, resid.to(dev), "final.norm", None, start_at_layer=start_layer, **kwargs)
            if "h" not in got:
                raise EmocircuitsError(
                    "The model never reached ln_final; is it a TransformerBridge causal LM?"
                )
            h = got["h"]  # [b, p - offset, d_model]
            idx = (positions.to(dev) - offset).clamp(min=0)
            return torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))

    def _unembed(self, h: Tensor) -> Tensor:
        """Log-softmax logits ``[..., d_vocab]`` from final hidden states ``[..., d_model]``."""
        with torch.inference_mode():
            logits = h @ self.model.W_U
            b_u = getattr(self.model, "b_U", None)
            if b_u is not None:
                logits = logits + b_u
            return torch.log_softmax(logits.float(), dim=-1)

    def scores(self, batch: PromptBatch, *, start_layer: int = 0, resid: Tensor | None = None) -> Tensor:
        """Label scores ``[b, n_labels]``: log-probs (first token or summed over the label's tokens).

        Honours every hook attached to the model; calibration (when on) is applied by :meth:`predict`.
        """
        first = torch.tensor(self.first_ids)
        if resid is not None and self.scoring != "first_token":
            raise EmocircuitsError("Starting from a captured residual needs first_token scoring; use scoring='first_token'.")
        h = self.final_hidden(batch.input_ids, batch.last_index[:, None], batch.prefix_len, start_layer=start_layer,
                              resid=resid)[:, 0]  # [b, d]
        logp = self._unembed(h).cpu()  # [b, vocab]
        out = logp[:, first].clone()  # [b, n_labels]
        if self.scoring == "first_token":
            return out
        multi = [j for j, ids in enumerate(self.full_ids) if len(ids) > 1]
        if not multi:
            return out
        # Extended sequences: prompt + label tokens[:-1]; read log p(token k) at last_index + k.
        seqs, where = [], []
        for r in range(batch.input_ids.shape[0]):
            ids = batch.input_ids[r, : int(batch.lengths[r])].tolist()
            for j in multi:
                seqs.append(ids + self.full_ids[j][:-1])
                where.append((r, j))
        n_max = max(len(self.full_ids[j]) for j in multi)
        for sub in self.batches(seqs):
            lens = sub.lengths
            k = torch.arange(1, n_max)[None, :]  # positions after the first label token
            starts = lens - torch.tensor([len(self.full_ids[where[i][1]]) - 1 for i in sub.rows])
            pos = (starts[:, None] - 1 + k).clamp(max=sub.input_ids.shape[1] - 1)  # [b', n_max-1]
            hh = self.final_hidden(sub.input_ids, pos, sub.prefix_len)
            lp = self._unembed(hh).cpu()  # [b', n_max-1, vocab]
            for row, i in enumerate(sub.rows):
                r, j = where[i]
                toks = self.full_ids[j][1:]
                out[r, j] += sum(float(lp[row, t, tok]) for t, tok in enumerate(toks))
        return out

    def content_free_logp(self) -> Tensor:
        """Mean label distribution (log, renormalised over labels) ``[n_labels]`` on content-free inputs."""
        ids = self.encode(list(CONTENT_FREE))
        s = torch.cat([self.scores(b)[torch.argsort(torch.tensor(b.rows))] for b in self.batches(ids)])
        p = torch.softmax(s, dim=-1).mean(0)  # [n_labels]
        return torch.log(p / p.sum())

    def predict(self, examples: Sequence[Example] | Sequence[str], progress: bool = True) -> pd.DataFrame:
        """One row per example: ``id, true, predicted, score_<label>...`` in input order.

        ``true`` is None for plain strings. Scores are log-probs (calibrated: minus the content-free
        log-prob of the label).
        """
        from tqdm.auto import tqdm

        examples = list(examples)
        token_ids = self.encode(examples)
        scores = torch.empty(len(examples), len(self.labels))
        bar = tqdm(total=len(examples), desc=f"readout {self.template.name}", disable=not progress, unit="ex")
        for batch in self.batches(token_ids):
            scores[batch.rows] = self.scores(batch)
            bar.update(len(batch.rows))
        bar.close()
        if self.calibrate == "content_free":
            self.prior_logp = self.content_free_logp()
            scores = scores - self.prior_logp[None, :]
        elif self.calibrate == "batch":
            if len(examples) < 5 * len(self.labels):
                warnings.warn(
                    f"Batch calibration on only {len(examples)} examples estimates the label prior poorly; "
                    "predict more examples at once or use calibrate='content_free'.",
                    stacklevel=2,
                )
            logp = torch.log_softmax(scores, dim=-1)  # [n, n_labels], renormalised over the labels
            self.prior_logp = logp.mean(0)
            scores = logp - self.prior_logp[None, :]
        pred = scores.argmax(-1).tolist()
        frame: dict[str, Any] = {
            "id": [ex.id if isinstance(ex, Example) else str(i) for i, ex in enumerate(examples)],
            "true": [ex.label if isinstance(ex, Example) else None for ex in examples],
            "predicted": [self.labels[i] for i in pred],
        }
        for j, lab in enumerate(self.labels):
            frame[f"score_{lab}"] = scores[:, j].numpy()
        return pd.DataFrame(frame)


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix shared by all sequences (at most min length - 1)."""
    if len(seqs) < 2:
        return 0
    n = min(len(s) for s in seqs) - 1
    first = seqs[0]
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return max(n, 0)


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


def classify(
    model: Any,
    dataset: Dataset | Sequence[Example],
    *,
    template: str | PromptTemplate = DEFAULT_TEMPLATE,
    scoring: str = "first_token",
    calibrate: bool | str = False,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    share_prefix: bool = True,
) -> ClassifyResult:
    """Classify every example with a :class:`LabelReadout` and score the predictions."""
    labs = tuple(labels or getattr(dataset, "labels", ()) or sorted({ex.label for ex in dataset}))
    ro = LabelReadout(model, labs, template, scoring, calibrate, share_prefix=share_prefix)
    df = ro.predict(list(dataset), progress=progress)
    return ClassifyResult(df, metrics_from_predictions(df, labs))


# -------------------------------------------------------------------------------------- generation
def parse_label(text: str, labels: Sequence[str]) -> str | None:
    """The first word of ``text`` that is (a prefix-form of) a label, e.g. ``"Anger."`` -> ``anger``."""
    aliases = {
        "joy": "happiness",
        "happy": "happiness",
        "sad": "sadness",
        "angry": "anger",
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

    One prompt at a time with a key/value cache (no padding); hooks on the model apply to every step.
    """
    from tqdm.auto import tqdm

    ro = LabelReadout(model, labels, template, share_prefix=False)
    dev = ro._device()
    eos = model.tokenizer.eos_token_id
    out: list[str | None] = []
    for ids in tqdm(ro.encode(examples), disable=not progress, desc="generate", unit="ex"):
        x = torch.tensor([ids], device=dev)
        new: list[int] = []
        cache = None
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                if cache is None:
                    logits, cache = model(x, use_cache=True, return_type="logits_and_cache")
                else:
                    logits, cache = model(
                        x, past_key_values=cache, use_cache=True, return_type="logits_and_cache"
                    )
                tok = int(logits[0, -1].argmax())
                if tok == eos:
                    break
                new.append(tok)
                x = torch.tensor([[tok]], device=dev)
        text = model.tokenizer.decode(new, skip_special_tokens=True)
        out.append(parse_label(text, labels))
    return out
