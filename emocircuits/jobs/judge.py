"""The ``judge`` job: several judges over one labelled data set into a run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.core.models import load_model
from emocircuits.jobs.common import _check_common, load_job_data
from emocircuits.judges.panel import check_judge_name, get_judge, judge_dataset
from emocircuits.runs.rundir import RunDir


def run_judge(config: dict[str, Any], out: Path, quiet: bool = False) -> dict[str, Any]:
    """Build the judges in ``config``, judge the data, write the run directory; returns the metrics."""

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
