"""`botasync demo --for 5`: a fresh user's first command works and shows live events."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from botasync.humanize import human_seconds
from botasync.service.demo import describe
from botasync.sync.progress import eta_seconds


@pytest.mark.parametrize("dialect", ["deployed", "documented"])
def test_demo_runs_mirrors_and_prints_events(tmp_path: Path, dialect: str) -> None:
    """It exits 0, leaves recordings and media, and printed status changes and next steps."""
    out = subprocess.run(
        [sys.executable, "-m", "botasync", "demo", "--for", "5", "--move-every", "0.3",
         "--dialect", dialect],
        cwd=tmp_path, capture_output=True, text=True, timeout=90,
        env={**os.environ, "BOTASYNC_CONFIG": "", "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "recording.status_changed" in out.stdout
    assert "Try next" in out.stdout and "Traceback" not in out.stderr
    assert " events delivered (" in out.stdout and "status changes)" in out.stdout
    db = tmp_path / "botasync-demo.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone()[0] >= 300
        assert conn.execute("SELECT count(*) FROM media").fetchone()[0] > 0
        delivered = conn.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered'"
                                 ).fetchone()[0]
    assert delivered > 0
    assert f"({dialect} dialect)" in out.stdout


def test_describe_reads_like_a_sentence() -> None:
    """An event becomes one line with its type, recording, name and change."""
    line = describe({"type": "recording.completed", "created_at": "2026-11-25T10:00:01.000Z",
                     "data": {"id": "rec_1", "name": "Standup", "status": "completed"},
                     "previous": {"status": "processing"}})
    assert line.startswith("10:00:01  recording.completed")
    assert "rec_1" in line and "'Standup'" in line and "processing -> completed" in line
    nameless = describe({"type": "recording.created", "created_at": "2026-11-25T10:00:01.000Z",
                         "data": {"id": "rec_2", "name": None}, "previous": {}})
    assert "rec_2  (no name)" in nameless and "'(no name)'" not in nameless


def test_eta_is_honest_about_the_budget() -> None:
    """100,000 recordings at 90 requests a minute take about 11 minutes, not seconds."""
    left = eta_seconds(done_pages=0, total_pages=1000, elapsed_s=0.0, requests_per_minute=90)
    assert human_seconds(left) == "11 min"
    slow = eta_seconds(done_pages=10, total_pages=20, elapsed_s=100.0, requests_per_minute=90)
    assert slow == 100.0  # the measured pace wins when it is slower than the budget's
    assert human_seconds(42) == "42 s" and human_seconds(7500) == "2 h 05 min"
