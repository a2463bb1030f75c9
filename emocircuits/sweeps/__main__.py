"""``python -m emocircuits.sweeps CONFIG.toml --out DIR [--resume]``: the sweep command on its own
(for cluster nodes and tests), without the rest of the CLI; errors print one sentence and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from emocircuits.errors import run_cli


def sweep(
    config: Path = typer.Argument(..., help="Sweep config (TOML)."),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out."),
    executor: str | None = typer.Option(None, "--executor", help="local or ray."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes / Ray actors."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Run a grid of analysis cells (same as `emocircuits sweep`)."""
    from emocircuits.sweeps import failed_cells_text, load_config, run_sweep

    result = run_sweep(load_config(config), out, resume=resume, executor=executor, workers=workers, address=address,
                       progress=not quiet)
    typer.echo(json.dumps(result.summary()))
    if result.n_failed_total:
        typer.echo(failed_cells_text(result.table), err=True)


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(sweep)
    run_cli(app)


if __name__ == "__main__":
    main()
