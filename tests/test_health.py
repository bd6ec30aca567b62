"""`status --check`: the health rules, pure, and the command over a real mirror."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from botasync import health
from botasync.simulator import World
from tests.test_cli import ThreadedSim, cli_env, run

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def data(*passes: dict[str, Any], dead: int = 0, walk: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    return {"passes": list(passes), "recordings": {"completed": 3}, "last_walk": walk,
            "handlers": {"notify": {"backlog": 0, "dead": dead}}}


def pass_(started_at: str = "2026-11-25T11:59:30.000Z", error: str | None = None,
          kind: str = "head", id_: int = 9) -> dict[str, Any]:
    return {"id": id_, "kind": kind, "started_at": started_at, "error": error}


def test_a_fresh_successful_pass_and_no_dead_letters_is_healthy() -> None:
    assert health.problems(data(pass_()), max_age_s=180, now=NOW) == []
    assert health.summary(data(pass_()), NOW).startswith("ok: newest pass 30 s ago, 3 recordings")


def test_each_rule_names_its_problem() -> None:
    assert health.problems(data(), max_age_s=180, now=NOW)[0].startswith("no pass has run yet")
    late = health.problems(data(pass_("2026-11-25T11:50:00.000Z")), max_age_s=180, now=NOW)
    assert late == ["the newest pass started 600 s ago (allowed: 180 s); is the daemon running?"]
    failed = health.problems(data(pass_(error="API key rejected (401)")), max_age_s=180, now=NOW)
    assert failed == ["the newest pass (head) failed: API key rejected (401)"]
    assert health.problems(data(pass_(error="interrupted")), max_age_s=180, now=NOW) == []
    walk = pass_(error="GET /recordings offset=900: server error 503", kind="reconcile", id_=3)
    assert health.problems(data(pass_(), walk=walk), max_age_s=180, now=NOW) == [
        "the newest walk (reconcile) failed: GET /recordings offset=900: server error 503"]
    newest_is_walk = pass_(error="boom", kind="full", id_=9)
    assert health.problems(data(newest_is_walk, walk=newest_is_walk), max_age_s=180,
                           now=NOW) == ["the newest pass (full) failed: boom"]  # said once
    dead = health.problems(data(pass_(), dead=2), max_age_s=180, now=NOW)
    assert dead == ["handler notify has 2 dead deliveries "
                    "(`botasync events replay --handler notify` once it is fixed)"]


def test_default_max_age_is_three_ticks_and_at_least_a_minute() -> None:
    assert health.default_max_age(60) == 180
    assert health.default_max_age(5) == 60


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(World(seed=6, recordings=30)) as s:
        yield s


def test_status_check_command(sim: ThreadedSim, tmp_path: Path) -> None:
    """Exit 0 with one `ok:` line after a sync; exit 1 naming the problem once passes stop."""
    db = tmp_path / "botasync.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    fresh = run(["status", "--check"], env)
    assert fresh.exit_code == 0 and fresh.stdout.startswith("ok: newest pass")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sync_runs SET started_at = '2026-01-01T00:00:00.000Z'")
    conn.close()
    stale = run(["status", "--check", "--max-age", "3600"], env)
    assert stale.exit_code == 1
    assert stale.stdout.startswith("problem: the newest pass started ")
    as_json = run(["status", "--check", "--json"], env)
    assert as_json.exit_code == 1
    verdict = json.loads(as_json.stdout)
    assert verdict["ok"] is False and "is the daemon running?" in verdict["problems"][0]


def test_status_check_reports_a_rejected_key(sim: ThreadedSim, tmp_path: Path) -> None:
    """A pass that failed on a rejected key is the problem named, with the API's words."""
    env = cli_env(sim, tmp_path / "b.db")
    assert run(["sync"], env).exit_code == 0
    assert run(["sync"], {**env, "BOTA_API_KEY": "sk_test_revoked"}).exit_code == 3
    check = run(["status", "--check"], env)
    assert check.exit_code == 1
    assert check.stdout == ("problem: the newest pass (full) failed: GET /recordings offset=0: "
                            "API key rejected (401 unauthorized)\n")
