"""The admission webhook server: TLS (self-signed unless mounted), how the API server finds it."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_certificate(hosts: list[str], directory: Path) -> tuple[Path, Path]:
    """Write cert.pem and key.pem for `hosts` (DNS names or IPs); returns their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class ServiceWebhookServer(kopf.WebhookServer):
    """A webhook the API server reaches through a Service (`clientConfig.service`).

    kopf's server reports a URL, which the API server resolves with its host's DNS, where
    in-cluster Service names usually do not exist; a Service reference is resolved by the API
    server itself.
    """

    def __init__(self, *, namespace: str, name: str, service_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.service = kopf.WebhookClientConfigService(
            namespace=namespace, name=name, port=service_port
        )

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for url_config in super().__call__(fn):
            config = kopf.WebhookClientConfig(service=self.service)
            if "caBundle" in url_config:
                config["caBundle"] = url_config["caBundle"]
            yield config


def service_host_names(namespace: str, name: str) -> list[str]:
    """The names a serving certificate for a Service must carry (the API server uses the first)."""
    service = f"{name}.{namespace}"
    return [f"{service}.svc", f"{service}.svc.cluster.local", service, name]
