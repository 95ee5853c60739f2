"""A real Prometheus (Debian's 2.42) on loopback for tests, scraping file-discovered targets."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from specpilot_lab.local.assets import run_script
from specpilot_lab.local.operator_process import free_port, wait_for


def prometheus_bin() -> Path:
    """The folder holding `prometheus` and `promtool` ($PROMETHEUS_BIN_DIR, the PATH, or the
    lab's prometheus-assets.sh recipe, which unpacks Debian's package into the cache)."""
    return run_script("prometheus-assets.sh", timeout=600, quiet=True)


class Prometheus:
    """Scrapes every target listed in `sd_file` each second; stops and cleans up on exit."""

    def __init__(self, sd_file: Path, scrape_interval: str = "1s") -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="specpilot-prometheus-"))
        self.config = self.workdir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": scrape_interval,
                        "evaluation_interval": scrape_interval,
                    },
                    "scrape_configs": [
                        {
                            "job_name": "vllm",
                            "file_sd_configs": [
                                {"files": [str(sd_file)], "refresh_interval": "1s"}
                            ],
                        }
                    ],
                }
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        return self.start()

    def start(self) -> Prometheus:
        """Start (or start again after `stop`, on the same port and data)."""
        with (self.workdir / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(prometheus_bin() / "prometheus"),
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            self._ready,
            timeout=30,
            what=lambda: (self.workdir / "prometheus.log").read_text(errors="replace"),
        )
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql, "time": f"{time.time():.3f}"}
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(
        self, promql: str, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query_range?" + urllib.parse.urlencode(
            {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        )
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
        if body["status"] != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def stop(self) -> None:
        """Stop Prometheus (early, to see what the control loop does without it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def __exit__(self, *exc: object) -> None:
        self.stop()
