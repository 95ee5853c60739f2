"""The load generator: a seeded, open-loop Poisson process, measured against the real simulator."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner, Result
from pydantic import ValidationError

from specpilot_lab.sim.loadgen import (
    NO_SERVER,
    Distribution,
    Segment,
    TemperatureShare,
    Trace,
    arrivals,
    format_report,
    load_trace,
    report,
    run,
)
from specpilot_lab.sim.loadgen import Result as LoadResult
from tests.conftest import REPO
from tests.lab.test_server import EAGLE3, MODEL, SimServer, free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def constant(qps: float, seconds: float, **fields: object) -> Trace:
    return Trace.model_validate({"segments": [{"durationSeconds": seconds, "qps": qps}], **fields})


def test_arrivals_are_deterministic_per_seed() -> None:
    assert arrivals(constant(3, 100)) == arrivals(constant(3, 100))
    assert arrivals(constant(3, 100)) != arrivals(constant(3, 100, seed=1))


@pytest.mark.parametrize(
    ("trace", "expected"),
    [
        (constant(5, 400), 2000.0),
        (Trace(segments=[Segment(duration_seconds=200, qps_start=0, qps_end=10)]), 1000.0),
        (
            Trace(
                segments=[
                    Segment(duration_seconds=100, qps=2),
                    Segment(duration_seconds=100, qps=8),
                ]
            ),
            1000.0,
        ),
    ],
)
def test_arrival_counts_follow_the_schedule(trace: Trace, expected: float) -> None:
    count = len(arrivals(trace))
    assert abs(count - expected) <= 4 * math.sqrt(expected)  # Poisson: variance = mean


def test_rate_changes_where_the_schedule_says() -> None:
    trace = Trace(
        segments=[Segment(duration_seconds=100, qps=1), Segment(duration_seconds=100, qps=10)]
    )
    times = [a.at for a in arrivals(trace)]
    first, second = sum(t < 100 for t in times), sum(t >= 100 for t in times)
    assert second > 5 * first


def test_temperature_mix_and_length_bounds() -> None:
    trace = constant(
        20,
        200,
        temperatureMix=[{"temperature": 0.0, "weight": 3}, {"temperature": 1.0, "weight": 1}],
        promptTokens={"kind": "lognormal", "median": 100, "sigma": 2, "min": 10, "max": 500},
        outputTokens={"kind": "uniform", "min": 5, "max": 9},
    )
    got = arrivals(trace)
    share = sum(a.temperature == 1.0 for a in got) / len(got)
    assert share == pytest.approx(0.25, abs=3 * math.sqrt(0.25 * 0.75 / len(got)))
    assert all(10 <= a.prompt_tokens <= 500 for a in got)
    assert {a.max_tokens for a in got} <= set(range(5, 10))


def test_example_traces_load() -> None:
    for path in (REPO / "manifests" / "traces").glob("*.yaml"):
        trace = load_trace(path)
        assert trace.duration > 0
        assert arrivals(trace)


def test_open_loop_run_against_the_simulator() -> None:
    trace = Trace(
        seed=3,
        segments=[Segment(duration_seconds=40, qps=2)],
        temperature_mix=[TemperatureShare(temperature=0.0, weight=1)],
        prompt_tokens=Distribution(kind="fixed", value=50),
        output_tokens=Distribution(kind="fixed", value=30),
    )
    with SimServer([MODEL, "--max-model-len", "4096"], {"SPECPILOT_SIM_TIME_SCALE": "10"}) as s:
        results = asyncio.run(run(trace, [s.url], MODEL, time_scale=10))
        wrong = asyncio.run(
            run(
                trace.model_copy(update={"segments": [Segment(duration_seconds=5, qps=2)]}),
                [s.url],
                "no/such-model",
                time_scale=10,
            )
        )
    assert len(results) == len(arrivals(trace))
    assert all(r.error is None for r in results)
    assert all(r.output_tokens == 30 for r in results)
    # Open loop: each request goes out at its time, never before, and without waiting for the
    # ones before it to finish (a closed loop would send the next only after an answer).
    assert all(r.sent is not None and r.sent >= r.at - 0.01 for r in results)
    overlapping = [
        later
        for earlier, later in itertools.pairwise(results)
        if later.sent is not None
        and earlier.e2e is not None
        and later.sent < earlier.at + earlier.e2e
    ]
    assert overlapping, "every request waited for the previous answer"
    # Per-token times are measured (their size is the simulator's physics, tested there: wall-clock
    # bounds here fail on a loaded machine, where a late first token makes the rest a burst).
    tpots = [r.tpot for r in results if r.tpot is not None]
    assert len(tpots) == len(results)
    assert all(t >= 0 for t in tpots)
    assert all(r.ttft is not None and r.ttft > 0 for r in results)
    assert wrong
    assert all(r.error == "HTTP 404" for r in wrong)
    summary = report(results, trace.duration, window=10)
    assert sum(w.requests for w in summary.windows) == summary.overall.requests
    assert summary.overall.tpot.p50 is not None


def test_cli_without_a_trace() -> None:
    with SimServer([MODEL, "--max-model-len", "4096"], {"SPECPILOT_SIM_TIME_SCALE": "20"}) as s:
        result = invoke(
            *["--base-url", s.url, "--qps", "4", "--duration", "20", "--time-scale", "20"],
            *["--window", "10", "-o", "json"],
        )
    assert result.exit_code == 0, result.output
    assert '"overall"' in result.output


# --- Helpers for the fixes and features below ---------------------------------------------------


def invoke(*args: str) -> Result:
    """`specpilot-lab loadgen ARGS` through the lab's CLI, as a user would run it."""
    from specpilot_lab.cli import main

    return CliRunner().invoke(main, ["loadgen", *args])


