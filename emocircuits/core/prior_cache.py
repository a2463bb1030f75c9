"""A ``"prior"`` calibration computed once: label priors kept in memory for the session and on disk.

:func:`emocircuits.core.readout.classify` fits the label prior of each template on a sample of train texts
(``PRIOR_PER_LABEL`` per label: about 120 forward passes per template). That prior depends only on the
key fields below, so it is fitted once per key, kept in a small dict for the session, and written as
``<cache_dir()>/priors/<key>.json`` (atomically; see :func:`emocircuits.core.models.cache_dir`), where a later
session reads it back. The key is the sha256 of:

* the model: its weights hash (``ModelSpec.weights_hash``), the dtype and device type of its parameters;
* the template: every field of the :class:`~emocircuits.core.prompts.PromptTemplate` (its full text, not only
  its name) and the sha256 of the tokenizer's chat template;
* the label set, each label's token ids and the (effective) scoring;
* the runner settings: ``prepend_bos``, ``share_prefix``, ``max_tokens``;
* the examples the prior is fitted on: the sha256 of their ``(text, label)`` pairs, in order, and their count;
* :data:`FORMAT`, bumped when the way a prior is computed changes.

Any change to one of them gives another key, so a stale prior is never read. The cache is bypassed (the
prior is fitted as before) with ``prior_cache=False``, ``EMOCIRCUITS_NO_PRIOR_CACHE=1`` or
``prior_cache: false`` in a ``classify`` job's config (``emocircuits classify --no-prior-cache``), and whenever
hooks are attached to the model (an intervention changes the prior, and the key cannot describe it). A prior goes to disk only when the weights hash is a
sha256 (files hashed by ``load_model``; for ``tiny_model`` a hash of its seeded random weights). An
unreadable or mismatching cache file is ignored with a warning and the prior is fitted again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from emocircuits.base.io import write_json
from emocircuits.core.interventions import active_hook_count
from emocircuits.core.models import cache_dir

__all__ = ["ENV_NO_CACHE", "clear_memory", "fit_prior_cached", "prior_cache_dir", "prior_key_fields"]

FORMAT = 1
ENV_NO_CACHE = "EMOCIRCUITS_NO_PRIOR_CACHE"
_MEMORY: dict[str, tuple[float, ...]] = {}  # key -> the prior (log-probs, label order)


def prior_cache_dir() -> Path:
    """Where priors are stored on disk: ``cache_dir()/priors``."""
    return cache_dir() / "priors"


def clear_memory() -> None:
    """Forget the priors kept in memory this session (the files on disk stay)."""
    _MEMORY.clear()


def cache_enabled(prior_cache: bool | None = None) -> bool:
    """``prior_cache`` when given, else on unless ``$EMOCIRCUITS_NO_PRIOR_CACHE`` is set (to anything but 0/false/no)."""
    if prior_cache is not None:
        return bool(prior_cache)
    return os.environ.get(ENV_NO_CACHE, "").strip().lower() in ("", "0", "false", "no")


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def prior_key_fields(readout: Any, examples: Sequence[Any]) -> dict[str, Any]:
    """The fields a prior fitted by ``readout`` (a :class:`~emocircuits.core.readout.LabelReadout`) on ``examples`` depends on."""
    runner = readout.runner
    spec = runner.spec
    try:
        param = next(readout.model.original_model.parameters())
        dtype, device = str(param.dtype).removeprefix("torch."), param.device.type
    except (AttributeError, StopIteration):
        dtype, device = spec.dtype, str(spec.device).split(":")[0]
    chat = getattr(readout.tokenizer, "chat_template", None)
    pairs = [[getattr(ex, "text", ex), getattr(ex, "label", None)] for ex in examples]
    return json.loads(json.dumps({  # JSON types (lists, not tuples), as a cache file reads back
        "format": FORMAT,
        "weights_hash": spec.weights_hash,
        "dtype": dtype,
        "device": device,
        "template": asdict(readout.template),
        "chat_template_sha256": _sha256(chat) if isinstance(chat, str) else None,
        "labels": list(readout.labels),
        "label_token_ids": [list(map(int, ids)) for ids in readout.full_ids],
        "scoring": readout.scoring,
        "prepend_bos": bool(runner.prepend_bos),
        "share_prefix": bool(runner.share_prefix),
        "max_tokens": int(runner.max_tokens),
        "examples_sha256": _sha256(pairs),
        "n_examples": len(pairs),
    }))


def _on_disk(weights_hash: str) -> bool:
    """Whether the weights hash identifies the weights well enough to share a prior across sessions."""
    return re.fullmatch(r"[0-9a-f]{64}", str(weights_hash or "")) is not None


def _read(path: Path, key: str, fields: dict[str, Any], n_labels: int) -> tuple[float, ...] | None:
    """The prior stored at ``path``; None (with a warning) when the file is unreadable or not this key's."""
    try:
        doc = json.loads(path.read_text())
        prior = tuple(float(v) for v in doc["prior_logp"])
        if doc.get("key") != key or doc.get("fields") != fields:
            raise ValueError("its key fields do not match")
        if len(prior) != n_labels or not all(map(math.isfinite, prior)):
            raise ValueError(f"it holds {len(prior)} values, not {n_labels} finite log-probs")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        warnings.warn(f"Ignoring the label-prior cache file {path} ({type(exc).__name__}: {exc}); "
                      "fitting the prior again.", stacklevel=4)
        return None
    return prior


