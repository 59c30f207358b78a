"""The command line (``python -m core ...``): see :mod:`core.cli.main`."""

from core.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
