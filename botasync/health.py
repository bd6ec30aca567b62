"""Is the mirror healthy? Pure rules over what `botasync status` collects.

For monitoring (`botasync status --check`, exit 1 on a problem): passes have stopped
(the daemon is down, or the cron job is), no pass has succeeded for longer than the max
age (a rejected key, an API down beyond the retries), the newest pass or walk failed, a
handler has dead letters waiting, or an event has waited too long for a handler.

Only finished passes count: a pass still running (retrying against an API that is
down, say) is not "the newest pass", or an outage would look healthy while it lasts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

INTERVALS_LATE = 3  # passes this many intervals overdue make a problem
DEFAULT_MAX_UNDELIVERED_S = 3600.0


@dataclass(frozen=True)
class Limits:
    """How old things may get before they are a problem."""

    max_age_s: float  # the newest successful pass
    max_undelivered_s: float = DEFAULT_MAX_UNDELIVERED_S  # an event no handler took; 0: none


def default_max_age(interval_s: float) -> float:
    """How old the newest pass may be: a few daemon ticks, and never under a minute."""
    return max(INTERVALS_LATE * interval_s, 60.0)


def problems(data: dict[str, Any], limits: Limits, *, now: datetime) -> list[str]:
    """What is wrong, one line each; empty when all is well.

    With several projects (`data["projects"]`: each with its own passes) the rules on
    passes and walks hold for each, its lines led by `project NAME:`.
    """
    projects = data.get("projects") or {}
    if len(projects) > 1:
        out = [f"project {name}: {line}" for name, facts in projects.items()
               for line in _sync_problems(facts, limits, now)]
    else:
        out = _sync_problems(data, limits, now)
    for name, handler in data["handlers"].items():
        if handler["dead"]:
            out.append(f"handler {name} has {handler['dead']} dead deliveries "
                       f"(`botasync events replay --handler {name}` once it is fixed)")
        waiting = handler.get("oldest_undelivered_at")
        if limits.max_undelivered_s and waiting:
            age = _since(waiting, now)
            if age > limits.max_undelivered_s:
                out.append(f"handler {name} has had an event waiting {age:.0f} s (allowed: "
                           f"{limits.max_undelivered_s:.0f} s); `botasync events list "
                           "--undelivered` shows it")
    return out


def _sync_problems(data: dict[str, Any], limits: Limits, now: datetime) -> list[str]:
    """The rules on one project's passes and walks."""
    if not data["passes"]:
        return ["no pass has run yet: start `botasync run` (or `botasync sync`)"]
    out = _pass_problems(data, limits.max_age_s, now)
    walk = data.get("last_finished_walk", data.get("last_walk"))
    finished = newest_finished(data)
    if walk and walk.get("ended_at") and _failed(walk) and (
            finished is None or walk["id"] != finished["id"]):
        out.append(f"the newest walk ({walk['kind']}) failed: {walk['error']}")
    return out


def _pass_problems(data: dict[str, Any], max_age_s: float, now: datetime) -> list[str]:
    """The rules on passes: one finished lately, and it succeeded."""
    finished, ok = newest_finished(data), newest_ok(data)
    if finished is None:
        running = data["passes"][0]
        age = _since(running["started_at"], now)
        if age <= max_age_s:
            return []  # a first pass still running, not late yet
        return [f"no pass has finished yet: the {running['kind']} pass started {age:.0f} s ago "
                f"is still running (allowed: {max_age_s:.0f} s)"]
    failed = f"the newest pass ({finished['kind']}) failed: {finished['error']}"
    ok_age = _since(ok["ended_at"], now) if ok else None
    if ok_age is not None and ok_age <= max_age_s:
        return [failed] if _failed(finished) else []
    if _failed(finished):
        since = f"for {ok_age:.0f} s" if ok_age is not None else "yet"
        return [f"no pass has succeeded {since} (allowed: {max_age_s:.0f} s); {failed}"]
    age = _since(finished["ended_at"], now)
    return [f"the newest pass finished {age:.0f} s ago (allowed: {max_age_s:.0f} s); "
            "is the daemon running?"]


def newest_finished(data: dict[str, Any]) -> dict[str, Any] | None:
    """The newest pass that ended (well or not)."""
    return next((p for p in data["passes"] if p.get("ended_at")), None)


def newest_ok(data: dict[str, Any]) -> dict[str, Any] | None:
    """The newest pass that ended without an error (looked up beyond the last ten too)."""
    found = next((p for p in data["passes"] if p.get("ended_at") and not _failed(p)), None)
    return found or data.get("last_ok")


def _since(timestamp: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(timestamp)).total_seconds()


def _failed(run: dict[str, Any]) -> bool:
    return bool(run["error"]) and run["error"] != "interrupted"  # a restart, not a failure


def summary(data: dict[str, Any], now: datetime) -> str:
    """The one line for a healthy mirror."""
    total = sum(data["recordings"].values())
    finished = newest_finished(data)
    when = (f"newest pass finished {_since(finished['ended_at'], now):.0f} s ago" if finished
            else "the first pass is running")
    return f"ok: {when}, {total} recordings, no dead deliveries"
