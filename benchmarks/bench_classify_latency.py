"""Latency of ``classify(model, ["one string"])`` with the default readout, first call vs later calls; prints JSON.

The default readout (``chat_short+chat_fewshot``, ``"prior"`` calibration) fits each template's label prior on a
reference sample (``PRIOR_PER_LABEL`` per label of ``builtin:events`` train: 120 prompts per template). The prior
is computed once and then read from memory (same session) or disk (a later session), see
:mod:`emocircuits.core.prior_cache`. Times, in one process (median of ``--repeats`` where repeated):

* ``first_s``: the first call (fits both priors; the prior cache points at a fresh temp dir, so nothing is read);
* ``second_s``: a later call (priors from memory);
* ``disk_s``: a call after the in-memory priors are dropped (priors from the files the first call wrote);
* ``forward_s``: one forward of the string per template (an uncalibrated :class:`LabelReadout` score).

``ratio`` = ``second_s`` / (``n_templates`` × mean forward time) = ``second_s`` / sum of the templates' forward
times (target ≤ 2: a later call costs about the forwards of the text itself).

Usage: ``python benchmarks/bench_classify_latency.py [--model default] [--text yay] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from emocircuits.base.constants import DEFAULT_CLASSIFY_TEMPLATE, EKMAN6
from emocircuits.core import prior_cache
from emocircuits.core.models import load_model
from emocircuits.core.prompts import ensemble_members
from emocircuits.core.readout import LabelReadout, classify

TARGET = "ratio ≤ 2: a second call costs at most two forwards per template"
RATIO = "second call ÷ one forward per template"


def _time(fn, repeats: int = 1) -> float:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    """Run the benchmark and print one JSON object."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="default")
    ap.add_argument("--text", default="yay")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    bridge, spec = load_model(args.model, progress=False)
    templates = [str(t) for t in ensemble_members(DEFAULT_CLASSIFY_TEMPLATE)]
    texts = [args.text]
    with tempfile.TemporaryDirectory() as tmp:
        prior_cache.prior_cache_dir = lambda: Path(tmp)  # a cold cache; the user's cache is never read or written
        prior_cache.clear_memory()
        readouts = [LabelReadout(bridge, EKMAN6, t) for t in templates]
        ids = [ro.encode(texts) for ro in readouts]
        for ro, i in zip(readouts, ids, strict=True):  # warm-up (first-call allocations), not timed
            ro.scores_of(i)
        first_result: dict = {}
        first = _time(lambda: first_result.update(res=classify(bridge, texts, progress=False)))
        second = _time(lambda: classify(bridge, texts, progress=False), args.repeats)

        def from_disk() -> None:
            prior_cache.clear_memory()
            classify(bridge, texts, progress=False)

        disk = _time(from_disk, args.repeats)
        forwards = {t: _time(lambda ro=ro, i=i: ro.scores_of(i), args.repeats)
                    for t, ro, i in zip(templates, readouts, ids, strict=True)}
        last = classify(bridge, texts, progress=False)
        cal_first, cal_last = first_result["res"].metrics["calibration"], last.metrics["calibration"]
    fwd_total = sum(forwards.values())
    print(json.dumps({
        "model": spec.model_id, "weights_hash": spec.weights_hash[:16], "threads": torch.get_num_threads(),
        "text": args.text, "templates": templates, "repeats": args.repeats,
        "first_s": round(first, 4), "second_s": round(second, 4), "disk_s": round(disk, 4),
        "forward_s": {t: round(v, 4) for t, v in forwards.items()}, "n_templates": len(templates),
        "ratio": round(second / fwd_total, 3), "ratio_disk": round(disk / fwd_total, 3),
        "speedup_first_over_second": round(first / second, 1),
        "sources": {"first": [c["source"] for c in cal_first["prior_cache"].values()],
                    "last": [c["source"] for c in cal_last["prior_cache"].values()]},
        "same_prior": cal_first["prior_logp"] == cal_last["prior_logp"],
        "same_prediction": first_result["res"].predictions.equals(last.predictions),
    }, indent=2))


if __name__ == "__main__":
    main()
