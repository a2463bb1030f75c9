"""`emocircuits triangulate`: a thin front over :func:`emocircuits.jobs.triangulate.run_triangulate`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from emocircuits.base.constants import TRIANGULATE_SIZES as S
from emocircuits.cli.options import option


def triangulate_cmd(
    model: str = option("--model", S["model"]),
    data: str = option("--data", S["data"]),
    dtype: str = option("--dtype"),
    template: str = option("--template", S["template"]),
    train_per_label: int = option("--train-per-label", S["train_per_label"]),
    test_per_label: int = option("--test-per-label", S["test_per_label"]),
    top_rate: float = option("--top-rate"),
    neurons_file: Path | None = option("--neurons", None),
    controls: int = option("--controls", S["controls"]),
    probe_folds: int = option("--probe-folds", S["probe_folds"]),
    probe_controls: int = option("--probe-controls", S["probe_controls"]),
    n_boot: int = option("--n-boot", S["n_boot"]),
    seed: int = option("--seed"),
    out: Path = option("--out"),
    quiet: bool = option("--quiet"),
) -> None:
    """Lee's, Wang's and Tak's emotion neurons on one model and one data set: overlaps against chance
    (hypergeometric), layer profiles and their rank correlation, and each set's masking effect (and the
    union's and intersection's) against size- and layer-matched random controls on the test split.
    --neurons reads Lee's sets from a `neurons find` run instead of finding them."""
    from emocircuits.jobs.triangulate import run_triangulate, summary_table

    config = {"model": model, "data": data, "dtype": dtype, "template": template, "train_per_label": train_per_label,
              "test_per_label": test_per_label, "top_rate": top_rate,
              "neurons": str(neurons_file) if neurons_file is not None else None, "controls": controls,
              "probe_folds": probe_folds, "probe_controls": probe_controls, "n_boot": n_boot, "seed": seed,
              "activation": S["activation"], "tokens": S["tokens"], "assign": S["assign"]}
    res = run_triangulate(config, out, quiet)
    typer.echo(f"{summary_table(res)}\n-> {out}")


def register(app: typer.Typer) -> None:
    app.command("triangulate")(triangulate_cmd)
