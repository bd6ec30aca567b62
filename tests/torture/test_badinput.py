"""Bad input of every kind: one clear line, the documented exit code, nothing lost."""

from __future__ import annotations

import asyncio

import pytest

from tests.torture.badinput import CASES, Case, Outcome, run_table

pytestmark = [pytest.mark.torture]

REQUIRED = {  # what the issue lists, by case name
    "bad_toml", "unknown_key", "wrong_type", "missing_key_file", "db_under_a_file",
    "db_newer_schema", "key_rejected_401", "key_lacks_scope_403", "bad_request_400",
    "html_200", "item_without_id", "item_wrong_type", "item_unknown_status", "non_utf8_body",
    "handler_not_found", "handler_hangs", "handler_floods", "webhook_refused", "webhook_3xx",
    "webhook_4xx", "webhook_5xx", "python_handler_raises", "disk_full",
    "sigterm_during_delivery",
}


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case, run once, a few at a time (each is a real `botasync` process)."""
    outcomes = asyncio.run(run_table(tmp_path_factory.mktemp("badinput")))
    return {o.case.name: o for o in outcomes}


def test_the_table_covers_the_issue() -> None:
    """At least 25 cases; every kind the issue names is one; each says kept/retried/dead."""
    names = [c.name for c in CASES]
    assert len(names) >= 25 and len(set(names)) == len(names)
    assert set(names) >= REQUIRED
    assert all(c.kept and c.retried and c.dead for c in CASES)


# the first test builds the table (module fixture): ~1 min alone, minutes beside a busy worker
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case: Case, table: dict[str, Outcome]) -> None:
    """One clear line (no traceback), the documented exit code, nothing lost or corrupted."""
    outcome = table[case.name]
    assert outcome.problems == [], f"{outcome.problems}\nstderr:\n{outcome.run.err[-3000:]}"
