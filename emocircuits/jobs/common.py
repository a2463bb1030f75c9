"""What every job shares: checking the common config keys and loading the job's data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emocircuits.base.errors import EmocircuitsError
from emocircuits.core.models import same_weights_source
from emocircuits.core.prompts import ensemble_members, get_template
from emocircuits.data import load_data
from emocircuits.runs.rundir import check_out_dir


def _split(split: str | None) -> str | None:
    return None if split in (None, "all") else split


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    """``value`` must be one of ``allowed`` (None there: the option may be left out, not a value to type)."""
    if value not in allowed:
        typed = [str(a) for a in allowed if a is not None]
        raise EmocircuitsError(f"--{name} {value!r} is not valid; use one of {', '.join(typed)}"
                               + (" (or leave it out)." if None in allowed else "."))


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


def _made_on(manifest: dict[str, Any]) -> tuple[str | None, str, dict[str, Any]]:
    """``(spec, model id, recorded ModelSpec dict)`` of the model an earlier run was made on."""
    recorded = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    spec = (manifest.get("config") or {}).get("model")
    return spec, str(recorded.get("model_id") or spec or "an unrecorded model"), recorded


SHAPE_KEYS = ("n_layers", "d_model", "d_mlp", "n_heads", "d_head")
"""The dimensions an artefact (direction, neuron/head set, circuit) is tied to."""


def check_made_on(config: dict[str, Any], artefacts: list[tuple[str, dict[str, Any]]], spec: Any = None, *,
                  text_only: bool = False) -> None:
    """Refuse (one sentence naming both models) to use an earlier run's artefacts on a model other than the one
    they were made on, unless ``config["allow_other_model"]``. ``artefacts``: ``(what, manifest)`` pairs.

    Without ``spec`` (before the model loads): the requested spec ``config["model"]`` (None: the run's own
    model, nothing to check) is compared with the run's spec, by name, alias, file or folder. With ``spec``
    (the loaded model): the weights hash; and the shapes, which no option overrides (``text_only``: the
    artefacts are texts, e.g. an elicit run's replies, which fit any model's shape)."""
    allow = bool(config.get("allow_other_model"))
    requested = config.get("model")
    for what, manifest in artefacts:
        rec_spec, rec_id, recorded = _made_on(manifest)
        keep = f"leave --model out to use {rec_id}" + (f" (--model {rec_spec})" if rec_spec else "")
        if spec is None:
            where = Path(str(manifest.get("cwd") or ".")) / str(rec_spec or "")  # a relative spec: the run's folder
            rec_path = str(where) if rec_spec and not Path(str(rec_spec)).is_absolute() and where.exists() else rec_spec
            if requested and rec_spec and not allow and same_weights_source(str(requested), str(rec_path)) is False:
                raise EmocircuitsError(f"{what} was made on {rec_id}, not on --model {requested}; {keep}, or pass "
                                       "--allow-other-model to use it on the other model anyway.")
            continue
        shapes = {} if text_only else {k: recorded.get(k) for k in SHAPE_KEYS if recorded.get(k) is not None}
        differ = [k for k, v in shapes.items() if getattr(spec, k, v) != v]
        if differ:
            theirs = ", ".join(f"{k} {shapes[k]}" for k in differ)
            ours = ", ".join(f"{k} {getattr(spec, k)}" for k in differ)
            raise EmocircuitsError(f"{what} was made on {rec_id} ({theirs}) and does not fit {spec.model_id} "
                                   f"({ours}); {keep}, or re-make it on {spec.model_id}.")
        rec_hash = recorded.get("weights_hash")
        if rec_hash and spec.weights_hash != rec_hash and not allow:
            raise EmocircuitsError(f"{what} was made on {rec_id}, but --model {requested} is {spec.model_id} (other "
                                   f"weights); {keep}, or pass --allow-other-model to use it on the other model "
                                   "anyway.")


def parse_numbers(text: Any, name: str, *, low: float | None = None, above: bool = False,
                  example: str = "0.5,1,2") -> list[float]:
    """``"0.1,0.3"`` (or a list of numbers) as finite floats, each ``>= low`` (``> low`` with ``above``): the one
    parser of the jobs' number lists; one sentence naming ``--name`` on anything else."""
    import math

    items = str(text).split(",") if isinstance(text, str) else list(text) if isinstance(text, list | tuple) else [text]
    try:
        vals = [float(x) for x in items if str(x).strip()]
    except (TypeError, ValueError, OverflowError):
        raise EmocircuitsError(f"--{name} {text!r} is not a comma-separated list of numbers, e.g. {example}.") from None
    bound = "" if low is None else f", each {'>' if above else '>='} {low:g}"
    bad = [v for v in vals if not math.isfinite(v) or (low is not None and (v <= low if above else v < low))]
    if not vals or bad:
        raise EmocircuitsError(f"--{name} {text!r} must list at least one finite number{bound}, e.g. {example}.")
    return vals
