"""CLI command groups; each module exposes ``register(app)``. Commands hold no logic."""
