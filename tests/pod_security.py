"""The Pod Security Standards' `restricted` profile (Kubernetes 1.30), control by control, as a
check of a pod spec. Written from https://kubernetes.io/docs/concepts/security/pod-security-standards/
because the test API server (1.20) predates the PodSecurity admission plugin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}  # fmt: skip
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}  # fmt: skip
SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t"}


def _containers(pod: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from pod.get(key) or []


def restricted_violations(
    pod: dict[str, Any], annotations: dict[str, str] | None = None
) -> list[str]:
    """Every control of the profile that `pod` (a PodSpec) breaks, by name; empty: it passes."""
    found: list[str] = []
    pod_context = pod.get("securityContext") or {}
    contexts = [(c["name"], c.get("securityContext") or {}) for c in _containers(pod)]
    every = [pod_context, *(sc for _, sc in contexts)]
    # baseline
    if any((sc.get("windowsOptions") or {}).get("hostProcess") for sc in every):
        found.append("hostProcess")
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"host namespaces: {field}")
    for name, sc in contexts:
        if sc.get("privileged"):
            found.append(f"privileged: {name}")
        if (sc.get("procMount") or "Default") != "Default":
            found.append(f"procMount: {name}")
    if any("hostPath" in v for v in pod.get("volumes") or []):
        found.append("hostPath volumes")
    for container in _containers(pod):
        if any(p.get("hostPort") for p in container.get("ports") or []):
            found.append(f"host ports: {container['name']}")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
            value == "runtime/default" or value.startswith("localhost/")
        ):
            found.append(f"AppArmor: {key}")
    for sc in every:
        options = sc.get("seLinuxOptions") or {}
        if options.get("type") not in SELINUX_TYPES or options.get("user") or options.get("role"):
            found.append("SELinux options")
    if any((s.get("name") not in SAFE_SYSCTLS) for s in pod_context.get("sysctls") or []):
        found.append("sysctls")
    # restricted
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"} - RESTRICTED_VOLUMES
        if kinds:
            found.append(f"volume types: {volume['name']} is {sorted(kinds)[0]}")
    for name, sc in contexts:
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"privilege escalation: {name}")
        non_root = sc.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            found.append(f"runAsNonRoot: {name}")
        seccomp = (sc.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"seccomp: {name}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"capabilities drop ALL: {name}")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"capabilities added: {name}")
    if any(sc.get("runAsUser") == 0 for sc in every):
        found.append("runAsUser 0")
    return found
