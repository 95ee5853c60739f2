"""`python -m specpilot` is the `specpilot` command."""

from specpilot.cli import main

main()
