"""`emocircuits models` and `emocircuits info`.
"""

from __future__ import annotations

import json

import typer

from emocircuits.cli.options import option


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd(as_json: bool = option("--json")) -> None:
        """List the known model specs and whether each is available locally."""
        from emocircuits.core.models import known_models

        rows = known_models()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        for row in rows:
            mark = "yes" if row["available"] else "no "
            typer.echo(f"{row['spec']:<28} available={mark}  {row['model']}  ({row['where']})")

    @app.command("info")
    def info_cmd(
        model: str = typer.Argument("default", help="Model spec: default, a .gguf path, a local HF dir or a cached hub id."),
        dtype: str = option("--dtype"),
        as_json: bool = option("--json"),
    ) -> None:
        """Load a model and print its ModelSpec (layers, widths, heads, MLP type, weights hash)."""
        from emocircuits.core.models import load_model

        _, spec = load_model(model, dtype=dtype)
        typer.echo(json.dumps(spec.to_dict(), indent=2) if as_json else str(spec))
