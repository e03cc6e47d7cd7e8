"""The one rich console every command prints through (stderr when stdout carries --json)."""

from rich.console import Console

console = Console(stderr=True)
