"""The operator as a user runs it: `specpilot run` in its own process, against a real API server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(
    check: Callable[[], T], timeout: float = 30.0, what: str | Callable[[], str] = "condition"
) -> T:
    """Poll until `check` returns something truthy; fail with the last value otherwise.

    `what` describes the wait; a callable (such as an operator's log) is called on failure.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError:
            raise  # a definite failure (e.g. the process died), not "not yet"
        except Exception as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last  # type: ignore[no-any-return]
        time.sleep(0.2)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout}s waiting for {described}; last: {last!r}")


class OperatorProcess:
    """`specpilot run` with a kubeconfig; its output goes to a log file kept for failures."""

    def __init__(self, kubeconfig: Path, *args: str) -> None:
        self.kubeconfig = kubeconfig
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self.args = list(args)
        self.log = Path(tempfile.mkstemp(prefix="specpilot-operator-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        command = [
            sys.executable,
            "-m",
            "specpilot",
            "run",
            "--liveness",
            f"http://127.0.0.1:{self.liveness_port}/healthz",
            "--metrics-port",
            str(self.metrics_port),
            # The lab's models are the catalog's; the local stack never asks the hub.
            "--offline",
            *self.args,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._alive, timeout=60, what=f"the operator to start (log: {self.log})")
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"operator exited {self.process.returncode}:\n{self.output()}")
        try:
            url = f"http://127.0.0.1:{self.liveness_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def rss_mb(self) -> float:
        """The running operator's resident memory (Linux /proc); OSError once it has exited."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if match is None:  # a zombie: exited, not yet reaped
            raise OSError(f"operator process {self.process.pid} has no resident memory")
        return int(match.group(1)) / 1024

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> OperatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
