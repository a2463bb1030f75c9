"""The ``emocircuits`` command line: a thin typer front over the jobs and sweeps layers.
"""

from __future__ import annotations

import sys

import typer

from emocircuits.base.errors import EmocircuitsError, speaking_cli, start_speaking_cli, stop_speaking_cli


def run_cli(app: object) -> None:
    """Run a typer app so that a user error prints one sentence and exits with code 2, never a traceback."""
    try:
        with speaking_cli():
            app()  # type: ignore[operator]
    except EmocircuitsError as exc:
        typer.echo(f"emocircuits: error: {exc}", err=True)
        sys.exit(2)


app = typer.Typer(
    help="emocircuits: find and manipulate emotion neurons, heads, directions and circuits in language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _speak_cli(ctx: typer.Context) -> None:
    """Advice in errors names command-line options while a command runs (``--labels``, not ``labels=``)."""
    token = start_speaking_cli()
    ctx.call_on_close(lambda: stop_speaking_cli(token))


def _register_all() -> None:
    from emocircuits.cli import (
        circuits,
        classify,
        demo,
        inference,
        judge,
        models,
        neurons,
        report,
        sweep,
        triangulate,
    )

    models.register(app)
    app.command("classify")(classify.classify_cmd)
    judge.register(app)
    neurons.register(app)
    sweep.register(app)
    report.register(app)
    inference.register(app)
    circuits.register(app)
    demo.register(app)
    triangulate.register(app)


_register_all()


def main() -> None:
    """Entry point: user errors print one sentence and exit with code 2, never a traceback."""
    run_cli(app)


if __name__ == "__main__":
    main()
