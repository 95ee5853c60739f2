"""Child processes that must not outlive whoever started them (simulated pods, test servers)."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
from typing import Any


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl() if sys.platform == "linux" else None  # looked up before any fork
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A `preexec_fn`: Linux sends the child SIGTERM when the thread that started it dies.

    That is the spawning *thread*, not the process: start such children from a long-lived one.
    """
    if _PRCTL is not None:
        with contextlib.suppress(Exception):
            _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
