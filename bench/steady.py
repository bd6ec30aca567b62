"""Part 2: steady state. `botasync run` keeps a mirrored archive in step while it moves.

The simulator's own mover (`--move-every`) logs what it changed only at debug level and
with no time, so the bench moves the world itself: `POST /_sim/step?n=1` at the planned
rate, noting the wall time just before each call and the change it returns. The daemon
delivers every event to a command handler (`hooks/record_event.py`) that notes the time
it ran; change-to-event latency is the difference (one clock: the same machine).
Requests per cycle come from the simulator's request log, grouped into ticks by gaps.
"""

from __future__ import annotations

import json
import re
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

from env import BENCH, PY, Plan, botasync_env, write_config
from procs import Background, SimProcess, tree_rss

MB = 1024 * 1024
REC_RE = re.compile(r"rec_[A-Za-z0-9]+")
TICK_KINDS = ("created", "advanced", "media")  # what the tick (head + hot) is built to see


def daemon_config(path: Path, plan: Plan, events_out: Path) -> Path:
    return write_config(path, (
        f"# part 2: the daemon as deployed (default budget 90/min), a short tick\n"
        f"[sync]\ninterval_s = {plan.interval_s}\nreconcile_every_s = 86400\n\n"
        "[logging]\nlevel = \"info\"\nformat = \"json\"\n\n"
        "[[handlers]]\nname = \"record\"\ntype = \"command\"\n"
        f"command = [\"{PY}\", \"{BENCH / 'hooks' / 'record_event.py'}\"]\ntimeout_s = 30\n"))


def change_kind(desc: str) -> str:
    """What a `World.step` description says happened."""
    if desc.startswith("created"):
        return "created"
    if desc.startswith("deleted"):
        return "deleted"
    if "->" in desc:
        return "advanced"
    if " media " in desc:
        return "media"
    return "edited"


def _last_hot_id(db: Path) -> int:
    con = sqlite3.connect(db)
    try:
        row = con.execute("SELECT max(id) FROM sync_runs WHERE kind = 'hot' "
                          "AND ended_at IS NOT NULL").fetchone()
        return int(row[0] or 0)
    finally:
        con.close()


