"""Model registry, specs and weights."""
