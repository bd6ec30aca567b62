"""A PostgreSQL for the tests, and a database handle that reads the same on either backend.

The session's server is, in this order: the one the environment names (`PGHOST`, with
`PGPORT`, `PGUSER`, `PGPASSWORD`: running the tests under `pg_virtualenv`, or a server of
your own), else a throwaway cluster this module starts with `pg_virtualenv` (Debian's
postgresql-common: a temporary cluster, dropped when the session ends; it works as root,
which `initdb` alone refuses; under pytest-xdist, one for all the workers, started by the
controller: `SharedCluster`). Without either, the PostgreSQL cases skip with the reason,
unless `BOTASYNC_PG=required` (set by `.ci/run`): then they fail.

Each test gets a database of its own (`CREATE DATABASE`, dropped after it), empty: the
store creates its schema on open, as it does on a new SQLite file.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader

from botasync.config import DatabaseConfig
from botasync.store import open_store
from botasync.store.base import Database
from botasync.store.dialect import translate

START_TIMEOUT_S = 90
# a test cluster need not survive a power cut: no fsync makes CREATE DATABASE and commits fast
FAST_GUCS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


@dataclass
class PgServer:
    """A reachable PostgreSQL: connection keywords, and the databases made on it."""

    params: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, dbname: str) -> str:
        """A `postgresql://` URL for one database (the password stays in the environment
        of the test process, as `PGPASSWORD`, not in the URL)."""
        host, port, user = self.params["host"], self.params["port"], self.params["user"]
        return f"postgresql://{user}@{host}:{port}/{dbname}"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A plain psycopg connection; JSON columns read as text, as botasync reads them."""
        # a conninfo string, which connect() would make of the keywords: mypy refuses **params there
        conninfo = make_conninfo(**{**self.params, "dbname": dbname})
        conn = psycopg.connect(conninfo, autocommit=True)
        conn.adapters.register_loader("jsonb", TextLoader)
        conn.adapters.register_loader("json", TextLoader)
        return conn

    def create_database(self) -> str:
        name = f"botasync_test_{os.getpid()}_{next(self._names)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # the cluster's command ends; pg_virtualenv drops it
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _from_environment() -> dict[str, str] | None:
    if not os.environ.get("PGHOST"):
        return None
    return {"host": os.environ["PGHOST"], "port": os.environ.get("PGPORT", "5432"),
            "user": os.environ.get("PGUSER", "postgres")}


def _reachable(params: dict[str, str]) -> str | None:
    """None when a connection works, else why not."""
    try:
        conninfo = make_conninfo(**params, dbname="postgres", connect_timeout=10)
        with psycopg.connect(conninfo) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def start(gucs: Sequence[str] = FAST_GUCS) -> tuple[PgServer | None, str]:
    """The session's server, or None and why there is none. `gucs`: the throwaway cluster's
    settings (the tests' default trades durability for speed; a bench passes none)."""
    params = _from_environment()
    if params is not None:
        why = _reachable(params)
        if why is not None:
            return None, f"PGHOST={params['host']} names a PostgreSQL that does not answer: {why}"
        return PgServer(params), ""
    if os.environ.get(SHARED):
        return _shared(Path(os.environ[SHARED]))
    return _cluster(gucs)


