"""A local HTTP server speaking Prometheus' instant-query API, for tests: the plumbing the
Prometheus stand-ins of the adapter and integration tests share (TLS, the query from the URL or
the body as Prometheus takes it, a log of every request with its Authorization header, a bearer
token check). Each stand-in says what to answer by overriding `respond`."""

from __future__ import annotations

import http.server
import json
import re
import ssl
import threading
import urllib.parse
from typing import Any

import trustme

from specpilot.control.signals import SIGNAL_LABEL

UNAUTHORIZED = (401, b'{"status":"error","error":"unauthorized"}')
FAULTS = {
    "error": (500, b'{"status":"error","errorType":"internal","error":"injected"}'),
    "refused": (400, b'{"status":"error","errorType":"bad_data","error":"injected parse error"}'),
    "garbage": (200, b"<html>not Prometheus</html>"),
}
"""Answers a failing Prometheus gives, by the stand-ins' mode names."""


class PrometheusStub:
    """Logs each request in `requests` ({"form", "authorization", "client"}); with `token` set, a
    request without `Authorization: Bearer <token>` gets 401."""

    def __init__(self, tls: trustme.LeafCert | None = None, keep_alive: bool = False) -> None:
        self.token: str | None = None
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                form |= urllib.parse.parse_qs(self.rfile.read(length).decode())
                authorization = self.headers.get("Authorization")
                owner.requests.append(
                    {"form": form, "authorization": authorization, "client": self.client_address}
                )
                status, body = owner.respond(form.get("query", [""])[0])
                if owner.token and authorization != f"Bearer {owner.token}":
                    status, body = UNAUTHORIZED
                owner.before_answering()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST  # noqa: N815 (the handler's protocol names it so)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.configure_cert(context)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def respond(self, promql: str) -> tuple[int, bytes]:
        """The HTTP status and body for one query."""
        return 200, vector([])

    def before_answering(self) -> None:
        """Called after the answer is chosen and before it is sent (a stand-in may stall)."""

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signals_asked(promql: str) -> list[str]:
    """The signals a grouped query carries (their label_replace tags)."""
    return re.findall(rf'"{SIGNAL_LABEL}", "(\w+)"', promql)


def series(namespace: str, name: str, signal: str, value: str | float) -> dict[str, Any]:
    """One sample of a resource's serving replicas, as a grouped query returns it."""
    labels = {"namespace": namespace, "specpilot_io_resource": name,
              "specpilot_io_role": "server", SIGNAL_LABEL: signal}  # fmt: skip
    return {"metric": labels, "value": [0.0, str(value)]}


def vector(result: list[dict[str, Any]]) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()
