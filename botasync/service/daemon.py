"""Daemon: the schedule, signals and systemd.

`Daemon` runs passes on an APScheduler `AsyncIOScheduler` in the running loop: the
quick tick (head + hot) every `interval_s`, the reconcile walk every
`reconcile_every_s`, the dispatcher alongside. SIGTERM/SIGINT stop it cleanly; a second
signal exits at once (the outbox keeps what was not delivered).

Which projects it syncs and which handlers it delivers to, a coordinator says
(`service/workers.py`): on SQLite all of them (one daemon per file); on PostgreSQL the
share this worker holds leases on, among every `botasync run` of the database. A project's
tick, reconcile, downloader and transcript fetcher run only while its lease is held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from botasync import metrics
from botasync.config import DEFAULT_PROJECT, SERVICE, Config
from botasync.envelope import iso, utc_now
from botasync.errors import AuthError, BotasyncError
from botasync.events.handlers import Handler
from botasync.jsoncodec import dumps
from botasync.locks import ExclusiveLock
from botasync.service import heap, leases
from botasync.service.app import App, ProjectParts
from botasync.service.workers import Alone, Workers, worker_id
from botasync.store.sqlite import Mirror
from botasync.sync.syncer import PassStats

if TYPE_CHECKING:
    from botasync.service.monitor import MonitorServer

log = structlog.get_logger("botasync.daemon")

DAEMON_STATE = "daemon"
RUN_LOG_DAYS = 7  # quiet ticks are kept this long in sync_runs
SHUTDOWN_GRACE_S = 5.0


class Notifier:
    """sd_notify over `$NOTIFY_SOCKET`; does nothing outside systemd."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        self.address = env.get("NOTIFY_SOCKET", "")
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() else 0.0

    def send(self, message: str) -> None:
        if not self.address:
            return
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.connect(addr)
                s.sendall(message.encode())
        except OSError as e:
            log.warning("sd_notify_failed", error=str(e))