def _write(path: Path, key: str, fields: dict[str, Any], readout: Any, prior: tuple[float, ...]) -> bool:
    doc = {"key": key, "fields": fields, "model_id": readout.runner.spec.model_id, "template_name": readout.template.name,
           "labels": list(readout.labels), "prior_logp": list(prior)}
    try:
        write_json(path, doc)
    except OSError as exc:
        warnings.warn(f"Could not write the label-prior cache file {path} ({exc}); the prior is kept in memory only.",
                      stacklevel=4)
        return False
    return True


def fit_prior_cached(readout: Any, examples: Sequence[Any], *, progress: bool = False,
                     prior_cache: bool | None = None) -> dict[str, Any]:
    """Set ``readout``'s ``"prior"`` label prior fitted on ``examples``, from the cache when it holds it.

    Returns where it came from: ``source`` (``"computed"``, ``"memory"`` or ``"disk"``), ``key`` (None when hooks
    are attached), ``cache`` (how it is kept: ``"memory+disk"``, ``"memory"``, or why the cache was bypassed) and
    ``path`` (the file on disk, or None). Read and fitted priors are the same float32 values, bit for bit.
    """
    examples = list(examples)

    def fit() -> tuple[float, ...]:
        readout.set_prior(readout.fit_prior(examples, progress=progress))  # float32 on every path
        assert readout.prior_logp is not None
        return tuple(float(v) for v in readout.prior_logp.tolist())

    if active_hook_count(readout.model):
        fit()
        return {"source": "computed", "key": None, "cache": "off: hooks are attached to the model", "path": None}
    fields = prior_key_fields(readout, examples)
    key = _sha256(fields)
    if not cache_enabled(prior_cache):
        fit()
        return {"source": "computed", "key": key, "cache": f"off: prior_cache=False or {ENV_NO_CACHE}", "path": None}
    path = prior_cache_dir() / f"{key}.json" if _on_disk(fields["weights_hash"]) else None
    where = str(path) if path is not None else None
    if key in _MEMORY:
        readout.set_prior(_MEMORY[key])
        return {"source": "memory", "key": key, "cache": "memory+disk" if path else "memory", "path": where}
    if path is not None and path.exists():
        stored = _read(path, key, fields, len(readout.labels))
        if stored is not None:
            _MEMORY[key] = stored
            readout.set_prior(stored)
            return {"source": "disk", "key": key, "cache": "memory+disk", "path": where}
    prior = fit()
    _MEMORY[key] = prior
    saved = path is not None and _write(path, key, fields, readout, prior)
    return {"source": "computed", "key": key, "cache": "memory+disk" if saved else "memory",
            "path": where if saved else None}

