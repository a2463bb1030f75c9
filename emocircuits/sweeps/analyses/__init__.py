"""Built-in sweep analyses; each module registers itself on import."""
