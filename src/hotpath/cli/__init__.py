"""The ``hotpath`` command line: typer commands, rich output, no tracebacks for known errors."""

from ._app import app, main

__all__ = ["app", "main"]
