"""The `tunelab` command line: thin commands over the library, drawing its events (see app.py)."""

from tunelab.cli.app import app, run

__all__ = ["app", "run"]
