"""The fault mix: syncs converge to an exact mirror, and the budget holds, retries included."""

from __future__ import annotations

from pathlib import Path

import pytest

from botasync.simulator import Dialect
from tests.torture.faultmix import FAULT_MIX, run_fault_mix

pytestmark = [pytest.mark.torture, pytest.mark.timeout(600)]


@pytest.mark.parametrize("dialect", ["documented", "deployed"])
async def test_fault_mix_converges_within_the_budget(
    tmp_path: Path, torture_full: bool, dialect: Dialect,
) -> None:
    """Through every fault kind, in the dialect's own shapes, while recordings come and go."""
    more = {"recordings": 300, "page_size": 20, "changes": 150, "moving_rounds": 2}
    result = await run_fault_mix(tmp_path, dialect=dialect, **(more if torture_full else {}))
    assert result.problems() == []
    assert result.converged and result.rows_wrong == [] and result.integrity == "ok"
    assert result.peak <= result.budget  # in every window of the server's log
    assert result.genuine_429 == 0  # the server's own limiter never had to refuse
    assert set(result.injected) == set(FAULT_MIX)  # every kind was met
    assert result.inserted > 0 and result.deleted > 0
    assert (result.cursor_pages > 0) == (dialect == "deployed")  # walked by cursor, or not
