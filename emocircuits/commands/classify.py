"""`emocircuits classify`: label-readout accuracy of a model on a dataset, written to a run directory.

Writes ``DIR/metrics.json`` (``accuracy``, ``per_label``, ``confusion``, ``n``, plus the settings) and
``DIR/predictions.parquet`` (``id, true, predicted, score_<label>...``) and ``DIR/manifest.json``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.errors import EmocircuitsError
from emocircuits.prompts import DEFAULT_TEMPLATE


def classify_cmd(
    model: str = typer.Option(
        "default", "--model", help="Model spec: default, a .gguf path, a local HF dir, tiny-llama."
    ),
    data: str = typer.Option(
        "builtin:dialogues",
        "--data",
        help="Data spec, e.g. builtin:dialogues, emoprism:PATH, envent:PATH, csv:PATH.",
    ),
    split: str | None = typer.Option("test", "--split", help="train, test, or all."),
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
) -> None:
    """Classify a dataset's texts by label readout and write metrics and predictions."""
    import json

    from emocircuits.data import load_data
    from emocircuits.models import load_model
    from emocircuits.readout import SCORINGS, classify

    if scoring not in SCORINGS:
        raise EmocircuitsError(f"Unknown scoring {scoring!r}; use one of {', '.join(SCORINGS)}.")
    sp = None if split in (None, "all") else split
    dataset = load_data(data, split=sp, limit_per_label=limit_per_label, seed=seed)
    bridge, spec = load_model(model, progress=not quiet)
    config = {
        "model": model,
        "data": data,
        "split": sp,
        "limit_per_label": limit_per_label,
        "template": template,
        "scoring": scoring,
        "calibrate": calibrate and calibration,
        "seed": seed,
    }
    if calibration not in ("batch", "content_free"):
        raise EmocircuitsError(f"Unknown calibration {calibration!r}; use batch or content_free.")
    cal: bool | str = calibration if calibrate else False
    result = classify(bridge, dataset, template=template, scoring=scoring, calibrate=cal, progress=not quiet)
    metrics = {**result.metrics, "labels": list(dataset.labels), "config": config, "data_info": dataset.info}
    try:
        from emocircuits.runs import RunDir
    except ImportError:  # pragma: no cover - fallback if the run store is unavailable
        RunDir = None  # noqa: N806
    if RunDir is not None:
        with RunDir.create(out, command="classify", config=config, model_spec=spec, seed=seed) as run:
            run.write_table(
                "predictions", result.predictions, "one row per example: id, true, predicted, scores"
            )
            run.write_json("metrics", metrics, "accuracy, per_label, confusion, n")
    else:  # pragma: no cover
        import os

        out.mkdir(parents=True, exist_ok=True)
        result.predictions.to_parquet(out / ".predictions.tmp", index=False)
        os.replace(out / ".predictions.tmp", out / "predictions.parquet")
        (out / ".metrics.tmp").write_text(json.dumps(metrics, indent=2))
        os.replace(out / ".metrics.tmp", out / "metrics.json")
    line = f"accuracy {metrics['accuracy']:.3f} (n={metrics['n']}) -> {out}"
    typer.echo(
        line if quiet else json.dumps({k: metrics[k] for k in ("accuracy", "per_label", "n")}, indent=2)
    )
