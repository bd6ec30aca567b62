"""The daemon's monitoring endpoints on `[metrics] listen`: `/metrics`, `/livez`, `/readyz`.

Served by aiohttp on the daemon's own loop. `/metrics` is prometheus-client's exposition
of two kinds of metric: counters and a histogram kept in-process (`Instruments`, fed
through `botasync.metrics` by the client, the outbox and the daemon), and gauges read from
the database at scrape time (`DatabaseCollector`). `/readyz` applies `status --check`'s
rule (`health.problems`) to the same facts (`status.health_facts`).

The database is read through a read-only `Store` opened for each request: a scrape never
holds the daemon's connection while a page commits, and "the database opens" is part of
what `/readyz` checks.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from botasync import health, metrics
from botasync.config import RECORDING_STATUSES, Config, parse_listen
from botasync.envelope import utc_now
from botasync.errors import BotasyncError
from botasync.events.outbox import backlog
from botasync.jsoncodec import dumps
from botasync.lifecycle import AsyncClosing
from botasync.media.admin import files_status
from botasync.service import status
from botasync.store import open_store, queries
from botasync.store.base import Database
from botasync.transcripts.admin import transcripts_status

log = structlog.get_logger("botasync.health_http")

PROJECT = metrics.PROJECT
# from a tick on a quiet archive (tens of ms) to a reconcile walk of 100,000 (an hour or more)
PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                14400.0)
STATUS_LABELS = (*RECORDING_STATUSES, "deleted")  # any other status is counted as `other`
_LAST_SUCCESS = ("SELECT project, kind, max(ended_at) FROM sync_runs "
                 "WHERE ended_at IS NOT NULL AND error IS NULL GROUP BY project, kind")


class Instruments:
    """The in-process counters, gauge and histogram: the `metrics.Sink` of this process."""

    def __init__(self) -> None:
        self.requests = Counter(
            "botasync_api_requests", "Bota API requests by endpoint and HTTP status code "
            "(`error`: no answer: refused, dropped, timed out); retries count each time",
            ["project", "endpoint", "code"], registry=None)
        self.rate_limit_remaining = Gauge(
            "botasync_api_rate_limit_remaining", "Requests left in the project's rate-limit "
            "window, as the API's X-RateLimit-Remaining last said (absent when it sends none)",
            ["project"], registry=None)
        self.delivery_results = Counter(
            "botasync_deliveries", "Delivery attempts recorded by the outbox: delivered, "
            "failed (to be retried) or dead (given up)", ["project", "handler", "result"],
            registry=None)
        self.pass_duration = Histogram(
            "botasync_pass_duration_seconds", "How long successful passes took, by kind",
            ["project", "kind"], buckets=PASS_BUCKETS, registry=None)
        self.leases = Gauge(
            "botasync_lease_held", "1 while this process does the work of the lease "
            "(`project:<name>`: the project's sync; `handler:<name>`: a handler's deliveries), "
            "0 once it stopped", ["project", "lease"], registry=None)

    def collectors(self) -> list[Collector]:
        return [self.requests, self.rate_limit_remaining, self.delivery_results,
                self.pass_duration, self.leases]

    def api_response(self, endpoint: str, code: str, remaining: int | None,
                     project: str) -> None:
        self.requests.labels(project, endpoint, code).inc()
        if remaining is not None:
            self.rate_limit_remaining.labels(project).set(remaining)

    def deliveries(self, handler: str, result: str, count: int) -> None:
        self.delivery_results.labels(PROJECT, handler, result).inc(count)

    def pass_finished(self, kind: str, seconds: float, project: str) -> None:
        self.pass_duration.labels(project, kind).observe(seconds)

    def lease(self, project: str, lease: str, held: bool) -> None:
        self.leases.labels(project, lease).set(float(held))


_instruments: Instruments | None = None


def instruments() -> Instruments:
    """The process's instruments, made and installed as the metrics sink on first use
    (process-wide, as counters are: two daemons in one process share them)."""
    global _instruments
    if _instruments is None:
        _instruments = Instruments()
        metrics.install(_instruments)
    return _instruments


@dataclass(frozen=True)
class Snapshot:
    """The gauges read from the database at one scrape; `problems` is `/readyz`'s verdict."""

    problems: list[str]
    # (project, kind) -> Unix time
    last_success: dict[tuple[str, str], float] = field(default_factory=dict)
    recordings: dict[tuple[str, str], int] = field(default_factory=dict)  # (project, status)
    outbox_pending: dict[str, int] = field(default_factory=dict)  # handler -> events
    outbox_oldest_age: dict[str, float] = field(default_factory=dict)  # handler -> seconds
    # (project, queued | done | failed) -> count; None: not mirrored
    media_files: dict[tuple[str, str], int] | None = None
    transcripts: dict[tuple[str, str], int] | None = None


