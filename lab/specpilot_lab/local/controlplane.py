"""A throw-away Kubernetes control plane (etcd + kube-apiserver) for integration tests.

There is no kubelet, scheduler or controller-manager: objects are stored and served (CRDs,
status subresources, server-side apply, RBAC, admission), but nothing reconciles them (no pods
from Deployments, no garbage collection, namespaces stay Terminating). See docs/control-plane.md.

Usage in tests::

    with ControlPlane() as cp:
        subprocess.run(["kubectl", "--kubeconfig", str(cp.kubeconfig), "get", "ns"], check=True)
        restricted = cp.user_kubeconfig("specpilot-operator", groups=["specpilot:operators"])

By hand (Ctrl-C stops it)::

    python -m specpilot_lab.local.controlplane

Binaries come from $KUBEBUILDER_ASSETS (a folder with ``etcd`` and ``kube-apiserver``) or from
the lab's ``kube-assets.sh`` recipe (``specpilot_lab.local.assets``; scripts/kube-assets.sh in a
checkout), which builds and caches them. Certificates are made with the
``openssl`` command-line tool; the module only needs the standard library.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from specpilot_lab.local.assets import AssetsError, run_script
from specpilot_lab.processes import die_with_parent

ASSETS_SCRIPT = "kube-assets.sh"

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
LOG_TAIL_LINES = 40
WORKDIR_PREFIX = "specpilot-cp-"
OWNER_FILE = "owner.pid"

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost, IP:10.0.0.1, DNS:kubernetes, \
DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
"""


class ControlPlaneError(RuntimeError):
    """The control plane could not be provided or started."""


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl call; unlike its base class, the message includes kubectl's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr}"


def find_assets() -> Path:
    """The folder holding ``etcd`` and ``kube-apiserver`` (KUBEBUILDER_ASSETS or kube-assets.sh)."""
    env = os.environ.get("KUBEBUILDER_ASSETS")
    if env and _has_assets(Path(env)):
        return Path(env).resolve()
    # The recipe logs (and may build for ~10 minutes) on stderr, which we let through.
    try:
        folder = run_script(ASSETS_SCRIPT)
    except AssetsError as exc:
        raise ControlPlaneError(str(exc)) from exc
    if not _has_assets(folder):
        raise ControlPlaneError(f"{ASSETS_SCRIPT} printed {folder}, which lacks the binaries")
    return folder


