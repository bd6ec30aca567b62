"""`status --check`: the health rules, pure, and the command over a real mirror."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from botasync import health
from botasync.envelope import iso, utc_now
from botasync.simulator import World
from tests.test_cli import ThreadedSim, cli_env, run

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def data(*passes: dict[str, Any], dead: int = 0, walk: dict[str, Any] | None = None,
         waiting: str | None = None, last_ok: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"passes": list(passes), "recordings": {"completed": 3}, "last_walk": walk,
            "last_ok": last_ok,
            "handlers": {"notify": {"backlog": 0, "dead": dead,
                                    "oldest_undelivered_at": waiting}}}


def pass_(started_at: str = "2026-11-25T11:59:30.000Z", error: str | None = None,
          kind: str = "head", id_: int = 9, ended_at: str | None = "") -> dict[str, Any]:
    """A pass row; `ended_at` "" means a second after it started, None still running."""
    if ended_at == "":
        ended_at = started_at.replace(":30.000Z", ":31.000Z")
    return {"id": id_, "kind": kind, "started_at": started_at, "ended_at": ended_at,
            "error": error}


LIMITS = health.Limits(max_age_s=180)


def test_a_fresh_successful_pass_and_no_dead_letters_is_healthy() -> None:
    assert health.problems(data(pass_()), LIMITS, now=NOW) == []
    assert health.summary(data(pass_()), NOW).startswith(
        "ok: newest pass finished 29 s ago, 3 recordings")


def test_each_rule_names_its_problem() -> None:
    assert health.problems(data(), LIMITS, now=NOW)[0].startswith("no pass has run yet")
    late = health.problems(data(pass_("2026-11-25T11:50:00.000Z", ended_at=None),
                                pass_("2026-11-25T11:49:30.000Z", id_=8)), LIMITS, now=NOW)
    assert late == ["the newest pass finished 629 s ago (allowed: 180 s); is the daemon running?"]
    failed = health.problems(data(pass_(error="API key rejected (401)")), LIMITS, now=NOW)
    assert failed == ["no pass has succeeded yet (allowed: 180 s); "
                      "the newest pass (head) failed: API key rejected (401)"]
    recent_ok = pass_("2026-11-25T11:58:30.000Z", id_=8)
    assert health.problems(data(pass_(error="boom"), recent_ok), LIMITS, now=NOW) == [
        "the newest pass (head) failed: boom"]
    assert health.problems(data(pass_(error="interrupted")), LIMITS, now=NOW) == []
    walk = pass_(error="GET /recordings offset=900: server error 503", kind="reconcile", id_=3)
    assert health.problems(data(pass_(), walk=walk), LIMITS, now=NOW) == [
        "the newest walk (reconcile) failed: GET /recordings offset=900: server error 503"]
    newest_is_walk = pass_(error="boom", kind="full", id_=9)
    assert health.problems(data(newest_is_walk, recent_ok, walk=newest_is_walk), LIMITS,
                           now=NOW) == ["the newest pass (full) failed: boom"]  # said once
    dead = health.problems(data(pass_(), dead=2), LIMITS, now=NOW)
    assert dead == ["handler notify has 2 dead deliveries "
                    "(`botasync events replay --handler notify` once it is fixed)"]


def test_a_pass_still_running_is_not_the_newest_pass() -> None:
    """During an outage the running (retrying) pass does not hide that none succeeded."""
    running = pass_("2026-11-25T11:59:50.000Z", ended_at=None, id_=12)
    failing = [pass_(f"2026-11-25T11:5{i}:30.000Z", error="GET /recordings: cannot connect",
                     id_=i) for i in range(5, 0, -1)]
    last_ok = pass_("2026-11-25T11:40:30.000Z", id_=1)
    found = health.problems(data(running, *failing, last_ok=last_ok), LIMITS, now=NOW)
    assert found == ["no pass has succeeded for 1169 s (allowed: 180 s); the newest pass "
                     "(head) failed: GET /recordings: cannot connect"]
    # a first pass running, not late yet: healthy; late: a problem
    assert health.problems(data(running), LIMITS, now=NOW) == []
    slow = pass_("2026-11-25T11:00:00.000Z", ended_at=None, kind="full")
    assert health.problems(data(slow), LIMITS, now=NOW) == [
        "no pass has finished yet: the full pass started 3600 s ago is still running "
        "(allowed: 180 s)"]


def test_an_event_waiting_too_long_is_a_problem() -> None:
    """The oldest undelivered event past the limit names its handler; 0 turns the rule off."""
    old = data(pass_(), waiting="2026-11-25T10:00:00.000Z")
    assert health.problems(old, LIMITS, now=NOW) == [
        "handler notify has had an event waiting 7200 s (allowed: 3600 s); "
        "`botasync events list --undelivered` shows it"]
    assert health.problems(data(pass_(), waiting="2026-11-25T11:30:00.000Z"), LIMITS,
                           now=NOW) == []
    off = health.Limits(max_age_s=180, max_undelivered_s=0)
    assert health.problems(old, off, now=NOW) == []


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
        conn.execute("UPDATE sync_runs SET started_at = '2026-01-01T00:00:00.000Z', "
                     "ended_at = '2026-01-01T00:00:01.000Z'")
    conn.close()
    stale = run(["status", "--check", "--max-age", "3600"], env)
    assert stale.exit_code == 1
    assert stale.stdout.startswith("problem: the newest pass finished ")
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
    assert check.stdout.startswith("problem: the newest pass (full) failed: GET /recordings")
    assert check.stdout.endswith(": API key rejected (401 unauthorized)\n")
    assert check.stdout.count("\n") == 1


def test_status_check_ignores_a_pass_in_progress(sim: ThreadedSim, tmp_path: Path) -> None:
    """A pass that started and has not ended (the daemon retrying) is not the newest pass:
    the failure before it stays the verdict, exit 1."""
    db = tmp_path / "c.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    fast = tmp_path / "fast.toml"  # refused at once: retried quickly, not for ~15 s
    fast.write_text("[api]\nmax_retries = 1\nretry_base_s = 0.01\n")
    refused = {**env, "BOTA_API_URL": "http://127.0.0.1:9/v1", "BOTASYNC_CONFIG": str(fast)}
    assert run(["sync"], refused).exit_code == 1
    with sqlite3.connect(db) as conn:  # what a daemon retrying right now leaves in the log
        conn.execute("INSERT INTO sync_runs (kind, started_at) VALUES ('head', ?)",
                     (iso(utc_now()),))
    conn.close()
    check = run(["status", "--check"], env)
    assert check.exit_code == 1
    assert check.stdout.startswith("problem: the newest pass (full) failed: GET /recordings")
    assert "cannot connect to 127.0.0.1:9" in check.stdout


def test_status_check_counts_undelivered_events(sim: ThreadedSim, tmp_path: Path) -> None:
    """An event a handler has not taken for longer than the limit is a problem, exit 1."""
    db = tmp_path / "d.db"
    cfg = tmp_path / "c.toml"
    cfg.write_text('[events]\nmax_undelivered_age_s = 60\n[[handlers]]\nname = "slow"\n'
                   'type = "log"\n')
    env = cli_env(sim, db, cfg)
    assert run(["sync"], env).exit_code == 0
    assert run(["status", "--check"], env).exit_code == 0
    with sqlite3.connect(db) as conn:  # an event an hour old the handler has not taken
        seq = conn.execute("SELECT seq FROM handler_cursors WHERE handler = 'slow'").fetchone()[0]
        conn.execute(
            "INSERT INTO events (id, type, recording_id, created_at, payload) VALUES "
            "('evt_old', 'recording.updated', NULL, ?, '{}')",
            (iso(utc_now() - timedelta(hours=1)),))
        assert conn.execute("SELECT max(seq) FROM events").fetchone()[0] > seq
    conn.close()
    check = run(["status", "--check"], env)
    assert check.exit_code == 1
    assert check.stdout.startswith("problem: handler slow has had an event waiting 36")
    assert run(["status", "--check", "--max-undelivered-age", "0"], env).exit_code == 0
    assert run(["status", "--check", "--max-undelivered-age", "7200"], env).exit_code == 0
