"""Progress on a terminal tells the truth: the right total after a resume, no guessed end by
cursor, the rate limit's wait said as such, log lines above the bar, Ctrl-C says where the
walk resumes; the daemon says skipped ticks in its own words."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from rich.console import Console
from rich.progress import Progress
from structlog.testing import capture_logs

from botasync.api.budget import RequestBudget
from botasync.logging import configure
from botasync.service.daemon import Daemon
from botasync.simulator import World
from botasync.sync.progress import WalkProgress, walk_progress
from botasync.sync.syncer import PassStats
from tests import zygote
from tests.conftest import SimulatorFactory, wait_for
from tests.simproc import simulate
from tests.test_daemon import daemon_cfg

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def bar(clock: Clock) -> tuple[Progress, WalkProgress]:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    progress = Progress(console=console, auto_refresh=False)
    return progress, WalkProgress(progress, requests_per_minute=90, page_size=100, clock=clock)


def test_a_resumed_walk_shows_the_whole_archive() -> None:
    """Resumed at offset 500 of 1,000: the bar is half full and the time left is for the
    remaining 5 pages, at the slower of the measured and the budget's pace."""
    clock = Clock()
    progress, walk = bar(clock)
    walk(PassStats("full", pages=0), 500, 1000)
    clock.now = 4.0
    walk(PassStats("full", pages=1, seen=100), 600, 1000)
    task = progress.tasks[0]
    assert (task.completed, task.total) == (600, 1000)
    assert task.description == "full: 600 of ~1,000 recordings"
    assert walk.status() == "16 s left"  # 4 pages at the measured 4 s a page
    clock.now = 10.0
    assert walk.status() == "10 s left"  # counts down between pages


def test_a_total_the_walk_has_passed_is_dropped() -> None:
    """An estimate below the position is wrong: the bar shows what was walked, no end."""
    progress, walk = bar(Clock())
    walk(PassStats("full", pages=8, seen=800), 1300, 500)
    assert progress.tasks[0].description == "full: 8 pages, 1,300 recordings"
    assert walk.status() == ""


def test_by_cursor_there_is_no_guessed_end() -> None:
    """Without a total the bar shows pages and items walked, and no time left."""
    progress, walk = bar(Clock())
    walk(PassStats("full", pages=3, seen=300), 300, None)
    task = progress.tasks[0]
    assert task.total is None
    assert task.description == "full: 3 pages, 300 recordings"
    assert walk.status() == ""


async def test_waiting_for_the_budget_is_said_with_its_length() -> None:
    """A request queued behind a full budget: "waiting for the rate limit, 50 s", not an ETA."""
    clock = Clock()
    budget = RequestBudget(1, clock=clock)
    budget.release(await budget.acquire())  # the one slot is held until t=60
    _progress, walk = bar(clock)
    walk.watch_budget(budget)
    walk(PassStats("full", pages=1), 100, 1000)
    clock.now = 10.0
    waiter = asyncio.create_task(budget.acquire())
    await wait_for(lambda: budget.queued_wait() > 0)
    try:
        assert walk.status() == "waiting for the rate limit, 50 s"
    finally:
        waiter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiter
    assert walk.status().endswith(" left")


def test_log_lines_print_above_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    """While the bar shows, stderr is rich's proxy: a log line is printed whole, on its own
    line, above the bar (the logger looks stderr up at each write)."""
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    console = Console(stderr=True, force_terminal=True, width=120)
    configure("info", "json")
    with walk_progress(console, 90) as walk:
        assert walk is not None
        walk(PassStats("full", pages=2, seen=200), 200, 1000)
        assert type(sys.stderr).__name__ == "FileProxy"
        structlog.get_logger("test").info("pass_done", kind="full", pages=2)
    lines = [ANSI.sub("", ln).strip() for ln in screen.getvalue().splitlines()]
    logged = [ln for ln in lines if "pass_done" in ln]
    assert len(logged) == 1
    assert json.loads(logged[0])["pages"] == 2  # whole: nothing of the bar on its line


