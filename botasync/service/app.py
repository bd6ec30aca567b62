"""App: everything a command needs, wired: store, client, dispatcher, syncer.

Opened together, closed in reverse order. The one-shot commands (`sync`, `events
replay`, `config check`) are here too: each opens what it needs and calls one thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.config import Config, require_key
from botasync.errors import BotasyncError, ConfigError
from botasync.events.handlers import Handler, build_handler
from botasync.events.outbox import Dispatcher, ReplayResult, start_handlers
from botasync.lifecycle import AsyncClosing
from botasync.media.downloader import Downloader
from botasync.service import leases
from botasync.service.workers import OneShot, worker_id
from botasync.store import open_store, retention
from botasync.store.base import Database
from botasync.store.leases import WorkerId
from botasync.sync.syncer import PassStats, Progress, Syncer
from botasync.transcripts.fetcher import TranscriptFetcher

log = structlog.get_logger("botasync.app")

SHUTDOWN_GRACE_S = 5.0


@dataclass
class ProjectParts:
    """One Bota project's share of the service: its configuration view, its client with its
    own budgets (each project has its own rate limit), its syncer, downloader and
    transcript fetcher, and the store they write through (a worker's is fenced by the
    project's lease)."""

    cfg: Config
    client: BotaClient
    budget: RequestBudget
    syncer: Syncer
    downloader: Downloader
    transcripts: TranscriptFetcher
    store: Database

    @property
    def name(self) -> str:
        return self.cfg.project

    @classmethod
    def build(cls, cfg: Config, store: Database, dispatcher: Dispatcher,
              on_progress: Progress | None = None) -> ProjectParts:
        share = max(1, int(cfg.api.requests_per_minute * cfg.sync.reconcile_budget_share))
        client = BotaClient.for_project(
            cfg.api, cfg.project, download_per_minute=cfg.media.requests_per_minute,
            transcripts_per_minute=cfg.transcripts.requests_per_minute)
        downloader = Downloader(store, client, cfg.media, on_commit=dispatcher.notify,
                                project=cfg.project)
        transcripts = TranscriptFetcher(store, client, cfg.transcripts,
                                        on_commit=dispatcher.notify, project=cfg.project)

        def committed() -> None:
            dispatcher.notify()
            downloader.notify()
            transcripts.notify()

        syncer = Syncer(cfg, client, store, on_commit=committed, on_progress=on_progress,
                        reconcile_budget=RequestBudget(share))
        return cls(cfg, client, client.budget, syncer, downloader, transcripts, store)

    async def start(self) -> None:
        await self.downloader.start()
        await self.transcripts.start()

    async def aclose(self, grace_s: float) -> None:
        await self.transcripts.aclose(grace_s=grace_s)
        await self.downloader.aclose(grace_s=grace_s)
        await self.client.aclose()


class App(AsyncClosing):
    """Database, dispatcher, and each project's parts, opened together and closed in reverse.

    `syncer`, `client`, `budget`, `downloader`, `transcripts`: the first project's (the
    only one, with `[api]` alone).
    """

    def __init__(self, cfg: Config, store: Database, dispatcher: Dispatcher,
                 projects: Sequence[ProjectParts], on_progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.on_progress = on_progress
        self.store = store
        self.dispatcher = dispatcher
        self.projects = {p.name: p for p in projects}
        first = projects[0]
        self.client, self.budget, self.syncer = first.client, first.budget, first.syncer
        self.downloader, self.transcripts = first.downloader, first.transcripts
        self._closed = False

    @classmethod
    async def open(
        cls, cfg: Config, *, on_progress: Progress | None = None,
        extra_handlers: Sequence[Handler] = (), only: str | None = None,
        application_name: str | None = None,
    ) -> App:
        """Open the database (migrating it), build the handlers and each project's parts
        (`only`: that project's alone). `application_name`: a worker's id, on PostgreSQL."""
        views = [cfg.for_project(only)] if only else cfg.each_project()
        for view in views:
            require_key(view)
        handlers = build_handlers(cfg) + list(extra_handlers)
        store = await open_store(cfg.database, application_name=application_name)
        dispatcher = Dispatcher(store, handlers, cfg.events,
                                projects={h.name: h.projects for h in cfg.handlers if h.projects})
        parts = [ProjectParts.build(view, store, dispatcher, on_progress) for view in views]
        return cls(cfg, store, dispatcher, parts, on_progress)

    async def rebuild(self, name: str, store: Database) -> ProjectParts:
        """A project's parts anew, writing through `store` (a worker's, fenced by the
        project's lease), in place of the ones before (closed first: a downloader or a
        transcript fetcher does not start twice). Not started yet."""
        old = self.projects[name]
        await old.aclose(SHUTDOWN_GRACE_S)
        part = ProjectParts.build(old.cfg, store, self.dispatcher, self.on_progress)
        self.projects[name] = part
        return part

    async def prune_events(self) -> retention.PruneResult | None:
        """Forget settled events past `[events] retention_days` (None when that is 0)."""
        days = self.cfg.events.retention_days
        if not days:
            return None
        return await retention.prune_events(
            self.store, retention.cutoff(days), self.dispatcher.handler_names)

    async def aclose(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Close in reverse order of opening; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for part in reversed(self.projects.values()):
            await part.aclose(grace_s)
        await self.dispatcher.aclose(grace_s=grace_s)
        await self.store.aclose()


def build_handlers(cfg: Config, names: Sequence[str] | None = None) -> list[Handler]:
    """The configured handlers (or those named), checked now: a command that does not
    exist stops the start, like a python target that does not import."""
    withhold = cfg.secret_env_names()
    return [build_handler(h, withhold=withhold, check=True) for h in cfg.handlers
            if names is None or h.name in names]


DB_SUFFIXES = ("", "-wal", "-shm")


def _db_files(path: str | Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in DB_SUFFIXES]


def _remove_if_empty(db: Path) -> None:
    """Remove a database this run created if it holds no recording (a failed first sync)."""
    try:
        uri = f"{db.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            kept = conn.execute("SELECT count(*) FROM recordings").fetchone()[0]
    except sqlite3.Error:
        kept = 0  # no tables: the run failed before its first migration
    if not kept:
        for f in _db_files(db):
            with contextlib.suppress(OSError):  # never there (its parent is a file, say)
                f.unlink(missing_ok=True)


async def sync_once(
    cfg: Config, *, full: bool = True, deliver_timeout: float = 30.0,
    on_progress: Progress | None = None,
    on_budget: Callable[[RequestBudget], None] | None = None,
    only: str | None = None,
    on_skip: Callable[[str], None] | None = None,
) -> tuple[list[PassStats], bool]:
    """`botasync sync`: one pass (full, or quick) of every project (or `only` that one),
    then deliver their events for a while.

    On PostgreSQL, beside running workers: only the projects and handler lanes it can
    lease, for the length of the pass; each one skipped is a line to `on_skip` (else the
    log), and `only` skipped is an error.

    A first sync that fails (a rejected key, an API not there) leaves no empty database.
    """
    db = Path(cfg.database.path)
    fresh = not cfg.database.url and not any(f.exists() for f in _db_files(db))
    try:
        return await _sync_once(cfg, full, deliver_timeout, on_progress, on_budget, only,
                                on_skip or _log_skip)
    except BaseException:
        if fresh:
            await asyncio.shield(asyncio.to_thread(_remove_if_empty, db))
        raise


def _log_skip(line: str) -> None:
    log.warning("sync_skipped", line=line)


async def _sync_once(
    cfg: Config, full: bool, deliver_timeout: float, on_progress: Progress | None,
    on_budget: Callable[[RequestBudget], None] | None, only: str | None,
    on_skip: Callable[[str], None],
) -> tuple[list[PassStats], bool]:
    # PostgreSQL: who this sync is among the workers, named on its sessions from the start
    me = worker_id(leases.ONE_SHOT) if cfg.database.url else None
    async with await App.open(cfg, on_progress=on_progress, only=only,
                              application_name=me.id if me else None) as app:
        async with _leased(app, me, only, on_skip) as (parts, lanes, held):
            if on_budget is not None and parts:
                on_budget(parts[0].budget)
            await app.dispatcher.start(lanes=lanes, held=held)
            # each project has its own rate limit: they sync side by side
            passes = await asyncio.gather(*(_one_pass(part.syncer, full) for part in parts))
            stats = [s for one in passes for s in one]
            delivered = await app.dispatcher.drain(deliver_timeout) if cfg.handlers else True
            if full:
                await app.prune_events()
            return stats, delivered


@asynccontextmanager
async def _leased(
    app: App, me: WorkerId | None, only: str | None, on_skip: Callable[[str], None],
) -> AsyncIterator[tuple[list[ProjectParts], list[str] | None, Callable[[str], bool] | None]]:
    """The projects (their parts writing through the lease's fence), the handler lanes
    this sync may work and, by lane name, whether it still holds the lane's lease: on
    SQLite all of them (`None`: every lane, always); on PostgreSQL those it leases
    (`OneShot`), until the end of the pass. Two walks of one project at once would resume
    each other's checkpoint, and two lanes of one handler deliver twice."""
    db = app.cfg.database
    if me is None or not db.url:
        yield list(app.projects.values()), None, None
        return

    async def lost(lease: str, why: str) -> None:
        # a project's writes stop at the fence; a lane would go on delivering beside the
        # worker that took it: stop it
        if leases.kind_of(lease) == leases.HANDLER:
            await app.dispatcher.stop_lane(leases.subject(lease), SHUTDOWN_GRACE_S)

    shot = OneShot(db.url, db.lease_s, me, on_lost=lost)
    names = ([leases.project_lease(n) for n in app.projects]
             + [leases.handler_lease(n) for n in app.dispatcher.handler_names])
    lanes: list[str] = []
    try:
        _skip(await shot.start(names), only, on_skip)
        parts = [await app.rebuild(n, shot.store_for(leases.project_lease(n), app.store))
                 for n in list(app.projects) if leases.project_lease(n) in shot.held]
        lanes = [n for n in app.dispatcher.handler_names
                 if leases.handler_lease(n) in shot.held]
        yield parts, lanes, lambda lane: shot.holds(leases.handler_lease(lane))
    finally:
        for lane in lanes:  # what it delivered is recorded before the lease goes back
            await app.dispatcher.stop_lane(lane, SHUTDOWN_GRACE_S)
        await shot.aclose()


def _skip(skipped: dict[str, str | None], only: str | None,
          on_skip: Callable[[str], None]) -> None:
    """One line per lease another holds; the project asked for by name is an error."""
    for lease, holder in skipped.items():
        line = skip_line(lease, holder)
        if only is not None and lease == leases.project_lease(only):
            raise BotasyncError(line)
        on_skip(line)


def skip_line(lease: str, holder: str | None) -> str:
    """Why `botasync sync` leaves a project or a handler's lane alone, in one line."""
    name = leases.subject(lease)
    if holder is None:
        who = "another process is taking it right now"
    elif leases.is_one_shot(holder):
        who = f"another botasync sync ({holder}) holds it"
    else:
        who = f"worker {holder} holds it"
    if leases.kind_of(lease) == leases.HANDLER:
        return f"handler {name}: not delivered here, {who}; the workers deliver to it"
    return f"{name}: skipped, {who}; " + (
        "its daemon syncs it" if holder and not leases.is_one_shot(holder) else "try again later")


async def _one_pass(syncer: Syncer, full: bool) -> list[PassStats]:
    return [await syncer.full()] if full else await syncer.quick()


async def replay_events(
    cfg: Config, handler: str, *, since_seq: int | None = None, type_pattern: str | None = None,
    project: str | None = None,
) -> ReplayResult:
    """`botasync events replay`: deliver stored events to one handler again."""
    names = [h.name for h in cfg.handlers]
    if handler not in names:
        known = ", ".join(names) or "none"
        raise ConfigError(f"no handler named {handler!r} (configured: {known})")
    handlers = build_handlers(cfg, [handler])
    async with await open_store(cfg.database) as store:
        dispatcher = Dispatcher(store, handlers, cfg.events,
                                projects={h.name: h.projects for h in cfg.handlers if h.projects})
        try:
            return await dispatcher.replay(handler, since_seq=since_seq, type_pattern=type_pattern,
                                           project=project)
        finally:
            await dispatcher.aclose()


async def check(cfg: Config) -> list[str]:
    """`botasync config check`: the config is valid, each project's key resolves and the
    API accepts it, the handlers are ready."""
    lines = ["configuration is valid"]
    views = cfg.each_project()
    for view in views:
        key = require_key(view)
        source = ("BOTA_API_KEY / api_key" if not view.api.api_key_file
                  else f"api_key_file {view.api.api_key_file}")
        lines.append(f"{_of(view, views)}API key found ({key[:8]}..., from {source})")
    handlers = build_handlers(cfg)
    try:  # a broker's stream, checked now
        await start_handlers(handlers, cfg.events, strict=True)
    finally:
        for handler in handlers:
            await handler.aclose()
    if cfg.handlers:
        names = ", ".join(h.name for h in cfg.handlers)
        count = len(cfg.handlers)
        lines.append(f"{count} handler{'' if count == 1 else 's'} ready: {names}")
    for view in views:
        # a check answers now, not in a minute
        quick = view.api.model_copy(update={"max_retries": 1})
        async with BotaClient(quick, budget=RequestBudget(view.api.requests_per_minute),
                              backoff_base=0.2, backoff_cap=1.0) as client:
            await client.check()
        lines.append(f"{_of(view, views)}API at {view.api.base_url} accepted the key "
                     "(recordings:read)")
    return lines


def _of(view: Config, views: Sequence[Config]) -> str:
    """`project staging: ` before a line, when there is more than one project."""
    return f"project {view.project}: " if len(views) > 1 else ""
