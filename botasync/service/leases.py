"""Leases: who works on what when several `botasync run` share one PostgreSQL database.

The arithmetic alone, no I/O (the SQL is `store/leases.py`, the loop `service/workers.py`):

- a lease is a name (`project:<name>`, `handler:<name>`), a holder and an expiry. Its
  holder renews it every third of `lease_s`; one not renewed for `lease_s` is free for
  the taking, so the work of a worker killed with `kill -9` moves within `lease_s` and a
  round of the others.
- each kind of work (projects, handler lanes) is shared fairly: a worker holds at most
  `ceil(leases / live workers)` of each kind and takes up to that many. A worker that
  joins gets work (the others give up what is over their share), one that dies leaves its
  work to the others. Being fair per kind keeps one worker from holding every handler
  while another syncs every project.
- why leases rather than one lock per project: a lock held by a session dies with the
  session, but a worker paused (a stopped VM, a long GC, a lost network) keeps its session
  and would never give the project up; an expiry bounds that, and the fence (a writer
  checks its lease inside the transaction that writes) keeps a paused worker that wakes
  up from writing a project that moved on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from botasync.envelope import iso

PROJECT = "project:"
HANDLER = "handler:"
KINDS = (PROJECT, HANDLER)
RENEWALS_PER_LEASE = 3  # renewed every lease_s / 3: two renewals may fail before it expires
FORGET_DEAD_AFTER_S = 3600.0  # a dead worker's row stays this long (`status` shows it)
# a worker's id is also its sessions' `application_name` (how the others find the sessions
# of a dead worker to end them), which PostgreSQL cuts to 63 bytes (NAMEDATALEN - 1)
MAX_ID_BYTES = 63
ONE_SHOT = "sync@"  # the id's prefix of a `botasync sync` holding leases for one pass


def project_lease(name: str) -> str:
    return f"{PROJECT}{name}"


def handler_lease(name: str) -> str:
    return f"{HANDLER}{name}"


def kind_of(lease: str) -> str:
    """`project:` or `handler:`, the kind of work a lease stands for."""
    for kind in KINDS:
        if lease.startswith(kind):
            return kind
    raise ValueError(f"not a lease name: {lease!r}")


def subject(lease: str) -> str:
    """The project's or the handler's name in a lease's name."""
    return lease[len(kind_of(lease)):]


def bounded_id(prefix: str, host: str, pid: int, token: str) -> str:
    """`<prefix><host>:<pid>:<token>`, the host cut so the whole fits `MAX_ID_BYTES` in
    ASCII: PostgreSQL would cut a longer `application_name` (and show a non-ASCII one
    escaped), and the id would then match none of the worker's sessions."""
    tail = f":{pid}:{token}"
    room = max(0, MAX_ID_BYTES - len(prefix) - len(tail))
    ascii_host = host.encode("ascii", "replace").decode("ascii")
    return f"{prefix}{ascii_host[:room]}{tail}"


def is_one_shot(worker: str) -> bool:
    """A `botasync sync` (it holds leases for one pass, and takes no share of the work)."""
    return worker.startswith(ONE_SHOT)


def renew_every(lease_s: float) -> float:
    """Seconds between two rounds of the lease loop."""
    return lease_s / RENEWALS_PER_LEASE


def expiry(now: datetime, lease_s: float) -> str:
    """When a lease taken or renewed at `now` (the database's time) runs out."""
    return iso(now + timedelta(seconds=lease_s))


def holds(holder: str | None, expires_at: str | None, me: str, now: datetime) -> bool:
    """Whether `me` holds a lease at `now`: it is the holder, and the lease has not run out
    (a holder past its expiry may be claimed by another at any moment)."""
    return holder == me and expires_at is not None and expires_at > iso(now)


def local_deadline(sent_at: float, lease_s: float) -> float:
    """Until when (this process's monotonic clock) a lease renewed by a statement sent at
    `sent_at` is surely still held: the database stamped the renewal at or after that
    moment, so it runs out no sooner. Past it, unrenewed, the work stops by itself."""
    return sent_at + lease_s


def fair_share(leases: int, live_workers: int) -> int:
    """The most leases of one kind a worker should hold: all of them shared out evenly,
    rounded up so that together the workers hold every one."""
    return math.ceil(leases / max(1, live_workers)) if leases else 0


@dataclass(frozen=True)
class Plan:
    """What one round does for one kind: give up `release`, try to take `claim` more."""

    release: tuple[str, ...] = ()
    claim: int = 0


def plan(held: Sequence[str], total: int, live_workers: int) -> Plan:
    """Give up what is over the fair share (the last names first: the same ones every
    round, so no lease moves back and forth), or ask for what is missing."""
    share = fair_share(total, live_workers)
    mine = sorted(held)
    if len(mine) > share:
        return Plan(release=tuple(mine[share:]))
    return Plan(claim=share - len(mine))
