"""`emocircuits classify`: label-readout accuracy of a model on a dataset, written to a run directory.

Writes ``DIR/metrics.json`` (``accuracy``, ``per_label``, ``confusion``, ``n``, plus the settings) and
``DIR/predictions.parquet`` (``id, true, predicted, score_<label>...``) and ``DIR/manifest.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.options import DropUnknown, Labels, PrependBos
from emocircuits.core.prompts import DEFAULT_CALIBRATION, DEFAULT_CLASSIFY_TEMPLATE, template_names


def parse_labels(labels: str | None) -> list[str] | None:
    """``--labels a,b,c`` as a list (None: the data's default scheme)."""
    if labels is None:
        return None
    out = [s.strip() for s in labels.split(",") if s.strip()]
    if not out:
        raise EmocircuitsError(f"--labels {labels!r} names no label; pass comma-separated labels, e.g. anger,joy.")
    return out


def classify_cmd(
    model: str = typer.Option(
        "default", "--model", help="Model spec: default, a .gguf path, a local HF dir, tiny-llama."
    ),
    data: str = typer.Option(
        "builtin:dialogues",
        "--data",
        help="Data spec, e.g. builtin:dialogues, emoprism:PATH, envent:PATH, csv:PATH.",
    ),
    split: str | None = typer.Option(
        None, "--split", help="train, test or all (default: test if the data has its own split, else all)."
    ),
    limit_per_label: int | None = typer.Option(
        None, "--limit-per-label", help="Keep at most N examples per label (seeded, stratified)."
    ),
    template: str = typer.Option(
        DEFAULT_CLASSIFY_TEMPLATE, "--template",
        help=f"{DEFAULT_CLASSIFY_TEMPLATE} (default: an ensemble, the mean of both templates' calibrated label "
        f"log-probs), one of {', '.join(template_names())}, names joined by + (an ensemble), "
        "or a string containing {text} (prefix chat: for a chat user turn).",
    ),
    system: str | None = typer.Option(
        None, "--system", help="System prompt for a chat template (replaces its own) or a user template string."
    ),
    scoring: str = typer.Option("first_token", "--scoring", help="first_token or full_label."),
    calibrate: bool | None = typer.Option(
        None, "--calibrate/--no-calibrate", help="--no-calibrate: no calibration (as --calibration none)."
    ),
    calibration: str | None = typer.Option(
        None, "--calibration",
        help=f"none, prior (label prior fitted on the data's train split, else on builtin:events train), content_free, "
        f"or batch (prior = mean over the classified data). Default: {DEFAULT_CALIBRATION or 'none'}.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit-per-label sampling."),
    out: Path = typer.Option(
        ..., "--out", help="Run directory to write metrics.json and predictions.parquet into."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar; print only the accuracy."),
    labels: Labels = None,
    prepend_bos: PrependBos = None,
    drop_unknown: DropUnknown = False,
) -> None:
    """Classify a dataset's texts by label readout and write metrics and predictions."""
    import json

    from emocircuits.jobs.classify import run_classify

    # called as a plain function, options left out arrive as typer.Option objects: read them as unset
    system = system if isinstance(system, str) else None
    calibration = calibration if isinstance(calibration, str) else None
    calibrate = calibrate if isinstance(calibrate, bool) else None
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
        "limit_per_label": limit_per_label,
        "template": template,
        "system": system,
        "scoring": scoring,
        "calibrate": cal,
        "prepend_bos": prepend_bos,
        "seed": seed,
    }
    metrics = run_classify(config, out, quiet=quiet)
    line = f"accuracy {metrics['accuracy']:.3f} (n={metrics['n']}) -> {out}"
    typer.echo(
        line if quiet else json.dumps({k: metrics[k] for k in ("accuracy", "per_label", "n")}, indent=2)
    )
