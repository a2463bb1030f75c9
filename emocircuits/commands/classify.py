"""`emocircuits classify`: label-readout accuracy of a model on a dataset, written to a run directory.

Writes ``DIR/metrics.json`` (``accuracy``, ``per_label``, ``confusion``, ``n``, plus the settings) and
``DIR/predictions.parquet`` (``id, true, predicted, score_<label>...``) and ``DIR/manifest.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.commands.options import DropUnknown, Labels, PrependBos
from emocircuits.errors import EmocircuitsError
from emocircuits.prompts import DEFAULT_TEMPLATE


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
        DEFAULT_TEMPLATE, "--template", help="chat_short (default), chat, chat_short, fewshot, raw, or a string containing {text}."
    ),
    scoring: str = typer.Option("first_token", "--scoring", help="first_token or full_label."),
    calibrate: bool = typer.Option(
        False, "--calibrate/--no-calibrate", help="Calibrate the label scores against the label priors."
    ),
    calibration: str = typer.Option(
        "batch", "--calibration", help="With --calibrate: batch (prior = mean over the data) or content_free."
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

    from emocircuits.jobs import run_classify

    if calibration not in ("batch", "content_free"):
        raise EmocircuitsError(f"Unknown calibration {calibration!r}; use batch or content_free.")
    config = {
        "model": model,
        "data": data,
        "split": split,
        "labels": parse_labels(labels),
        "drop_unknown": drop_unknown,
        "limit_per_label": limit_per_label,
        "template": template,
        "scoring": scoring,
        "calibrate": calibrate and calibration,
        "prepend_bos": prepend_bos,
        "seed": seed,
    }
    metrics = run_classify(config, out, quiet=quiet)
    line = f"accuracy {metrics['accuracy']:.3f} (n={metrics['n']}) -> {out}"
    typer.echo(
        line if quiet else json.dumps({k: metrics[k] for k in ("accuracy", "per_label", "n")}, indent=2)
    )