def _cluster(gucs: Sequence[str]) -> tuple[PgServer | None, str]:
    """A throwaway cluster of this process's (pg_virtualenv), dropped by `PgServer.stop`."""
    tool = shutil.which("pg_virtualenv")
    if tool is None:
        return None, ("no PostgreSQL: neither PGHOST nor pg_virtualenv (apt-get install "
                      "postgresql) is there")
    env_file = Path(tempfile.mkdtemp(prefix="botasync-pg-")) / "env"
    args = [tool, "-t"]  # a temporary cluster directory even as root: never a clash
    for guc in gucs:
        args += ["-o", guc]
    # the command inside the throwaway cluster: say where it is, then wait for our stdin
    script = f'env > "{env_file}.tmp" && mv "{env_file}.tmp" "{env_file}" && exec cat'
    # one start at a time on this host: two pg_virtualenv starting at once pick the same
    # port and the second fails ("This cluster is still running"); pytest-xdist's workers
    # each start one, and reach their first PostgreSQL test at the same moment at times
    with _start_lock():
        process = subprocess.Popen([*args, "sh", "-c", script], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not env_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                _, err = process.communicate()
                tail = err.decode(errors="replace").strip().splitlines()[-3:]
                return None, f"pg_virtualenv did not start a cluster: {' | '.join(tail)}"
            time.sleep(0.1)
    env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
    shutil.rmtree(env_file.parent, ignore_errors=True)
    os.environ["PGPASSWORD"] = env["PGPASSWORD"]  # libpq reads it: URLs carry no password
    params = {"host": env["PGHOST"], "port": env["PGPORT"], "user": env["PGUSER"],
              "password": env["PGPASSWORD"]}
    server = PgServer(params, process)
    why = _reachable(params)
    if why is not None:
        server.stop()
        return None, f"the cluster pg_virtualenv started does not answer: {why}"
    return server, ""


# --- one cluster for every pytest-xdist worker ----------------------------------------------

SHARED = "BOTASYNC_PG_SHARED"  # the directory where the controller's cluster says where it is


class SharedCluster:
    """Under pytest-xdist, the controller starts one cluster for all its workers, in the
    background from the session's start (conftest.py): each worker would otherwise start
    one of its own when it reaches its first PostgreSQL test, one after the other (a host
    lock), seconds each on the 2-core machine. A worker waits for the cluster the first time
    it needs it (`start`), and never stops it; the controller drops it at the end."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="botasync-pg-shared-"))
        self.server: PgServer | None = None
        self._thread = threading.Thread(target=self._start, name="botasync-pg", daemon=True)

    def begin(self) -> None:
        os.environ[SHARED] = str(self.dir)  # before the workers start: they inherit it
        self._thread.start()

    def _start(self) -> None:
        try:
            server, why = _cluster(FAST_GUCS)
        except Exception as e:  # said to the workers, who fail or skip with it
            server, why = None, f"{type(e).__name__}: {e}"
        self.server = server
        name, text = ("params.json", json.dumps(server.params)) if server else ("error", why)
        (self.dir / f"{name}.tmp").write_text(text)
        (self.dir / f"{name}.tmp").rename(self.dir / name)  # all at once for the readers

    def end(self) -> None:
        self._thread.join(START_TIMEOUT_S)
        if self.server is not None:
            self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _shared(where: Path) -> tuple[PgServer | None, str]:
    """The controller's cluster (`SharedCluster`), once it has started."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not (where / "params.json").exists():
        if (where / "error").exists():
            return None, (where / "error").read_text()
        if time.monotonic() > deadline:
            return None, f"the shared cluster did not start in {START_TIMEOUT_S} s"
        time.sleep(0.05)
    params = json.loads((where / "params.json").read_text())
    os.environ["PGPASSWORD"] = params["password"]  # libpq reads it: URLs carry no password
    return PgServer(params), ""


@contextlib.contextmanager
def _start_lock() -> Iterator[None]:
    """An exclusive lock between this host's processes, for the length of a cluster start."""
    with open(Path(tempfile.gettempdir()) / "botasync-pg-start.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _params(params: Sequence[Any] | Mapping[str, Any]) -> Any:
    return params if isinstance(params, Mapping) else tuple(params)


@dataclass
class TestDb:
    """One test's database on either backend: its config, its store, plain reads."""

    __test__ = False  # not a test class, whatever its name

    backend: str  # "sqlite" | "postgres"
    path: Path  # the SQLite file; on PostgreSQL, where local lock files go
    url: str = ""
    server: PgServer | None = None
    dbname: str = ""
    # the test's own session on a PostgreSQL database, kept across reads: a `rows` polled
    # in a `wait_for` made a connection (a server backend) a call, thousands a run
    _session: psycopg.Connection[Any] | None = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> dict[str, str]:
        """The `[database]` section for `config.load(overrides=...)`."""
        return {"path": str(self.path), "url": self.url}

    @property
    def db_config(self) -> DatabaseConfig:
        return DatabaseConfig(path=str(self.path), url=self.url)

    async def open(self, *, readonly: bool = False) -> Database:
        return await open_store(self.db_config, readonly=readonly)

    def _pg(self) -> psycopg.Connection[Any]:
        """The session (autocommit: it holds no transaction between reads), opened again if
        the server ended it."""
        if self._session is None or self._session.closed or self._session.broken:
            assert self.server is not None
            self._session = self.server.connect(self.dbname)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """A query run outside botasync (sqlite3, or psycopg after the same translation)."""
        if self.backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.path)
            try:
                return conn.execute(sql, params).fetchall()
            finally:
                conn.close()
        cur = self._pg().execute(translate(sql), _params(params))
        return [tuple(r) for r in cur.fetchall()] if cur.description else []

    def dict_rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts by column name; JSON columns as text on both backends."""
        if self.backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(self.path)
            conn.row_factory = sqlite3.Row
            try:
                return [dict(r) for r in conn.execute(sql, params).fetchall()]
            finally:
                conn.close()
        cur = self._pg().cursor(row_factory=dict_row)
        cur.execute(translate(sql), _params(params))
        return list(cur.fetchall())

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> None:
        """One write outside botasync, committed."""
        if self.backend == "sqlite":
            import sqlite3

            with contextlib.closing(sqlite3.connect(self.path)) as conn, conn:
                conn.execute(sql, params)
            return
        self._pg().execute(translate(sql), _params(params))
