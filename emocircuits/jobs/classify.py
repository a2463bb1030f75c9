"""The ``classify`` job: one readout over a data set into a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import load_model
from emocircuits.core.readout import CALIBRATIONS, SCORINGS, classify
from emocircuits.jobs.common import _check_common, load_job_data
from emocircuits.runs.rundir import RunDir


def run_classify(config: dict[str, Any], out: Path, quiet: bool = False) -> dict[str, Any]:
    """Classify a dataset by label readout; write ``predictions.parquet`` and ``metrics.json``; returns the metrics.

    ``config``: ``model, data, split, limit_per_label, template, system`` (None or a system prompt),
    ``scoring, calibrate`` (False, "prior", "content_free", "batch"), ``seed``; optional ``prior_cache`` (False: fit the
    prior again, see :mod:`emocircuits.core.prior_cache`; absent or None: the cache unless
    ``EMOCIRCUITS_NO_PRIOR_CACHE`` is set). ``metrics.json`` records where the prior came from.
    """

    if config["scoring"] not in SCORINGS:
        raise EmocircuitsError(f"Unknown scoring {config['scoring']!r}; use one of {', '.join(SCORINGS)}.")
    if config.get("calibrate", False) not in CALIBRATIONS:
        raise EmocircuitsError(f"Unknown calibration {config['calibrate']!r}; use prior, content_free or batch.")
    _check_common(config, out, "classify")
    dataset = load_job_data(config, "test", quiet=quiet)
    present = sorted({ex.label for ex in dataset})
    if config.get("calibrate") == "batch" and len(present) < 2:
        raise EmocircuitsError(
            f"Batch calibration needs several labels in the data, but {config['data']} gives only {present} here "
            "(it would force one prediction of each label); use --calibration content_free or --no-calibrate."
        )
    bridge, spec = load_model(config["model"], progress=not quiet)
    result = classify(bridge, dataset, template=config["template"], system=config.get("system"),
                      scoring=config["scoring"], calibrate=config.get("calibrate", False),
                      prepend_bos=config.get("prepend_bos"), prior_cache=config.get("prior_cache"),
                      progress=not quiet)
    metrics = {**result.metrics, "labels": list(dataset.labels), "config": config, "data_info": dataset.info}
    with RunDir.create(out, command="classify", config=config, model_spec=spec, seed=config["seed"]) as run:
        run.write_table("predictions", result.predictions, "one row per example: id, true, predicted, scores")
        run.write_json("metrics", metrics, "accuracy, per_label, confusion, n")
    return metrics
