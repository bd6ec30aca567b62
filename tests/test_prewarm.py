"""tests/prewarm.py writes the bytecode caches as pytest and the import system read them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from _pytest.assertion.rewrite import PYC_TAIL, _read_pyc, get_cache_dir

from tests import prewarm


def test_the_caches_written_are_the_ones_read(tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """A test module gets pytest's rewritten cache, which pytest's own check accepts; a
    helper module its plain one; a second run finds both fresh; an edit makes one stale."""
    assert prewarm.REWRITE, "pytest's rewrite functions moved: prewarm compiles nothing"
    test = tmp_path / "test_x.py"
    test.write_text("def test_a() -> None:\n    assert 1 + 1 == 2\n")
    helper = tmp_path / "helper.py"
    helper.write_text("X = 1\n")
    assert prewarm.prewarm(pytestconfig, [tmp_path]) == 2
    assert _read_pyc(test, get_cache_dir(test) / f"test_x{PYC_TAIL}") is not None
    assert prewarm._compiled_fresh(helper)
    assert prewarm.prewarm(pytestconfig, [tmp_path]) == 0
    helper.write_text("X = 22\n")
    os.utime(helper, (1, 1))  # another size and mtime, as an edit gives
    assert prewarm.prewarm(pytestconfig, [tmp_path]) == 1
