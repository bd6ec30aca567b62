"""Handlers: where events go. A command (no shell), a webhook, a Python callable, the log,
NATS JetStream (`nats.py`).

Each handler takes one event at a time (`deliver`) and either returns (delivered) or
raises `HandlerError` with a one-line reason (the outbox records it and retries).
Handlers know nothing of the database: the dispatcher in `events/outbox.py` owns ordering,
retries and bookkeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.metadata
import inspect
import os
import shutil
import signal
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import aiohttp
import structlog

from botasync import __version__, jsoncodec
from botasync.config import (
    CommandHandlerConfig,
    HandlerConfig,
    LogHandlerConfig,
    NatsHandlerConfig,
    PythonHandlerConfig,
    WebhookHandlerConfig,
)
from botasync.errors import ConfigError, HandlerError
from botasync.events.signing import SignatureMode, signing_key, webhook_headers

log = structlog.get_logger("botasync.handlers")

ENTRY_POINT_GROUP = "botasync.handlers"
USER_AGENT = f"botasync/{__version__}"
# what we keep of a command's stderr for the error message; the rest is read and dropped
STDERR_TAIL_BYTES = 4096
# after the program exits, how long its pipes may stay open before we stop reading
PIPE_GRACE_S = 0.5
REASON_MAX = 300


class Handler(Protocol):
    """What the dispatcher needs of a handler.

    A handler may also offer `deliver_batch` (see `BatchHandler`), and
    `start(retry_span_s=, strict=)`: checks made once at start (a broker's stream), where
    a `ConfigError` stops the start; `retry_span_s` is how long the dispatcher may go on
    retrying one delivery.
    """

    name: str
    patterns: list[str]

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        """Take one event; raise `HandlerError` with a one-line reason on failure."""
        ...

    async def aclose(self) -> None:
        """Release what the handler holds (sessions); safe to call twice."""
        ...


@dataclass(frozen=True)
class Outgoing:
    """One event of a batch: what `deliver` takes, as one value."""

    payload: bytes
    event_id: str
    event_type: str


class BatchFailed(HandlerError):
    """A batch got its first `delivered` events through; the next one failed (the reason)."""

    def __init__(self, delivered: int, reason: str) -> None:
        super().__init__(reason)
        self.delivered = delivered


@runtime_checkable
class BatchHandler(Handler, Protocol):
    """A handler that takes many events at once (a broker's pipelined publishes)."""

    async def deliver_batch(self, events: Sequence[Outgoing]) -> None:
        """Take the events in order; all delivered, or `BatchFailed` naming how many were.

        Any other exception means none of them was.
        """
        ...


def batching(handler: Handler) -> BatchHandler | None:
    """The handler as a `BatchHandler` when it offers `deliver_batch`, else None."""
    return handler if isinstance(handler, BatchHandler) else None


def one_line(text: str, limit: int = REASON_MAX) -> str:
    """Collapse whitespace and keep the end of `text` (the end of a log is what matters)."""
    flat = " | ".join(ln.strip() for ln in text.splitlines() if ln.strip())
    return flat if len(flat) <= limit else "..." + flat[-(limit - 3) :]


def describe(exc: BaseException) -> str:
    """`Type: message` on one line, for a failure recorded on a delivery."""
    msg = str(exc)
    return one_line(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


# --- command -------------------------------------------------------------------------


class _Tail(asyncio.Protocol):
    """Reads a pipe as data comes, keeping only its last `limit` bytes (memory stays bounded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = b""
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if self.limit:
            self.data = (self.data + data)[-self.limit :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof.done():
            self.eof.set_result(None)


class _Pipe:
    """A pipe whose write end goes to the child and whose read end we own (and close)."""

    def __init__(self, transport: asyncio.ReadTransport, tail: _Tail, write_fd: int) -> None:
        self.transport = transport
        self.tail = tail
        self.write_fd: int | None = write_fd

    @classmethod
    async def open(cls, limit: int) -> _Pipe:
        r, w = os.pipe()
        reader = os.fdopen(r, "rb", buffering=0)  # wraps the fd, no I/O; the transport closes it
        try:
            transport, tail = await asyncio.get_running_loop().connect_read_pipe(
                lambda: _Tail(limit), reader
            )
        except BaseException:
            reader.close()
            os.close(w)
            raise
        return cls(transport, tail, w)

    def close_write_end(self) -> None:
        """Drop our copy of the write end, so EOF comes when the child's copies close."""
        if self.write_fd is not None:
            os.close(self.write_fd)
            self.write_fd = None

    def close(self) -> None:
        self.close_write_end()
        self.transport.close()


async def _feed(proc: asyncio.subprocess.Process, payload: bytes) -> None:
    """Write the event to stdin and close it; a program that does not read it is fine."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(payload)
        await proc.stdin.drain()
        proc.stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass


def _abort_stdin(proc: asyncio.subprocess.Process) -> None:
    """Drop stdin's unsent bytes, so `wait()` cannot hang on a pipe nobody reads."""
    if proc.stdin is None:
        return
    t = proc.stdin.transport
    # a closed transport with nothing buffered has already scheduled its own teardown
    if not t.is_closing() or t.get_write_buffer_size():
        t.abort()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the command's process group, so children it started go too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _exit_reason(code: int, stderr: bytes) -> str:
    if code < 0:
        try:
            what = f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            what = f"killed by signal {-code}"
    else:
        what = f"exit code {code}"
    err = one_line(stderr.decode("utf-8", errors="replace"))
    return f"{what}: {err}" if err else what


def handler_env(
    base: Mapping[str, str], withhold: Collection[str], pass_env: Collection[str]
) -> dict[str, str]:
    """The environment a command gets: botasync's, minus its secrets unless passed on."""
    return {k: v for k, v in base.items() if k not in withhold or k in pass_env}


def check_command(name: str, argv: list[str]) -> None:
    """A program that cannot be found stops the start (`ConfigError`), not the first event."""
    program = argv[0]
    found = (os.path.isfile(program) and os.access(program, os.X_OK)) if os.sep in program \
        else shutil.which(program) is not None
    if not found:
        where = "not executable" if os.path.isfile(program) else (
            "does not exist" if os.sep in program else "not found on PATH")
        raise ConfigError(f'handler "{name}": command {program} {where}')


class CommandHandler:
    """Run a program (argv, never a shell) with the event JSON on stdin.

    The program inherits botasync's environment except the variables in `withhold`
    (botasync's own secrets), unless it names them in `pass_env`.
    """

    def __init__(self, name: str, patterns: list[str], argv: list[str], timeout_s: float,
                 *, withhold: Collection[str] = (), pass_env: Collection[str] = ()) -> None:
        self.name = name
        self.patterns = patterns
        self.argv = list(argv)
        self.timeout_s = timeout_s
        self.withhold = frozenset(withhold)
        self.pass_env = frozenset(pass_env)

    async def _spawn(
        self, event_id: str, event_type: str, out: _Pipe, err: _Pipe
    ) -> asyncio.subprocess.Process:
        env = {**handler_env(os.environ, self.withhold, self.pass_env),
               "BOTASYNC_EVENT_ID": event_id, "BOTASYNC_EVENT_TYPE": event_type}
        try:
            # a new session makes the program a process group leader: a timeout kills
            # the whole group, not just the direct child
            return await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=out.write_fd,
                stderr=err.write_fd, env=env, start_new_session=True,
            )
        except FileNotFoundError:
            raise HandlerError(f"command not found: {self.argv[0]}") from None
        except PermissionError:
            raise HandlerError(f"command not executable: {self.argv[0]}") from None
        except OSError as e:
            raise HandlerError(f"cannot run {self.argv[0]}: {e.strerror or e}") from None
        finally:
            out.close_write_end()
            err.close_write_end()

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        """Run the command once; a timeout, a signal or a non-zero exit is a failure."""
        out, err = await _Pipe.open(0), await _Pipe.open(STDERR_TAIL_BYTES)
        try:
            proc = await self._spawn(event_id, event_type, out, err)
            code = await self._wait(proc, payload, out, err)
        finally:
            out.close()
            err.close()
        if code != 0:
            raise HandlerError(_exit_reason(code, err.tail.data))

    async def _wait(
        self, proc: asyncio.subprocess.Process, payload: bytes, out: _Pipe, err: _Pipe
    ) -> int:
        """Feed stdin and wait for the exit, within the timeout; kill the group otherwise."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await _feed(proc, payload)
                code = await proc.wait()
        except TimeoutError:
            raise HandlerError(f"timed out after {self.timeout_s:g}s (killed)") from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: never leave it running
                _kill_group(proc)
                _abort_stdin(proc)
                await proc.wait()
        # the last words on stderr may still be in the pipe; a background child that
        # keeps the pipe open must not hold the delivery, hence the bound
        await asyncio.wait([out.tail.eof, err.tail.eof], timeout=PIPE_GRACE_S)
        return code

    async def aclose(self) -> None:
        """Nothing is held between deliveries."""


# --- webhook -------------------------------------------------------------------------


class WebhookHandler:
    """POST the event JSON to a URL; 2xx is delivered, anything else (3xx too) fails.

    With a `secret` (the key itself: a `whsec_` secret already decoded) each attempt
    is signed anew, at its own time, in the scheme `signature` names (signing.py).
    """

    def __init__(
        self,
        name: str,
        patterns: list[str],
        url: str,
        timeout_s: float,
        secret: bytes | None = None,
        *,
        signature: SignatureMode = "bota",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.patterns = patterns
        self.url = url
        self.timeout_s = timeout_s
        self._secret = secret
        self.signature = signature
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _headers(self, payload: bytes, event_id: str, event_type: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Botasync-Event-Id": event_id,
            "Botasync-Event-Type": event_type,
        }
        headers.update(webhook_headers(
            self.signature, self._secret, payload, event_id, int(self._clock())
        ))
        return headers

    def _client(self) -> aiohttp.ClientSession:
        # made on first use: a session belongs to the running loop, which build time lacks
        if self._closed:
            raise HandlerError("handler is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            )
        return self._session

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        """One POST, no redirects followed."""
        headers = self._headers(payload, event_id, event_type)
        try:
            async with self._client().post(
                self.url, data=payload, headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return
                snippet = (await resp.content.read(200)).decode("utf-8", errors="replace")
                status = resp.status
        except TimeoutError:
            raise HandlerError(f"timed out after {self.timeout_s:g}s") from None
        except aiohttp.ClientError as e:
            raise HandlerError(describe(e)) from None
        what = f"HTTP {status}"
        if 300 <= status < 400:
            what += " (redirects are not followed)"
        raise HandlerError(one_line(f"{what}: {snippet}" if snippet.strip() else what))

    async def aclose(self) -> None:
        """Close the HTTP session."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


# --- python --------------------------------------------------------------------------


def load_target(handler: str, target: str) -> Callable[..., Any]:
    """Import `module:attr.path`, or load entry point `target` of group botasync.handlers."""
    try:
        if ":" in target:
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        else:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=target)
            if not eps:
                raise ConfigError(
                    f'handler "{handler}": no entry point "{target}" in group {ENTRY_POINT_GROUP}'
                )
            obj = next(iter(eps)).load()
    except ConfigError:
        raise
    except Exception as e:  # importing user code can raise anything
        raise ConfigError(f'handler "{handler}": cannot load "{target}": {describe(e)}') from None
    if not callable(obj):
        raise ConfigError(f'handler "{handler}": "{target}" is not callable')
    return obj  # type: ignore[no-any-return]


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with `async def __call__`
    )


