"""The admin's Prometheus rules: one spelling per endpoint, and no credential inside a URL."""

from __future__ import annotations

import pytest

from specpilot.api.admin import AdminPolicy, bound_to, normalized_url, url_problem
from specpilot.assessment import assess
from tests.conftest import manifest

DEFAULT = "http://prometheus.monitoring:9090"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://prometheus.monitoring:9090", "http://Prometheus.Monitoring:9090/"),
        ("https://prom.example", "https://prom.example:443"),
        ("http://prom.example/", "http://prom.example:80"),
        ("http://[::1]:9090/api/", "http://[::1]:9090/api"),
    ],
)
def test_one_endpoint_has_one_spelling(a: str, b: str) -> None:
    assert normalized_url(a) == normalized_url(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("http://prom.example:9090", "https://prom.example:9090"),
        ("http://prom.example:9090", "http://prom.example:9091"),
        ("http://prom.example:9090/a", "http://prom.example:9090/b"),
        ("http://prom.example", "http://prom.example.attacker.io"),
    ],
)
def test_different_endpoints_stay_different(a: str, b: str) -> None:
    assert normalized_url(a) != normalized_url(b)


def test_only_the_operator_wide_and_allowed_urls_are_allowed() -> None:
    admin = AdminPolicy(prometheus_url=DEFAULT, allowed_prometheus_urls=("https://team-a:9090",))
    assert admin.allows_prometheus("http://prometheus.monitoring:9090/")
    assert admin.allows_prometheus("https://TEAM-A:9090")
    assert not admin.allows_prometheus("http://team-a:9090")  # another scheme
    assert not admin.allows_prometheus("http://127.0.0.1:9100")
    assert admin.is_default_prometheus("http://prometheus.monitoring:9090")
    assert not admin.is_default_prometheus("https://team-a:9090")
    assert not AdminPolicy().allows_prometheus(DEFAULT)  # nothing allowed without a URL


def test_a_secret_is_bound_to_the_urls_its_annotation_lists() -> None:
    assert bound_to(f"https://team-a:9090, {DEFAULT}/", DEFAULT)
    assert not bound_to("", DEFAULT)
    assert not bound_to("https://team-a:9090", DEFAULT)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://user:pass@prom:9090", "user:password"),
        ("http://token@prom:9090", "user:password"),
        ("ftp://prom:9090", "http:// or https://"),
        ("http://prom:9090/?x=1", "query"),
        ("http://prom:port", "port number"),
    ],
)
def test_urls_carrying_credentials_or_oddities_are_refused(url: str, words: str) -> None:
    assert words in str(url_problem(url))


def test_a_plain_url_has_no_problem() -> None:
    assert url_problem("https://prometheus.monitoring.svc:9090/prom") is None


def test_a_resource_url_with_userinfo_is_refused_naming_the_field() -> None:
    doc = manifest(monitoring={"prometheusUrl": "http://admin:secret@prometheus:9090"})
    (finding,) = [f for f in assess(doc).findings if f.severity.value == "error"]
    assert finding.path == "spec.monitoring.prometheusUrl"
    assert "user:password" in finding.fix
