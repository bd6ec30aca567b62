"""`botasync status`: what the mirror holds, what the daemon did and will do, what is stuck.

`collect` returns plain data (the `--json` output); `render` draws it with rich.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from botasync import humanize
from botasync.config import SERVICE, Config
from botasync.envelope import iso, utc_now
from botasync.errors import BotasyncError
from botasync.events.outbox import backlog
from botasync.jsoncodec import loads
from botasync.media.admin import files_status
from botasync.service import leases
from botasync.store import open_store, queries
from botasync.store.base import Database
from botasync.store.dialect import POSTGRES
from botasync.store.queries import database_bytes
from botasync.store.sqlite import Mirror
from botasync.transcripts.admin import transcripts_status

DAEMON_STATE = "daemon"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def health_facts(store: Database, cfg: Config) -> dict[str, Any]:
    """What the health rule (`health.problems`) reads: passes, walks, dead letters and
    waiting events per handler. `status --check` and the daemon's `/readyz` both read it
    here (the recordings' count, a scan of the whole table, is left to who shows it)."""
    patterns = {h.name: list(h.events) for h in cfg.handlers}
    waiting = await queries.oldest_undelivered(
        store, patterns, deliver_backfill=cfg.events.deliver_backfill)
    dead_rows = await store.fetchall(
        "SELECT handler, count(*) FROM deliveries WHERE state = 'dead' GROUP BY handler")
    dead_by_handler = {r[0]: int(r[1]) for r in dead_rows}
    names = cfg.project_names()
    return {
        **await _pass_facts(store, None),
        "projects": ({name: await _pass_facts(store, name) for name in names}
                     if len(names) > 1 else {}),
        "handlers": {name: {"dead": dead_by_handler.get(name, 0),
                            "oldest_undelivered_at": waiting.get(name)} for name in patterns},
    }


async def _pass_facts(store: Database, project: str | None) -> dict[str, Any]:
    """The passes and walks of one project (None: of all)."""
    walks = ("full", "reconcile")
    return {
        "last_walk": await queries.last_run_of(store, walks, project=project),
        "last_finished_walk": await queries.last_run_of(
            store, walks, finished=True, project=project),
        "last_ok": await queries.last_finished(store, ok=True, project=project),
        "passes": await queries.last_runs(store, 10, project=project),
    }


async def collect(cfg: Config) -> dict[str, Any]:
    """Everything `status` shows, read from the database only (no API request, no key),
    opened read-only: a monitoring user with read access alone can run it."""
    path = Path(cfg.database.path)
    if not cfg.database.url and not path.exists():
        raise BotasyncError(f"no database at {path}: run `botasync sync` or `botasync run` first")
    async with await open_store(cfg.database, readonly=True) as store:
        patterns = {h.name: list(h.events) for h in cfg.handlers}
        pending = await backlog(store, patterns, deliver_backfill=cfg.events.deliver_backfill)
        facts = await health_facts(store, cfg)
        daemon_raw = await Mirror(store, SERVICE).get_state(DAEMON_STATE)
        daemon = loads(daemon_raw) if daemon_raw else None
        workers = await workers_and_leases(store) if store.dialect == POSTGRES else None
        if daemon:
            # on PostgreSQL the workers may run on other hosts: a pid says nothing here (and
            # a `botasync sync` holding leases for its pass is no daemon)
            daemon["running"] = (any(w["alive"] and not leases.is_one_shot(w["id"])
                                     for w in workers["workers"]) if workers
                                 else _alive(daemon.get("pid")))
        row = await store.fetchone("SELECT count(*), max(seq), min(created_at) FROM events")
        files = await files_status(store, cfg.media) if cfg.media.download else None
        by_project = ({name: await transcripts_status(store, cfg.transcripts, name)
                       for name in cfg.project_names()} if cfg.transcripts.download else {})
        transcripts = next(iter(by_project.values()), None)
        return {
            "database": {"path": store.where, "bytes": await database_bytes(store)},
            "recordings": await queries.counts_by_status(store),
            "projects": {name: {"recordings": await queries.counts_by_status(store, name),
                                **facts["projects"].get(name, {}),
                                **({"transcripts": by_project[name]} if by_project else {})}
                         for name in cfg.project_names()},
            "last_walk": facts["last_walk"],
            "last_finished_walk": facts["last_finished_walk"],
            "last_ok": facts["last_ok"],
            "passes": facts["passes"],
            "events": {"total": int(row[0]) if row else 0, "last_seq": row[1] if row else None,
                       "oldest_at": row[2] if row else None,
                       "retention_days": cfg.events.retention_days},
            "handlers": {name: {"backlog": pending.get(name, 0), **h}
                         for name, h in facts["handlers"].items()},
            "daemon": daemon,
            "workers": workers,
            "files": files,
            "transcripts": transcripts,
        }


async def workers_and_leases(store: Database) -> dict[str, Any]:
    """PostgreSQL: the workers (alive: seen within `lease_s`) and who holds which lease,
    since when, until when; times by the database's clock, as the workers count them."""
    row = await store.fetchone("SELECT now()")
    now = iso(row[0]) if row is not None else iso(utc_now())
    workers = [{**dict(zip(r.keys(), r, strict=True)), "alive": r["expires_at"] > now}
               for r in await store.fetchall(
                   "SELECT id, host, pid, started_at, seen_at, expires_at FROM workers "
                   "ORDER BY started_at")]
    held = []
    for r in await store.fetchall("SELECT name, holder, acquired_at, expires_at FROM leases "
                                  "ORDER BY name"):
        live = r["holder"] is not None and (r["expires_at"] or "") > now
        held.append({"name": r["name"], "holder": r["holder"] if live else None,
                     "acquired_at": r["acquired_at"] if live else None,
                     "held_s": _seconds_between(r["acquired_at"], now) if live else None,
                     "expires_at": r["expires_at"] if live else None})
    return {"now": now, "workers": workers, "leases": held}


def _seconds_between(start: str | None, end: str) -> float | None:
    if not start:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 1)


