"""`specpilot`: plan, render and validate manifests before any cluster exists."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click
import yaml

from specpilot.api.admin import DEFAULT_MAX_CHANGES_PER_HOUR, AdminPolicy, PodPolicy, url_problem
from specpilot.api.crd import crd_yaml
from specpilot.api.documents import safe_load_all
from specpilot.api.models import RolloutSurge, SpeculativeInferenceSpec
from specpilot.api.reference import markdown_reference
from specpilot.assessment import Assessment, assess, checkpoint_models
from specpilot.findings import Finding, errors
from specpilot.planning.memory import MemoryPlan, ModelFootprint
from specpilot.planning.rollout import (
    expected_startup,
    progress_deadline_seconds,
    restart_is_an_outage,
    startup_seconds,
    strategy,
    weight_source,
)
from specpilot.planning.startup import WeightSource, plan_startup
from specpilot.rendering.manifests import manifests

EXIT_INVALID = 2


@click.group()
@click.version_option(package_name="specpilot")
def main() -> None:
    """Run vLLM with speculative decoding safely on Kubernetes."""


def _documents(stream: TextIO) -> Iterator[Any]:
    try:
        docs = [d for d in safe_load_all(stream) if d is not None]
    except yaml.YAMLError as exc:
        _fail(f"{stream.name}: not valid YAML: {exc}")
    if not docs:
        _fail(f"{stream.name}: no YAML document found")
    yield from docs


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_INVALID)


def _name(doc: Any) -> str:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return f"SpeculativeInference {name}" if isinstance(name, str) else "document"


def _print_findings(findings: list[Finding], err: bool = False) -> None:
    width = max((len(f.code) for f in findings), default=0)
    for f in findings:
        click.echo(f"  {f.severity.value:<8} {f.code:<{width}}  {f}", err=err)


def _report_errors(doc: Any, result: Assessment) -> None:
    problems = errors(result.findings)
    click.echo(f"{_name(doc)}: {len(problems)} error(s)", err=True)
    _print_findings(problems, err=True)


FILE_ARGUMENT = click.argument("file", type=click.File("r"))
CHECKPOINT_DIR_OPTION = click.option(
    "--checkpoint-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    envvar="SPECPILOT_CHECKPOINT_DIR",
    help="Read checkpoint metadata from DIR/ORG/NAME/config.json (and "
    "model.safetensors.index.json) before asking the hub.",
)
OFFLINE_OPTION = click.option(
    "--offline",
    is_flag=True,
    envvar="SPECPILOT_OFFLINE",
    help="Never ask the Hugging Face hub: models not under --checkpoint-dir are planned from "
    "specpilot's catalog or spec.*.architecture (the plan names the source).",
)


def _assess_all(
    file: TextIO, checkpoint_dir: Path | None, offline: bool
) -> Iterator[tuple[Any, Assessment]]:
    """Each document with its assessment, planned from the checkpoints it names (read once per
    model for this command)."""
    from specpilot.adapters.checkpoints import CheckpointReader

    reader = CheckpointReader(local_dir=checkpoint_dir, use_hub=not offline)
    try:
        for doc in _documents(file):
            yield doc, assess(doc, checkpoints=reader.read(checkpoint_models(doc)))
    finally:
        reader.close()


OUTPUT_OPTION = click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)


@main.command()
@FILE_ARGUMENT
@OUTPUT_OPTION
@CHECKPOINT_DIR_OPTION
@OFFLINE_OPTION
def validate(file: TextIO, output: str, checkpoint_dir: Path | None, offline: bool) -> None:
    """Check manifests; report every problem with its field and fix (exit 2 if any error)."""
    failed = False
    reports = []
    for doc, result in _assess_all(file, checkpoint_dir, offline):
        failed |= not result.valid
        reports.append(
            {
                "name": _name(doc),
                "valid": result.valid,
                "findings": [f.model_dump() for f in result.findings],
            }
        )
        if output == "text":
            status = "valid" if result.valid else "invalid"
            click.echo(f"{_name(doc)}: {status}")
            _print_findings(result.findings)
    if output == "json":
        click.echo(json.dumps(reports, indent=2))
    sys.exit(EXIT_INVALID if failed else 0)


@main.command()
@FILE_ARGUMENT
@OUTPUT_OPTION
@CHECKPOINT_DIR_OPTION
@OFFLINE_OPTION
def plan(file: TextIO, output: str, checkpoint_dir: Path | None, offline: bool) -> None:
    """Show the memory plan: weights, KV cache, concurrency, verdict (exit 2 if it cannot run)."""
    failed = False
    reports = []
    for doc, result in _assess_all(file, checkpoint_dir, offline):
        failed |= not result.valid
        if output == "json":
            reports.append(_plan_report(doc, result))
            continue
        if result.plan is not None:
            click.echo(format_plan(_name(doc), result.plan))
            if result.resource is not None:
                click.echo(format_rollout(result.resource.spec, result.plan))
        click.echo(_verdict_line(result))
        click.echo("Findings:" if result.findings else "Findings: none")
        _print_findings(result.findings)
    if output == "json":
        click.echo(json.dumps(reports, indent=2))
    sys.exit(EXIT_INVALID if failed else 0)


@main.command()
@FILE_ARGUMENT
@click.option(
    "--speculation",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="off renders the same resource without speculation (what the control loop applies).",
)
@CHECKPOINT_DIR_OPTION
@OFFLINE_OPTION
def render(file: TextIO, speculation: str, checkpoint_dir: Path | None, offline: bool) -> None:
    """Print the Kubernetes manifests the operator would apply."""
    rendered = []
    for doc, result in _assess_all(file, checkpoint_dir, offline):
        if result.resource is None:
            _report_errors(doc, result)
            sys.exit(EXIT_INVALID)
        rendered += manifests(
            result.resource, result.version, speculation == "on", result.checkpoints
        )
    click.echo(yaml.safe_dump_all(rendered, sort_keys=False, width=1000), nl=False)


@main.command()
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["yaml", "markdown"]),
    default="yaml",
    show_default=True,
    help="markdown prints the field reference (docs/resource.md).",
)
def crd(output_format: str) -> None:
    """Print the SpeculativeInference CustomResourceDefinition."""
    click.echo(crd_yaml() if output_format == "yaml" else markdown_reference(), nl=False)


EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _namespaced_name(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[str, str] | None:
    if value is None:
        return None
    namespace, _, name = value.partition("/")
    if not namespace or not name or "/" in name:
        raise click.BadParameter(
            f"{value!r}: give NAMESPACE/NAME, e.g. specpilot-system/specpilot-webhook"
        )
    return namespace, name


def _webhook_configuration_name(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    # kopf names the webhook inside validate.<this>; Kubernetes wants three DNS labels there.
    if "." not in value:
        raise click.BadParameter(
            f"{value!r}: give a name with a dot, e.g. {value}.specpilot.io (the webhook inside "
            "is named validate.<name>, which Kubernetes requires to have three parts)"
        )
    return value


def _prometheus_urls(
    ctx: click.Context, param: click.Parameter, value: str | tuple[str, ...] | None
) -> str | tuple[str, ...] | None:
    for url in [value] if isinstance(value, str) else value or ():
        problem = url_problem(url)
        if problem:
            raise click.BadParameter(f"{url!r}: {problem}")
    return value


@main.command("run")
@click.option(
    "-n",
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only these namespaces (repeatable); cluster-wide if none.",
)
@click.option(
    "--standalone",
    is_flag=True,
    help="No peering: for a single replica (no KopfPeering object needed).",
)
@click.option(
    "--peering",
    default="specpilot",
    show_default=True,
    help="KopfPeering object used to keep one replica active.",
)
@click.option(
    "--priority",
    type=int,
    default=None,
    help="Peering priority (random if unset, so one replica wins).",
)
@click.option(
    "--liveness",
    default="http://0.0.0.0:8080/healthz",
    show_default=True,
    help="Liveness endpoint URL ('' to disable).",
)
@click.option(
    "--metrics-port",
    type=int,
    default=9100,
    show_default=True,
    help="Port for the operator's Prometheus metrics (0 to disable).",
)
@click.option(
    "--webhook-port",
    type=int,
    default=None,
    help="Serve the validating admission webhook on this port.",
)
@click.option("--webhook-address", default="0.0.0.0", show_default=True)
@click.option(
    "--webhook-host", default=None, help="Host name or IP the API server uses to reach the webhook."
)
@click.option(
    "--webhook-service",
    default=None,
    callback=_namespaced_name,
    metavar="NAMESPACE/NAME",
    help="The Service in front of the webhook: the API server reaches it there, and the "
    "self-signed certificate is for its DNS names (instead of --webhook-host).",
)
@click.option(
    "--webhook-service-port", type=int, default=443, show_default=True, help="That Service's port."
)
@click.option(
    "--webhook-cert",
    type=EXISTING_FILE,
    default=None,
    help="Serving certificate (PEM), e.g. cert-manager's tls.crt; self-signed if unset.",
)
@click.option(
    "--webhook-key",
    type=EXISTING_FILE,
    default=None,
    help="Its private key (PEM).",
)
@click.option(
    "--webhook-ca",
    type=EXISTING_FILE,
    default=None,
    help="CA bundle the API server should trust (e.g. cert-manager's ca.crt); the certificate "
    "itself if unset.",
)
@click.option(
    "--manage-webhook/--no-manage-webhook",
    default=True,
    show_default=True,
    help="Create/patch the ValidatingWebhookConfiguration named by --webhook-configuration.",
)
@click.option(
    "--webhook-configuration",
    default="specpilot.io",
    show_default=True,
    callback=_webhook_configuration_name,
    help="Name of the ValidatingWebhookConfiguration the operator keeps up to date.",
)
@click.option(
    "--prometheus-url",
    envvar="SPECPILOT_PROMETHEUS_URL",
    default=None,
    callback=_prometheus_urls,
    help="Prometheus for resources without spec.monitoring.prometheusUrl "
    "[env SPECPILOT_PROMETHEUS_URL].",
)
@click.option(
    "--prometheus-token-file",
    type=EXISTING_FILE,
    default=None,
    help="File holding a bearer token for that Prometheus.",
)
@click.option(
    "--prometheus-ca-file",
    type=EXISTING_FILE,
    default=None,
    help="CA bundle (PEM) that signs that Prometheus' certificate.",
)
@click.option(
    "--allowed-prometheus-url",
    "allowed_prometheus_urls",
    multiple=True,
    envvar="SPECPILOT_ALLOWED_PROMETHEUS_URLS",
    callback=_prometheus_urls,
    help="Another Prometheus that spec.monitoring.prometheusUrl may name (repeatable; env: "
    "space-separated). Only --prometheus-url is allowed if none; no credential of the "
    "operator is ever sent to these.",
)
@click.option(
    "--max-changes-per-hour",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CHANGES_PER_HOUR,
    show_default=True,
    help="Restarts the control loop may cause per resource per hour; beyond it, it holds.",
)
@click.option(
    "--pod-allow-host-path",
    is_flag=True,
    help="Let spec.pod.volumes mount hostPath volumes into the GPU pods.",
)
@click.option(
    "--pod-refuse-service-account",
    is_flag=True,
    help="Refuse spec.pod.serviceAccountName (the pods run as the namespace's default).",
)
@click.option(
    "--pod-refuse-secret-env",
    is_flag=True,
    help="Refuse Secrets in the GPU pods: spec.pod env valueFrom.secretKeyRef, secret volumes "
    "and projected secret sources.",
)
@CHECKPOINT_DIR_OPTION
@OFFLINE_OPTION
@click.option(
    "--max-gpus-per-resource",
    type=click.IntRange(min=1),
    default=None,
    help="Refuse resources asking for more GPUs than this (replicas x spec.gpus.count); "
    "ResourceQuota remains the guard for namespace totals.",
)
def run_operator(
    namespaces: tuple[str, ...],
    standalone: bool,
    peering: str,
    priority: int | None,
    liveness: str,
    metrics_port: int,
    webhook_port: int | None,
    webhook_address: str,
    webhook_host: str | None,
    webhook_service: tuple[str, str] | None,
    webhook_service_port: int,
    webhook_cert: Path | None,
    webhook_key: Path | None,
    webhook_ca: Path | None,
    manage_webhook: bool,
    webhook_configuration: str,
    prometheus_url: str | None,
    prometheus_token_file: Path | None,
    prometheus_ca_file: Path | None,
    allowed_prometheus_urls: tuple[str, ...],
    max_changes_per_hour: int,
    pod_allow_host_path: bool,
    pod_refuse_service_account: bool,
    pod_refuse_secret_env: bool,
    max_gpus_per_resource: int | None,
    checkpoint_dir: Path | None,
    offline: bool,
) -> None:
    """Run the operator (reconciles SpeculativeInference resources; the control loop reads
    Prometheus and turns speculation off and on)."""
    from specpilot.adapters.prometheus import DefaultCredentials
    from specpilot.adapters.runner import RunOptions, run

    run(
        RunOptions(
            namespaces=list(namespaces),
            standalone=standalone,
            peering=peering,
            priority=priority,
            liveness=liveness or None,
            metrics_port=metrics_port or None,
            webhook_port=webhook_port,
            webhook_address=webhook_address,
            webhook_host=webhook_host,
            webhook_service=webhook_service,
            webhook_service_port=webhook_service_port,
            webhook_cert=webhook_cert,
            webhook_key=webhook_key,
            webhook_ca=webhook_ca,
            manage_webhook=manage_webhook,
            webhook_configuration=webhook_configuration,
            admin=AdminPolicy(
                prometheus_url=prometheus_url,
                allowed_prometheus_urls=allowed_prometheus_urls,
                max_changes_per_hour=max_changes_per_hour,
                pod=PodPolicy(
                    allow_host_path=pod_allow_host_path,
                    allow_service_account=not pod_refuse_service_account,
                    allow_secret_env=not pod_refuse_secret_env,
                    max_gpus_per_resource=max_gpus_per_resource,
                ),
            ),
            credentials=DefaultCredentials(
                bearer_token_file=prometheus_token_file, ca_file=prometheus_ca_file
            ),
            checkpoint_dir=checkpoint_dir,
            read_hub=not offline,
        )
    )


def _plan_report(doc: Any, result: Assessment) -> dict[str, Any]:
    """`plan -o json`: the verdict is the whole resource's; plan.memoryVerdict is what the
    memory alone says (plan.verdict repeats the overall one, so no field says "fits" beside an
    error)."""
    memory_plan = None
    if result.plan is not None:
        memory_plan = result.plan.model_dump(mode="json")
        memory_plan["memoryVerdict"] = memory_plan["verdict"]
        memory_plan["verdict"] = result.verdict
    problems = errors(result.findings)
    rollout = (
        _rollout_report(result.resource.spec, result.plan)
        if result.resource is not None and result.plan is not None
        else None
    )
    return {
        "name": _name(doc),
        "valid": result.valid,
        "verdict": result.verdict,
        "reasons": [str(f) for f in problems],
        "memoryUnit": "GB = 10^9 bytes",
        "plan": memory_plan,
        "rollout": rollout,
        "findings": [f.model_dump(mode="json") for f in result.findings],
    }


def _rollout_report(spec: SpeculativeInferenceSpec, memory: MemoryPlan) -> dict[str, Any]:
    """`plan -o json`'s rollout: format_rollout's figures (startups None when the weights are
    unknown)."""
    seconds = startup_seconds(spec, memory)
    local, hub = plan_startup(memory), plan_startup(memory, WeightSource.HUB)
    rollout = strategy(spec)
    return {
        "expectedStartupSeconds": round(seconds),
        "weightsFrom": weight_source(spec).value,
        "startupSecondsFromCache": round(local.seconds) if local else None,
        "startupSecondsFromHub": round(hub.seconds) if hub else None,
        "maxSurge": rollout.max_surge,
        "maxUnavailable": rollout.max_unavailable,
        "progressDeadlineSeconds": progress_deadline_seconds(seconds),
        "changeIsAnOutage": restart_is_an_outage(spec),
    }


def _verdict_line(result: Assessment) -> str:
    problems = errors(result.findings)
    if not problems:
        return f"Verdict: {VERDICT_WORDS.get(str(result.verdict), 'no plan')}\n"
    memory = (
        f"; the memory alone: {VERDICT_WORDS[result.plan.verdict]}"
        if result.plan is not None
        else ""
    )
    return (
        f"Verdict: CANNOT BE DEPLOYED: {len(problems)} error(s), listed below{memory}.\n"
        "Fix the errors; nothing of this resource is applied until then.\n"
    )


VERDICT_WORDS = {"fits": "fits", "tight": "fits, but tight", "does-not-fit": "DOES NOT FIT"}


def _gb(value: float) -> str:
    return f"{value:8.1f} GB"


def _model_row(role: str, model: ModelFootprint, gpus: int) -> str:
    precision = "BF16/FP16" if model.quantization.value == "none" else model.quantization.upper()
    stored = (
        f"quantized with {model.checkpoint_quantization}"
        if model.checkpoint_quantization
        else "unquantized"
    )
    flag = f"--quantization {model.quantization_flag}" if model.quantization_flag else "no flag"
    return (
        f"  {role:<7} {model.model}\n"
        f"          {precision}, {model.parameters_billions:g}B parameters, TP "
        f"{model.tensor_parallel_size}: {_gb(model.weights_gb_per_gpu)} per GPU, "
        f"{_gb(model.weights_gb).strip()} in all\n"
        f"          facts: {model.facts_source}; checkpoint {stored} ({flag}); "
        f"weights: {model.weights_basis}"
    )


def format_plan(title: str, p: MemoryPlan) -> str:
    """The framework's memory table for one replica, with the numbers behind the verdict."""
    gpus = p.gpu_count
    lines = [
        f"{title}: vLLM {p.vllm_version} on {gpus} x {p.gpu_type} "
        f"({p.gpu_memory_gb:g} GB each, memory utilization {p.memory_utilization:g})",
        "  (GB = 10^9 bytes; an 80 GB GPU is the catalog's nominal 80 x 10^9)",
        "",
    ]
    weights_per_gpu = 0.0
    for role, model in (("target", p.target), ("draft", p.draft)):
        if model is not None:
            lines.append(_model_row(role, model, gpus))
            weights_per_gpu += model.weights_gb_per_gpu
    usable = p.gpu_memory_gb * p.memory_utilization
    lines += [
        "",
        f"  {'':<34}{'per GPU':>11}",
        f"  {'GPU memory':<34}{_gb(p.gpu_memory_gb)}",
        f"  {'vLLM may use':<34}{_gb(usable)}",
        f"  {'weights':<34}{_gb(weights_per_gpu)}",
        f"  {'activations + non-torch (est.)':<34}{_gb(p.overhead_gb_per_gpu)}",
        f"  {'':<34}({p.engine.value} engine, {p.profiled_tokens:,}-token profiling pass)",
        f"  {'KV cache':<34}{_gb(p.kv_cache_gb_per_gpu)}",
        "",
        f"  left after weights, all GPUs:       {p.left_after_weights_gb:.1f} GB",
        f"  KV cache tokens per replica:        {p.kv_cache_tokens:,}"
        f" ({p.kv_cache_tokens_without_speculation:,} without speculation)",
    ]
    if p.max_model_len:
        lines.append(
            f"  full-length sequences ({p.max_model_len:,} tokens): "
            f"{p.max_concurrent_sequences} ({p.max_concurrent_sequences_without_speculation} "
            "without speculation)"
        )
    if p.draft is not None:
        lines.append(
            "  the draft's attention layers take their KV from the same pool: every token costs "
            f"{p.target.kv_bytes_per_token_per_gpu if p.target else 0:,} + "
            f"{p.draft.kv_bytes_per_token_per_gpu:,} bytes per GPU"
        )
    if p.draft_ratio is not None:
        lines.append(f"  draft:target size ratio:            1:{p.draft_ratio:.0f}")
    return "\n".join([*lines, ""])


