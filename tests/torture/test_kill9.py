"""kill -9 anywhere: `botasync run` killed at random moments and restarted loses nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from botasync.simulator import Dialect
from tests.torture.kill9 import MOMENTS, leaked, run_kill9

pytestmark = [pytest.mark.torture, pytest.mark.timeout(900)]

# kills (fast subset, --torture) and seed (fast subset, --torture) per dialect
COUNTS: dict[str, tuple[int, int, int, int]] = {
    "documented": (8, 100, 1, 5),
    "deployed": (4, 100, 2, 5),
}


@pytest.mark.parametrize("dialect", ["documented", "deployed"])
async def test_sigkill_anywhere_loses_nothing(
    tmp_path: Path, torture_full: bool, dialect: Dialect,
) -> None:
    """Killed 8 times (4 by cursor; 100 each with --torture): exact, sound, each event delivered."""
    fast, full, fast_seed, full_seed = COUNTS[dialect]
    kills = full if torture_full else fast
    result = await run_kill9(tmp_path, kills=kills, seed=full_seed if torture_full else fast_seed,
                             dialect=dialect)
    assert result.kills == kills
    assert result.moments["migrations"] == 1  # the first start died in its migrations
    assert sum(result.moments[m] for m in (*MOMENTS, "cursor")) >= kills // 2  # most found theirs
    assert result.problems() == []
    assert result.rows_wrong == [] and result.lost == [] and result.integrity == "ok"
    assert result.shared_ids == 0  # every event has its own id (a redelivery repeats it)
    assert result.events > result.recordings  # the world moved: more than the backfill
    assert result.deliveries == result.events + result.duplicates
    if dialect == "deployed":  # kills landed inside walks by cursor, and restarts resumed them
        assert result.moments["cursor"] >= 1 and result.cursor_pages > 0
        assert result.cursor_kills >= (kills // 3 if torture_full else 1)
        assert result.cursor_resumes >= 1
    else:
        assert result.cursor_pages == result.cursor_kills == result.cursor_resumes == 0
    files = [tmp_path / "botasync.db", tmp_path / "delivered.txt"]
    assert leaked(result.outputs + files) == []