def test_sync_on_a_terminal_reports_each_pass_once() -> None:
    """`mute` drops `pass_done` (the command prints its own summary); other lines stay."""
    out = io.StringIO()
    configure("info", "json", stream=out, mute=("pass_done",))
    log = structlog.get_logger("test")
    log.info("pass_done", kind="full")
    log.warning("api.retry", attempt=1)
    assert [json.loads(ln)["event"] for ln in out.getvalue().splitlines()] == ["api.retry"]


# --- Ctrl-C during a walk ---------------------------------------------------------------------


SLOW_RECORDINGS = 500


@pytest.fixture
def slow_simulator() -> Iterator[str]:
    """`botasync simulate` in its own process, 100 ms an answer: a walk long enough to stop."""
    with simulate(["--recordings", str(SLOW_RECORDINGS), "--latency-ms", "100", "--no-rate-limit"],
                  {**os.environ, "BOTASYNC_CONFIG": ""}) as url:
        yield url


async def test_ctrl_c_says_where_the_walk_resumes(slow_simulator: str, tmp_path: Path) -> None:
    """SIGINT mid-walk: exit 130 and one line naming the offset the next sync starts at,
    which is the checkpoint in the database; the next sync does resume there."""
    db = tmp_path / "botasync.db"
    cfg = tmp_path / "c.toml"
    cfg.write_text("[sync]\npage_size = 20\n[api]\nconcurrency = 1\n")
    env = {**os.environ, "BOTA_API_URL": slow_simulator, "BOTA_API_KEY": "sk_test_botasync",
           "BOTASYNC_DB": str(db), "BOTASYNC_CONFIG": str(cfg)}
    proc = await zygote.botasync("sync", env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE)

    def position() -> int:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                row = conn.execute("SELECT max(position) FROM sync_runs").fetchone()
            conn.close()
        except sqlite3.Error:
            return 0  # not made, or not migrated, yet
        return int(row[0] or 0)

    await wait_for(lambda: position() >= 100, timeout=60, interval=0.05)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, err.decode()[-2000:]
    line = err.decode().strip().splitlines()[-1]
    found = re.fullmatch(r"interrupted; the next `botasync sync` resumes the walk at offset "
                         r"([\d,]+) \(([\d,]+) recordings seen by this run\)", line)
    assert found, line
    offset = int(found.group(1).replace(",", ""))
    assert offset == position() and offset >= 100
    again = await zygote.botasync("sync", "--json", env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(again.communicate(), 120)
    assert again.returncode == 0, err.decode()[-2000:]
    assert json.loads(out)["passes"][0]["pages"] == (SLOW_RECORDINGS - offset) // 20


# --- the daemon's skipped ticks ----------------------------------------------------------------


async def test_skipped_ticks_are_said_once_with_a_count(
    simulator_factory: SimulatorFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ticks due while a slow one runs: one `ticks_skipped` line with the count, and never
    APScheduler's raw "maximum number of running instances reached"."""
    sim = await simulator_factory(World(seed=3, recordings=30), latency_s=0.4)
    daemon = Daemon(daemon_cfg(sim, tmp_path / "botasync.db", interval_s=0.05),
                    handle_signals=False)
    caplog.set_level(logging.WARNING)
    with capture_logs() as logs:
        task = asyncio.create_task(daemon.run())
        await wait_for(lambda: [e for e in logs if e["event"] == "ticks_skipped"], timeout=20)
        daemon.stop()
        assert await task == 0
    skipped = [e for e in logs if e["event"] == "ticks_skipped"]
    assert skipped[0]["count"] >= 2 and skipped[0]["job"] == "tick"
    assert skipped[0]["reason"] == "the previous tick pass was still running"
    assert not [r for r in caplog.records if "maximum number of running instances"
                in r.getMessage()]