class PythonHandler:
    """Call `fn(event: dict)`: awaited if async, else in a thread so it cannot block the loop.

    A sync callable that overruns its timeout is abandoned, not stopped: Python cannot
    kill a thread. Its delivery fails and is retried like any other failure.
    """

    def __init__(
        self, name: str, patterns: list[str], fn: Callable[..., Any], timeout_s: float
    ) -> None:
        self.name = name
        self.patterns = patterns
        self.fn = fn
        self.timeout_s = timeout_s
        self._async = _is_async(fn)

    async def _call(self, event: dict[str, Any]) -> None:
        if self._async:
            await self.fn(event)
            return
        result = await asyncio.to_thread(self.fn, event)
        if inspect.isawaitable(result):
            await result

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        """Give the callable its own copy of the event, parsed from the payload."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._call(jsoncodec.loads(payload))
        except TimeoutError:
            raise HandlerError(f"timed out after {self.timeout_s:g}s") from None
        except HandlerError:
            raise
        except Exception as e:
            raise HandlerError(describe(e)) from e

    async def aclose(self) -> None:
        """Nothing is held."""


# --- log -----------------------------------------------------------------------------


class LogHandler:
    """Write one log line per event: a way to watch the stream without code."""

    def __init__(self, name: str, patterns: list[str]) -> None:
        self.name = name
        self.patterns = patterns

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        """Log the id, type and recording (the payload can be large; it stays in the database)."""
        try:
            data = jsoncodec.loads(payload).get("data") or {}
            # a recording's event carries the recording; a transcript's or a summary's
            # carries its own object, which names its recording
            recording_id = (data.get("recording_id") or data.get("id")
                            if isinstance(data, dict) else None)
        except (ValueError, AttributeError):
            recording_id = None
        log.info("event_delivered", handler=self.name, event_id=event_id, event_type=event_type,
                 recording_id=recording_id)

    async def aclose(self) -> None:
        """Nothing is held."""


# --- building ------------------------------------------------------------------------


def _webhook_secret(cfg: WebhookHandlerConfig) -> bytes | None:
    """Read the secret now, so a missing one stops the start rather than the first event."""
    if not cfg.secret_env:
        return None
    value = os.environ.get(cfg.secret_env, "")
    if not value:
        raise ConfigError(
            f'handler "{cfg.name}": secret_env {cfg.secret_env} is not set or is empty'
        )
    try:
        return signing_key(cfg.signature, value)
    except ValueError as e:  # the message names the rule, never the value
        raise ConfigError(f'handler "{cfg.name}": secret_env {cfg.secret_env}: {e}') from None


def build_handler(
    cfg: HandlerConfig, *, withhold: Collection[str] = ("BOTA_API_KEY",), check: bool = False
) -> Handler:
    """The handler a config entry describes; `ConfigError` if it cannot work.

    `withhold`: the environment variables a command never sees unless its `pass_env`
    names them. `check`: a command's program must exist now (at start).
    """
    patterns = list(cfg.events)
    if isinstance(cfg, CommandHandlerConfig):
        if check:
            check_command(cfg.name, cfg.command)
        return CommandHandler(cfg.name, patterns, cfg.command, cfg.timeout_s,
                              withhold=withhold, pass_env=cfg.pass_env)
    if isinstance(cfg, WebhookHandlerConfig):
        return WebhookHandler(cfg.name, patterns, cfg.url, cfg.timeout_s, _webhook_secret(cfg),
                              signature=cfg.signature)
    if isinstance(cfg, PythonHandlerConfig):
        fn = load_target(cfg.name, cfg.target)
        return PythonHandler(cfg.name, patterns, fn, cfg.timeout_s)
    if isinstance(cfg, LogHandlerConfig):
        return LogHandler(cfg.name, patterns)
    if isinstance(cfg, NatsHandlerConfig):
        from botasync.events.nats import build_nats_handler  # nats-py only when configured

        return build_nats_handler(cfg)
    raise ConfigError(f'handler "{cfg.name}": unknown type')  # pragma: no cover
