"""Open-loop load for OpenAI-compatible servers (the simulator or a real vLLM).

A trace gives a QPS schedule (steps and linear ramps), a temperature mix and prompt/output length
distributions; arrivals are a non-homogeneous Poisson process drawn with a seed, and every
request is sent at its arrival time whatever the server is doing, as real users would. TTFT and
TPOT are measured on the client. Tokens are approximated as words, as the simulator counts them.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
import time
from pathlib import Path
from typing import Literal

import aiohttp
import click
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from specpilot.sim.engine import Arrival

MAX_IN_FLIGHT = 1024


class TraceModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Segment(TraceModel):
    """A stretch of the schedule: constant QPS, or a linear ramp from qpsStart to qpsEnd."""

    duration_seconds: float = Field(gt=0)
    qps: float | None = Field(default=None, ge=0)
    qps_start: float | None = Field(default=None, ge=0)
    qps_end: float | None = Field(default=None, ge=0)

    def rate(self, offset: float) -> float:
        if self.qps is not None:
            return self.qps
        start, end = self.qps_start or 0.0, self.qps_end or 0.0
        return start + (end - start) * offset / self.duration_seconds


class Distribution(TraceModel):
    kind: Literal["fixed", "uniform", "lognormal"] = "lognormal"
    value: int = Field(default=128, ge=1)
    median: float = Field(default=128, gt=0)
    sigma: float = Field(default=0.5, ge=0)
    min: int = Field(default=1, ge=1)
    max: int = Field(default=4096, ge=1)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return rng.randint(self.min, self.max)
        drawn = int(rng.lognormvariate(math.log(self.median), self.sigma))
        return max(self.min, min(self.max, drawn))


class TemperatureShare(TraceModel):
    temperature: float = Field(ge=0, le=2)
    weight: float = Field(gt=0)


class Trace(TraceModel):
    model: str | None = None
    seed: int = 0
    segments: list[Segment] = Field(min_length=1)
    temperature_mix: list[TemperatureShare] = Field(
        default_factory=lambda: [TemperatureShare(temperature=0.0, weight=1.0)], min_length=1
    )
    prompt_tokens: Distribution = Field(default_factory=Distribution)
    output_tokens: Distribution = Field(default_factory=Distribution)
    echo: float = Field(default=0.3, ge=0, le=1)
    """How much answers echo prompts (the simulator's n-gram acceptance; real servers ignore it)."""

    @property
    def duration(self) -> float:
        return sum(s.duration_seconds for s in self.segments)

    def rate(self, t: float) -> float:
        for segment in self.segments:
            if t < segment.duration_seconds:
                return segment.rate(t)
            t -= segment.duration_seconds
        return 0.0


def load_trace(path: Path) -> Trace:
    return Trace.model_validate(yaml.safe_load(path.read_text()))


def arrivals(trace: Trace) -> list[Arrival]:
    """The trace's requests, by thinning a Poisson process at the schedule's peak rate."""
    rng = random.Random(trace.seed)
    peak = max(max(s.qps or 0, s.qps_start or 0, s.qps_end or 0) for s in trace.segments)
    temperatures = [share.temperature for share in trace.temperature_mix]
    weights = [share.weight for share in trace.temperature_mix]
    out: list[Arrival] = []
    t = 0.0
    while peak > 0:
        t += rng.expovariate(peak)
        if t >= trace.duration:
            break
        if rng.random() * peak > trace.rate(t):
            continue
        out.append(
            Arrival(
                at=t,
                prompt_tokens=trace.prompt_tokens.sample(rng),
                max_tokens=trace.output_tokens.sample(rng),
                temperature=rng.choices(temperatures, weights)[0],
                echo=trace.echo,
            )
        )
    return out


class Result(BaseModel):
    at: float
    """Scheduled arrival (trace seconds)."""
    sent: float
    """When it was actually sent (trace seconds): equal to `at` in an open loop."""
    temperature: float
    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None
    output_tokens: int = 0
    error: str | None = None


class Percentiles(BaseModel):
    p50: float | None
    p95: float | None
    p99: float | None

    @classmethod
    def of(cls, values: list[float]) -> Percentiles:
        if len(values) < 2:
            only = values[0] if values else None
            return cls(p50=only, p95=only, p99=only)
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cls(p50=cuts[49], p95=cuts[94], p99=cuts[98])


class Window(BaseModel):
    start: float
    requests: int
    errors: int
    qps: float
    ttft: Percentiles
    tpot: Percentiles
    output_tokens_per_second: float


class Report(BaseModel):
    overall: Window
    windows: list[Window]


def summarize(results: list[Result], start: float, length: float) -> Window:
    ok = [r for r in results if r.error is None]
    return Window(
        start=start,
        requests=len(results),
        errors=len(results) - len(ok),
        qps=len(results) / length if length else 0.0,
        ttft=Percentiles.of([r.ttft for r in ok if r.ttft is not None]),
        tpot=Percentiles.of([r.tpot for r in ok if r.tpot is not None]),
        output_tokens_per_second=sum(r.output_tokens for r in ok) / length if length else 0.0,
    )


def report(results: list[Result], duration: float, window: float) -> Report:
    windows = []
    start = 0.0
    while start < duration:
        inside = [r for r in results if start <= r.at < start + window]
        windows.append(summarize(inside, start, min(window, duration - start)))
        start += window
    return Report(overall=summarize(results, 0.0, duration), windows=windows)


async def _one(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    arrival: Arrival,
    sent: float,
    scale: float,
) -> Result:
    result = Result(at=arrival.at, sent=sent, temperature=arrival.temperature)
    body = {
        "model": model,
        "prompt": " ".join(["word"] * arrival.prompt_tokens),
        "max_tokens": arrival.max_tokens,
        "temperature": arrival.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "specpilot_echo": arrival.echo,
    }
    begin = time.monotonic()
    first = last = None
    chunks = 0
    try:
        async with session.post(f"{base_url}/v1/completions", json=body) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}"
                return result
            async for raw in response.content:
                line = raw.decode().strip()
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                if data.get("usage"):
                    result.output_tokens = data["usage"]["completion_tokens"]
                text = "".join(c.get("text", "") for c in data.get("choices", []))
                if text:
                    last = time.monotonic()
                    first = first or last
                    chunks += len(text.split())
    except (TimeoutError, aiohttp.ClientError) as exc:
        result.error = type(exc).__name__
        return result
    tokens = result.output_tokens or chunks
    result.output_tokens = tokens
    if first is not None and last is not None:
        result.ttft = (first - begin) * scale
        result.e2e = (last - begin) * scale
        if tokens > 1:
            result.tpot = (last - first) * scale / (tokens - 1)
    return result


