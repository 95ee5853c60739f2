#!/usr/bin/env python3
"""Feed `vllm serve` argument lists to the REAL vLLM parser and config checks.

Run with the python of a fidelity venv (scripts/vllm-fidelity-env.sh VERSION):

    PY=$(scripts/vllm-fidelity-env.sh 0.33.0 | tail -n1)
    $PY tests/fidelity/check_args.py CASES.json > results.json

CASES.json is a list of {"name": str, "argv": [str, ...]} (or {"cases": [...]})
where argv is exactly what follows `vllm serve` (model first).  Optional
per-case keys "expect" ("pass" | "fail" | "fail:parse" | "fail:config") and
"expect_error" (substring of the error text) are checked when present.

Output (stdout, JSON): a list of
    {"name", "ok": bool, "stage": "parse" | "config" | null, "error": str | null}
plus "expect"/"as_expected" when the case had an expectation, and
"details" (resolved config digest and vLLM warnings) with --details.

Stage "parse":  vLLM's own `vllm serve` argument parser (FlexibleArgumentParser
                with the serve subcommand), its validate() hook and its cmd()
                with the server launchers replaced by no-ops (pre-start checks);
                for versions without it, the legacy OpenAI api_server parser.
Stage "config": AsyncEngineArgs.from_cli_args(args).create_engine_config(),
                i.e. ModelConfig/ParallelConfig/SpeculativeConfig/... checks,
                run on vLLM's CPU platform (VLLM_TARGET_DEVICE=cpu, plus a
                platform plugin for releases that ignore it), with the host RAM
                reported as --host-memory-gib (default 1024).

Models are never downloaded: a throw-away Hugging Face cache is written from
tests/fidelity/configs (see hf_cache.py) and the hub is put offline.

Isolation: by default vLLM is imported once and every case runs in a forked
child (cheap, and no state leaks between cases).  --isolation=subprocess runs
one fresh interpreter per case; --isolation=none runs all in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_cache

# --------------------------------------------------------------------------
# stdout hygiene: vLLM logs to stdout by default; keep fd 1 for our JSON only.
# --------------------------------------------------------------------------
_RESULT_FD: int | None = None


def _grab_stdout() -> None:
    global _RESULT_FD
    if _RESULT_FD is not None:
        return
    sys.stdout.flush()
    _RESULT_FD = os.dup(1)
    os.dup2(2, 1)  # anything printed to stdout from now on lands on stderr
    sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb", buffering=0), write_through=True)


def _emit(obj) -> None:
    data = (json.dumps(obj, indent=2) + "\n").encode()
    fd = _RESULT_FD if _RESULT_FD is not None else 1
    while data:
        n = os.write(fd, data)
        data = data[n:]


# --------------------------------------------------------------------------
# vLLM adapters (version differences live here)
# --------------------------------------------------------------------------
def _emulate_host_memory(gib: float) -> str:
    """Pretend the host has `gib` GiB of RAM (0: leave vLLM alone).

    vLLM up to ~0.11 checks --swap-space (4 GiB per GPU by default) times the
    TP size against this machine's RAM ("Too large swap space"); on a small CI
    runner that rejects TP 8 although a GPU node accepts it.  We patch vLLM's
    get_cpu_memory() (and every module-level reference to it) to report the
    RAM of a typical GPU node instead.
    """
    if not gib:
        return "real"
    value = int(gib * (1 << 30))
    originals = []
    for mod_name in ("vllm.utils", "vllm.utils.mem_utils", "vllm.utils.system_utils"):
        mod = sys.modules.get(mod_name)
        fn = getattr(mod, "get_cpu_memory", None) if mod else None
        if callable(fn):
            originals.append(fn)
    if not originals:
        return "real (get_cpu_memory not found)"

    def get_cpu_memory() -> int:
        return value

    for mod_name, mod in list(sys.modules.items()):
        if mod_name.startswith("vllm") and mod is not None:
            if any(getattr(mod, "get_cpu_memory", None) is f for f in originals):
                mod.get_cpu_memory = get_cpu_memory
    return f"{gib:g} GiB (emulated)"


def _model_inspection_in_process() -> str:
    """Old vLLM (0.8.x) inspects every model class in a fresh subprocess (which
    re-imports vLLM: ~5 s per architecture and case) and caches the answer
    only in memory, which forked children throw away.  From ~0.9 the answer is
    cached on disk (VLLM_CACHE_ROOT/modelinfos).  For the old ones, run the
    same inspection in-process (the subprocess only exists to keep CUDA out
    of the main process) and pre-import the model modules of our configs in
    the parent so that children inherit them.
    """
    try:
        import vllm.model_executor.models.registry as reg
    except Exception as exc:
        return f"default ({type(exc).__name__})"
    lazy = getattr(reg, "_LazyRegisteredModel", None)
    if lazy is None or not hasattr(reg, "_run_in_subprocess"):
        return "default"
    if hasattr(lazy, "_load_modelinfo_from_cache"):
        return "default (disk-cached)"
    reg._run_in_subprocess = lambda fn: fn()
    import importlib

    archs = set()
    for model_id in hf_cache.available_models():
        with contextlib.suppress(Exception):
            cfg = json.loads((hf_cache.CONFIGS_DIR / model_id / "config.json").read_text())
            archs.update(cfg.get("architectures") or [])
    models = getattr(getattr(reg, "ModelRegistry", None), "models", {}) or {}
    for arch in sorted(archs):
        entry = models.get(arch)
        module_name = getattr(entry, "module_name", None)
        if module_name:
            with contextlib.suppress(Exception):
                importlib.import_module(module_name)
    return "in-process"


PLUGIN_MODULE = "specpilot_fidelity_cpu_platform"


def install_cpu_platform_plugin(where: str) -> None:
    """Register an out-of-tree vLLM platform plugin that selects CpuPlatform.

    0.33.0 honours VLLM_TARGET_DEVICE=cpu (set by hf_cache.offline_env).  Older
    releases (0.8.2, 0.11.0) only pick CpuPlatform for a "+cpu" build or on
    macOS; elsewhere they end on UnspecifiedPlatform, which cannot build a
    config ("Failed to infer device type").  They do honour platform plugins
    (entry-point group "vllm.platform_plugins"), so we put a tiny distribution
    on sys.path (nothing is installed) whose plugin returns CpuPlatform.  It
    must exist before `import vllm`: old releases resolve the platform while
    importing.
    """
    dist = os.path.join(where, f"{PLUGIN_MODULE}-0.0.0.dist-info")
    os.makedirs(dist, exist_ok=True)
    files = {
        os.path.join(where, f"{PLUGIN_MODULE}.py"): (
            "def cpu():\n"
            '    """vllm.platform_plugins entry point: always the CPU platform."""\n'
            '    return "vllm.platforms.cpu.CpuPlatform"\n'
        ),
        os.path.join(dist, "METADATA"): (
            f"Metadata-Version: 2.1\nName: {PLUGIN_MODULE}\nVersion: 0.0.0\n"
        ),
        os.path.join(dist, "entry_points.txt"): (
            f"[vllm.platform_plugins]\nspecpilot_cpu = {PLUGIN_MODULE}:cpu\n"
        ),
        os.path.join(dist, "top_level.txt"): f"{PLUGIN_MODULE}\n",
    }
    for path, text in files.items():
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    if where not in sys.path:
        sys.path.insert(0, where)
    import importlib

    importlib.invalidate_caches()
    # A VLLM_PLUGINS allow-list would hide the plugin.
    allowed = os.environ.get("VLLM_PLUGINS")
    if allowed is not None and "specpilot_cpu" not in allowed.split(","):
        os.environ["VLLM_PLUGINS"] = ",".join(filter(None, [allowed, "specpilot_cpu"]))


def current_platform_name() -> str:
    import vllm.platforms as platforms

    return type(platforms.current_platform).__name__


class VllmAdapter:
    def __init__(self, host_memory_gib: float = 0) -> None:
        import vllm

        self.platform = current_platform_name()

        self.version = getattr(vllm, "__version__", "unknown")
        self.vllm = vllm
        self.parser_kind = None
        self.serve_cmd = None
        self.last_launcher = None
        try:
            import vllm.entrypoints.cli.serve as serve_mod

            self.serve_cmd = serve_mod.ServeSubcommand()
            self._disarm_launchers(serve_mod)
            self.parser_kind = "vllm serve"
        except Exception as exc:  # pragma: no cover - very old versions
            self.parser_kind = "api_server (legacy)"
            print(
                f"[fidelity] `vllm serve` parser unavailable ({type(exc).__name__}: {exc}); "
                "using the legacy api_server parser",
                file=sys.stderr,
            )
        self.usage_context = None
        try:
            from vllm.usage.usage_lib import UsageContext

            self.usage_context = UsageContext.OPENAI_API_SERVER
        except Exception:
            pass
        # Import what the config stage needs now, so that forked children do
        # not each pay for it.
        from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401

        with contextlib.suppress(Exception):
            import vllm.config
        self.host_memory = _emulate_host_memory(host_memory_gib)
        self.inspection = _model_inspection_in_process()

    # -- helpers ----------------------------------------------------------
    def _disarm_launchers(self, serve_mod) -> None:
        """Replace the serve module's run_* launchers and uvloop.run by no-ops."""
        import types

        adapter = self

        def make_stub(name):
            def stub(*args, **kwargs):
                adapter.last_launcher = name
                return

            return stub

        for name, obj in list(vars(serve_mod).items()):
            if name.startswith("run_") and callable(obj):
                setattr(serve_mod, name, make_stub(name))

        def fake_uvloop_run(coro, *args, **kwargs):
            close = getattr(coro, "close", None)
            if close is not None:
                close()

        if hasattr(serve_mod, "uvloop"):
            serve_mod.uvloop = types.SimpleNamespace(run=fake_uvloop_run)

    @staticmethod
    def _flexible_parser_cls():
        try:
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError:
            from vllm.utils import FlexibleArgumentParser
        return FlexibleArgumentParser

    def build_parser(self):
        FAP = self._flexible_parser_cls()
        if self.serve_cmd is not None:
            top = FAP(prog="vllm", description="vLLM CLI")
            subparsers = top.add_subparsers(required=False, dest="subparser")
            sub = self.serve_cmd.subparser_init(subparsers)
            sub.set_defaults(dispatch_function=self.serve_cmd.cmd)
            return top
        from vllm.entrypoints.openai.cli_args import make_arg_parser

        return make_arg_parser(FAP(description="vLLM OpenAI-Compatible RESTful API server."))

    def parse(self, argv: list[str]):
        parser = self.build_parser()
        if self.serve_cmd is not None:
            args = parser.parse_args(["serve", *argv])
            validate = getattr(self.serve_cmd, "validate", None)
            if validate is not None:
                validate(args)
            # ServeSubcommand.cmd itself, with the server launchers replaced by
            # no-ops: its pre-start checks and argument adjustments run (model_tag
            # -> model, api_server_count defaults, headless/DP-mode conflicts,
            # 0.8.2's "--model is not allowed" rule), nothing is started.
            self.last_launcher = None
            self.serve_cmd.cmd(args)
            if getattr(args, "model_tag", None) is not None and args.model != args.model_tag:
                args.model = args.model_tag
        else:
            # Legacy: `python -m vllm.entrypoints.openai.api_server --model M ...`
            model, rest = argv[0], argv[1:]
            args = parser.parse_args(["--model", model, *rest])
            with contextlib.suppress(Exception):
                from vllm.entrypoints.openai.cli_args import validate_parsed_serve_args

                validate_parsed_serve_args(args)
        return args

    def create_config(self, args):
        from vllm.engine.arg_utils import AsyncEngineArgs

        engine_args = AsyncEngineArgs.from_cli_args(args)
        if self.usage_context is not None:
            try:
                return engine_args.create_engine_config(usage_context=self.usage_context)
            except TypeError as exc:
                if "usage_context" not in str(exc):
                    raise
        return engine_args.create_engine_config()

    # -- digest of the resolved config (--details) --------------------------
    @staticmethod
    def digest(cfg) -> dict:
        out: dict = {}

        def get(obj, *names):
            for n in names:
                if obj is None:
                    return None
                obj = getattr(obj, n, None)
            return obj

        mc = get(cfg, "model_config")
        pc = get(cfg, "parallel_config")
        cc = get(cfg, "cache_config")
        sc = get(cfg, "speculative_config")
        out["model"] = get(mc, "model")
        out["architecture"] = (
            (get(mc, "architectures") or [None])[0]
            if get(mc, "architectures")
            else get(mc, "architecture")
        )
        out["dtype"] = str(get(mc, "dtype"))
        out["quantization"] = get(mc, "quantization")
        out["max_model_len"] = get(mc, "max_model_len")
        out["tensor_parallel_size"] = get(pc, "tensor_parallel_size")
        out["pipeline_parallel_size"] = get(pc, "pipeline_parallel_size")
        out["gpu_memory_utilization"] = get(cc, "gpu_memory_utilization")
        out["kv_cache_dtype"] = get(cc, "cache_dtype")
        if sc is not None:
            spec = {
                "method": get(sc, "method"),
                "num_speculative_tokens": get(sc, "num_speculative_tokens"),
                "model": get(sc, "model"),
                "draft_tensor_parallel_size": get(sc, "draft_tensor_parallel_size"),
            }
            for k in ("prompt_lookup_max", "prompt_lookup_min", "quantization"):
                v = get(sc, k)
                if v is not None:
                    spec[k] = v
            dmc = get(sc, "draft_model_config")
            if dmc is not None:
                spec["draft_max_model_len"] = get(dmc, "max_model_len")
                spec["draft_quantization"] = get(dmc, "quantization")
            out["speculative"] = spec
        else:
            out["speculative"] = None
        return {
            k: (v if isinstance(v, (str, int, float, bool, type(None), dict, list)) else str(v))
            for k, v in out.items()
        }


