"""The one exception type users see: a single sentence saying what was wrong and what to do."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator


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


def offered(cli: str) -> bool:
    """Whether advice may name option ``cli`` (e.g. ``--drop-unknown``): outside the command line always; inside
    it only when the running command has that option, so a refusal never advises what cannot be typed."""
    if not _SPEAKING_CLI.get() or _COMMAND_FLAGS is None:
        return True
    flags = _COMMAND_FLAGS()
    return flags is None or cli.split()[0] in flags


_COMMAND_FLAGS: Callable[[], set[str] | None] | None = None


def tell_command_flags(flags: Callable[[], set[str] | None]) -> None:
    """The CLI tells how to read the running command's flags (None: no command runs), for :func:`offered`."""
    global _COMMAND_FLAGS
    _COMMAND_FLAGS = flags


def advise(ways: list[tuple[str, str, str]], otherwise: str) -> str:
    """Advice naming each way ``(python, cli, what it does)`` the caller can take, joined by "or" (:func:`spell`);
    ``otherwise`` when the running command offers none of them."""
    open_ways = [f"{spell(py, cli)} {what}" for py, cli, what in ways if offered(cli)]
    return f"pass {' or '.join(open_ways)}" if open_ways else otherwise


def spell(python: str, cli: str) -> str:
    """How to name an option in advice: ``cli`` (e.g. ``--labels``) inside the command line, else ``python``."""
    return cli if _SPEAKING_CLI.get() else python
