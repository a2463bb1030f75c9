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


def spell(python: str, cli: str) -> str:
    """How to name an option in advice: ``cli`` (e.g. ``--labels``) inside a running CLI command, else ``python``."""
    contexts = []
    for module in ("typer._click.globals", "click"):  # typer >= 0.2x vendors its own click
        try:
            contexts.append(__import__(module, fromlist=["get_current_context"]).get_current_context(silent=True))
        except (ImportError, AttributeError):
            pass
    return cli if any(ctx is not None for ctx in contexts) else python
