"""The operator's own Prometheus metrics (not vLLM's): reconciles, durations, errors, resources."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "specpilot_reconciles_total",
    "Reconciles of SpeculativeInference resources, by trigger and result.",
    ["trigger", "result"],
)
RECONCILE_SECONDS = Histogram(
    "specpilot_reconcile_duration_seconds",
    "Wall time of one reconcile (validate, plan, render, apply, status).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
APPLY_ERRORS = Counter(
    "specpilot_apply_errors_total", "Objects the API server refused to apply.", ["kind"]
)
STATUS_CONFLICTS = Counter(
    "specpilot_status_conflicts_total",
    "Status writes refused because the resource changed meanwhile (HTTP 409); each is redone "
    "on a fresh read.",
    ["writer"],
)
STATUS_WRITE_ERRORS = Counter(
    "specpilot_status_write_errors_total",
    "Status writes that failed for any reason but a conflict (refused by the API server, or "
    "refused before sending for a NaN or Infinity); the resource's status is stale until one "
    "succeeds.",
    ["writer"],
)
RESOURCES_MANAGED = Gauge(
    "specpilot_resources_managed", "SpeculativeInference resources this operator manages."
)
INVALID_RESOURCES = Gauge(
    "specpilot_resources_invalid", "Managed resources whose spec is invalid (nothing applied)."
)
CONTROL_DECISIONS = Counter(
    "specpilot_control_decisions_total",
    "Control checks by outcome (keep, hold, disable-speculation, enable-speculation, "
    "step-quantization, undo-quantization-step, set-engine-schedule).",
    ["action"],
)
PROMETHEUS_READ_SECONDS = Histogram(
    "specpilot_prometheus_read_duration_seconds",
    "Wall time of one batched read of every signal from Prometheus.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PROMETHEUS_READ_ERRORS = Counter(
    "specpilot_prometheus_read_errors_total", "Batched Prometheus reads that failed (checks held)."
)
PROMETHEUS_QUERIES = Counter(
    "specpilot_prometheus_queries_total",
    "PromQL queries sent by the control loop (a batched read sends one per query group).",
)
CONTROL_CYCLE_SECONDS = Histogram(
    "specpilot_control_cycle_duration_seconds",
    "Wall time of one endpoint's share of a control cycle: its read, checks and status writes.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
CONTROL_CYCLE_RESOURCES = Histogram(
    "specpilot_control_cycle_resources",
    "Resources checked in one control cycle.",
    buckets=(1, 10, 100, 250, 500, 1000, 2500, 5000),
)
