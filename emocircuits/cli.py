"""The ``emocircuits`` command line: a thin typer front over the same functions notebooks call."""

from __future__ import annotations

import typer

from emocircuits.errors import run_cli

app = typer.Typer(
    help="emocircuits: find and manipulate emotion neurons, heads, directions and circuits in language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    from emocircuits.commands import (
        circuits,
        classify,
        demo,
        inference,
        judge,
        models,
        neurons,
        report,
        sweep,
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


_register_all()


def main() -> None:
    """Entry point: user errors print one sentence and exit with code 2, never a traceback."""
    run_cli(app)


if __name__ == "__main__":
    main()
