"""``python -m hotpath`` runs the CLI."""

from .cli import main

main()
