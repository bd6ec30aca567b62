"""Parts 4 and 5: a reader during the big mirror, then dispatch of that mirror's backlog.

Part 4 mirrors the big world into a fresh database while `reader.py` queries it in a
loop. That mirror's first sync is a backfill: one `recording.created` per recording,
written to the outbox and not delivered. Part 5 replays it (`botasync events replay`)
to a python handler (all of it) and to a command handler (the newest events), and
checks that each handler saw the events in `seq` order.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from contend import MB, db_bytes
from env import BENCH, PY, Plan, botasync_env, mirror_config, write_config
from procs import Background, SimProcess, run_measured

HOOKS = BENCH / "hooks"


def readers_during_sync(sim: SimProcess, plan: Plan, work: Path) -> dict[str, Any]:
    """Mirror into backlog.db with a reader process querying it all along."""
    db = work / "backlog.db"
    for p in work.glob("backlog.db*"):
        p.unlink()
    reader = Background([PY, str(BENCH / "reader.py"), "--db", str(db),
                         "--max-s", str(plan.timeout_s)], log_path=work / "reader.log")
    env = botasync_env(sim.url, sim.api_key, db, mirror_config(work / "mirror.toml"))
    m = run_measured([PY, "-m", "botasync", "sync", "--json"], env=env,
                     timeout_s=plan.timeout_s, log_path=work / "backlog-sync.log")
    out = reader.finish()
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"n": plan.big, "sync_ok": m.ok, "sync_wall_s": round(m.wall_s, 3),
            "sync_peak_rss_mb": round(m.peak_rss / MB, 1), **result}


def _ids_in_order(db: Path, since_seq: int) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute(
            "SELECT id FROM events WHERE seq >= ? ORDER BY seq", (since_seq,))]
    finally:
        con.close()


def _seq_for_last(db: Path, count: int) -> int:
    """The seq from which the newest `count` events start."""
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?",
                          (max(0, count - 1),)).fetchone()
        first = con.execute("SELECT min(seq) FROM events").fetchone()[0]
    finally:
        con.close()
    return int(row[0]) if row else int(first or 0)


def dispatch_config(path: Path) -> Path:
    return write_config(path, (
        "[logging]\nlevel = \"warning\"\nformat = \"json\"\n\n"
        "[[handlers]]\nname = \"py\"\ntype = \"python\"\ntarget = \"bench_hooks:on_event\"\n\n"
        f"[[handlers]]\nname = \"cmd\"\ntype = \"command\"\n"
        f"command = [\"/bin/sh\", \"{HOOKS / 'record_id.sh'}\"]\ntimeout_s = 30\n"))


def replay(sim: SimProcess, plan: Plan, work: Path, handler: str, count: int | None
           ) -> dict[str, Any]:
    """`botasync events replay --handler NAME` over the backlog (or its newest `count`)."""
    db = work / "backlog.db"
    since = _seq_for_last(db, count) if count else 1
    expected = _ids_in_order(db, since)
    got_path = work / f"replay-{handler}.ids"
    got_path.unlink(missing_ok=True)
    env = botasync_env(sim.url, sim.api_key, db, dispatch_config(work / "dispatch.toml"),
                       BENCH_EVENTS_OUT=str(got_path), PYTHONPATH=str(HOOKS))
    argv = [PY, "-m", "botasync", "events", "replay", "--handler", handler, "--since", str(since)]
    m = run_measured(argv, env=env, timeout_s=plan.timeout_s,
                     log_path=work / f"replay-{handler}.log")
    got = got_path.read_text().split() if got_path.exists() else []
    return {
        "handler": handler, "type": "python" if handler == "py" else "command",
        "backlog": len(expected), "delivered": len(got), "ok": m.ok,
        "order_intact": got == expected, "wall_s": round(m.wall_s, 3),
        "events_per_s": round(len(got) / m.wall_s, 1) if m.wall_s else 0.0,
        "cpu_s": round(m.cpu_s, 3), "peak_rss_mb": round(m.peak_rss / MB, 1),
        "output": m.stdout.strip()[-300:], "db_bytes": db_bytes(db),
    }


def dispatch(sim: SimProcess, plan: Plan, work: Path) -> list[dict[str, Any]]:
    """Replay the whole backlog to the python handler, the newest events to the command one."""
    return [replay(sim, plan, work, "py", None),
            replay(sim, plan, work, "cmd", plan.command_events)]
