"""aofd: a GitOps daemon for AOF composable AI-ops resources."""

__version__ = "0.1.0"
