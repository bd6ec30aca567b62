"""kill -9 anywhere: `botasync run` killed at random moments and restarted loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torture.kill9 import MOMENTS, leaked, run_kill9

pytestmark = [pytest.mark.torture, pytest.mark.timeout(900)]


async def test_sigkill_anywhere_loses_nothing(tmp_path: Path, torture_full: bool) -> None:
    """Killed 10 times (100 with --torture) at random moments: exact, sound, every event delivered."""
    kills = 100 if torture_full else 10
    result = await run_kill9(tmp_path, kills=kills, seed=5 if torture_full else 1)
    assert result.kills == kills
    assert result.moments["migrations"] == 1  # the first start died in its migrations
    assert sum(result.moments[m] for m in MOMENTS) >= kills // 2  # most found their moment
    assert result.problems() == []
    assert result.rows_wrong == [] and result.lost == [] and result.integrity == "ok"
    assert result.events > result.recordings  # the world moved: more than the backfill
    assert result.deliveries == result.events + result.duplicates
    files = [tmp_path / "botasync.db", tmp_path / "delivered.txt"]
    assert leaked(result.outputs + files) == []