def _has_assets(folder: Path) -> bool:
    return all(os.access(folder / name, os.X_OK) for name in ("etcd", "kube-apiserver"))


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all held open together so none is picked twice)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _remove_stale_workdirs(root: Path) -> None:
    """Remove folders left by control planes whose Python process was killed (SIGKILL)."""
    for folder in root.glob(f"{WORKDIR_PREFIX}*"):
        try:
            pid = int((folder / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue  # kept on purpose (keep_files), or still being created
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _subject(common_name: str, organizations: Iterable[str] = ()) -> str:
    def esc(value: str) -> str:
        if not value:
            raise ValueError("empty certificate subject component")
        return value.replace("\\", "\\\\").replace("/", "\\/")

    return "".join(f"/O={esc(o)}" for o in organizations) + f"/CN={esc(common_name)}"


class ControlPlane:
    """etcd + kube-apiserver on free loopback ports, with TLS, RBAC and an admin kubeconfig.

    Attributes after :meth:`start` (or entering the ``with`` block): ``server`` (https URL),
    ``kubeconfig`` (admin, group system:masters), ``ca_file``, ``workdir``, ``assets``.
    """

    def __init__(
        self,
        assets: Path | str | None = None,
        *,
        startup_timeout: float = 180.0,
        stop_timeout: float = 15.0,
        tmp_root: Path | str | None = None,
        keep_files: bool = False,
        extra_apiserver_args: Sequence[str] = (),
    ) -> None:
        self.assets = Path(assets) if assets is not None else None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.tmp_root = Path(tmp_root) if tmp_root is not None else _default_tmp_root()
        self.keep_files = keep_files or os.environ.get("SPECPILOT_KEEP_CONTROLPLANE") == "1"
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.workdir: Path | None = None
        self.server = ""
        self.etcd_url = ""
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._argv: dict[str, list[str]] = {}
        self._logs: dict[str, Path] = {}
        self._lock = threading.Lock()

    # --- public API -----------------------------------------------------------------------------

    @property
    def ca_file(self) -> Path:
        return self._dir / "pki" / "ca.crt"

    @property
    def kubeconfig(self) -> Path:
        return self._dir / "admin.kubeconfig"

    @property
    def admin_cert(self) -> tuple[Path, Path]:
        return self._dir / "pki" / "admin.crt", self._dir / "pki" / "admin.key"

    def start(self) -> ControlPlane:
        if self.workdir is not None:
            raise ControlPlaneError("already started")
        if self.assets is None:
            self.assets = find_assets()
        elif not _has_assets(self.assets):
            raise ControlPlaneError(f"{self.assets} lacks executable etcd and kube-apiserver")
        self.tmp_root.mkdir(parents=True, exist_ok=True)
        _remove_stale_workdirs(self.tmp_root)
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=self.tmp_root))
        if not self.keep_files:  # marks the folder as removable once this process is gone
            (self.workdir / OWNER_FILE).write_text(f"{os.getpid()}\n")
        try:
            self._make_pki()
            for attempt in range(3):  # a free port can be taken by someone else before we bind it
                try:
                    self._start_processes()
                    break
                except ControlPlaneError as exc:
                    self._stop_processes()
                    if attempt == 2 or "address already in use" not in str(exc):
                        raise
            cert, key = self.admin_cert
            self._write_kubeconfig(
                self.kubeconfig,
                "admin",
                {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)},
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop everything this object started and remove its files. Safe to call twice."""
        with self._lock:
            self._stop_processes()
            if self.workdir is not None and not self.keep_files:
                shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def user_kubeconfig(self, name: str, groups: Iterable[str] = ()) -> Path:
        """A kubeconfig for user ``name`` in ``groups`` (client certificate signed by the CA).

        The user has no permissions until RBAC grants some (unless a group such as
        ``system:masters`` is given).
        """
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        stem = f"user-{safe}-{secrets.token_hex(3)}"
        cert, key = self._issue_cert(stem, _subject(name, groups), "client")
        path = self._dir / f"{stem}.kubeconfig"
        self._write_kubeconfig(
            path,
            name,
            {"client-certificate-data": _b64(cert), "client-key-data": _b64(key)},
        )
        return path

    def service_account_kubeconfig(self, account: str, namespace: str) -> Path:
        """A kubeconfig holding a bound token (1 h) of a ServiceAccount, as its pod would get."""
        token = self.kubectl(
            "create", "token", account, "-n", namespace, "--duration", "1h"
        ).stdout.strip()
        path = self._dir / f"sa-{namespace}-{account}-{secrets.token_hex(3)}.kubeconfig"
        user = f"system:serviceaccount:{namespace}:{account}"
        self._write_kubeconfig(path, user, {"token": token})
        return path

    def restart_apiserver(self, downtime: float = 0.0) -> None:
        """Stop the API server and start it again on the same address and etcd, as clients see an
        upgrade or a crash of the control plane: every watch and connection breaks."""
        with self._lock:
            self._terminate(self._procs.pop("kube-apiserver"))
            time.sleep(downtime)
            self._spawn("kube-apiserver", self._argv["kube-apiserver"])
            deadline = time.monotonic() + self.startup_timeout
            self._wait("kube-apiserver", deadline, self._apiserver_ready)

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing at ``kubeconfig`` (admin by default)."""
        return {**os.environ, "KUBECONFIG": str(kubeconfig or self.kubeconfig)}

    def kubectl(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane (admin unless ``kubeconfig`` is given)."""
        cmd = ["kubectl", "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        proc = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, output=proc.stdout, stderr=proc.stderr)
        return proc

    def running(self) -> bool:
        return bool(self._procs) and all(p.poll() is None for p in self._procs.values())

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise ControlPlaneError("control plane is not running")
        return self.workdir

    def _openssl(self, *args: str) -> None:
        proc = subprocess.run(
            ["openssl", *args], capture_output=True, text=True, cwd=self._dir, check=False
        )
        if proc.returncode != 0:
            raise ControlPlaneError(f"openssl {' '.join(args)} failed:\n{proc.stderr}")

    def _make_pki(self) -> None:
        pki = self._dir / "pki"
        pki.mkdir(mode=0o700)
        (pki / "openssl.cnf").write_text(_OPENSSL_CONFIG)
        ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
        self._openssl(
            "req", "-x509", "-new", *ec, "-config", str(pki / "openssl.cnf"),
            "-extensions", "ca", "-subj", "/CN=specpilot-test-ca", "-days", "3650",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"),
        )  # fmt: skip
        self._issue_cert("serving", "/CN=kube-apiserver", "server")
        self._issue_cert("admin", _subject("admin", ["system:masters"]), "client")
        # Service-account token signing key pair.
        self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                      "-out", str(pki / "sa.key"))  # fmt: skip
        self._openssl("pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))

    def _issue_cert(self, stem: str, subject: str, profile: str) -> tuple[Path, Path]:
        pki = self._dir / "pki"
        key, csr, crt = (pki / f"{stem}.{ext}" for ext in ("key", "csr", "crt"))
        self._openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-config", str(pki / "openssl.cnf"), "-subj", subject,
            "-keyout", str(key), "-out", str(csr),
        )  # fmt: skip
        self._openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-set_serial", f"0x{secrets.token_hex(16)}",
            "-days", "365", "-extfile", str(pki / "openssl.cnf"), "-extensions", profile,
            "-out", str(crt),
        )  # fmt: skip
        csr.unlink()
        return crt, key

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self._dir / f"{name}.log"
        self._logs[name] = log
        self._argv[name] = argv
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                env=env,
                start_new_session=True,  # Ctrl-C in a terminal reaches us, not the children
                preexec_fn=die_with_parent,
            )
        self._procs[name] = proc
        return proc

    def _start_processes(self) -> None:
        assert self.assets is not None
        client_port, peer_port, secure_port = _free_ports(3)
        pki = self._dir / "pki"
        data = self._dir / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            [
                str(self.assets / "etcd"),
                "--name", "default",
                "--data-dir", str(data),
                "--listen-client-urls", self.etcd_url,
                "--advertise-client-urls", self.etcd_url,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", f"default={peer_url}",
                "--initial-cluster-state", "new",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + self.startup_timeout
        self._wait("etcd", deadline, self._etcd_healthy)

        self.server = f"https://127.0.0.1:{secure_port}"
        self._spawn(
            "kube-apiserver",
            [
                str(self.assets / "kube-apiserver"),
                "--etcd-servers", self.etcd_url,
                "--bind-address", "127.0.0.1",
                "--advertise-address", "127.0.0.1",
                "--secure-port", str(secure_port),
                "--insecure-port", "0",
                "--cert-dir", str(self._dir / "apiserver-certs"),
                "--tls-cert-file", str(pki / "serving.crt"),
                "--tls-private-key-file", str(pki / "serving.key"),
                "--client-ca-file", str(pki / "ca.crt"),
                "--service-account-key-file", str(pki / "sa.pub"),
                "--service-account-signing-key-file", str(pki / "sa.key"),
                "--service-account-issuer", SERVICE_ACCOUNT_ISSUER,
                "--service-cluster-ip-range", SERVICE_CLUSTER_IP_RANGE,
                "--authorization-mode", "RBAC",
                "--disable-admission-plugins", "ServiceAccount",
                "--allow-privileged=true",
                # Webhook Services resolve to their Endpoints (there is no kube-proxy for a
                # ClusterIP), so a test can point a Service at a local webhook server.
                "--enable-aggregator-routing=true",
                *self.extra_apiserver_args,
            ],
        )  # fmt: skip
        self._wait("kube-apiserver", deadline, self._apiserver_ready)

    def _wait(self, name: str, deadline: float, check: Any) -> None:
        last_error = ""
        while True:
            for proc_name, proc in self._procs.items():
                if proc.poll() is not None:
                    self._fail(f"{proc_name} exited with code {proc.returncode}")
            try:
                if check():
                    return
            except (OSError, ValueError) as exc:
                last_error = str(exc)
            if time.monotonic() > deadline:
                self._fail(
                    f"{name} not ready after {self.startup_timeout:.0f}s (last error: {last_error})"
                )
            time.sleep(0.25)

    def _fail(self, message: str) -> None:
        tails = "\n".join(
            f"--- last lines of {name} log ({log}) ---\n{_tail(log)}"
            for name, log in self._logs.items()
        )
        raise ControlPlaneError(f"{message}\n{tails}")

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:
            return bool(json.load(resp).get("health") == "true")

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(*(str(p) for p in self.admin_cert))
        return ctx

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(
                f"{self.server}{path}", context=self._ssl_context(), timeout=5
            ) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def _apiserver_ready(self) -> bool:
        return self._get("/readyz") == 200 and self._get("/api/v1/namespaces/default") == 200

    def _stop_processes(self) -> None:
        # The API server first (it talks to etcd), then etcd.
        for name in reversed(list(self._procs)):
            self._terminate(self._procs[name])
        self._procs.clear()

    def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM, then SIGKILL after stop_timeout."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _write_kubeconfig(self, path: Path, user: str, credentials: dict[str, str]) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "specpilot-test",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority-data": _b64(self.ca_file),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": user, "context": {"cluster": "specpilot-test", "user": user}}],
            "current-context": user,
            "preferences": {},
        }
        # JSON is YAML: kubectl and the kubernetes client read it as a kubeconfig.
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _default_tmp_root() -> Path:
    """$SPECPILOT_CONTROLPLANE_TMP, else /dev/shm (etcd fsyncs are free there), else TMPDIR."""
    env = os.environ.get("SPECPILOT_CONTROLPLANE_TMP")
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    return Path(tempfile.gettempdir())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m specpilot_lab.local.controlplane",
        description="Start a test control plane (etcd + kube-apiserver) until Ctrl-C.",
    )
    parser.add_argument("--assets", help="folder with etcd and kube-apiserver")
    parser.add_argument(
        "--keep-files", action="store_true", help="keep the temporary folder (logs, certs) on exit"
    )
    args = parser.parse_args(argv)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    cp = ControlPlane(args.assets, keep_files=args.keep_files)
    try:
        with cp:
            print(f"control plane ready in {time.monotonic() - started:.1f}s: {cp.server}")
            print(f"logs and certificates: {cp.workdir}")
            print(f"export KUBECONFIG={cp.kubeconfig}", flush=True)
            print("Ctrl-C stops it.", file=sys.stderr, flush=True)
            while cp.running():
                time.sleep(1)
            cp._fail("a control plane process exited")
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
    except ControlPlaneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
