"""Secrets and surface: no key anywhere, a 0600 database, sound signatures, no shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torture.surface import HOSTILE_NAMES, run_surface

pytestmark = [pytest.mark.torture]


async def test_no_secret_anywhere_and_a_narrow_surface(tmp_path: Path) -> None:
    """Key never shown, files 0600, signatures verify independently, hostile names inert."""
    result = await run_surface(tmp_path)
    assert result.leaks == [] and result.outputs_checked >= 15
    assert result.modes.get("botasync.db") == "0o600"
    assert set(result.modes.values()) == {"0o600"}  # the WAL and shared memory too
    assert result.webhooks >= len(HOSTILE_NAMES)
    assert result.signature_ok == result.tampered_rejected == result.stale_rejected == \
        result.webhooks
    assert result.hostile_delivered == len(HOSTILE_NAMES) and result.hostile_inert
    assert result.problems() == []