def format_rollout(spec: SpeculativeInferenceSpec, memory: MemoryPlan) -> str:
    """The price of a change of the pods: each new pod's startup, from where its weights come,
    and what the Deployment's rollout strategy makes of it."""
    estimate = expected_startup(spec, memory)
    seconds = startup_seconds(spec, memory)
    lines = ["  Startup and rollout (per pod; the assumptions are in planning/startup.py)"]
    if estimate is None:
        lines.append(
            f"  expected startup:      about {seconds:.0f}s (weights unknown: the default)"
        )
    else:
        cache = spec.model_cache
        where = {
            WeightSource.HUB: "downloaded from the Hugging Face Hub at every start",
            WeightSource.LOCAL: (
                f"from the model cache (PVC {cache.persistent_volume_claim.claim_name})"
                if cache is not None
                else "from a volume that outlives the pod"
            ),
        }[estimate.source]
        lines.append(f"  expected startup:      {estimate.describe()}, {where}")
        if estimate.source is WeightSource.HUB:
            cached = plan_startup(memory)
            assert cached is not None  # the weights are known: estimate is not None
            lines.append(f"  with spec.modelCache:  {cached.describe()}")
        elif cache is not None:
            hub = plan_startup(memory, WeightSource.HUB)
            assert hub is not None
            lines.append(f"  without the cache:     {hub.describe()}")
    rollout = strategy(spec)
    lines.append(
        f"  rollout:               RollingUpdate, maxSurge {rollout.max_surge}, maxUnavailable "
        f"{rollout.max_unavailable}, progressDeadlineSeconds "
        f"{progress_deadline_seconds(seconds)}"
    )
    lines.append(f"  a change:              {_change_consequence(spec, seconds)}")
    return "\n".join([*lines, ""])


def _change_consequence(spec: SpeculativeInferenceSpec, startup_s: float) -> str:
    control = spec.policy.control_replicas
    if spec.rollout.surge is RolloutSurge.ONE_POD:
        return (
            f"one new pod starts on {spec.gpus.count} spare {spec.gpus.type} GPU(s) before an old "
            "one stops; without spare GPUs it stays Pending and the old pods keep serving the "
            "old configuration"
        )
    if spec.replicas == 1:
        meanwhile = (
            f"the {control} control replica(s) serve alone meanwhile"
            if control
            else "nothing serves meanwhile"
        )
        return (
            f"an OUTAGE of about {startup_s:.0f}s: the only replica stops before its "
            f"replacement starts; {meanwhile}"
        )
    if spec.replicas == 0:
        return "nothing to restart: no serving replicas"
    count = "each replica" if spec.replicas is None else f"each of {spec.replicas} replicas"
    return (
        f"{count} in turn serves nothing for about {startup_s:.0f}s; one replica's capacity "
        "is missing until the last one is back"
    )
