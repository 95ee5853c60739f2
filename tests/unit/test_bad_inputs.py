"""Every case of the bad-input corpus is refused by `specpilot validate`, naming its field."""

from __future__ import annotations

import pytest

from specpilot.assessment import assess
from specpilot.findings import Severity, related
from tests.corpus.cases import Case, cases

CASES = cases()


def test_the_corpus_is_large_and_its_names_unique() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refused_with_the_field_named(case: Case) -> None:
    errors = [f for f in assess(case.document).findings if f.severity is Severity.ERROR]
    assert errors, f"{case.name} was accepted"
    named = [f for f in errors if any(related(p, case.field) for p in (f.path, *f.also))]
    assert named, f"{case.name}: no error names {case.field}: {[str(f) for f in errors]}"
    for finding in named:
        assert finding.fix, f"{finding.code} at {finding.path} has no fix"