async def run(
    trace: Trace,
    base_url: str,
    model: str,
    time_scale: float = 1.0,
    max_in_flight: int = MAX_IN_FLIGHT,
    timeout: float = 600.0,
) -> list[Result]:
    """Send every arrival on schedule (trace time / time_scale); latencies in trace seconds."""
    limit = asyncio.Semaphore(max_in_flight)
    connector = aiohttp.TCPConnector(limit=max_in_flight)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    start = time.monotonic()

    async def scheduled(arrival: Arrival) -> Result:
        await asyncio.sleep(max(0.0, arrival.at / time_scale - (time.monotonic() - start)))
        sent = (time.monotonic() - start) * time_scale
        async with limit:
            return await _one(session, base_url, model, arrival, sent, time_scale)

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        return list(await asyncio.gather(*(scheduled(a) for a in arrivals(trace))))


def format_report(result: Report) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f}"

    lines = ["  start   reqs  errs    qps  TTFT p50/p99 ms   TPOT p50/p99 ms   tok/s"]
    for w in [*result.windows, result.overall]:
        label = "all" if w is result.overall else f"{w.start:.0f}s"
        lines.append(
            f"{label:>7} {w.requests:6d} {w.errors:5d} {w.qps:6.2f} "
            f"{ms(w.ttft.p50):>7}/{ms(w.ttft.p99):<8} {ms(w.tpot.p50):>7}/{ms(w.tpot.p99):<8} "
            f"{w.output_tokens_per_second:7.1f}"
        )
    return "\n".join(lines)


@click.command("loadgen")
@click.argument("trace_file", type=click.Path(exists=True, path_type=Path), required=False)
@click.option("--base-url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--model", default=None, help="Model name (the trace's, else the server's).")
@click.option("--qps", type=float, default=None, help="Without a trace: constant QPS.")
@click.option(
    "--duration", type=float, default=60.0, show_default=True, help="Without a trace: seconds."
)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@click.option(
    "--time-scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Play the trace this many times faster (match the simulator's scale).",
)
@click.option(
    "--window", type=float, default=60.0, show_default=True, help="Report window, trace seconds."
)
@click.option("--max-in-flight", type=int, default=MAX_IN_FLIGHT, show_default=True)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def loadgen(
    trace_file: Path | None,
    base_url: str,
    model: str | None,
    qps: float | None,
    duration: float,
    temperature: float,
    time_scale: float,
    window: float,
    max_in_flight: int,
    output: str,
) -> None:
    """Send open-loop load from a trace and report client-side TTFT and TPOT percentiles."""
    if trace_file is not None:
        trace = load_trace(trace_file)
    elif qps is not None:
        trace = Trace(
            segments=[Segment(duration_seconds=duration, qps=qps)],
            temperature_mix=[TemperatureShare(temperature=temperature, weight=1)],
        )
    else:
        raise click.UsageError("give a TRACE_FILE or --qps")
    name = model or trace.model or _served_model(base_url)
    results = asyncio.run(run(trace, base_url, name, time_scale, max_in_flight))
    summary = report(results, trace.duration, window)
    click.echo(summary.model_dump_json(indent=2) if output == "json" else format_report(summary))


def _served_model(base_url: str) -> str:
    async def ask() -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base_url}/v1/models") as response,
        ):
            data = await response.json()
            return str(data["data"][0]["id"])

    return asyncio.run(ask())
