"""Findings: what validation, planning and rendering have to say about a resource.

Each names the field to change, a stable code, one plain sentence with the numbers and, for
anything that must change, the fix. Every layer reports findings instead of raising, so a user
sees all problems at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


class Finding(BaseModel):
    severity: Severity
    code: str
    path: str
    """The field involved, as a dotted path such as spec.target.maxModelLen."""
    message: str
    fix: str = ""
    also: list[str] = []
    """Other fields the finding depends on (a contradiction names both sides)."""

    def involves(self, paths: Iterable[str]) -> bool:
        """Whether the finding rests on any of these fields (or their parents or children)."""
        mine = [self.path, *self.also]
        return any(related(a, b) for a in mine for b in paths)

    def __str__(self) -> str:
        fix = f" Fix: {self.fix}" if self.fix else ""
        return f"{self.path}: {self.message}{fix}"


def related(a: str, b: str) -> bool:
    """Whether two field paths are the same field, or one contains the other."""
    return a == b or a.startswith((b + ".", b + "[")) or b.startswith((a + ".", a + "["))


def error(code: str, path: str, message: str, fix: str, also: Iterable[str] = ()) -> Finding:
    return Finding(
        severity=Severity.ERROR, code=code, path=path, message=message, fix=fix, also=list(also)
    )


def warning(code: str, path: str, message: str, fix: str = "") -> Finding:
    return Finding(severity=Severity.WARNING, code=code, path=path, message=message, fix=fix)


def info(code: str, path: str, message: str) -> Finding:
    return Finding(severity=Severity.INFO, code=code, path=path, message=message)


def shown(value: Any) -> str:
    """A value as a message quotes it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.ERROR]


class InvalidResourceError(Exception):
    """Raised by entry points that cannot go on, carrying every error found."""

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__("\n".join(str(f) for f in findings))
        self.findings = findings
