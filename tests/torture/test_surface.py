"""Secrets and surface: no key anywhere, a 0600 database, sound signatures, no shell."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.torture.surface import HOSTILE_NAMES, run_hostile_ids, run_surface

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


async def test_hostile_ids_never_become_paths(tmp_path: Path) -> None:
    """Deployed dialect, files mirrored: ids with `..`, `/`, `\\`, NUL are never stored or used."""
    result = await run_hostile_ids(tmp_path)
    assert result.problems() == []
    assert result.stored_hostile == [] and result.asked_hostile == [] and result.escaped == []
    assert result.files_expected >= 5 and len(result.files) == result.files_expected
    assert result.hash_wrong == []
