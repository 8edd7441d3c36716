"""daemon layer of aofd (see docs/architecture.md)."""
