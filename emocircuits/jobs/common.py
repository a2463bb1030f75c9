"""What every job shares: checking the common config keys and loading the job's data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.prompts import ensemble_members, get_template
from emocircuits.data import load_data
from emocircuits.runs.rundir import check_out_dir


def _split(split: str | None) -> str | None:
    return None if split in (None, "all") else split


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise EmocircuitsError(f"--{name} {value!r} is not valid; use one of {', '.join(map(str, allowed))}.")


def _check_common(config: dict[str, Any], out: Path, command: str) -> None:
    """Checks every job makes before it reads data or loads a model: split, limit, dtype, template, --out."""

    for t in ensemble_members(config["template"]) if command == "classify" else [config.get("template")]:
        if t is not None:  # classify reads an ensemble; every other job one prompt per example
            get_template(t, system=config.get("system"))

    _check_choice("split", config.get("split"), (None, "all", "train", "test"))
    limit = config.get("limit_per_label")
    if limit is not None and int(limit) < 1:
        raise EmocircuitsError(f"--limit-per-label must be 1 or more, got {limit}; leave it out to use every example.")
    if "dtype" in config:
        _check_choice("dtype", config["dtype"], ("float32", "bfloat16", "float16"))
    check_out_dir(out, command)


def load_job_data(config: dict[str, Any], default_split: str | None, *, labels: Any = None,
                  quiet: bool = False) -> Any:
    """Load a job's data; ``config["split"]``: None (the data's own ``default_split`` if it has splits,
    else all of it), ``"all"``, ``"train"`` or ``"test"``. Records ``split_used`` and ``n_per_label``
    in ``config`` (so in the manifest) and, unless ``quiet``, prints them on one line (stderr)."""
    import sys

    split = config.get("split")
    scheme = labels or config.get("labels") or None
    ds = load_data(config["data"], split=_split(split), default_split=default_split if split is None else None,
                   limit_per_label=config.get("limit_per_label"), seed=config.get("seed", 0), labels=scheme,
                   drop_unknown=bool(config.get("drop_unknown", False)), text_field=config.get("text_field"),
                   label_field=config.get("label_field"), appraisals=config.get("appraisals"))
    per_label = {lab: len(exs) for lab, exs in ds.by_label().items()}
    config["split_used"] = ds.info.get("split", split or "all")
    config["n_per_label"] = per_label
    if not quiet:
        counts = ", ".join(f"{lab} {n}" for lab, n in per_label.items())
        print(f"data {config['data']}: split {config['split_used']}, {len(ds)} examples ({counts})", file=sys.stderr)
    return ds
