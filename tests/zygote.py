"""`python -m botasync` for the tests, forked from a process that imported it already.

A `botasync` process spends about a second of CPU importing (pydantic's schemas, aiohttp,
rich, structlog) before it reads its first argument, and the suite starts over a hundred
of them on a 2-core machine: a fifth of the suite's CPU went to imports. The zygote
imports what `python -m botasync` imports, once per test worker, then forks one child per
command. A child is a real process of its own: its pid, signals, exit code, stdio,
environment and working directory are the command's, and it runs `botasync/__main__.py`
from its first line (`runpy`, as `-m` does). Only the imports are shared. The commands a
user types are still started fresh by the tests that are about that (tests/test_cli.py,
tests/test_demo.py, the README's recipes).

Protocol, one Unix connection per child: the client sends one JSON line (`args`, `env`,
`cwd`) with the child's stdin, stdout and stderr as SCM_RIGHTS descriptors; the zygote
answers `{"pid": N}` at once, and `{"exit": code}` when the child has ended (`-signal`
when a signal ended it, as `asyncio.subprocess` says it).
"""

from __future__ import annotations

import array
import asyncio
import atexit
import contextlib
import io
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
MAX_MESSAGE = 1 << 20
STDIO = 3


def _send(sock: socket.socket, data: bytes, fds: list[int]) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    fds = array.array("i")
    msg, ancdata, _, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_LEN(STDIO * fds.itemsize))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


# --- the zygote ----------------------------------------------------------------------


def serve(path: str) -> None:
    """Import the command line, listen on `path`, fork a child per connection, tell each
    connection its child's pid and, later, its exit code."""
    import botasync.cli.main  # noqa: F401 - what `python -m botasync` imports first

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a wakeup byte per exit
    children: dict[int, socket.socket] = {}
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        for key, _ in sel.select():
            if key.fileobj is not server:
                os.read(wake_r, 4096)
                _reap(children)
                continue
            conn, _ = server.accept()
            msg, fds = _receive(conn)
            pid = os.fork()
            if pid == 0:
                sel.close()
                for sock in (server, conn, *children.values()):
                    sock.close()
                signal.set_wakeup_fd(-1)
                os.close(wake_r)
                os.close(wake_w)
                try:
                    _child(json.loads(msg), fds)
                finally:
                    os._exit(70)  # _child exits by itself; never back into this loop
            for fd in fds:
                os.close(fd)
            children[pid] = conn
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _reap(children)  # an exit whose wakeup byte came with a connection