def _render_workers(console: Console, w: dict[str, Any]) -> None:
    """The workers of a PostgreSQL database and the leases they hold."""
    alive = [x for x in w["workers"] if x["alive"]]
    console.print(f"[bold]workers[/bold] {len(alive)} alive" + "".join(
        f", [red]{x['id']} dead since {x['expires_at']}[/red]"
        for x in w["workers"] if not x["alive"]))
    t = Table("lease", "holder", "held for", "expires", box=None)
    for lease in w["leases"]:
        held = lease["held_s"]
        t.add_row(lease["name"], lease["holder"] or "[yellow]free[/yellow]",
                  humanize.human_seconds(held) if held is not None else "",
                  lease["expires_at"] or "")
    console.print(t)


def render(console: Console, data: dict[str, Any]) -> None:
    """Draw the status for a person."""
    db = data["database"]
    console.print(f"[bold]database[/bold] {db['path']} ({db['bytes'] / 1e6:.1f} MB)")
    counts = data["recordings"]
    console.print("[bold]recordings[/bold] " + (", ".join(
        f"{k} {v}" for k, v in counts.items()) or "none yet"))
    projects = data.get("projects") or {}
    if len(projects) > 1:
        t = Table("project", "recordings", "last walk", "newest pass", box=None)
        budgets = ((data["daemon"] or {}).get("projects") or {}) if data["daemon"] else {}
        for name, facts in projects.items():
            walk = facts.get("last_walk")
            newest = (facts.get("passes") or [None])[0]
            live = sum(v for k, v in facts["recordings"].items() if k != "deleted")
            budget = budgets.get(name)
            used = (f", budget {budget['requests_last_minute']}/{budget['requests_per_minute']}"
                    if budget else "")
            t.add_row(name, f"{live:,}{used}",
                      f"{walk['kind']} {walk['started_at']}" if walk else "none yet",
                      (f"{newest['kind']} {newest['started_at']}"
                       + (f" [red]{newest['error']}[/red]" if newest.get("error") else ""))
                      if newest else "none yet")
        console.print(t)
    d = data["daemon"]
    if d:
        state = "running" if d.get("running") else "not running"
        console.print(
            f"[bold]daemon[/bold] {state} (pid {d.get('pid')}), budget used "
            f"{d.get('requests_last_minute')}/{d.get('requests_per_minute')} requests in the "
            f"last minute, as of {d.get('updated_at')}")
        for job, when in (d.get("next_runs") or {}).items() if d.get("running") else ():
            console.print(f"  next {job}: {when}")
    if data.get("workers"):
        _render_workers(console, data["workers"])
    walk = data["last_walk"]
    if walk:
        done = "complete" if walk["complete"] else f"stopped at offset {walk['position']}"
        console.print(f"[bold]last walk[/bold] {walk['kind']} {walk['started_at']} ({done})")
    ev = data["events"]
    kept = (f"settled ones kept {ev['retention_days']} days" if ev["retention_days"]
            else "all kept")
    oldest = f", oldest {ev['oldest_at']}" if ev["oldest_at"] else ""
    console.print(f"[bold]events[/bold] {ev['total']}{oldest} ({kept})")
    if data.get("files"):
        console.print("[bold]files[/bold] see `botasync files status` for the download queue: "
                      + ", ".join(f"{k} {v}" for k, v in data["files"].items()
                                  if isinstance(v, int | float)))
    several = len(projects) > 1
    for name, tr in ([(n, p.get("transcripts")) for n, p in projects.items()] if several
                     else [("", data.get("transcripts"))]):
        if not tr:
            continue
        q = tr["queued"]
        console.print(
            f"[bold]transcripts[/bold] {f'{name}: ' if name else ''}"
            f"{tr['done']['recordings']:,} recordings done, "
            f"{q['recordings']:,} queued" + (f" ({q['eta']})" if q["recordings"] else "")
            + f", {tr['failed']['transcriptions']:,} failed, "
            f"{tr['gave_up']['recordings']:,} gave up; see `botasync transcripts status`")
    if data["handlers"]:
        t = Table("handler", "backlog", "dead", "oldest waiting", box=None)
        for name, h in data["handlers"].items():
            t.add_row(name, str(h["backlog"]), f"[red]{h['dead']}[/red]" if h["dead"] else "0",
                      h.get("oldest_undelivered_at") or "")
        console.print(t)
    t = Table("pass", "kind", "started", "pages", "requests", "created", "updated", "deleted",
              "events", "error", title="last passes", box=None)
    for p in data["passes"]:
        t.add_row(str(p["id"]), p["kind"], p["started_at"], str(p["pages"]), str(p["requests"]),
                  str(p["created"]), str(p["updated"]), str(p["deleted"]), str(p["events"]),
                  p["error"] or "")
    console.print(t)
