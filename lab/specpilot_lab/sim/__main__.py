"""`python -m specpilot_lab.sim serve MODEL [vLLM flags]`: what the pod runner runs per replica."""

import sys

from specpilot_lab.sim.serve import main

if len(sys.argv) < 2 or sys.argv[1] != "serve":
    print("usage: python -m specpilot_lab.sim serve MODEL [vLLM flags]", file=sys.stderr)
    sys.exit(2)
sys.exit(main(sys.argv[2:]))
