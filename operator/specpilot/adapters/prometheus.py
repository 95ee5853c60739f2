"""Prometheus HTTP API client for the control loop: sends the batched queries, nothing else.

Each query has a timeout and a bounded number of retries with backoff on connection errors and
5xx answers; a 4xx (a bad query, bad credentials) is not retried. Whatever fails comes back as a
MetricsError whose message names the URL, and the policy then holds.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict

from specpilot.adapters import telemetry
from specpilot.signals import BadAnswerError, Readings, parse_answers, queries

RETRIES = 2
BACKOFF_SECONDS = 0.5


class MetricsError(Exception):
    """Prometheus could not be read; the message says where and why."""


class Endpoint(BaseModel):
    """Where and how to reach one Prometheus; hashable, so resources can be grouped by it."""

    model_config = ConfigDict(frozen=True)

    url: str
    bearer_token: str | None = None
    ca_bundle: str | None = None

    def describe(self) -> str:
        return self.url.rstrip("/")


class PrometheusClient:
    def __init__(self, timeout_seconds: float = 10.0, retries: int = RETRIES) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.retries = retries

    async def read(self, endpoint: Endpoint, window: str) -> tuple[Readings, float]:
        """Every signal for every managed resource behind `endpoint`, and the evaluation time."""
        at = time.time()
        headers = {"Accept": "application/json"}
        if endpoint.bearer_token:
            headers["Authorization"] = f"Bearer {endpoint.bearer_token}"
        connector = aiohttp.TCPConnector(ssl=_ssl_context(endpoint))
        async with aiohttp.ClientSession(
            headers=headers, timeout=self.timeout, connector=connector
        ) as session:
            expressions = queries(window)
            telemetry.PROMETHEUS_QUERIES.inc(len(expressions))
            answers = await asyncio.gather(
                *(self._query(session, endpoint, q, at) for q in expressions.values())
            )
        try:
            return parse_answers(dict(zip(expressions, answers, strict=True))), at
        except BadAnswerError as exc:
            raise MetricsError(f"Prometheus at {endpoint.describe()}: {exc}") from exc

    async def _query(
        self, session: aiohttp.ClientSession, endpoint: Endpoint, promql: str, at: float
    ) -> dict[str, Any]:
        url = f"{endpoint.url.rstrip('/')}/api/v1/query"
        problem = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
            try:
                async with session.post(url, data={"query": promql, "time": f"{at:.3f}"}) as reply:
                    if reply.status >= 500:
                        problem = f"HTTP {reply.status}"
                        continue
                    body: dict[str, Any] = await reply.json(content_type=None)
                    if reply.status >= 400:
                        raise MetricsError(
                            f"Prometheus at {endpoint.describe()} refused a query: HTTP "
                            f"{reply.status} {body.get('error', '')}".rstrip()
                        )
                    return body
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
        raise MetricsError(
            f"Prometheus at {endpoint.describe()} unreachable after {self.retries + 1} "
            f"attempts ({problem})"
        )


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext | bool:
    if not endpoint.url.startswith("https://"):
        return False
    if endpoint.ca_bundle:
        return ssl.create_default_context(cadata=endpoint.ca_bundle)
    return ssl.create_default_context()
