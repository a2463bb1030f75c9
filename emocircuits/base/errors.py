"""The one exception type users see: a single sentence saying what was wrong and what to do."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator


class EmocircuitsError(ValueError):
    """Bad user input (a model spec, a data file, an index, a config key).

    The message is one sentence: what was wrong, the valid range or known names, and what to do.
    The CLI prints it without a traceback and exits with code 2.
    """


_SPEAKING_CLI: contextvars.ContextVar[bool] = contextvars.ContextVar("emocircuits_speaking_cli", default=False)


def start_speaking_cli() -> contextvars.Token[bool]:
    """From now on (until :func:`stop_speaking_cli`) advice names command-line options; the CLI calls it."""
    return _SPEAKING_CLI.set(True)


def stop_speaking_cli(token: contextvars.Token[bool]) -> None:
    _SPEAKING_CLI.reset(token)


@contextlib.contextmanager
def speaking_cli() -> Iterator[None]:
    """Inside this block advice names command-line options (``--labels``), not Python keywords."""
    token = _SPEAKING_CLI.set(True)
    try:
        yield
    finally:
        _SPEAKING_CLI.reset(token)


def spell(python: str, cli: str) -> str:
    """How to name an option in advice: ``cli`` (e.g. ``--labels``) inside the command line, else ``python``."""
    return cli if _SPEAKING_CLI.get() else python
