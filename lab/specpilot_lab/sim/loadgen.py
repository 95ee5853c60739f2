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
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Self

import aiohttp
import click
import yaml
from click.core import ParameterSource
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from specpilot_lab.sim.engine import Arrival

MAX_IN_FLIGHT = 1024
DEFAULT_BASE_URL = "http://127.0.0.1:8000"

NO_SERVER = "no-ready-server"
OVERLOADED = "client-overloaded"
"""Never sent: `max_in_flight` requests were already open at its arrival time."""
MALFORMED = "malformed-sse"
INCOMPLETE = "incomplete-stream"
STREAM_ERROR = "stream-error"
MALFORMED_RESPONSE = "malformed-response"


class TraceModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Segment(TraceModel):
    """A stretch of the schedule: constant QPS, or a linear ramp from qpsStart to qpsEnd."""

    duration_seconds: float = Field(gt=0)
    qps: float | None = Field(default=None, ge=0)
    qps_start: float | None = Field(default=None, ge=0)
    qps_end: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _one_rate(self) -> Self:
        """Exactly one of a step or a ramp, so a typo cannot silently mean zero or the wrong one."""
        ramp = self.qps_start is not None or self.qps_end is not None
        if self.qps is not None and ramp:
            raise ValueError("give either qps (a step) or qpsStart and qpsEnd (a ramp), not both")
        if self.qps is None and not ramp:
            raise ValueError("no rate: give qps (a step) or qpsStart and qpsEnd (a ramp)")
        if ramp and (self.qps_start is None or self.qps_end is None):
            missing = "qpsStart" if self.qps_start is None else "qpsEnd"
            raise ValueError(f"a ramp needs both qpsStart and qpsEnd: {missing} is missing")
        return self

    @property
    def peak(self) -> float:
        return max(self.qps or 0.0, self.qps_start or 0.0, self.qps_end or 0.0)

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


class TraceError(ValueError):
    """A trace file that cannot be used, with a message naming the file and what is wrong."""


def load_trace(path: Path) -> Trace:
    """Read and validate a trace; every failure is a TraceError, so callers need not know YAML."""
    hint = "see docs/loadgen.md for the trace format"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TraceError(f"trace file {path} is not valid YAML ({hint}):\n{exc}") from exc
    try:
        return Trace.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(
            f"  {'.'.join(str(p) for p in error['loc']) or '(top level)'}: {error['msg']}"
            for error in exc.errors()
        )
        raise TraceError(f"trace file {path} is not a valid trace ({hint}):\n{problems}") from exc


def arrivals(trace: Trace) -> list[Arrival]:
    """The trace's requests, by thinning a Poisson process at the schedule's peak rate."""
    rng = random.Random(trace.seed)
    peak = max(s.peak for s in trace.segments)
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
    """Scheduled arrival (trace seconds); TTFT and end-to-end time are measured from here."""
    sent: float | None
    """When it was actually sent (trace seconds): `at` plus client jitter; None if dropped."""
    base_url: str
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
    """Requests that did not succeed, dropped ones included."""
    dropped: int
    """Of the errors, requests never sent because the client was at --max-in-flight."""
    error_kinds: dict[str, int]
    qps: float
    ttft: Percentiles
    tpot: Percentiles
    e2e: Percentiles
    output_tokens_per_second: float


class Report(BaseModel):
    overall: Window
    windows: list[Window]
    servers: dict[str, Window] = Field(default_factory=dict)
    """Overall figures per base URL, when load was spread over several."""


def summarize(results: list[Result], start: float, length: float) -> Window:
    ok = [r for r in results if r.error is None]
    kinds = Counter(r.error for r in results if r.error is not None)
    return Window(
        start=start,
        requests=len(results),
        errors=len(results) - len(ok),
        dropped=kinds[OVERLOADED],
        error_kinds=dict(sorted(kinds.items())),
        qps=len(results) / length if length else 0.0,
        ttft=Percentiles.of([r.ttft for r in ok if r.ttft is not None]),
        tpot=Percentiles.of([r.tpot for r in ok if r.tpot is not None]),
        e2e=Percentiles.of([r.e2e for r in ok if r.e2e is not None]),
        output_tokens_per_second=sum(r.output_tokens for r in ok) / length if length else 0.0,
    )


def report(results: list[Result], duration: float, window: float) -> Report:
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    windows = []
    start = 0.0
    while start < duration:
        inside = [r for r in results if start <= r.at < start + window]
        windows.append(summarize(inside, start, min(window, duration - start)))
        start += window
    urls = list(dict.fromkeys(r.base_url for r in results))
    servers = (
        {u: summarize([r for r in results if r.base_url == u], 0.0, duration) for u in urls}
        if len(urls) > 1
        else {}
    )
    return Report(overall=summarize(results, 0.0, duration), windows=windows, servers=servers)


class _ProtocolError(Exception):
    """The response broke the protocol; the message is the Result's error."""


