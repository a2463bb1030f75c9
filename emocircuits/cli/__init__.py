"""The ``emocircuits`` command line."""

from emocircuits.cli.app import app, main  # noqa: F401