def _wait_first_tick(db: Path, before: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _last_hot_id(db) > before:
            return True
        time.sleep(0.1)
    return False


def drive(sim: SimProcess, plan: Plan, daemon: Background) -> tuple[list[dict[str, Any]], int]:
    """Make one change every 60/rate seconds for `steady_s`; sample the daemon's RSS."""
    period = 60.0 / plan.changes_per_min
    changes: list[dict[str, Any]] = []
    peak = 0
    end = time.monotonic() + plan.steady_s
    due = time.monotonic() + period / 2
    while time.monotonic() < end and len(changes) < 10_000:
        while time.monotonic() < due:
            peak = max(peak, tree_rss(daemon.proc.pid))
            time.sleep(min(0.2, max(0.0, due - time.monotonic())))
        t = time.time()
        for desc in sim.step(1):
            m = REC_RE.search(desc)
            changes.append({"t": t, "desc": desc, "kind": change_kind(desc),
                            "recording_id": m.group(0) if m else None})
        due += period
    return changes, peak


def cycles(entries: list[dict[str, Any]], gap_s: float) -> list[dict[str, Any]]:
    """Group API requests into ticks: a new tick starts after a quiet gap."""
    api = sorted((e for e in entries if e["path"].startswith("/v1/")), key=lambda e: e["t"])
    groups: list[list[dict[str, Any]]] = []
    for e in api:
        if not groups or e["t"] - groups[-1][-1]["t"] > gap_s:
            groups.append([])
        groups[-1].append(e)
    return [{"t": g[0]["t"], "requests": len(g),
             "detail": sum(1 for e in g if e["path"].count("/") == 3),
             "status_429": sum(1 for e in g if e["status"] == 429)} for g in groups]


def latencies(changes: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Give each change the first event of its recording that ran after it (in place)."""
    by_rec: dict[str, list[dict[str, Any]]] = {}
    for ev in sorted(events, key=lambda e: e["t"]):
        by_rec.setdefault(ev.get("recording_id") or "", []).append(ev)
    for c in changes:
        later = [e for e in by_rec.get(c["recording_id"] or "", []) if e["t"] >= c["t"]]
        c["event"] = later[0]["type"] if later else None
        c["latency_s"] = round(later[0]["t"] - c["t"], 3) if later else None


def summarize(changes: list[dict[str, Any]], ticks: list[dict[str, Any]], plan: Plan
              ) -> dict[str, Any]:
    per = [t["requests"] for t in ticks]
    lat = sorted(c["latency_s"] for c in changes if c["latency_s"] is not None)
    tick_changes = [c for c in changes if c["kind"] in TICK_KINDS]
    unseen: dict[str, int] = {}
    for c in changes:
        if c["latency_s"] is None:
            unseen[c["kind"]] = unseen.get(c["kind"], 0) + 1
    return {
        "cycles": len(ticks), "requests": sum(per),
        "requests_per_cycle_mean": round(statistics.fmean(per), 2) if per else None,
        "requests_per_cycle_median": statistics.median(per) if per else None,
        "requests_per_cycle_max": max(per, default=None),
        "status_429": sum(t["status_429"] for t in ticks),
        "changes": len(changes), "changes_by_kind": _count_kinds(changes),
        "tick_changes": len(tick_changes),
        "tick_changes_seen": sum(1 for c in tick_changes if c["latency_s"] is not None),
        "not_seen_by_kind": unseen,
        "latency_p50_s": lat[len(lat) // 2] if lat else None,
        "latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else None,
        "latency_max_s": lat[-1] if lat else None,
        "latency_target_s": plan.interval_s + 2,
    }


def _count_kinds(changes: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in changes:
        out[c["kind"]] = out.get(c["kind"], 0) + 1
    return out


def steady(sim: SimProcess, plan: Plan, work: Path, db: Path) -> dict[str, Any]:
    """Run the daemon on the mirrored `db` while the world moves; measure cost and latency."""
    events_out = work / "steady-events.jsonl"
    events_out.unlink(missing_ok=True)
    cfg = daemon_config(work / "daemon.toml", plan, events_out)
    sim.set_rate_limit(plan.rate_limit)
    before_stats, first = sim.stats(), sim.request_count()
    hot_before = _last_hot_id(db)
    daemon = Background([PY, "-m", "botasync", "run"], log_path=work / "daemon.log",
                        env=botasync_env(sim.url, sim.api_key, db, cfg,
                                         BENCH_EVENTS_OUT=str(events_out)))
    try:
        ticked = _wait_first_tick(db, hot_before, timeout_s=60 + plan.interval_s)
        changes, peak = drive(sim, plan, daemon)
        # the last change's tick and delivery: one more interval, plus delivery time
        time.sleep(plan.interval_s + min(3.0, plan.interval_s + 1))
        last = sim.request_count()
    finally:
        code = daemon.stop()
    entries = sim.requests_since(first)[: last - first]
    events = [json.loads(ln) for ln in events_out.read_text().splitlines()] \
        if events_out.exists() else []
    latencies(changes, events)
    ticks = cycles(entries, gap_s=plan.interval_s / 2)
    after_stats = sim.stats()
    sim.set_rate_limit(None)
    return {
        "n": plan.big, "interval_s": plan.interval_s, "duration_s": plan.steady_s,
        "changes_per_min": plan.changes_per_min, "rate_limit_per_min": plan.rate_limit,
        "first_tick_seen": ticked, "daemon_exit_code": code, "daemon_peak_rss_mb":
        round(peak / MB, 1), "events_delivered": len(events),
        "in_flight_start": _in_flight(before_stats), "in_flight_end": _in_flight(after_stats),
        **summarize(changes, ticks, plan), "ticks": ticks, "change_log": changes,
    }


def _in_flight(stats: dict[str, Any]) -> int:
    by = stats.get("by_status", {})
    return int(sum(by.get(s, 0) for s in ("pending", "uploaded", "processing")))
