"""tokend: one process keeps a Google access token fresh for every local program."""

__version__ = "0.1.0"

__all__ = ["__version__"]
