"""`python -m cdc` runs the command line."""

from .cli import main

main()