def _reap(children: dict[int, socket.socket]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is None:
            continue
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
        conn.close()


def _child(request: dict[str, Any], fds: list[int]) -> None:
    """In the forked child: become `python -m botasync ARGS`, and exit as it would."""
    import runpy
    import traceback

    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # `-m` puts the working directory first
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # fresh streams on the new descriptors, buffered as the interpreter's own at start-up
    encoding = sys.stdout.encoding  # the zygote's: the same locale and PYTHON* variables
    sys.stdin = _stream(0, "rb", encoding, "strict", line_buffering=False)
    sys.stdout = _stream(1, "wb", encoding, "strict", line_buffering=os.isatty(1))
    sys.stderr = _stream(2, "wb", encoding, "backslashreplace", line_buffering=True)
    code = 0
    interrupted = False
    try:
        sys.argv = ["-m", *request["args"]]
        runpy.run_module("botasync", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = _exit_code(e.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:  # as the interpreter does: the traceback, exit 1
        traceback.print_exc()
        code = 1
    try:
        threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads, as at exit
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        if interrupted:  # as the interpreter: die of the SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code)


def _stream(fd: int, mode: str, encoding: str, errors: str, *,
            line_buffering: bool) -> io.TextIOWrapper:
    raw = io.FileIO(fd, mode, closefd=False)
    buffered: Any = io.BufferedReader(raw) if "r" in mode else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                            line_buffering=line_buffering)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# --- the tests' side -----------------------------------------------------------------


class _Zygote:
    """This test process's zygote, started on first use with this process's environment,
    killed at exit. One that did not start is not tried again: each use says why."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._failed = ""
        self.path = ""
        self.python_env = _python_env(os.environ)

    def address(self, env: Mapping[str, str]) -> str | None:
        """The zygote's socket, or None when `env` would start Python differently (its
        `PYTHON*` variables are not the zygote's): then the caller starts a process."""
        if _python_env(env) != self.python_env:
            return None
        with self._lock:
            if self._proc is None and not self._failed:
                self._start()
        if self._failed:
            raise RuntimeError(self._failed)
        return self.path

    def _start(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="botasync-zygote-"), "socket")
        atexit.register(self._stop)
        proc = subprocess.Popen([sys.executable, "-m", "tests.zygote", self.path], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            proc.kill()
            proc.wait()
            self._failed = f"the zygote did not start: {line!r}"
            return
        self._proc = proc

    def _stop(self) -> None:
        """At this process's exit: the zygote, and its socket's directory."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


def _python_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that change how Python starts; the repository on `PYTHONPATH` does
    not (botasync is installed from it, editable)."""
    out = {k: v for k, v in env.items() if k.startswith("PYTHON")}
    path = [p for p in out.pop("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    if path:
        out["PYTHONPATH"] = os.pathsep.join(path)
    return out


_ZYGOTE = _Zygote()

Stdio = int | IO[Any] | None


class Process:
    """A child of the zygote, as the tests use `asyncio.subprocess.Process`."""

    def __init__(self, pid: int, exits: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader | None,
                 ) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = stdout
        self.stderr = stderr
        self._exits = exits
        self._writer = writer
        # watched from the start, so `returncode` is set once the child ends, as asyncio's
        self._waiting = asyncio.ensure_future(self._wait())

    async def _wait(self) -> int:
        line = await self._exits.readline()
        self._writer.close()
        if not line:
            raise RuntimeError(f"the zygote lost child {self.pid}")
        self.returncode = int(json.loads(line)["exit"])
        return self.returncode

    async def wait(self) -> int:
        return await asyncio.shield(self._waiting)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def communicate(self) -> tuple[bytes, bytes]:
        async def read(stream: asyncio.StreamReader | None) -> bytes:
            return await stream.read() if stream is not None else b""

        out, err, _ = await asyncio.gather(read(self.stdout), read(self.stderr), self.wait())
        return out, err


async def _reader(fd: int) -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(fd, "rb", buffering=0))
    return reader


async def create(args: list[str], *, env: Mapping[str, str], cwd: Path | str | None = None,
                 stdin: Stdio = subprocess.DEVNULL, stdout: Stdio = None,
                 stderr: Stdio = None) -> Process | None:
    """Start `python -m botasync ARGS` from the zygote; None when it cannot (another
    Python environment): the caller then starts the process itself."""
    if stdin == subprocess.PIPE:
        return None
    address = await asyncio.to_thread(_ZYGOTE.address, env)
    if address is None:
        return None
    mine: list[int] = []  # our copies, closed once sent
    theirs: list[int] = []
    readers: list[asyncio.StreamReader | None] = []
    for which, spec in enumerate((stdin, stdout, stderr)):
        if spec == subprocess.PIPE and which > 0:
            r, w = os.pipe()
            readers.append(await _reader(r))
            theirs.append(w)
            mine.append(w)
            continue
        readers.append(None)
        if spec == subprocess.DEVNULL:
            fd = os.open(os.devnull, os.O_RDWR)
            mine.append(fd)
            theirs.append(fd)
        elif spec is None:
            theirs.append(which)  # this process's own, as a child inherits it
        elif isinstance(spec, int):
            theirs.append(spec)
        else:
            theirs.append(spec.fileno())
    request = {"args": list(args), "env": dict(env),
               "cwd": str(cwd) if cwd is not None else os.getcwd()}
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
        _send(sock, json.dumps(request).encode(), theirs)
    finally:
        for fd in mine:
            os.close(fd)
    sock.setblocking(False)
    exits, writer = await asyncio.open_unix_connection(sock=sock)
    pid = int(json.loads(await exits.readline())["pid"])
    return Process(pid, exits, writer, readers[1], readers[2])


async def botasync(*args: str, env: Mapping[str, str], cwd: Path | str | None = None,
                   stdin: Stdio = subprocess.DEVNULL, stdout: Stdio = None,
                   stderr: Stdio = None, preexec_fn: Callable[[], None] | None = None) -> Any:
    """`python -m botasync ARGS`: a child of the zygote, else a process of its own (the
    same interface: `pid`, `returncode`, `wait`, `communicate`, signals). With a
    `preexec_fn` (limits set before the command starts) always a process of its own."""
    if preexec_fn is None:
        proc = await create(list(args), env=env, cwd=cwd, stdin=stdin, stdout=stdout,
                            stderr=stderr)
        if proc is not None:
            return proc
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botasync", *args, env=dict(env), cwd=cwd, stdin=stdin,
        stdout=stdout, stderr=stderr, preexec_fn=preexec_fn)


if __name__ == "__main__":
    serve(sys.argv[1])
