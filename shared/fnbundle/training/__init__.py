"""Training loops, datasets, metrics and exports. Imports torch lazily (inside functions)."""
