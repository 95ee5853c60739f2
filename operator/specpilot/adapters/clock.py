"""Time, injected: the adapters read it from a `Clock`, so tests drive it instead of waiting."""

from __future__ import annotations

import datetime
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for what is written (status, Events), monotonic time for schedules."""

    def now(self) -> datetime.datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC)

    def monotonic(self) -> float:
        return time.monotonic()