def readiness_limits(cfg: Config) -> health.Limits:
    """`status --check`'s limits for the daemon: `[metrics] max_age_s`, else its default."""
    return health.Limits(
        max_age_s=cfg.metrics.max_age_s or health.default_max_age(cfg.sync.interval_s),
        max_undelivered_s=cfg.events.max_undelivered_age_s)


async def read_snapshot(store: Database, cfg: Config, limits: health.Limits,
                        now: datetime) -> Snapshot:
    """Everything the gauges show, read at once; the health rule applied to its facts."""
    facts = await status.health_facts(store, cfg)
    patterns = {h.name: list(h.events) for h in cfg.handlers}
    pending = await backlog(store, patterns, deliver_backfill=cfg.events.deliver_backfill)
    last = {(r[0], r[1]): datetime.fromisoformat(r[2]).timestamp()
            for r in await store.fetchall(_LAST_SUCCESS)}
    recordings: dict[tuple[str, str], int] = {}
    for project in cfg.project_names():
        for name, count in (await queries.counts_by_status(store, project)).items():
            key = (project, name if name in STATUS_LABELS else "other")
            recordings[key] = recordings.get(key, 0) + count
    oldest = {name: _age(h["oldest_undelivered_at"], now) for name, h in facts["handlers"].items()}
    media = transcripts = None
    if cfg.media.download:
        media = {}
        for name in cfg.project_names():
            f = await files_status(store, cfg.media, project=name)
            media.update({(name, "queued"): f["queued"]["files"],
                          (name, "done"): f["downloaded"]["files"],
                          (name, "failed"): f["failed"]["files"]})
    if cfg.transcripts.download:
        transcripts = {}
        for name in cfg.project_names():
            t = await transcripts_status(store, cfg.transcripts, name)
            transcripts.update({(name, "queued"): t["queued"]["recordings"],
                                (name, "done"): t["done"]["recordings"],
                                (name, "failed"): t["gave_up"]["recordings"]})
    return Snapshot(health.problems(facts, limits, now=now), last, recordings, pending, oldest,
                    media, transcripts)


def _age(timestamp: str | None, now: datetime) -> float:
    if timestamp is None:
        return 0.0
    return max(0.0, (now - datetime.fromisoformat(timestamp)).total_seconds())


