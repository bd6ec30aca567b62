"""Processes for the bench: run one contender measured, and drive the simulator process.

A contender's figures are its own: wall time from spawn to exit, CPU from `wait4`
(the process and every descendant it waited for), and the peak of the summed RSS of
its whole process tree, polled from /proc every few milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")
POLL_S = 0.02


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids, from /proc/*/stat (the field after the command's closing paren)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants alive now."""
    kids = _children_map()
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(kids.get(pid, []))
    return pids


def rss_bytes(pid: int) -> int:
    """Resident set size of one process, 0 when it is gone."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(root: int) -> int:
    """Summed RSS of a process tree."""
    return sum(rss_bytes(p) for p in tree_pids(root))


@dataclass
class Measured:
    """What one measured process did."""

    argv: list[str]
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    stdout: str = ""
    stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


class _RssWatch(threading.Thread):
    """Polls a process tree's RSS until told to stop; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self._halt = pid, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._halt.wait(POLL_S)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a process group we started (start_new_session=True makes pid the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def run_measured(argv: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout_s: float, log_path: Path | None = None) -> Measured:
    """Run argv to completion (or timeout), measuring wall, CPU and peak tree RSS."""
    m = Measured(list(argv))
    err = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                            start_new_session=True)
    watch = _RssWatch(proc.pid)
    watch.start()
    reader = threading.Thread(target=_drain, args=(proc, m), daemon=True)
    reader.start()
    status, usage = _wait4(proc.pid, started + timeout_s, m)
    m.wall_s = time.monotonic() - started
    m.peak_rss = watch.stop()
    reader.join(timeout=5)
    proc.returncode = os.waitstatus_to_exitcode(status)
    m.exit_code = proc.returncode
    m.cpu_s = usage.ru_utime + usage.ru_stime
    kill_tree(proc.pid)  # leftovers of the group, if any
    if log_path:
        err.close()  # type: ignore[union-attr]
        m.stderr_tail = log_path.read_text(errors="replace")[-2000:]
    return m


def _drain(proc: subprocess.Popen[bytes], m: Measured) -> None:
    """Read the process's stdout to the end (a full pipe would block it)."""
    assert proc.stdout is not None
    m.stdout = proc.stdout.read().decode(errors="replace")


def _wait4(pid: int, deadline: float, m: Measured) -> tuple[int, Any]:
    """Wait for pid until the deadline; past it, kill its group and reap it."""
    while True:
        got, status, usage = os.wait4(pid, os.WNOHANG)
        if got == pid:
            return status, usage
        if time.monotonic() > deadline:
            m.timed_out = True
            kill_tree(pid)
            _, status, usage = os.wait4(pid, 0)
            return status, usage
        time.sleep(0.005)


class Background:
    """A process that runs beside a measurement (the simulator, a reader, the daemon)."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None,
                 log_path: Path | None = None, cwd: Path | None = None) -> None:
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True)
        self.started = time.monotonic()

    def readline(self, timeout_s: float) -> str:
        """The next stdout line, within a timeout (the process must print it)."""
        box: list[str] = []
        t = threading.Thread(target=lambda: box.append(
            self.proc.stdout.readline().decode()), daemon=True)  # type: ignore[union-attr]
        t.start()
        t.join(timeout_s)
        if not box or not box[0]:
            self.stop()
            raise RuntimeError(f"{self.proc.args!r} printed nothing within {timeout_s} s")
        return box[0]

    def finish(self, grace_s: float = 30.0) -> str:
        """SIGTERM it, wait for it to exit, and return what it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:
            kill_tree(self.proc.pid)
            out, _ = self.proc.communicate(timeout=5)
        self.stop()
        return out.decode(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 10.0) -> int | None:
        """Signal the group, wait up to `grace_s`, then kill; returns the exit code."""
        if self.proc.poll() is None:
            kill_tree(self.proc.pid, sig)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                kill_tree(self.proc.pid)
                self.proc.wait(5)
        kill_tree(self.proc.pid)
        if self._log is not subprocess.DEVNULL:
            self._log.close()  # type: ignore[union-attr]
        return self.proc.returncode


def http_json(url: str, method: str = "GET", timeout_s: float = 30.0) -> Any:
    """A JSON answer from a loopback admin endpoint."""
    assert url.startswith("http://127.0.0.1:"), url  # the bench only talks to loopback
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        return json.loads(resp.read())


class SimProcess:
    """The simulator in its own process, and its admin endpoints."""

    def __init__(self, python: str, script: Path, *, recordings: int, seed: int,
                 latency_ms: int, log_path: Path, rate_limit: int = 0) -> None:
        argv = [python, str(script), "--recordings", str(recordings), "--seed", str(seed),
                "--latency-ms", str(latency_ms), "--rate-limit", str(rate_limit)]
        self.bg = Background(argv, log_path=log_path)
        ready = json.loads(self.bg.readline(timeout_s=120))
        self.url: str = ready["url"]
        self.origin: str = ready["origin"]
        self.api_key: str = ready["api_key"]
        self.world_build_s: float = ready["world_build_s"]

    def stats(self) -> dict[str, Any]:
        return http_json(f"{self.origin}/_sim/stats")  # type: ignore[no-any-return]

    def request_count(self) -> int:
        return int(self.stats()["requests"])

    def requests_since(self, index: int) -> list[dict[str, Any]]:
        """Request log entries from `index` on (API and file requests only)."""
        return http_json(f"{self.origin}/_sim/requests?since={index}")["requests"]  # type: ignore[no-any-return]

    def step(self, n: int = 1) -> list[str]:
        return http_json(f"{self.origin}/_sim/step?n={n}", "POST")["changes"]  # type: ignore[no-any-return]

    def set_rate_limit(self, limit: int | None) -> None:
        http_json(f"{self.origin}/_sim/rate-limit?limit={limit or 'off'}", "POST")

    def rss(self) -> int:
        return tree_rss(self.bg.proc.pid)

    def stop(self) -> None:
        self.bg.stop(signal.SIGINT, grace_s=10)
