"""specs layer of aofd: the typed, immutable specs one revision compiles to (see docs/architecture.md)."""
