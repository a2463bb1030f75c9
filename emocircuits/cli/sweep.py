"""`emocircuits sweep CONFIG.toml --out DIR` and `emocircuits rerun DIR --out NEW`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.options import option


def sweep_cmd(
    config: Path = typer.Argument(..., help="Sweep config (TOML) with the tables sweep, model, data, analysis, grid, executor."),
    out: Path = option("--out"),
    resume: bool = option("--resume"),
    executor: str | None = option("--executor"),
    workers: int | None = option("--workers"),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: $RAY_ADDRESS)."),
    quiet: bool = option("--quiet"),
) -> None:
    """Run a grid of analysis cells; each finished cell lands in DIR/results.parquet at once."""
    from emocircuits.sweeps import failed_cells_text, load_config, run_sweep

    cfg = load_config(config)  # validated before any model loads
    result = run_sweep(cfg, out, resume=resume, executor=executor, workers=workers, address=address,
                       progress=not quiet)
    typer.echo(json.dumps(result.summary()))
    if result.n_failed_total:
        typer.echo(failed_cells_text(result.table), err=True)
        raise EmocircuitsError(f"{result.n_failed_total} of {result.n_cells} cells failed; see "
                               f"{Path(out) / 'results.parquet'} (the reasons are listed above).")


def rerun_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory written by an emocircuits command."),
    out: Path = option("--out"),
) -> None:
    """Re-create a run from its manifest alone (same command, same config, same seed)."""
    from emocircuits.sweeps.rerun import rerun

    rerun(run_dir, out)
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    """Add the ``sweep`` and ``rerun`` commands to ``app``."""
    app.command("sweep")(sweep_cmd)
    app.command("rerun")(rerun_cmd)