def nowhere() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


@asynccontextmanager
async def fake_server(handler: Handler) -> AsyncIterator[str]:
    """A stand-in completions endpoint, for the protocol breaks the simulator never makes."""
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def replying(payload: bytes, stream: bool) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if not stream:
            return web.Response(body=payload, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        return response

    return handler


def small(seed: int = 0, qps: float = 3, seconds: float = 2) -> Trace:
    return constant(qps, seconds, seed=seed, outputTokens={"kind": "fixed", "value": 30})


# --- Validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "named"),
    [
        ({"durationSeconds": 10}, "qps"),
        ({"durationSeconds": 10, "qps": 1, "qpsStart": 0, "qpsEnd": 5}, "not both"),
        ({"durationSeconds": 10, "qps": 1, "qpsEnd": 5}, "not both"),
        ({"durationSeconds": 10, "qpsStart": 2}, "qpsEnd"),
    ],
)
def test_segment_needs_exactly_one_rate(segment: dict[str, float], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        Trace.model_validate({"segments": [segment]})


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--window", "0"], "--window"),
        (["--window", "-5"], "--window"),
        (["--time-scale", "0"], "--time-scale"),
        (["--time-scale", "-2"], "--time-scale"),
        (["--max-in-flight", "0"], "--max-in-flight"),
        (["--base-url", "127.0.0.1:8000"], "--base-url"),
    ],
)
def test_cli_rejects_bad_option_values(args: list[str], option: str) -> None:
    # Nothing listens at the URL: before validation, this would get as far as the model lookup.
    result = invoke("--base-url", nowhere(), "--qps", "1", "--duration", "1", *args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    with pytest.raises(ValueError, match="window"):
        report([], 10, window=0)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("segments: [durationSeconds: 10\n", "not valid YAML"),
        ("segments:\n  - {durationSeconds: 10, qpss: 1}\n", "segments.0.qpss"),
        ("segments:\n  - {durationSeconds: 10}\n", "segments.0"),
        ("just a string\n", "not a valid trace"),
        ("", "not a valid trace"),
    ],
)
def test_cli_invalid_trace_file_is_a_usage_error(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    result = invoke(str(path), "--base-url", nowhere(), "--model", MODEL)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert str(path) in result.output
    assert named in result.output
    assert "docs/loadgen.md" in result.output


def test_cli_unreachable_server_is_a_clean_error() -> None:
    url = nowhere()
    result = invoke("--base-url", url, "--qps", "1", "--duration", "1")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert f"{url}/v1/models" in result.output
    assert "--base-url" in result.output


@pytest.mark.parametrize("option", [["--duration", "5"], ["--temperature", "1"], ["--qps", "2"]])
def test_cli_trace_file_excludes_the_no_trace_options(tmp_path: Path, option: list[str]) -> None:
    path = tmp_path / "trace.yaml"
    path.write_text("segments:\n  - {durationSeconds: 1, qps: 1}\n")
    result = invoke(str(path), "--base-url", nowhere(), "--model", MODEL, *option)
    assert result.exit_code == 2, result.output
    assert option[0] in result.output


def test_cli_seed_overrides_the_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.yaml"
    path.write_text("seed: 0\nsegments:\n  - {durationSeconds: 100, qps: 3}\n")
    trace = load_trace(path)
    expected = len(arrivals(trace.model_copy(update={"seed": 5})))
    assert expected != len(arrivals(trace))  # otherwise the test could not tell
    # Nothing listens: every request fails at once, but the report still counts the arrivals.
    args = ["--base-url", nowhere(), "--model", MODEL, "--time-scale", "1000", "-o", "json"]
    result = invoke(str(path), *args, "--seed", "5")
    assert result.exit_code == 0, result.output
    overall = json.loads(result.output)["overall"]
    assert overall["requests"] == expected
    assert overall["errors"] == expected
    assert overall["error_kinds"] == {"ClientConnectorError": expected}


# --- Protocol errors are per request ---------------------------------------------------------


TEXT = b'data: {"choices": [{"text": "a b"}]}\n\n'
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    ("payload", "stream", "expected"),
    [
        (TEXT + b"data: {not json\n\n" + DONE, True, "malformed-sse"),
        (TEXT + b"data: [1, 2]\n\n" + DONE, True, "malformed-sse"),
        (TEXT + b'data: {"error": {"message": "boom"}}\n\n' + DONE, True, "stream-error"),
        (TEXT, True, "incomplete-stream"),
        (b"", True, "incomplete-stream"),
        (b'{"choices": [', False, "malformed-response"),
        # Controls: no space after `data:`, no usage chunk; usage absent in a plain response.
        (b'data:{"choices": [{"text": "a b"}]}\n\n' + DONE, True, None),
        (b'{"choices": [{"text": "a b c"}]}', False, None),
    ],
)
def test_protocol_breaks_are_per_request_errors(
    payload: bytes, stream: bool, expected: str | None
) -> None:
    trace = small()

    async def go() -> list[LoadResult]:
        async with fake_server(replying(payload, stream)) as url:
            return await run(trace, [url], MODEL, time_scale=10, stream=stream)

    results = asyncio.run(go())
    assert len(results) == len(arrivals(trace)) > 0
    assert {r.error for r in results} == {expected}
    if expected is None:
        assert all(r.output_tokens == (2 if stream else 3) for r in results)
        assert all((r.ttft is not None) == stream for r in results)
        assert all(r.e2e is not None and r.e2e > 0 for r in results)