def _event(payload: str) -> dict[str, Any]:
    """The JSON object an SSE `data:` line carries; anything else breaks the stream."""
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise _ProtocolError(MALFORMED) from exc
    if not isinstance(data, dict):
        raise _ProtocolError(MALFORMED)
    if "error" in data or data.get("object") == "error":
        raise _ProtocolError(STREAM_ERROR)
    return data


def _completion_tokens(data: dict[str, Any]) -> int:
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else 0


def _text(data: dict[str, Any]) -> str:
    choices = data.get("choices")
    if not isinstance(choices, list):
        return ""
    return "".join(
        c["text"] for c in choices if isinstance(c, dict) and isinstance(c.get("text"), str)
    )


async def _one(
    session: aiohttp.ClientSession,
    base_url: str,
    model: str,
    arrival: Arrival,
    due: float,
    start: float,
    scale: float,
    stream: bool,
) -> Result:
    """One request; latencies run from `due` (the scheduled arrival), so client lag counts."""
    result = Result(at=arrival.at, sent=None, base_url=base_url, temperature=arrival.temperature)
    body: dict[str, Any] = {
        "model": model,
        "prompt": " ".join(["word"] * arrival.prompt_tokens),
        "max_tokens": arrival.max_tokens,
        "temperature": arrival.temperature,
        "stream": stream,
        "specpilot_echo": arrival.echo,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    first = last = None
    chunks = 0
    done = False
    try:
        result.sent = (time.monotonic() - start) * scale
        async with session.post(f"{base_url}/v1/completions", json=body) as response:
            if response.status != 200:
                result.error = f"HTTP {response.status}"
                return result
            if not stream:
                try:
                    data = await response.json(content_type=None)
                except ValueError as exc:
                    raise _ProtocolError(MALFORMED_RESPONSE) from exc
                if not isinstance(data, dict):
                    raise _ProtocolError(MALFORMED_RESPONSE)
                result.e2e = (time.monotonic() - due) * scale
                result.output_tokens = _completion_tokens(data) or len(_text(data).split())
                return result
            async for raw in response.content:
                try:
                    line = raw.decode().strip()
                except UnicodeDecodeError as exc:
                    raise _ProtocolError(MALFORMED) from exc
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event: and id: fields
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    break
                data = _event(payload)
                result.output_tokens = _completion_tokens(data) or result.output_tokens
                text = _text(data)
                if text:
                    last = time.monotonic()
                    first = first or last
                    chunks += len(text.split())
    except _ProtocolError as exc:
        result.error = str(exc)
        return result
    except (TimeoutError, aiohttp.ClientError) as exc:
        result.error = type(exc).__name__
        return result
    if not done:
        result.error = INCOMPLETE
        return result
    end = time.monotonic()
    tokens = result.output_tokens or chunks
    result.output_tokens = tokens
    result.e2e = (end - due) * scale
    if first is not None and last is not None:
        result.ttft = (first - due) * scale
        if tokens > 1:
            result.tpot = (last - first) * scale / (tokens - 1)
    return result


async def run(
    trace: Trace,
    base_urls: Sequence[str] | Callable[[], Sequence[str]],
    model: str,
    time_scale: float = 1.0,
    max_in_flight: int = MAX_IN_FLIGHT,
    timeout: float = 600.0,
    stream: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Send every arrival on schedule (trace time / time_scale); latencies in trace seconds.

    Arrival i goes to base_urls[i % len(base_urls)], round-robin like a Service over replicas.
    An arrival finding `max_in_flight` requests open is dropped (error `client-overloaded`)
    rather than queued: a queue would delay sends and hide the server's latency (closed loop).
    `on_result` is called with each result as it completes, for live progress. A callable
    `base_urls` is asked at every arrival, so load follows replicas as they roll (the demo reads
    the pod runner's ready pods); an arrival that finds none fails with `no-ready-server`.
    """
    if not callable(base_urls) and not base_urls:
        raise ValueError("give at least one base URL")
    if time_scale <= 0:
        raise ValueError(f"time_scale must be positive, got {time_scale}")
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    # No pool limit: the in-flight count below is the cap, so nothing waits for a connection.
    connector = aiohttp.TCPConnector(limit=0)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    in_flight = 0
    start = time.monotonic()

    async def scheduled(index: int, arrival: Arrival) -> Result:
        nonlocal in_flight
        due = start + arrival.at / time_scale
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        servers = base_urls() if callable(base_urls) else base_urls
        base_url = servers[index % len(servers)] if servers else ""
        if not servers or in_flight >= max_in_flight:
            result = Result(
                at=arrival.at,
                sent=None,
                base_url=base_url,
                temperature=arrival.temperature,
                error=OVERLOADED if servers else NO_SERVER,
            )
        else:
            in_flight += 1
            try:
                result = await _one(
                    session, base_url, model, arrival, due, start, time_scale, stream
                )
            finally:
                in_flight -= 1
        if on_result is not None:
            on_result(result)
        return result

    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:
        jobs = (scheduled(i, a) for i, a in enumerate(arrivals(trace)))
        return list(await asyncio.gather(*jobs))


def format_report(result: Report) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.1f}"

    def row(label: str, w: Window) -> str:
        return (
            f"{label:>7} {w.requests:6d} {w.errors:5d} {w.dropped:5d} {w.qps:6.2f} "
            f"{ms(w.ttft.p50):>7}/{ms(w.ttft.p99):<8} {ms(w.tpot.p50):>7}/{ms(w.tpot.p99):<8} "
            f"{w.output_tokens_per_second:7.1f}"
        )

    header = "  start   reqs  errs  drop    qps  TTFT p50/p99 ms   TPOT p50/p99 ms   tok/s"
    lines = [header, *(row(f"{w.start:.0f}s", w) for w in result.windows)]
    lines.append(row("all", result.overall))
    for index, (url, w) in enumerate(result.servers.items()):
        lines.append(row(f"url{index}", w) + f"  {url}")
    if result.overall.error_kinds:
        kinds = ", ".join(f"{kind} {n}" for kind, n in result.overall.error_kinds.items())
        lines.append(f"errors: {kinds}")
    return "\n".join(lines)


def _base_urls(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> list[str]:
    """Fail on a URL aiohttp would reject for every request, before any load is sent."""
    for url in value:
        if not url.startswith(("http://", "https://")):
            raise click.BadParameter(f"{url!r} is not an http:// or https:// URL", ctx, param)
    return [url.rstrip("/") for url in value]


POSITIVE = click.FloatRange(min=0, min_open=True)


@click.command("loadgen")
@click.argument(
    "trace_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False
)
@click.option(
    "--base-url",
    "base_urls",
    multiple=True,
    default=[DEFAULT_BASE_URL],
    show_default=True,
    callback=_base_urls,
    help="Server to load; repeat to spread requests round-robin over several.",
)
@click.option("--model", default=None, help="Model name (the trace's, else the first server's).")
@click.option("--qps", type=POSITIVE, default=None, help="Without a trace: constant QPS.")
@click.option(
    "--duration", type=POSITIVE, default=60.0, show_default=True, help="Without a trace: seconds."
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, 2),
    default=0.0,
    show_default=True,
    help="Without a trace: every request's temperature.",
)
@click.option("--seed", type=int, default=None, help="Arrival draw seed (overrides the trace's).")
@click.option(
    "--time-scale",
    type=POSITIVE,
    default=1.0,
    show_default=True,
    help="Play the trace this many times faster (match the simulator's scale).",
)
@click.option(
    "--window", type=POSITIVE, default=60.0, show_default=True, help="Report window, trace seconds."
)
@click.option(
    "--max-in-flight",
    type=click.IntRange(min=1),
    default=MAX_IN_FLIGHT,
    show_default=True,
    help="Open requests at most; arrivals beyond it are dropped (client-overloaded).",
)
@click.option(
    "--stream/--no-stream",
    default=True,
    show_default=True,
    help="Stream to measure TTFT/TPOT; --no-stream measures only end-to-end time, more cheaply.",
)
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
def loadgen(
    trace_file: Path | None,
    base_urls: list[str],
    model: str | None,
    qps: float | None,
    duration: float,
    temperature: float,
    seed: int | None,
    time_scale: float,
    window: float,
    max_in_flight: int,
    stream: bool,
    output: str,
) -> None:
    """Send open-loop load from a trace and report client-side TTFT and TPOT percentiles."""
    ctx = click.get_current_context()
    if trace_file is not None:
        given = [
            f"--{name}"
            for name in ("qps", "duration", "temperature")
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)
        ]
        if given:
            raise click.UsageError(
                f"{', '.join(given)} only apply without a TRACE_FILE: "
                "edit the trace's segments and temperatureMix instead"
            )
        try:
            trace = load_trace(trace_file)
        except TraceError as exc:
            raise click.UsageError(str(exc)) from exc
    elif qps is not None:
        trace = Trace(
            segments=[Segment(duration_seconds=duration, qps=qps)],
            temperature_mix=[TemperatureShare(temperature=temperature, weight=1)],
        )
    else:
        raise click.UsageError("give a TRACE_FILE or --qps")
    if seed is not None:
        trace = trace.model_copy(update={"seed": seed})
    name = model or trace.model or _served_model(base_urls[0])
    results = asyncio.run(run(trace, base_urls, name, time_scale, max_in_flight, stream=stream))
    summary = report(results, trace.duration, window)
    click.echo(summary.model_dump_json(indent=2) if output == "json" else format_report(summary))


def _served_model(base_url: str) -> str:
    """The first model the server lists; a clean error if it cannot say."""
    url = f"{base_url}/v1/models"

    async def ask() -> str:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                raise click.ClickException(
                    f"{url} answered HTTP {response.status}: check --base-url, "
                    "or name the model with --model"
                )
            try:
                return str((await response.json(content_type=None))["data"][0]["id"])
            except (ValueError, LookupError, TypeError) as exc:
                raise click.ClickException(
                    f"{url} did not list a model: name it with --model"
                ) from exc

    try:
        return asyncio.run(ask())
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise click.ClickException(
            f"cannot reach {url} to look up the model ({type(exc).__name__}: {exc}): "
            "start the server or fix --base-url"
        ) from exc
