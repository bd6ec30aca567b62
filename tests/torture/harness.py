"""Plumbing shared by the torture scenarios and `bench/torture.py`.

Configs written as TOML, `botasync` run as a real subprocess (never through a shell),
bounded waits, and read-only looks at the database with the standard `sqlite3`.
Everything targets 127.0.0.1 and every process started here is killed by its owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import zygote

REPO = Path(__file__).resolve().parents[2]
# A key nobody would type by accident, so grepping every output for it means something.
KEY = "sk_test_T0rture-Key-d0-n0t-leak-5f3a9c"
NOSCOPE_KEY = "sk_test_T0rture-NoScope-77e1"
API_KEYS: dict[str, tuple[str, ...]] = {KEY: ("recordings:read",), NOSCOPE_KEY: ()}
SECRET_ENV = "TORTURE_WEBHOOK_SECRET"
WEBHOOK_SECRET = "whsec_T0rture-hmac-secret-91b2"

# A command handler with no interpreter start-up cost: one line per event, appended
# with a single write (O_APPEND), so lines from concurrent runs never interleave.
SH_HANDLER = """#!/bin/sh
printf '%s %s\\n' "$BOTASYNC_EVENT_ID" "$BOTASYNC_EVENT_TYPE" >> "$1"
"""


def toml_text(sections: Mapping[str, Any]) -> str:
    """A TOML document from {section: {key: value}} and `handlers` as a list of tables.

    JSON literals are valid TOML for the strings, numbers, booleans and arrays used here.
    """
    lines: list[str] = []
    for name, body in sections.items():
        if name == "handlers":
            for handler in body:
                lines.append("[[handlers]]")
                lines += [f"{k} = {json.dumps(v)}" for k, v in handler.items()]
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


def write_config(path: Path, sections: Mapping[str, Any]) -> Path:
    """Write a config file and return its path."""
    path.write_text(toml_text(sections), encoding="utf-8")
    return path


def base_sections(url: str, db: Path, **over: Any) -> dict[str, Any]:
    """A fast, quiet-by-default config against `url`; `over` replaces keys per section."""
    sections: dict[str, Any] = {
        "api": {"base_url": url, "api_key": KEY, "requests_per_minute": 100_000,
                "timeout_s": 5.0, "max_retries": 2, "retry_base_s": 0.01, "retry_max_s": 0.05},
        "database": {"path": str(db)},
        "events": {"backoff_base_s": 0.01, "backoff_max_s": 0.05},
        "logging": {"level": "info", "format": "json"},
    }
    for name, values in over.items():
        if name == "handlers":
            sections["handlers"] = list(values)
        else:
            sections.setdefault(name, {}).update(values)
    return sections


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any botasync setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BOTA_", "BOTASYNC_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


@dataclass(frozen=True)
class Run:
    """A finished `botasync` process: exit code and its two outputs."""

    code: int
    out: str
    err: str

    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]


async def botasync(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0,
    preexec_fn: Callable[[], None] | None = None, cwd: Path | None = None,
) -> Run:
    """Run `python -m botasync ARGS` to completion (killed if it overruns `timeout`),
    forked from the zygote (tests/zygote.py) unless it needs a `preexec_fn`."""
    proc = await zygote.botasync(*args, env=env or clean_env(), cwd=cwd,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=preexec_fn)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        err += f"\n[torture: killed after {timeout:g} s]".encode()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


async def spawn(
    *args: str, log_to: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None,
) -> Any:
    """Start `python -m botasync ARGS` with stdout and stderr going to `log_to` (appended),
    forked from the zygote (tests/zygote.py)."""
    log = log_to.open("ab")
    try:
        return await zygote.botasync(*args, env=env or clean_env(), cwd=cwd, stdout=log,
                                     stderr=log)
    finally:
        log.close()  # the child holds its own copy


async def stop(proc: asyncio.subprocess.Process, sig: int, timeout: float = 15.0) -> int:
    """Send `sig` and wait for the exit; SIGKILL if it overruns. Returns the exit code."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        return await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise


async def until(
    predicate: Callable[[], Any | Awaitable[Any]], timeout: float, interval: float = 0.005,
) -> Any:
    """Poll until `predicate()` is truthy and return it; None when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(interval)


def sh_handler(directory: Path) -> Path:
    """Write the shell command handler and return its path."""
    path = directory / "append-event.sh"
    path.write_text(SH_HANDLER)
    path.chmod(0o755)
    return path


@contextlib.contextmanager
def connect(db: Path) -> Iterator[sqlite3.Connection]:
    """A short-lived read connection (WAL: it never blocks the daemon)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        yield conn
    finally:
        conn.close()


def rows(db: Path, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Every row of one query, or [] while the database or its tables do not exist yet."""
    if not db.exists():
        return []
    try:
        with connect(db) as conn:
            return list(conn.execute(sql, params).fetchall())
    except sqlite3.DatabaseError:  # not created yet, or not a database at all
        return []


def integrity(db: Path) -> str:
    """`PRAGMA integrity_check` plus the foreign keys: "ok" or what is wrong."""
    with connect(db) as conn:
        result = conn.execute("PRAGMA integrity_check").fetchone()[0]
        bad_keys = conn.execute("PRAGMA foreign_key_check").fetchall()
    return result if not bad_keys else f"{result}; foreign keys: {bad_keys[:3]}"


def delivered_lines(path: Path) -> list[tuple[str, str]]:
    """(event id, event type) per line the shell handler appended."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((parts[0], parts[1]))
    return out
