"""`python -m edit ...` runs the `edit` command line."""

from edit.cli import run

run()
