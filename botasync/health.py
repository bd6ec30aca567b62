"""Is the mirror healthy? Pure rules over what `botasync status` collects.

For monitoring (`botasync status --check`, exit 1 on a problem): passes have stopped
(the daemon is down, or the cron job is), the newest pass or walk failed (a rejected
key, an API down beyond the retries), or a handler has dead letters waiting.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

INTERVALS_LATE = 3  # passes this many intervals overdue make a problem


def default_max_age(interval_s: float) -> float:
    """How old the newest pass may be: a few daemon ticks, and never under a minute."""
    return max(INTERVALS_LATE * interval_s, 60.0)


def problems(data: dict[str, Any], *, max_age_s: float, now: datetime) -> list[str]:
    """What is wrong, one line each; empty when all is well."""
    passes = data["passes"]
    if not passes:
        return ["no pass has run yet: start `botasync run` (or `botasync sync`)"]
    out = []
    newest = passes[0]
    age = _age(newest, now)
    if age > max_age_s:
        out.append(f"the newest pass started {age:.0f} s ago (allowed: {max_age_s:.0f} s); "
                   "is the daemon running?")
    # the newest pass, and the newest walk: ticks going well must not hide failing
    # reconcile walks (deletions and old edits would never be seen)
    walk = data.get("last_walk")
    for name, run in (("pass", newest), ("walk", walk)):
        if run and _failed(run) and (name == "pass" or run["id"] != newest["id"]):
            out.append(f"the newest {name} ({run['kind']}) failed: {run['error']}")
    for name, handler in data["handlers"].items():
        if handler["dead"]:
            out.append(f"handler {name} has {handler['dead']} dead deliveries "
                       f"(`botasync events replay --handler {name}` once it is fixed)")
    return out


def _age(run: dict[str, Any], now: datetime) -> float:
    return (now - datetime.fromisoformat(run["started_at"])).total_seconds()


def _failed(run: dict[str, Any]) -> bool:
    return bool(run["error"]) and run["error"] != "interrupted"  # a restart, not a failure


def summary(data: dict[str, Any], now: datetime) -> str:
    """The one line for a healthy mirror."""
    total = sum(data["recordings"].values())
    return (f"ok: newest pass {_age(data['passes'][0], now):.0f} s ago, {total} recordings, "
            "no dead deliveries")
