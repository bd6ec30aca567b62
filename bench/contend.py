"""Part 1 (and the data of part 3): the initial mirror, one contender after another.

Each contender is its own process against the same simulator process (same seeded
world, rate limit off, the same answer time); requests come from the simulator's log.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from env import BENCH, PY, Plan, botasync_env, dlt_python, mirror_config
from procs import Measured, SimProcess, run_measured

MB = 1024 * 1024


@dataclass
class Contender:
    """One measured run: who, which run, and how to build and read it."""

    name: str
    run: str  # first | rerun | quick | quick-again
    argv: Callable[[SimProcess, Path], list[str]]
    env: Callable[[SimProcess, Path], dict[str, str] | None]
    rows: Callable[[Path, Measured], int]
    db: Callable[[Path], Path | None]
    timeout_attr: str = "timeout_s"


def _bota_db(work: Path) -> Path:
    return work / "botasync.db"


def _bota_env(sim: SimProcess, work: Path) -> dict[str, str]:
    return botasync_env(sim.url, sim.api_key, _bota_db(work), mirror_config(work / "mirror.toml"))


def _count(db: Path, table: str = "recordings") -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db)
    try:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def _stdout_json(m: Measured) -> dict[str, Any]:
    for line in reversed(m.stdout.strip().splitlines()):
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    return {}


def botasync(run: str) -> Contender:
    flags = {"first": [], "rerun": [], "quick": ["--quick"], "quick-again": ["--quick"]}[run]
    return Contender(
        "botasync", run, lambda s, w: [PY, "-m", "botasync", "sync", *flags, "--json"],
        _bota_env, lambda w, m: _count(_bota_db(w)), _bota_db)


def ceiling() -> Contender:
    return Contender(
        "ceiling", "first",
        lambda s, w: [PY, str(BENCH / "ceiling.py"), "--url", s.url, "--key", s.api_key],
        lambda s, w: None, lambda w, m: int(_stdout_json(m).get("items", 0)), lambda w: None)


def _naive_db(work: Path) -> Path:
    return work / "naive.db"


def _dlt_db(work: Path) -> Path:
    return work / "dlt.db"


def naive() -> Contender:
    db = _naive_db
    return Contender(
        "naive", "first",
        lambda s, w: [PY, str(BENCH / "naive.py"), "--url", s.url, "--key", s.api_key,
                      "--db", str(db(w))],
        lambda s, w: None, lambda w, m: _count(db(w)), db, timeout_attr="naive_timeout_s")


def dlt(run: str) -> Contender:
    db = _dlt_db
    return Contender(
        "dlt", run,
        lambda s, w: [str(dlt_python()), str(BENCH / "dlt_pipeline.py"), "--url", s.url,
                      "--key", s.api_key, "--db", str(db(w)), "--pipelines-dir",
                      str(w / "dlt-pipelines")],
        lambda s, w: None, lambda w, m: int(_stdout_json(m).get("rows", -1)), db)


def lineup(plan: Plan, light: bool) -> list[Contender]:
    """The contenders of one size, in order; `light` drops the naive poller and dlt's re-run."""
    # `sync --quick` twice: the first tick after a mirror also walks every status list
    # (botasync does that every so often); the second is the usual tick
    out = [ceiling(), botasync("first"), botasync("rerun"), botasync("quick"),
           botasync("quick-again")]
    if not light:
        out.append(naive())
    if plan.with_dlt:
        out.append(dlt("first"))
        if not light:
            out.append(dlt("rerun"))
    return out


def classify(entries: list[dict[str, Any]]) -> dict[str, int]:
    """Requests by kind: list pages, details, anything else."""
    counts = {"list": 0, "detail": 0, "other": 0}
    for e in entries:
        path = e["path"]
        if path == "/v1/recordings":
            counts["list"] += 1
        elif path.startswith("/v1/recordings/") and path.count("/") == 3:
            counts["detail"] += 1
        else:
            counts["other"] += 1
    return counts


def db_bytes(db: Path | None) -> int | None:
    """The database's size on disk: main file, WAL and any attached files of the same stem."""
    if db is None or not db.exists():
        return None
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*")) + sum(
        p.stat().st_size for p in db.parent.glob(db.stem + "__*"))


def measure(c: Contender, sim: SimProcess, plan: Plan, work: Path, n: int) -> dict[str, Any]:
    """Run one contender against the simulator and return its figures."""
    if c.run == "first":
        for p in {*work.glob(f"{c.name}*.db*"), *work.glob(f"{c.name}__*")}:
            p.unlink(missing_ok=True)
        if c.name == "dlt":
            shutil.rmtree(work / "dlt-pipelines", ignore_errors=True)
    before = sim.request_count()
    m = run_measured(c.argv(sim, work), env=c.env(sim, work),
                     timeout_s=getattr(plan, c.timeout_attr),
                     log_path=work / f"{c.name}-{c.run}.log")
    kinds = classify(sim.requests_since(before))
    rows = c.rows(work, m)
    return {
        "contender": c.name, "run": c.run, "n": n, "ok": m.ok and rows >= n,
        "exit_code": m.exit_code, "timed_out": m.timed_out, "wall_s": round(m.wall_s, 3),
        "cpu_s": round(m.cpu_s, 3), "peak_rss_mb": round(m.peak_rss / MB, 1),
        "requests": sum(kinds.values()), **{f"{k}_requests": v for k, v in kinds.items()},
        "rows": rows, "db_bytes": db_bytes(c.db(work)), "output": _stdout_json(m),
        "stderr_tail": "" if m.ok else m.stderr_tail[-600:],
    }
