"""The admission webhook's handler with the operator's own rules (no server needed)."""

from __future__ import annotations

from types import SimpleNamespace

import kopf
import pytest

from specpilot.adapters.checkpoints import CheckpointReader
from specpilot.adapters.handlers import validate
from specpilot.adapters.runner import RunOptions
from specpilot.api.admin import AdminPolicy, PodPolicy
from tests.conftest import CHECKPOINTS, manifest

OPERATOR_WIDE = "http://prometheus:9090"  # the URL tests/conftest.py's manifest names
RUNTIME = SimpleNamespace(checkpoints=CheckpointReader(local_dir=CHECKPOINTS, use_hub=False))
"""What the webhook reads of the operator's runtime: its checkpoint reader (fixtures, no hub)."""


def admit(doc: dict[str, object], admin: AdminPolicy) -> list[str]:
    warnings: list[str] = []
    memo = kopf.Memo(options=RunOptions(admin=admin), runtime=RUNTIME)
    validate(body=kopf.Body(doc), warnings=warnings, memo=memo)
    return warnings


def test_a_url_the_operator_will_not_read_is_a_warning_at_admission() -> None:
    doc = manifest(monitoring={"prometheusUrl": "http://tenant-prometheus:9090"})
    (warning,) = [w for w in admit(doc, AdminPolicy(prometheus_url=OPERATOR_WIDE)) if "admin" in w]
    assert warning.startswith("spec.monitoring.prometheusUrl: http://tenant-prometheus:9090 is not")
    assert "--allowed-prometheus-url" in warning
    allowed = AdminPolicy(
        prometheus_url=OPERATOR_WIDE, allowed_prometheus_urls=("http://tenant-prometheus:9090",)
    )
    assert not [w for w in admit(doc, allowed) if "admin" in w]
    assert not [
        w for w in admit(manifest(), AdminPolicy(prometheus_url=OPERATOR_WIDE)) if "admin" in w
    ]


def test_the_admins_pod_policy_refuses_at_admission() -> None:
    doc = manifest(pod={"serviceAccountName": "other"})
    default = admit(doc, AdminPolicy(prometheus_url=OPERATOR_WIDE))  # admitted: allowed by default
    assert not [w for w in default if "serviceAccountName" in w]
    strict = AdminPolicy(prometheus_url=OPERATOR_WIDE, pod=PodPolicy(allow_service_account=False))
    with pytest.raises(kopf.AdmissionError) as refused:
        admit(doc, strict)
    assert "spec.pod.serviceAccountName" in str(refused.value)
    assert "--pod-refuse-service-account" in str(refused.value)


def test_admission_refuses_snake_case_fields_and_managed_extra_args() -> None:
    doc = manifest(vllm={"extraArgs": ["-sc", "{}"], "tensor_parallel_size": 4})
    with pytest.raises(kopf.AdmissionError) as refused:
        admit(doc, AdminPolicy(prometheus_url=OPERATOR_WIDE))
    message = str(refused.value)
    assert message.startswith("2 error(s): ")
    assert "spec.vllm.tensor_parallel_size: not a field of spec.vllm" in message
    assert "did you mean spec.target.tensorParallelSize or" in message
    assert "spec.vllm.extraArgs[0]: -sc (vLLM reads it as --speculative-config)" in message


def test_a_quantization_the_checkpoint_contradicts_is_refused_at_admission() -> None:
    """The webhook reads the checkpoint through the operator's runtime, as the reconcile does."""
    doc = manifest(
        target={"model": "RedHatAI/Meta-Llama-3-8B-Instruct-FP8", "quantization": "awq"},
        speculation={"method": "ngram"},
        gpus={"type": "H100-80GB", "count": 1},
    )
    with pytest.raises(kopf.AdmissionError) as refused:
        admit(doc, AdminPolicy(prometheus_url=OPERATOR_WIDE))
    assert "spec.target.quantization" in str(refused.value)
    assert "already quantized with fp8" in str(refused.value)
    doc["spec"]["target"]["quantization"] = "fp8"
    admit(doc, AdminPolicy(prometheus_url=OPERATOR_WIDE))