# --------------------------------------------------------------------------
# one case
# --------------------------------------------------------------------------
class _WarningCollector:
    def __init__(self) -> None:
        import logging

        self.records: list[str] = []
        collector = self

        class H(logging.Handler):
            def emit(self, record):
                try:
                    msg = record.getMessage()
                except Exception:
                    msg = str(record.msg)
                collector.records.append(f"{record.levelname} [{record.name}] {msg}")

        self.handler = H(level=logging.WARNING)
        self.logger = logging.getLogger("vllm")

    def __enter__(self):
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


def _argparse_message(stderr_text: str, exit_code) -> str:
    lines = [ln for ln in stderr_text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if ": error: " in ln]
    if errs:
        # "vllm serve: error: unrecognized arguments: ..." plus any hint lines
        idx = lines.index(errs[-1])
        return "\n".join(lines[idx:])
    if lines:
        return "\n".join(lines[-5:])
    return f"SystemExit({exit_code})"


def _format_exc(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text.strip()


def run_case(adapter: VllmAdapter, case: dict, details: bool, progress=None) -> dict:
    name = case.get("name") or " ".join(case.get("argv", []))[:60]
    argv = case.get("argv")
    res: dict = {"name": name, "ok": False, "stage": None, "error": None}
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        res.update(stage="parse", error="harness: argv must be a non-empty list of strings")
        return res
    collector = _WarningCollector()
    with collector:
        # stage 1: parse
        if progress:
            progress("parse")
        buf = io.StringIO()
        try:
            with contextlib.redirect_stderr(buf):
                args = adapter.parse(argv)
        except SystemExit as exc:
            res.update(stage="parse", error=_argparse_message(buf.getvalue(), exc.code))
            return _finish(res, case, details, collector, None)
        except BaseException as exc:
            res.update(stage="parse", error=_format_exc(exc))
            if details:
                res.setdefault("details", {})["traceback"] = traceback.format_exc()
            return _finish(res, case, details, collector, None)
        finally:
            # keep argparse's own stderr visible for humans
            sys.stderr.write(buf.getvalue())
        if details:
            res.setdefault("details", {})["launcher"] = adapter.last_launcher
        # stage 2: engine config
        if progress:
            progress("config")
        try:
            cfg = adapter.create_config(args)
        except SystemExit as exc:
            res.update(stage="config", error=f"SystemExit({exc.code})")
            return _finish(res, case, details, collector, None)
        except BaseException as exc:
            res.update(stage="config", error=_format_exc(exc))
            if details:
                res.setdefault("details", {})["traceback"] = traceback.format_exc()
            return _finish(res, case, details, collector, None)
    res["ok"] = True
    return _finish(res, case, details, collector, cfg)


def _finish(res, case, details, collector, cfg) -> dict:
    if details:
        d = res.setdefault("details", {})
        d["warnings"] = collector.records
        if cfg is not None:
            try:
                d["resolved"] = VllmAdapter.digest(cfg)
            except Exception as exc:
                d["resolved"] = f"digest failed: {exc!r}"
    return res


def apply_expectation(res: dict, case: dict) -> dict:
    expect = case.get("expect")
    if expect is None:
        return res
    want_ok = expect == "pass"
    good = res["ok"] == want_ok
    if good and not want_ok and ":" in expect:
        good = res["stage"] == expect.split(":", 1)[1]
    sub = case.get("expect_error")
    if good and sub and not want_ok:
        good = sub.lower() in (res.get("error") or "").lower()
    res["expect"] = expect
    res["as_expected"] = good
    return res


# --------------------------------------------------------------------------
# isolation strategies
# --------------------------------------------------------------------------
def run_forked(adapter, case, details, timeout) -> dict:
    import select
    import signal

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        code = 0
        try:

            def progress(stage):
                os.write(w, json.dumps({"progress": stage}).encode() + b"\n")

            res = run_case(adapter, case, details, progress)
            payload = json.dumps({"result": res}).encode() + b"\n"
            while payload:
                payload = payload[os.write(w, payload) :]
        except BaseException:
            code = 3
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(w)
    chunks, stage, deadline = [], "parse", time.monotonic() + timeout
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([r], [], [], min(left, 1.0))
        if ready:
            data = os.read(r, 65536)
            if not data:
                break
            chunks.append(data)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    result = None
    for line in b"".join(chunks).decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            msg = json.loads(line)
            if "progress" in msg:
                stage = msg["progress"]
            if "result" in msg:
                result = msg["result"]
    if result is not None:
        return result
    name = case.get("name")
    if timed_out:
        why = f"harness: case timed out after {timeout}s"
    else:
        why = f"harness: child died ({_status_text(status)})"
    return {"name": name, "ok": False, "stage": stage, "error": why}


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.WEXITSTATUS(status)}"


