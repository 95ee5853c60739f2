"""`specpilot-lab sim serve MODEL [vLLM flags]`: start a simulated vLLM server.

Simulator-only settings come from the environment, so the argument list stays exactly vLLM's:
SPECPILOT_SIM_GPU (catalog GPU type, default H100-80GB), SPECPILOT_SIM_TIME_SCALE (default 1),
SPECPILOT_SIM_SEED, SPECPILOT_SIM_QUANTIZATION, SPECPILOT_SIM_VLLM_VERSION, SPECPILOT_SIM_ECHO.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from specpilot_lab.sim.engine import Engine
from specpilot_lab.sim.server import application
from specpilot_lab.sim.vllm_args import SimArgsError, parse_server_args


def build_engine(argv: Sequence[str], env: Mapping[str, str]) -> Engine:
    config = parse_server_args(argv, env)
    return Engine(
        config,
        time_scale=float(env.get("SPECPILOT_SIM_TIME_SCALE", "1")),
        seed=int(env.get("SPECPILOT_SIM_SEED", "0")),
    )


def main(argv: Sequence[str]) -> int:
    try:
        engine = build_engine(argv, os.environ)
    except (SimArgsError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    schedule = f" by batch size {engine.schedule}" if engine.schedule else ""
    if engine.adaptive:
        schedule += ", adaptive verification"
    print(
        f"specpilot sim: {engine.config.served_model_name} as vLLM {engine.config.vllm_version} "
        f"on {engine.config.tensor_parallel_size} x {engine.config.gpu}, KV cache "
        f"{engine.capacity} tokens, speculation {engine.method.value} k={engine.k}"
        f"{schedule}, "
        f"time scale {engine.time_scale:g}, http://{engine.config.host}:{engine.config.port}",
        file=sys.stderr,
        flush=True,
    )
    web.run_app(
        application(engine),
        host=engine.config.host,
        port=engine.config.port,
        print=None,
        access_log=None,
    )
    return 0
