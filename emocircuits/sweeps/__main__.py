"""``python -m emocircuits.sweeps CONFIG.toml --out DIR [--resume]``: the sweep command on its own
(for cluster nodes and tests); errors print one sentence and exit 2, as in the main CLI."""

from __future__ import annotations

import typer

from emocircuits.errors import run_cli


def main() -> None:
    from emocircuits.commands.sweep import sweep_cmd

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(sweep_cmd)
    run_cli(app)


if __name__ == "__main__":
    main()