# --- Open loop at the in-flight cap -------------------------------------------------------------


def test_arrivals_beyond_the_in_flight_cap_are_dropped_not_queued() -> None:
    trace = small(seed=2, qps=5, seconds=1)
    expected = len(arrivals(trace))
    assert expected >= 3
    release = asyncio.Event()
    seen: list[LoadResult] = []

    def progress(result: LoadResult) -> None:
        seen.append(result)
        if sum(r.error == "client-overloaded" for r in seen) == expected - 1:
            release.set()

    async def held(request: web.Request) -> web.Response:
        """Answers only once every later arrival has come (at most 2 s, should none come)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), 2)
        return web.json_response({"choices": [{"text": "x"}], "usage": {"completion_tokens": 1}})

    async def go() -> list[LoadResult]:
        async with fake_server(held) as url:
            return await run(trace, [url], MODEL, max_in_flight=1, stream=False, on_result=progress)

    results = asyncio.run(go())
    first, *rest = results
    assert first.error is None
    assert first.sent is not None
    assert abs(first.sent - first.at) < 0.5
    # The held request waited for all the others, so its end-to-end time covers their arrivals.
    assert first.e2e is not None
    assert first.at + first.e2e >= max(r.at for r in rest)
    assert all(r.error == "client-overloaded" and r.sent is None for r in rest)
    assert len(seen) == expected
    assert seen[-1] is first  # reported as it finished, last
    summary = report(results, trace.duration, window=1)
    assert summary.overall.dropped == summary.overall.errors == expected - 1
    assert summary.overall.error_kinds == {"client-overloaded": expected - 1}
    assert "client-overloaded" in format_report(summary)


# --- Several servers, and no streaming --------------------------------------------------------


def test_round_robin_over_a_speculating_and_a_baseline_replica() -> None:
    trace = Trace(
        seed=4,
        segments=[Segment(duration_seconds=20, qps=2)],
        prompt_tokens=Distribution(kind="fixed", value=50),
        output_tokens=Distribution(kind="fixed", value=30),
    )
    env = {"SPECPILOT_SIM_TIME_SCALE": "10"}
    argv = [MODEL, "--max-model-len", "4096"]
    with (
        SimServer([*argv, "--speculative-config", EAGLE3], env) as speculating,
        SimServer(argv, env) as baseline,
    ):
        urls = [speculating.url, baseline.url]
        results = asyncio.run(run(trace, urls, MODEL, time_scale=10))
        served = [
            s.metrics()["vllm:e2e_request_latency_seconds_count"] for s in (speculating, baseline)
        ]
    assert all(r.error is None for r in results)
    assert [r.base_url for r in results] == [urls[i % 2] for i in range(len(results))]
    assert served == [len(results[0::2]), len(results[1::2])]
    summary = report(results, trace.duration, window=10)
    assert list(summary.servers) == urls
    assert sum(w.requests for w in summary.servers.values()) == summary.overall.requests


def test_no_stream_measures_end_to_end_only() -> None:
    trace = small(seed=1, qps=2, seconds=20)
    finished: list[LoadResult] = []
    with SimServer([MODEL, "--max-model-len", "4096"], {"SPECPILOT_SIM_TIME_SCALE": "10"}) as s:
        results = asyncio.run(
            run(trace, [s.url], MODEL, time_scale=10, stream=False, on_result=finished.append)
        )
    assert len(results) == len(arrivals(trace))
    assert sorted(id(r) for r in finished) == sorted(id(r) for r in results)
    assert all(r.error is None and r.output_tokens == 30 for r in results)
    assert all(r.ttft is None and r.tpot is None for r in results)
    assert all(r.e2e is not None and r.e2e > 30 * 0.004 for r in results)


def test_cli_no_stream_over_two_servers() -> None:
    env = {"SPECPILOT_SIM_TIME_SCALE": "20"}
    argv = [MODEL, "--max-model-len", "4096"]
    with SimServer(argv, env) as one, SimServer(argv, env) as two:
        result = invoke(
            *["--base-url", one.url, "--base-url", two.url + "/", "--no-stream"],
            *["--qps", "4", "--duration", "20", "--time-scale", "20", "--seed", "3", "-o", "json"],
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert list(summary["servers"]) == [one.url, two.url]
    assert summary["overall"]["errors"] == 0
    assert summary["overall"]["ttft"]["p50"] is None
    assert summary["overall"]["e2e"]["p50"] > 0


def test_a_callable_target_list_follows_replicas_as_they_come_and_go() -> None:
    """The servers are asked for at every arrival; none ready means an error, not a hang."""
    trace = Trace(segments=[Segment(duration_seconds=4, qps=5)], seed=2)
    with SimServer([MODEL, "--max-model-len", "4096"], {"SPECPILOT_SIM_TIME_SCALE": "4"}) as s:
        calls: list[str] = []

        def targets() -> list[str]:
            calls.append("asked")
            return [f"http://127.0.0.1:{s.port}"] if len(calls) % 2 else []

        results = asyncio.run(run(trace, targets, MODEL, time_scale=4, stream=False))
    assert len(calls) == len(results)
    served = [r for r in results if r.error is None]
    missing = [r for r in results if r.error == NO_SERVER]
    assert served
    assert missing
    assert all(r.sent is None for r in missing)
    assert len(served) + len(missing) == len(results)
