"""`emocircuits classify`: label-readout accuracy of a model on a dataset, written to a run directory.

Writes ``DIR/metrics.json`` (``accuracy``, ``per_label``, ``confusion``, ``n``, plus the settings) and
``DIR/predictions.parquet`` (``id, true, predicted, score_<label>...``) and ``DIR/manifest.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.base.constants import DEFAULT_CALIBRATION, DEFAULT_CLASSIFY_TEMPLATE
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.options import given, option


def parse_labels(labels: str | None) -> list[str] | None:
    """``--labels a,b,c`` as a list (None: the data's default scheme)."""
    if labels is None:
        return None
    out = [s.strip() for s in labels.split(",") if s.strip()]
    if not out:
        raise EmocircuitsError(f"--labels {labels!r} names no label; pass comma-separated labels, e.g. anger,joy.")
    return out


def classify_cmd(
    model: str = option("--model"),
    data: str = option("--data"),
    split: str | None = option("--split"),
    limit_per_label: int | None = option("--limit-per-label"),
    template: str = option("--template", DEFAULT_CLASSIFY_TEMPLATE),
    system: str | None = option("--system", None),
    scoring: str = typer.Option("first_token", "--scoring", help="first_token or full_label."),
    calibrate: bool | None = typer.Option(
        None, "--calibrate/--no-calibrate", help="--no-calibrate: no calibration (as --calibration none)."
    ),
    calibration: str | None = option("--calibration", None),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    labels: str | None = option("--labels"),
    prepend_bos: bool | None = option("--prepend-bos/--no-prepend-bos"),
    drop_unknown: bool = option("--drop-unknown"),
    text_field: str | None = option("--text-field"),
    label_field: str | None = option("--label-field"),
    no_prior_cache: bool = typer.Option(False, "--no-prior-cache", help="Fit the prior calibration again instead "
                                        "of reading it from the cache (as EMOCIRCUITS_NO_PRIOR_CACHE=1)."),
) -> None:
    """Classify a dataset's texts by label readout and write metrics and predictions."""
    import json

    from emocircuits.jobs.classify import run_classify

    # called as a plain function, options left out arrive as typer.Option objects: read them as unset
    system, calibration, calibrate = given(system), given(calibration), given(calibrate)
    labels, prepend_bos, drop_unknown = given(labels), given(prepend_bos), given(drop_unknown, False)
    no_prior_cache = given(no_prior_cache, False)
    text_field, label_field = given(text_field), given(label_field)
    if calibration not in (None, "none", "prior", "content_free", "batch"):
        raise EmocircuitsError(f"Unknown calibration {calibration!r}; use none, prior, content_free or batch.")
    if calibrate is False or calibration == "none":
        cal: bool | str = False
    elif calibration is not None:
        cal = calibration
    else:  # --calibrate alone keeps its old meaning
        cal = "batch" if calibrate else DEFAULT_CALIBRATION
    config = {
        "model": model,
        "data": data,
        "split": split,
        "labels": parse_labels(labels),
        "drop_unknown": drop_unknown,
        "text_field": text_field,
        "label_field": label_field,
        "limit_per_label": limit_per_label,
        "template": template,
        "system": system,
        "scoring": scoring,
        "calibrate": cal,
        "prepend_bos": prepend_bos,
        "seed": seed,
    }
    if no_prior_cache:  # recorded only when given, so runs made before the option still rerun identically
        config["prior_cache"] = False
    metrics = run_classify(config, out, quiet=quiet)
    line = f"accuracy {metrics['accuracy']:.3f} (n={metrics['n']}) -> {out}"
    typer.echo(
        line if quiet else json.dumps({k: metrics[k] for k in ("accuracy", "per_label", "n")}, indent=2)
    )