class _QuietMaxInstances(logging.Filter):
    """Drop APScheduler's own "maximum number of running instances reached" warning: the
    daemon says it in its words, once per run of skips, with a count (`ticks_skipped`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


logging.getLogger("apscheduler.scheduler").addFilter(_QuietMaxInstances())


def job_id(kind: str, project: str) -> str:
    """`tick`, `reconcile` for the project `default`; `tick:staging` for the others."""
    return kind if project == DEFAULT_PROJECT else f"{kind}:{project}"


def daemon_lock(db: str | Path) -> ExclusiveLock:
    """One daemon per SQLite database: a second would poll twice and deliver everything
    twice. (On PostgreSQL, workers share the database by leases instead.)"""
    path = Path(db)
    return ExclusiveLock(path.with_name(path.name + ".lock"),
                         f"another botasync daemon is already using {path}")


class Daemon:
    """`botasync run`: passes on a schedule until a signal; `stop()` ends it from code.

    `lock`: the database's lock when the caller took it already (the demo does, before
    it touches the file). On PostgreSQL there is none: any number of daemons share the
    database, each working the projects and handlers it holds leases on.
    """

    def __init__(self, cfg: Config, *, handle_signals: bool = True,
                 notifier: Notifier | None = None, extra_handlers: Sequence[Handler] = (),
                 on_pass: Callable[[PassStats], None] | None = None,
                 lock: ExclusiveLock | None = None, settle_heap: bool = False) -> None:
        self.cfg = cfg
        self.settle_heap = settle_heap  # the process is the daemon's: see `service/heap.py`
        self.lock = lock or (None if cfg.database.url else daemon_lock(cfg.database.path))
        self.skipped: dict[str, int] = {}  # ticks not started: the previous one still ran
        self.extra_handlers = list(extra_handlers)
        self.on_pass = on_pass
        self.handle_signals = handle_signals
        self.notifier = notifier or Notifier()
        self.app: App | None = None
        self.exit_code = 0
        self.error: BotasyncError | None = None  # what stopped it, for the command line
        self._stop = asyncio.Event()
        self._signals = 0
        self._running: dict[asyncio.Task[Any], str] = {}  # passes in flight -> their project
        self._scheduler: AsyncIOScheduler | None = None
        self.coordinator: Alone | Workers | None = None
        # PostgreSQL: who this process is among the workers, known before the store opens
        # so that every session of it carries the id (how the others end them if it dies)
        self.me = worker_id() if cfg.database.url else None
        self._used: set[str] = set()  # projects whose parts ran once (closed since)
        self.monitor: MonitorServer | None = None  # `[metrics] listen`: /metrics /livez /readyz

    def stop(self, code: int = 0) -> None:
        """Ask the daemon to shut down cleanly."""
        self.exit_code = self.exit_code or code
        self._stop.set()

    async def run(self) -> int:
        """Open, schedule, serve until stopped, close; return the exit code."""
        # the lock first: a second daemon must not even open (and migrate) the database
        with self.lock or contextlib.nullcontext():
            async with await App.open(self.cfg, extra_handlers=self.extra_handlers,
                                      application_name=self.me.id if self.me else None) as app:
                try:
                    await self._serve(app)
                finally:
                    if self.monitor is not None:  # before the database closes under it
                        await self.monitor.aclose()
        log.info("daemon_stopped", exit_code=self.exit_code)
        return self.exit_code

    async def _serve(self, app: App) -> None:
        """Schedule the passes and serve until stopped, then shut down."""
        self.app = app
        await self._start_monitor()
        await app.dispatcher.start(lanes=())  # each lane starts with its lease
        self._install_signals()
        self._scheduler = self._schedule()
        self._scheduler.start()
        self.coordinator = self._coordinator(app)
        try:
            await self.coordinator.start()
        except BaseException:
            await self.coordinator.aclose()  # what it started, and its connection
            raise
        frozen = heap.settle() if self.settle_heap else 0  # started: out of the GC's walks
        self.notifier.send("READY=1\nSTATUS=syncing")
        watchdog = asyncio.create_task(self._watchdog())
        log.info("daemon_started", db=app.store.where, interval_s=self.cfg.sync.interval_s,
                 handlers=[h.name for h in self.cfg.handlers], projects=list(app.projects),
                 frozen_objects=frozen)
        try:
            await self._stop.wait()
        finally:
            self.notifier.send("STOPPING=1")
            watchdog.cancel()
            await self._shutdown()

    async def _start_monitor(self) -> None:
        """Serve the monitoring endpoints before READY=1: a port in use stops the start."""
        if not self.cfg.metrics.listen:
            return
        warning = self.cfg.metrics.warning()
        if warning:
            log.warning("metrics_not_loopback", warning=warning)
        from botasync.service.monitor import MonitorServer  # Prometheus code only when asked

        self.monitor = MonitorServer(self.cfg)
        await self.monitor.start()

    def _schedule(self) -> AsyncIOScheduler:
        """The scheduler, empty: a project's jobs are added when its lease is taken."""
        sched = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        sched.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES)
        return sched

    def _coordinator(self, app: App) -> Alone | Workers:
        """Every project and handler, as lease names, to the coordinator of this database."""
        names = ([leases.project_lease(n) for n in app.projects]
                 + [leases.handler_lease(n) for n in app.dispatcher.handler_names])
        db = self.cfg.database
        if not db.url:
            return Alone(names, self)
        return Workers(db.url, db.lease_s, names, self, on_events=app.dispatcher.notify,
                       me=self.me)

    # --- the work a lease stands for (`service.workers.Work`) ----------------------------

    async def take(self, lease: str) -> None:
        """Start a project's parts and schedule its passes (its tick at once), or a
        handler's lane, from its cursor as stored."""
        assert self.app is not None and self.coordinator is not None
        name = leases.subject(lease)
        if leases.kind_of(lease) == leases.HANDLER:
            coordinator = self.coordinator
            await self.app.dispatcher.start_lane(name, held=lambda: coordinator.holds(lease))
            metrics.lease_held(lease, True)
            return
        part = self.app.projects[name]
        store = self.coordinator.store_for(lease, self.app.store)
        if name in self._used or part.store is not store:
            part = await self.app.rebuild(name, store)
        self._used.add(name)
        try:
            await part.start()
        except BaseException:
            await part.aclose(SHUTDOWN_GRACE_S)
            raise
        if self._scheduler is not None and not self._stop.is_set():
            self._schedule_project(self._scheduler, self.app, part,
                                   datetime.now().astimezone())
        metrics.lease_held(lease, True)

    async def drop(self, lease: str, why: str) -> None:
        """Stop a project's passes and parts, or a handler's lane, promptly."""
        assert self.app is not None
        name = leases.subject(lease)
        metrics.lease_held(lease, False)
        if leases.kind_of(lease) == leases.HANDLER:
            await self.app.dispatcher.stop_lane(name, SHUTDOWN_GRACE_S)
            return
        if why != "stopping":
            log.warning("project_stopped", project=name, why=why)
        if self._scheduler is not None:
            for kind in ("tick", "reconcile"):
                with contextlib.suppress(Exception):  # not scheduled, or the scheduler is down
                    self._scheduler.remove_job(job_id(kind, name))
        passes = [t for t, project in self._running.items() if project == name]
        for task in passes:
            task.cancel()
        if passes:
            await asyncio.wait(passes, timeout=SHUTDOWN_GRACE_S)
        await self.app.projects[name].aclose(SHUTDOWN_GRACE_S)

    def _schedule_project(self, sched: AsyncIOScheduler, app: App, part: ProjectParts,
                          now: datetime) -> None:
        """A project's tick and reconcile, on its own `interval_s` and `reconcile_every_s`."""
        opts: dict[str, Any] = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        sync = part.cfg.sync
        tick, walk = job_id("tick", part.name), job_id("reconcile", part.name)
        sched.add_job(self._job, "interval", args=[tick, part.syncer.quick, part.name], id=tick,
                      seconds=sync.interval_s, next_run_time=now, **opts)

        async def reconcile() -> list[PassStats]:
            stats = await part.syncer.reconcile()
            cutoff = iso(utc_now() - timedelta(days=RUN_LOG_DAYS))
            await Mirror(part.store, part.name).prune_runs(cutoff)
            await app.prune_events()
            return stats

        sched.add_job(self._job, "interval", args=[walk, reconcile, part.name], id=walk,
                      seconds=sync.reconcile_every_s,
                      next_run_time=now + timedelta(seconds=sync.reconcile_every_s), **opts)

    def _on_skip(self, event: JobSubmissionEvent) -> None:
        """A run came due while the last one still ran (a slow walk, an API retrying)."""
        self.skipped[event.job_id] = self.skipped.get(event.job_id, 0) + 1

    def _report_skips(self, name: str) -> None:
        """Say once, with the count, how many runs were skipped since the last one started."""
        count = self.skipped.pop(name, 0)
        if count:
            log.warning("ticks_skipped", job=name, count=count,
                        reason=f"the previous {name} pass was still running")

    async def _job(self, name: str, body: Callable[[], Awaitable[Any]],
                   project: str = DEFAULT_PROJECT) -> None:
        """Run one pass; an error is logged and the schedule goes on, except a rejected key."""
        if self._stop.is_set():
            return
        self._report_skips(name)
        task = asyncio.current_task()
        assert task is not None
        self._running[task] = project
        try:
            result = await body()
            for stats in result if isinstance(result, list) else [result]:
                metrics.pass_finished(stats.kind, stats.seconds, project)
                if self.on_pass:
                    self.on_pass(stats)
        except AuthError as e:
            log.error("auth_failed", error=str(e))
            self.error = e
            self.stop(e.exit_code)
        except BotasyncError as e:
            log.error("pass_failed", job=name, project=project, error=str(e))
        except asyncio.CancelledError:
            # the shutdown cancels a pass in flight (its page in hand still commits); ending
            # here keeps APScheduler from logging the cancel as a crash, with a traceback
            log.info("pass_cancelled", job=name)
        finally:
            self._running.pop(task, None)
            if not self._stop.is_set():  # stopping: _shutdown saves the state, once, last
                await self._save_state()

    async def _save_state(self) -> None:
        """What `botasync status` shows of a running daemon: budget used, next passes."""
        if self.app is None or self._scheduler is None:
            return
        jobs = {j.id: iso(j.next_run_time) for j in self._scheduler.get_jobs() if j.next_run_time}
        state = {"pid": os.getpid(), "updated_at": iso(utc_now()),
                 "requests_last_minute": self.app.budget.used(),
                 "requests_per_minute": self.app.syncer.cfg.api.requests_per_minute,
                 "next_runs": jobs,
                 "projects": {name: {"requests_last_minute": part.budget.used(),
                                     "requests_per_minute": part.cfg.api.requests_per_minute}
                              for name, part in self.app.projects.items()},
                 "leases": sorted(self.coordinator.held) if self.coordinator else []}
        try:
            await Mirror(self.app.store, SERVICE).set_state(DAEMON_STATE, dumps(state))
        except BotasyncError as e:
            log.warning("state_save_failed", error=str(e))

    async def _watchdog(self) -> None:
        """Ping systemd from the loop itself, so a hung loop stops the pings."""
        interval = self.notifier.watchdog_s / 2 if self.notifier.watchdog_s else 0
        while interval:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _install_signals(self) -> None:
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_exit_now", signal=sig.name)
            os._exit(1)
        log.info("stopping", signal=sig.name)
        self.stop()

    async def _shutdown(self) -> None:
        """Stop scheduling, cancel passes (a page write in hand still commits), stop the
        work and give its leases back, close."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running), timeout=SHUTDOWN_GRACE_S)
        for name in list(self.skipped):
            self._report_skips(name)
        if self.coordinator is not None:
            await self.coordinator.aclose()
        await self._save_state()
