"""`specpilot-lab`: the test lab beside the operator (simulated vLLM, pod runner, load generator,
the local demo). The operator's own command is `specpilot`; this one is never in its image."""

from __future__ import annotations

import sys

import click


@click.group()
@click.version_option(package_name="specpilot-lab")
def main() -> None:
    """specpilot's lab: run the control loop without GPUs or a cluster."""


@main.group()
def sim() -> None:
    """The vLLM stand-in: simulated servers for clusters and tests without GPUs."""


@sim.command(
    "serve",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("vllm_args", nargs=-1, type=click.UNPROCESSED)
def sim_serve(vllm_args: tuple[str, ...]) -> None:
    """Serve like `vllm serve MODEL [flags]` (settings: SPECPILOT_SIM_* variables)."""
    from specpilot_lab.sim.serve import main as serve

    sys.exit(serve(list(vllm_args)))


@main.command(
    "podrunner",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def podrunner_command(options: tuple[str, ...]) -> None:
    """Run specpilot's Deployments as local simulator processes (test API servers)."""
    from specpilot_lab.sim.podrunner import podrunner

    podrunner.main(args=list(options), prog_name="specpilot-lab podrunner")


@main.command("loadgen", context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def loadgen_command(options: tuple[str, ...]) -> None:
    """Open-loop load from a QPS trace; client-side TTFT/TPOT percentiles."""
    from specpilot_lab.sim.loadgen import loadgen

    loadgen.main(args=list(options), prog_name="specpilot-lab loadgen")


@main.command("demo", context_settings={"ignore_unknown_options": True}, add_help_option=False)
@click.argument("options", nargs=-1, type=click.UNPROCESSED)
def demo_command(options: tuple[str, ...]) -> None:
    """The control loop on simulated GPUs: a surge turns speculation off, quiet turns it on."""
    from specpilot_lab.demo.run import demo

    demo.main(args=list(options), prog_name="specpilot-lab demo")
