"""App: everything a command needs, wired: store, client, dispatcher, syncer.

Opened together, closed in reverse order. The one-shot commands (`sync`, `events
replay`, `config check`) are here too: each opens what it needs and calls one thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from botasync.api.budget import RequestBudget
from botasync.api.client import BotaClient
from botasync.config import Config, require_key
from botasync.errors import ConfigError
from botasync.events.handlers import Handler, build_handler
from botasync.events.outbox import Dispatcher, ReplayResult, start_handlers
from botasync.lifecycle import AsyncClosing
from botasync.media.downloader import Downloader
from botasync.store import retention
from botasync.store.sqlite import Store
from botasync.sync.syncer import PassStats, Progress, Syncer
from botasync.transcripts.fetcher import TranscriptFetcher

SHUTDOWN_GRACE_S = 5.0




class App(AsyncClosing):
    """Store, client, dispatcher and syncer, opened together and closed in reverse."""

    def __init__(self, cfg: Config, store: Store, client: BotaClient, dispatcher: Dispatcher,
                 syncer: Syncer, budget: RequestBudget, downloader: Downloader,
                 transcripts: TranscriptFetcher) -> None:
        self.cfg = cfg
        self.store = store
        self.client = client
        self.dispatcher = dispatcher
        self.syncer = syncer
        self.budget = budget
        self.downloader = downloader
        self.transcripts = transcripts
        self._closed = False

    @classmethod
    async def open(
        cls, cfg: Config, *, on_progress: Progress | None = None,
        extra_handlers: Sequence[Handler] = (),
    ) -> App:
        """Open the database (migrating it), build the handlers and the client."""
        require_key(cfg)
        handlers = build_handlers(cfg) + list(extra_handlers)
        store = await Store.open(cfg.database.path)
        budget = RequestBudget(cfg.api.requests_per_minute)
        share = max(1, int(cfg.api.requests_per_minute * cfg.sync.reconcile_budget_share))
        client = BotaClient(
            cfg.api, budget=budget, download_budget=RequestBudget(cfg.media.requests_per_minute),
            transcripts_budget=RequestBudget(cfg.transcripts.requests_per_minute),
            backoff_base=cfg.api.retry_base_s, backoff_cap=cfg.api.retry_max_s,
        )
        dispatcher = Dispatcher(store, handlers, cfg.events)
        downloader = Downloader(store, client, cfg.media, on_commit=dispatcher.notify)
        transcripts = TranscriptFetcher(store, client, cfg.transcripts,
                                        on_commit=dispatcher.notify)

        def committed() -> None:
            dispatcher.notify()
            downloader.notify()
            transcripts.notify()

        syncer = Syncer(cfg, client, store, on_commit=committed, on_progress=on_progress,
                        reconcile_budget=RequestBudget(share))
        return cls(cfg, store, client, dispatcher, syncer, budget, downloader, transcripts)


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
        await self.transcripts.aclose(grace_s=grace_s)
        await self.downloader.aclose(grace_s=grace_s)
        await self.dispatcher.aclose(grace_s=grace_s)
        await self.client.aclose()
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
) -> tuple[list[PassStats], bool]:
    """`botasync sync`: one pass (full, or quick), then deliver its events for a while.

    A first sync that fails (a rejected key, an API not there) leaves no empty database.
    """
    db = Path(cfg.database.path)
    fresh = not any(f.exists() for f in _db_files(db))
    try:
        return await _sync_once(cfg, full, deliver_timeout, on_progress, on_budget)
    except BaseException:
        if fresh:
            await asyncio.shield(asyncio.to_thread(_remove_if_empty, db))
        raise


async def _sync_once(
    cfg: Config, full: bool, deliver_timeout: float, on_progress: Progress | None,
    on_budget: Callable[[RequestBudget], None] | None,
) -> tuple[list[PassStats], bool]:
    async with await App.open(cfg, on_progress=on_progress) as app:
        if on_budget is not None:
            on_budget(app.budget)
        await app.dispatcher.start()
        stats = [await app.syncer.full()] if full else await app.syncer.quick()
        delivered = await app.dispatcher.drain(deliver_timeout) if cfg.handlers else True
        if full:
            await app.prune_events()
        return stats, delivered


async def replay_events(
    cfg: Config, handler: str, *, since_seq: int | None = None, type_pattern: str | None = None
) -> ReplayResult:
    """`botasync events replay`: deliver stored events to one handler again."""
    names = [h.name for h in cfg.handlers]
    if handler not in names:
        known = ", ".join(names) or "none"
        raise ConfigError(f"no handler named {handler!r} (configured: {known})")
    handlers = build_handlers(cfg, [handler])
    async with await Store.open(cfg.database.path) as store:
        dispatcher = Dispatcher(store, handlers, cfg.events)
        try:
            return await dispatcher.replay(handler, since_seq=since_seq, type_pattern=type_pattern)
        finally:
            await dispatcher.aclose()


async def check(cfg: Config) -> list[str]:
    """`botasync config check`: the config is valid, the key resolves, the API answers."""
    lines = ["configuration is valid"]
    key = require_key(cfg)
    source = ("BOTA_API_KEY / api_key" if not cfg.api.api_key_file
              else f"api_key_file {cfg.api.api_key_file}")
    lines.append(f"API key found ({key[:8]}..., from {source})")
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
    quick = cfg.api.model_copy(update={"max_retries": 1})  # a check answers now, not in a minute
    async with BotaClient(quick, budget=RequestBudget(cfg.api.requests_per_minute),
                          backoff_base=0.2, backoff_cap=1.0) as client:
        await client.check()
    lines.append(f"API at {cfg.api.base_url} accepted the key (recordings:read)")
    return lines
