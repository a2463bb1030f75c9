"""The ``emocircuits`` command line: a thin typer front over the jobs and sweeps layers.
"""

from __future__ import annotations

import sys

import typer

from emocircuits.base.errors import (
    EmocircuitsError,
    speaking_cli,
    start_speaking_cli,
    stop_speaking_cli,
    tell_command_flags,
)


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


def _running_command_flags() -> set[str] | None:
    """The flags of the command now running (advice in errors names only these), None outside a command."""
    try:  # typer carries its own copy of click (0.29); older ones use click itself
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None:
        return None
    return {f for p in ctx.command.params for f in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}


tell_command_flags(_running_command_flags)


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