class DatabaseCollector(Collector):
    """The gauges of the latest `Snapshot`, as metric families (set just before a scrape)."""

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the snapshot (media and transcripts may be off)

    def collect(self) -> Iterable[Metric]:
        s = self.snapshot
        if s is None:
            return
        yield _family("botasync_ready", "1 when /readyz answers 200 (the `status --check` "
                      "rule passes), else 0", [], {(): float(not s.problems)})
        yield _family("botasync_last_success_timestamp_seconds", "When the newest successful "
                      "pass of each kind ended (Unix time)", ["kind"],
                      {k: float(v) for k, v in s.last_success.items()}, per_project=True)
        yield _family("botasync_recordings", "Recordings in the mirror by status (`deleted`: "
                      "tombstones)", ["status"],
                      {k: float(v) for k, v in s.recordings.items()}, per_project=True)
        yield _family("botasync_outbox_pending", "Events past each handler's cursor that it "
                      "still has to take", ["handler"], _by(s.outbox_pending))
        yield _family("botasync_outbox_oldest_pending_age_seconds", "How long the oldest "
                      "event a handler has not taken has waited (0: none)", ["handler"],
                      _by(s.outbox_oldest_age))
        if s.media_files is not None:
            yield _family("botasync_media_files", "Media files to download (queued), on disk "
                          "(done) and given up (failed)", ["state"],
                          {k: float(v) for k, v in s.media_files.items()}, per_project=True)
        if s.transcripts is not None:
            yield _family("botasync_transcripts", "Recordings whose transcripts wait to be "
                          "fetched (queued), are mirrored (done) or were given up (failed)",
                          ["state"],
                          {k: float(v) for k, v in s.transcripts.items()}, per_project=True)


def _by(values: dict[str, Any]) -> dict[tuple[str, ...], float]:
    return {(k,): float(v) for k, v in values.items()}


def _family(name: str, doc: str, labels: list[str],
            values: dict[tuple[str, ...], float], *, per_project: bool = False,
            ) -> GaugeMetricFamily:
    """A gauge family; `per_project`: the keys lead with the project, else they are the
    service's (the outbox, the files) and carry the project `default`."""
    family = GaugeMetricFamily(name, doc, labels=["project", *labels])
    for key, value in sorted(values.items()):
        family.add_metric(list(key) if per_project else [PROJECT, *key], value)
    return family


class MonitorServer(AsyncClosing):
    """`/metrics`, `/livez` and `/readyz` on `[metrics] listen`; `start()`, `port`, `aclose()`."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limits = readiness_limits(cfg)
        self.collector = DatabaseCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        for collector in [*instruments().collectors(), self.collector]:
            self.registry.register(collector)
        self.port = 0  # the port bound (the configured one, or any free one for port 0)
        self._reads = asyncio.Lock()  # one database read at a time, however many scrapers
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind and serve; a port that cannot be bound is one line (exit 1, not a config error:
        the old process may still hold it, and systemd's restart tries again)."""
        host, port = parse_listen(self.cfg.metrics.listen)
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as e:
            await runner.cleanup()
            why = os.strerror(e.errno).lower() if e.errno else str(e)
            raise BotasyncError(f"[metrics] listen: cannot listen on {self.cfg.metrics.listen}: "
                                f"{why}") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics_listening", listen=self.cfg.metrics.listen, port=self.port)

    async def aclose(self) -> None:
        """Stop serving; safe to call twice."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @asynccontextmanager
    async def _store(self) -> AsyncIterator[Database]:
        async with self._reads, await open_store(self.cfg.database, readonly=True) as store:
            yield store

    async def snapshot(self) -> Snapshot:
        """The gauges now; a database that does not open or read is `/readyz`'s problem."""
        try:
            async with self._store() as store:
                return await read_snapshot(store, self.cfg, self.limits, utc_now())
        except BotasyncError as e:
            log.warning("metrics_database_unreadable", error=str(e))
            return Snapshot([f"database: {e}"])

    async def _metrics(self, request: web.Request) -> web.Response:
        snapshot = await self.snapshot()
        # no await from here on: the snapshot set is the one this exposition shows
        self.collector.snapshot = snapshot
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(self.registry), headers={"Content-Type": content_type})

    async def _livez(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")  # answered at all: the event loop runs

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            async with self._store() as store:
                facts = await status.health_facts(store, self.cfg)
            problems = health.problems(facts, self.limits, now=utc_now())
        except BotasyncError as e:
            problems = [f"database: {e}"]
        return web.json_response({"ok": not problems, "problems": problems},
                                 status=503 if problems else 200, dumps=dumps)
