"""CLI options several commands share, declared once (typer ``Annotated`` types).
"""

from __future__ import annotations

from typing import Annotated

import typer

Labels = Annotated[str | None, typer.Option(
    "--labels", help="Comma-separated label scheme, e.g. anger,joy (default: Ekman's six).")]


PrependBos = Annotated[bool | None, typer.Option(
    "--prepend-bos/--no-prepend-bos", help="Put BOS before plain-text prompts (default: what the model's own "
    "tokenizer does).")]


DropUnknown = Annotated[bool, typer.Option(
    "--drop-unknown", help="Skip rows whose label is outside the scheme instead of stopping.")]