def run_subprocess(case, details, timeout, hf_dir, host_memory_gib) -> dict:
    import subprocess

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([case], f)
        path = f.name
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        path,
        "--isolation",
        "none",
        "--hf-cache",
        hf_dir,
        "--host-memory-gib",
        str(host_memory_gib),
    ]
    if details:
        cmd.append("--details")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, timeout=timeout)
        out = json.loads(proc.stdout.decode() or "null")
        if isinstance(out, list) and out:
            return out[0]
        return {
            "name": case.get("name"),
            "ok": False,
            "stage": None,
            "error": f"harness: subprocess exit {proc.returncode}, no result",
        }
    except subprocess.TimeoutExpired:
        return {
            "name": case.get("name"),
            "ok": False,
            "stage": None,
            "error": f"harness: case timed out after {timeout}s",
        }
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------
def load_cases(path: str) -> list[dict]:
    text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    data = json.loads(text)
    if isinstance(data, dict):
        data = data.get("cases", [])
    if not isinstance(data, list):
        raise SystemExit("cases file must hold a JSON list (or {'cases': [...]})")
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", help="JSON file with the cases, or - for stdin")
    ap.add_argument(
        "--hf-cache",
        help="hub cache folder to (re)write and use "
        "(default: a temporary folder, removed afterwards)",
    )
    ap.add_argument("--isolation", choices=("fork", "subprocess", "none"), default="fork")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    ap.add_argument(
        "--details",
        action="store_true",
        help="add resolved-config digest, vLLM warnings and tracebacks",
    )
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 if any case with an 'expect' key did not behave as expected",
    )
    ap.add_argument("-k", dest="select", help="only cases whose name contains this")
    ap.add_argument(
        "--host-memory-gib",
        type=float,
        default=float(os.environ.get("SPECPILOT_FIDELITY_HOST_MEMORY_GIB", 1024)),
        help="RAM vLLM's host checks see (swap-space check in <= 0.11); "
        "0 = this machine's (default 1024, a typical 8-GPU node)",
    )
    opts = ap.parse_args(argv)

    cases = load_cases(opts.cases)
    if opts.select:
        cases = [c for c in cases if opts.select in c.get("name", "")]

    tmp = None
    hf_dir = opts.hf_cache
    if not hf_dir:
        tmp = tempfile.TemporaryDirectory(prefix="specpilot-hf-")
        hf_dir = tmp.name
    hf_cache.build_cache(hf_dir)
    # vLLM's model-class inspection cache: keep it with the venv (per version).
    vllm_cache_root = os.environ.get("VLLM_CACHE_ROOT") or os.path.join(sys.prefix, "vllm-cache")
    os.environ.update(hf_cache.offline_env(hf_dir, base={}, vllm_cache_root=vllm_cache_root))

    install_cpu_platform_plugin(os.path.join(hf_dir, ".specpilot-plugin"))

    _grab_stdout()
    t0 = time.monotonic()
    results = []
    try:
        if opts.isolation == "subprocess":
            for case in cases:
                results.append(
                    apply_expectation(
                        run_subprocess(
                            case, opts.details, opts.timeout, hf_dir, opts.host_memory_gib
                        ),
                        case,
                    )
                )
        else:
            adapter = VllmAdapter(host_memory_gib=opts.host_memory_gib)
            print(
                f"[fidelity] vLLM {adapter.version}, platform: {adapter.platform}, "
                f"host RAM: {adapter.host_memory}, model inspection: {adapter.inspection}, "
                f"parser: {adapter.parser_kind}, "
                f"import {time.monotonic() - t0:.1f}s",
                file=sys.stderr,
            )
            for case in cases:
                t1 = time.monotonic()
                if opts.isolation == "fork":
                    res = run_forked(adapter, case, opts.details, opts.timeout)
                else:
                    res = run_case(adapter, case, opts.details)
                apply_expectation(res, case)
                results.append(res)
                print(
                    f"[fidelity] {res['name']}: {'ok' if res['ok'] else 'FAIL@' + str(res['stage'])}"
                    f" ({time.monotonic() - t1:.1f}s)",
                    file=sys.stderr,
                )
    finally:
        if tmp is not None:
            tmp.cleanup()
    _emit(results)
    if opts.strict and any(r.get("as_expected") is False for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
