"""Shared fixtures: a seeded simulator world, a simulator serving it; `wait_for`, `one_row`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
import structlog

from botasync.simulator import Simulator, World, serve
from botasync.store.base import Database
from tests import pgserver
from tests.pgserver import PgServer, TestDb

API_KEY = "sk_test_botasync"

# Bytecode caches on, for this run and every process it starts: where the environment turns
# them off (PYTHONDONTWRITEBYTECODE), each of the hundreds of `botasync` processes the tests
# start compiles botasync from source again, and each pytest worker its test modules.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


async def wait_for(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.01,
) -> Any:
    """Poll a sync or async predicate until it is truthy and return its value.

    Fails the test with the predicate's name when `timeout` seconds pass first.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            name = getattr(predicate, "__qualname__", repr(predicate))
            pytest.fail(f"wait_for: {name} still false after {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)


async def one_row(store: Database, sql: str) -> Any:
    """The first row of `sql`, which must return one (`fetchone` says None for no row)."""
    row = await store.fetchone(sql)
    assert row is not None, sql
    return row


# --- the torture suite's switch (tests/torture): pytest reads command-line options only from
# the root conftest, so the option lives here. Tests marked `torture` run a fast subset by
# default; `--torture` gives them their full counts (fixture `torture_full`) and runs the
# ones marked `torture(full_only=True)`.


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--torture", action="store_true", default=False,
                     help="run the torture suite (tests/torture) at its full counts")


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("torture")
    if marker and marker.kwargs.get("full_only") and not item.config.getoption("--torture"):
        pytest.skip("full torture counts only: run with --torture")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: a worker more than the cores. A third of a worker's time goes to waiting
    on what a test drives (the daemons it starts and kills, leases running out, ticks, the
    network), and a spare worker fills it: on the 2-core machine 3 workers ran the suite in
    290 s where 2 took 304 to 313."""
    return (os.cpu_count() or 1) + 1


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (the default, pyproject.toml) as tests/scheduling.py refines it."""
    if config.getoption("dist") != "loadfile":
        return None
    from tests.scheduling import Scheduling

    return Scheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, the controller compiles what every worker would (a fresh clone:
    tests/prewarm.py), then starts the workers' PostgreSQL (one for all, in the background:
    tests/pgserver.py `SharedCluster`), unless PGHOST names one."""
    workers = getattr(config.option, "numprocesses", None)
    if not workers or hasattr(config, "workerinput"):
        return
    from tests.prewarm import prewarm

    root = Path(__file__).resolve().parents[1]
    prewarm(config, [root / "botasync", root / "tests"])  # forks: before any thread starts
    if not os.environ.get("PGHOST"):
        shared = pgserver.SharedCluster()
        shared.begin()
        config.stash[_SHARED_PG] = shared


def pytest_unconfigure(config: pytest.Config) -> None:
    shared = config.stash.get(_SHARED_PG, None)
    if shared is not None:
        shared.end()


_SHARED_PG = pytest.StashKey["pgserver.SharedCluster"]()


@pytest.fixture
def torture_full(request: pytest.FixtureRequest) -> bool:
    """True under --torture: a `torture` test runs its full counts."""
    return bool(request.config.getoption("--torture"))


@pytest.fixture(autouse=True)
def _fresh_structlog() -> None:
    """Each test starts with structlog's defaults: a command run by an earlier test may have
    configured a level (the demo uses warning) that would hide the logs a test captures."""
    structlog.reset_defaults()


class SimulatorFactory(Protocol):
    """Starts a simulator; every one it started is closed at teardown."""

    async def __call__(self, world: World | None = None, **options: Any) -> Simulator: ...


@pytest.fixture
def api_key() -> str:
    """The simulator's default key with the recordings:read scope."""
    return API_KEY


@pytest.fixture
def world() -> World:
    """A seeded world of 300 recordings on the real clock."""
    return World(seed=7, recordings=300)


@pytest.fixture
async def simulator_factory() -> AsyncIterator[SimulatorFactory]:
    """Start simulators with any `serve` options (rate limit off unless given)."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(world: World | None = None, **options: Any) -> Simulator:
            options.setdefault("rate_limit", None)
            served = world if world is not None else World(seed=7, recordings=300)
            return await stack.enter_async_context(serve(served, **options))

        yield start


@pytest.fixture
async def simulator(world: World, simulator_factory: SimulatorFactory) -> Simulator:
    """The `world` served on 127.0.0.1 (any free port) with the rate limit off."""
    return await simulator_factory(world)


# --- the two backends: `database` runs a test on SQLite and on PostgreSQL (tests/pgserver.py)

_PG_SKIPPED: list[str] = []  # why the PostgreSQL cases skipped, for the summary


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL; its cases skip without one, or fail under
    BOTASYNC_PG=required (CI): a PostgreSQL that cannot start is never skipped silently."""
    server, why = pgserver.start()
    if server is None:
        if os.environ.get("BOTASYNC_PG") == "required":
            pytest.fail(f"BOTASYNC_PG=required, and {why}", pytrace=False)
        _PG_SKIPPED.append(why)
        pytest.skip(f"PostgreSQL cases skipped: {why}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_database(pg_server: PgServer, tmp_path: Path) -> Iterator[TestDb]:
    """A fresh, empty PostgreSQL database of its own for one test."""
    name = pg_server.create_database()
    db = TestDb("postgres", tmp_path / "botasync.db", pg_server.url(name), pg_server, name)
    try:
        yield db
    finally:
        db.close()
        pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> TestDb:
    """The test's database, once on each backend: a new SQLite file, or a new PostgreSQL
    database."""
    if request.param == "sqlite":
        return TestDb("sqlite", tmp_path / "botasync.db")
    db: TestDb = request.getfixturevalue("pg_database")
    return db


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for why in _PG_SKIPPED:
        terminalreporter.write_line(f"PostgreSQL cases skipped: {why}", yellow=True)
