"""`emocircuits judge`: judge a dataset's texts with one or more offline judges, written to a run directory.

Writes ``DIR/verdicts.parquet`` (``id, true, judge, predicted, p_<label>...``: one row per judge and
text), ``DIR/metrics.json`` (``judges``: name -> ``accuracy``, ``per_label``, ``none_rate``, ``n``,
``seconds``; ``kappa``: name -> name -> Cohen's kappa; ``n``; the config) and ``DIR/manifest.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from emocircuits.cli.options import given, option


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
    judge: list[str] = option("--judge", ...),
    data: str = option("--data"),
    split: str | None = option("--split"),
    limit_per_label: int | None = option("--limit-per-label"),
    model: str = option("--model"),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
    labels: str | None = option("--labels"),
    drop_unknown: bool = option("--drop-unknown"),
    text_field: str | None = option("--text-field"),
    label_field: str | None = option("--label-field"),
) -> None:
    """Judge which emotion each text of a dataset expresses, with one or more judges, and compare them."""
    from emocircuits.cli.classify import parse_labels
    from emocircuits.jobs.judge import run_judge

    config = {"judges": list(judge), "data": data, "split": split,
              "limit_per_label": limit_per_label, "model": model, "seed": seed, "labels": parse_labels(given(labels)),
              "drop_unknown": given(drop_unknown, False), "text_field": given(text_field),
              "label_field": given(label_field)}
    metrics = run_judge(config, out, quiet=quiet)
    typer.echo(_summary(metrics) + f"\n-> {out}")


def register(app: typer.Typer) -> None:
    app.command("judge")(judge_cmd)
