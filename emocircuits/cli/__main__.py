"""``python -m emocircuits.cli``: the same entry point as the ``emocircuits`` command."""

from emocircuits.cli.app import main

main()
