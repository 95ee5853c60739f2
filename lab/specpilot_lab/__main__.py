"""`python -m specpilot_lab` is the `specpilot-lab` command."""

from specpilot_lab.cli import main

main()
