"""`emocircuits judge`: judge a dataset's texts with one or more offline judges, written to a run directory.

Writes ``DIR/verdicts.parquet`` (``id, true, judge, predicted, p_<label>...``: one row per judge and
text), ``DIR/metrics.json`` (``judges``: name -> ``accuracy``, ``per_label``, ``none_rate``, ``n``,
``seconds``; ``kappa``: name -> name -> Cohen's kappa; ``n``; the config) and ``DIR/manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emocircuits.cli.options import DropUnknown, Labels
from emocircuits.jobs.judge import run_judge


def _summary(metrics: dict[str, Any]) -> str:
    names = list(metrics["judges"])
    lines = [f"{'judge':<24} accuracy  none   seconds"]
    for name, m in metrics["judges"].items():
        lines.append(f"{name:<24} {m['accuracy']:8.3f}  {m['none_rate']:.2f}  {m['seconds']:7.1f}")
    if len(names) > 1:
        lines.append("kappa: " + ", ".join(
            f"{a}~{b} {metrics['kappa'][a][b]:.2f}" if metrics["kappa"][a][b] is not None else f"{a}~{b} n/a"
            for i, a in enumerate(names) for b in names[i + 1:]))
    return "\n".join(lines)


def judge_cmd(
    judge: list[str] = typer.Option(
        ..., "--judge", help="Judge name, repeatable: self, lexicon, embedding, hf:DIR, llm:SPEC."
    ),
    data: str = typer.Option("builtin:dialogues", "--data", help="Data spec, e.g. builtin:dialogues, jsonl:PATH."),
    split: str | None = typer.Option(
        None, "--split", help="train, test or all (default: test if the data has its own split, else all)."
    ),
    limit_per_label: int | None = typer.Option(
        None, "--limit-per-label", help="Keep at most N examples per label (seeded, stratified)."
    ),
    model: str = typer.Option("default", "--model", help="Model spec read by the self judge."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --limit-per-label sampling."),
    out: Path = typer.Option(..., "--out", help="Run directory to write verdicts.parquet and metrics.json into."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines; print only the summary."),
    labels: Labels = None,
    drop_unknown: DropUnknown = False,
) -> None:
    """Judge which emotion each text of a dataset expresses, with one or more judges, and compare them."""
    from emocircuits.cli.classify import parse_labels

    config = {"judges": list(judge), "data": data, "split": split,
              "limit_per_label": limit_per_label, "model": model, "seed": seed, "labels": parse_labels(labels),
              "drop_unknown": drop_unknown}
    metrics = run_judge(config, out, quiet=quiet)
    typer.echo(_summary(metrics) + f"\n-> {out}")


def register(app: typer.Typer) -> None:
    app.command("judge")(judge_cmd)
