"""Daemon: the schedule, signals and systemd.

`Daemon` runs passes on an APScheduler `AsyncIOScheduler` in the running loop: the
quick tick (head + hot) every `interval_s`, the reconcile walk every
`reconcile_every_s`, the dispatcher alongside. SIGTERM/SIGINT stop it cleanly; a second
signal exits at once (the outbox keeps what was not delivered).
"""

from __future__ import annotations

import asyncio
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
from botasync.service.app import App, ProjectParts
from botasync.store import describe, exclusive_on_server
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
    """One daemon per database: a second would poll twice and deliver everything twice."""
    path = Path(db)
    return ExclusiveLock(path.with_name(path.name + ".lock"),
                         f"another botasync daemon is already using {path}")


class Daemon:
    """`botasync run`: passes on a schedule until a signal; `stop()` ends it from code.

    `lock`: the database's lock when the caller took it already (the demo does, before
    it touches the file).
    """

    def __init__(self, cfg: Config, *, handle_signals: bool = True,
                 notifier: Notifier | None = None, extra_handlers: Sequence[Handler] = (),
                 on_pass: Callable[[PassStats], None] | None = None,
                 lock: ExclusiveLock | None = None) -> None:
        self.cfg = cfg
        self.lock = lock or daemon_lock(cfg.database.path)
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
        self._running: set[asyncio.Task[Any]] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self.monitor: MonitorServer | None = None  # `[metrics] listen`: /metrics /livez /readyz

    def stop(self, code: int = 0) -> None:
        """Ask the daemon to shut down cleanly."""
        self.exit_code = self.exit_code or code
        self._stop.set()

    async def run(self) -> int:
        """Open, schedule, serve until stopped, close; return the exit code."""
        # the lock first: a second daemon must not even open (and migrate) the database
        with self.lock:
            async with exclusive_on_server(
                    self.cfg.database, "daemon",
                    f"another botasync daemon is already using {describe(self.cfg.database)}"), \
                    await App.open(self.cfg, extra_handlers=self.extra_handlers) as app:
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
        await app.start_workers()
        self._install_signals()
        self._scheduler = self._schedule(app)
        self._scheduler.start()
        self.notifier.send("READY=1\nSTATUS=syncing")
        watchdog = asyncio.create_task(self._watchdog())
        log.info("daemon_started", db=app.store.where, interval_s=self.cfg.sync.interval_s,
                 handlers=[h.name for h in self.cfg.handlers], projects=list(app.projects))
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

    def _schedule(self, app: App) -> AsyncIOScheduler:
        sched = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        sched.add_listener(self._on_skip, EVENT_JOB_MAX_INSTANCES)
        now = datetime.now().astimezone()
        for part in app.projects.values():
            self._schedule_project(sched, app, part, now)
        return sched

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
            await Mirror(app.store, part.name).prune_runs(cutoff)
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
        self._running.add(task)
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
            self._running.discard(task)
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
                              for name, part in self.app.projects.items()}}
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
        """Stop scheduling, cancel passes (a page write in hand still commits), close."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running), timeout=SHUTDOWN_GRACE_S)
        for name in list(self.skipped):
            self._report_skips(name)
        await self._save_state()
