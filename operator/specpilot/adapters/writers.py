"""The one writer of status and the one writer of Events, used by the reconcile handlers and the
control loop alike, so a failure is said and counted the same way whoever wrote."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import urllib3
from kubernetes.client.exceptions import ApiException

from specpilot.adapters import telemetry
from specpilot.adapters.clock import Clock
from specpilot.adapters.kube import KubeWriter, NonFiniteStatusError, describe_api_error

MAX_EVENT_MESSAGE = 1024
"""What the API server keeps of an Event's message (longer ones are refused)."""
logger = logging.getLogger(__name__)


class BodyObserver(Protocol):
    def observe(self, body: Any, deleted: bool = False) -> None: ...


class StatusConflictError(Exception):
    """The resource changed since it was read (HTTP 409): read it again and redo the work."""


class StatusWriteError(Exception):
    """A status write failed for another reason; already said in a StatusWriteFailed Event."""


class EventWriter:
    """Posts core/v1 Events on resources. Used from kopf's handler threads and from the control
    loop's check threads alike (kopf's own posting needs its context, which those lack)."""

    def __init__(self, kube: KubeWriter, clock: Clock) -> None:
        self._kube = kube
        self._clock = clock

    def post(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Best effort: an Event that cannot be posted is logged, never fails the caller."""
        try:
            self._kube.create_event(
                owner, type_, reason, message[:MAX_EVENT_MESSAGE], self._clock.now()
            )
        except ApiException as exc:
            logger.warning("%s", describe_api_error(exc, f"post Event {reason}"))
        except urllib3.exceptions.HTTPError as exc:
            logger.warning("post Event %s: %s", reason, exc)


class StatusWriter:
    """Writes status with the resourceVersion it was computed from, keeps the answer as the
    newest copy, and says a failed write where the user looks."""

    def __init__(self, kube: KubeWriter, bodies: BodyObserver, events: EventWriter) -> None:
        self._kube = kube
        self._bodies = bodies
        self._events = events

    def write(self, body: Mapping[str, Any], status: dict[str, Any], writer: str) -> dict[str, Any]:
        """The resource as stored after the write. StatusConflictError on a 409 (counted);
        StatusWriteError for any other failure, after a StatusWriteFailed Event and a count
        (nothing in status can say it: the write is what failed). `writer` labels the metrics."""
        try:
            written = self._kube.patch_status(body, status)
        except ApiException as exc:
            if exc.status == 409:
                telemetry.STATUS_CONFLICTS.labels(writer=writer).inc()
                raise StatusConflictError(describe_api_error(exc, "write status")) from exc
            message = describe_api_error(exc, "write status")
        except urllib3.exceptions.HTTPError as exc:  # timed out, connection lost
            message = f"write status: {type(exc).__name__}: {exc}"
        except NonFiniteStatusError as exc:
            message = str(exc)
        else:
            self._bodies.observe(written)
            return written
        meta = body["metadata"]
        logger.error("%s/%s: %s", meta["namespace"], meta["name"], message)
        telemetry.STATUS_WRITE_ERRORS.labels(writer=writer).inc()
        self._events.post(body, "Warning", "StatusWriteFailed", message)
        raise StatusWriteError(message)
