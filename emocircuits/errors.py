"""The one exception type users see: a single sentence saying what was wrong and what to do."""


class EmocircuitsError(ValueError):
    """Bad user input (a model spec, a data file, an index, a config key).

    The message is one sentence: what was wrong, the valid range or known names, and what to do.
    The CLI prints it without a traceback and exits with code 2.
    """


def run_cli(app: object) -> None:
    """Run a typer app so that a user error prints one sentence and exits with code 2, never a traceback."""
    import sys

    import typer

    try:
        app()  # type: ignore[operator]
    except EmocircuitsError as exc:
        typer.echo(f"emocircuits: error: {exc}", err=True)
        sys.exit(2)
