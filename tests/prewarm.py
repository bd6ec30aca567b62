"""The bytecode every pytest-xdist worker needs, compiled once by the controller.

A fresh clone has no bytecode cache. Each worker then rewrites the asserts of every test
module (pytest's assertion rewriting: about 8 CPU-s for this suite) and compiles botasync
(1.5 CPU-s), the three workers at once on two cores, before the first test runs: 15 s
of a CI run. The controller does it once instead, spread over the cores, before the
workers start; they find the caches ready.

The files written are the ones the workers would write themselves: the test modules by
pytest's own rewrite functions (private API: a pytest without them is left to compile as
before), everything else by `py_compile` as an import would. A warm cache costs a read of
each source and its cache header.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import py_compile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

try:
    from _pytest.assertion.rewrite import (
        PYC_TAIL,
        _rewrite_test,
        _write_pyc,
        assertstate_key,
        get_cache_dir,
    )
    REWRITE = True
except ImportError:  # pytest's internals moved: the workers compile as before
    REWRITE = False

POOL_FROM = 8  # stale files from which processes pay for their start (an edit: one or two)
_config: pytest.Config | None = None  # the forked children's, for `_rewrite_test`


def prewarm(config: pytest.Config, roots: Iterable[Path]) -> int:
    """Compile what is stale under `roots`, one process per core; how many files were."""
    if not REWRITE:
        return 0
    patterns = [*config.getini("python_files"), "conftest.py"]
    stale = []
    for root in roots:
        for path in root.rglob("*.py"):
            if any(fnmatch.fnmatch(path.name, p) for p in patterns):
                if not _rewritten_fresh(path):
                    stale.append((str(path), True))
            elif not _compiled_fresh(path):
                stale.append((str(path), False))
    if not stale:
        return 0
    global _config
    _config = config
    if len(stale) < POOL_FROM:
        for job in stale:
            _compile(job)
        return len(stale)
    stale.sort(key=lambda job: -os.path.getsize(job[0]))  # the longest first
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=get_context("fork")) as pool:
        list(pool.map(_compile, stale))
    return len(stale)


def _compile(job: tuple[str, bool]) -> None:
    path, rewritten = Path(job[0]), job[1]
    if not rewritten:
        py_compile.compile(str(path), doraise=False, quiet=2)
        return
    assert _config is not None
    source_hash, code = _rewrite_test(path, _config)
    cache = get_cache_dir(path)
    try:
        cache.mkdir(exist_ok=True)
    except OSError:  # a read-only tree: the workers rewrite in memory, as they would
        return
    _write_pyc(_config.stash[assertstate_key], code, source_hash,
               cache / (path.name[:-3] + PYC_TAIL))


def _rewritten_fresh(path: Path) -> bool:
    """pytest's cache of the rewritten module matches the source (its hash, as pytest
    checks it on import)."""
    pyc = get_cache_dir(path) / (path.name[:-3] + PYC_TAIL)
    try:
        with pyc.open("rb") as f:
            header = f.read(16)
    except OSError:
        return False
    return (header[:4] == importlib.util.MAGIC_NUMBER
            and header[8:16] == importlib.util.source_hash(path.read_bytes())[:8])


def _compiled_fresh(path: Path) -> bool:
    """The plain bytecode cache matches the source's mtime and size, as an import checks."""
    try:
        with open(importlib.util.cache_from_source(str(path)), "rb") as f:
            header = f.read(16)
    except OSError:
        return False
    if header[:4] != importlib.util.MAGIC_NUMBER:
        return False
    if int.from_bytes(header[4:8], "little"):  # hash-based (SOURCE_DATE_EPOCH): import checks
        return True
    st = path.stat()
    return (int.from_bytes(header[8:12], "little") == int(st.st_mtime) & 0xFFFFFFFF
            and int.from_bytes(header[12:16], "little") == st.st_size & 0xFFFFFFFF)
