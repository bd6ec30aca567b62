"""NATS JetStream: the outbox relayed to a stream, each event stored once.

Each event is published to `<subject_prefix>.<project>.<event type>` with the envelope as
stored for its body, `Nats-Msg-Id` = the event id (the stream drops a message whose id it
has seen within its duplicate window, so a batch sent again after a crash or a lost ack
is not stored twice) and CloudEvents 1.0 binary-mode headers. Delivered = the stream's
ack, a duplicate's included.

Batches are pipelined: every message of a batch is written, then the acks are awaited;
the batch is delivered up to its first message without a good ack. A connection is never
reconnected under a batch: one that fails is dropped and the next attempt opens a new
one. What a server stored of one connection is then a prefix of what was sent on it, so
a batch retried from its first unacked message never overtakes the one that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import orjson
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError, ServiceUnavailableError

from botasync.config import NatsHandlerConfig, redact_userinfo
from botasync.errors import BotasyncError, ConfigError, HandlerError
from botasync.events.handlers import BatchFailed, Outgoing, describe, one_line
from botasync.logging import add_secret, redact

log = structlog.get_logger("botasync.nats")

DEFAULT_PROJECT = "default"
# nats-server's own default duplicate window: never ask for less
MIN_DUPLICATE_WINDOW_S = 120.0
CONNECT_TIMEOUT_S = 5
CLOSE_TIMEOUT_S = 2.0
_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
# how `jsoncodec.dumps` starts an envelope: id, type, then created_at
_HEAD = re.compile(rb'\{"id":"[^"\\]*","type":"[^"\\]*","created_at":"('
                   + _TIMESTAMP.pattern.encode() + rb')"')


# --- pure: subjects, headers, acks, windows ----------------------------------------------


def token(text: str) -> str:
    """One subject token: letters, digits, `_` and `-` kept, anything else `_`."""
    return _NOT_TOKEN.sub("_", text) or "_"


def subject_for(prefix: str, project: str, event_type: str) -> str:
    """`<prefix>.<project>.<event type>`; the type keeps its dots (`recording.completed`)."""
    kind = ".".join(token(part) for part in event_type.split("."))
    return f"{prefix}.{token(project)}.{kind}"


def envelope_facts(payload: bytes) -> tuple[str, str | None]:
    """The project an envelope names (`default` without one) and its `created_at`."""
    if b'"project"' not in payload:  # the envelope as botasync writes it: read its head only
        head = _HEAD.match(payload)
        if head is not None:
            return DEFAULT_PROJECT, head.group(1).decode()
    try:
        env = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return DEFAULT_PROJECT, None
    if not isinstance(env, dict):
        return DEFAULT_PROJECT, None
    project = env.get("project")
    created = env.get("created_at")
    return (project if isinstance(project, str) and project else DEFAULT_PROJECT,
            created if isinstance(created, str) and _TIMESTAMP.fullmatch(created) else None)


def message_headers(
    event_id: str, event_type: str, project: str, created_at: str | None, stream: str
) -> dict[str, str]:
    """`Nats-Msg-Id` (JetStream's deduplication), the stream expected to store it, and
    CloudEvents 1.0 in binary mode (`ce-*`: the body is the event's data, as JSON)."""
    headers = {
        "Nats-Msg-Id": event_id,
        "Nats-Expected-Stream": stream,
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-type": event_type,
        "ce-source": f"botasync/{token(project)}",
        "ce-datacontenttype": "application/json",
    }
    if created_at is not None:
        headers["ce-time"] = created_at
    return headers


def header_block(headers: Mapping[str, str]) -> bytes:
    """Headers as the NATS protocol writes them (`NATS/1.0`, one `Key: value` a line)."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


def ack_error(data: bytes, status: str | None = None) -> str:
    """"" for a PubAck (a duplicate's too), else why the stream did not take the message."""
    if status == "503":
        return "no stream answered (none takes this subject)"
    if data.startswith(b'{"stream":') and b'"error"' not in data:  # the common case, cheaply
        return ""
    try:
        ack = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "unreadable ack: " + one_line(data[:100].decode("utf-8", "replace"))
    if not isinstance(ack, dict):
        return "unreadable ack"
    err = ack.get("error")
    if err is not None:
        if isinstance(err, dict):
            return one_line(f"stream refused it: {err.get('description')} "
                            f"(code {err.get('code')}, err_code {err.get('err_code')})")
        return one_line(f"stream refused it: {err}")
    return "" if "seq" in ack else "unreadable ack"


def covers(pattern: str, wanted: str) -> bool:
    """Whether a stream subject `pattern` takes every subject `wanted` (`prefix.>`) matches."""
    have, want = pattern.split("."), wanted.split(".")
    for i, part in enumerate(have):
        if part == ">":
            return True
        if i >= len(want) - 1 or (part != "*" and part != want[i]):
            return False
    return False


def duplicate_window_s(retry_span_s: float) -> float:
    """The duplicate window a stream needs: the whole retry span, never under the default."""
    return max(MIN_DUPLICATE_WINDOW_S, float(retry_span_s))


# --- credentials -------------------------------------------------------------------------


def _path(raw: str, env: Mapping[str, str]) -> Path:
    """A file name; `%d` is systemd's credentials directory."""
    if "%d" in raw:
        creds = env.get("CREDENTIALS_DIRECTORY", "")
        if not creds:
            raise ConfigError(f"{raw} needs $CREDENTIALS_DIRECTORY (systemd's LoadCredential=)")
        raw = raw.replace("%d", creds)
    return Path(raw)


def _secret(name: str, key: str, env_name: str, file_name: str, env: Mapping[str, str]) -> str:
    """A token or password from the environment or a file; a missing one stops the start."""
    if env_name:
        value = env.get(env_name, "")
        if not value:
            raise ConfigError(f'handler "{name}": {key}_env {env_name} is not set or is empty')
        return value
    try:
        path = _path(file_name, env)
        value = path.read_text(encoding="utf-8").strip()
    except ConfigError as e:
        raise ConfigError(f'handler "{name}": {key}_file {e}') from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f'handler "{name}": {key}_file {file_name} cannot be read '
                          f"({type(e).__name__})") from None
    if not value:
        raise ConfigError(f'handler "{name}": {key}_file {path} is empty')
    return value


def credentials(cfg: NatsHandlerConfig, env: Mapping[str, str]) -> dict[str, str]:
    """What `connect()` takes for the configured credentials; each secret is registered
    so that no log line ever shows it."""
    auth: dict[str, str] = {}
    if cfg.token_env or cfg.token_file:
        auth["token"] = _secret(cfg.name, "token", cfg.token_env, cfg.token_file, env)
    if cfg.user:
        auth["user"] = cfg.user
        auth["password"] = _secret(cfg.name, "password", cfg.password_env, cfg.password_file,
                                   env)
    if cfg.creds_file:
        path = _path(cfg.creds_file, env)
        if not os.access(path, os.R_OK):
            raise ConfigError(f'handler "{cfg.name}": creds_file {path} does not exist or '
                              "is not readable")
        if importlib.util.find_spec("nkeys") is None:  # nats-py signs with it
            raise ConfigError(f'handler "{cfg.name}": creds_file needs the nkeys package '
                              "(pip install nkeys)")
        auth["user_credentials"] = str(path)
    for key in ("token", "password"):
        if key in auth:
            add_secret(auth[key])
    for server in cfg.url.split(","):  # a password or token written into the URL
        userinfo = server.partition("://")[2].partition("/")[0].rpartition("@")[0]
        if userinfo:
            add_secret(userinfo.partition(":")[2] or userinfo)
    return auth


# --- the handler -------------------------------------------------------------------------


class StreamMissing(HandlerError):
    """The stream is not there, or does not take our subjects: a setup problem."""


@dataclass
class _Batch:
    """The acks of one batch: its first reply token, one result per message ("" = stored)."""

    base: int
    results: list[str | None]
    done: asyncio.Future[None]
    left: int = 0


@dataclass
class _Link:
    """One connection: its ack inbox, the batch in flight, set `lost` when it goes."""

    nc: NATS
    js: JetStreamContext
    inbox: str = ""
    serial: int = 0
    batch: _Batch | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def begin(self, n: int) -> _Batch:
        """A new batch of `n` messages; acks of an older one are ignored from now on."""
        self.batch = _Batch(self.serial, [None] * n, asyncio.get_running_loop().create_future(),
                            n)
        self.serial += n
        return self.batch

    async def on_ack(self, msg: Msg) -> None:
        batch = self.batch
        try:
            i = int(msg.subject[len(self.inbox):]) - batch.base if batch else -1
        except ValueError:
            return
        if batch is None or not 0 <= i < len(batch.results) or batch.results[i] is not None:
            return
        status = msg.headers.get("Status") if msg.headers else None
        batch.results[i] = ack_error(msg.data, status)
        batch.left -= 1
        if batch.left == 0 and not batch.done.done():
            batch.done.set_result(None)


class NatsHandler:
    """Publish events to a JetStream stream; `deliver_batch` pipelines many at once."""

    def __init__(self, cfg: NatsHandlerConfig, auth: Mapping[str, str]) -> None:
        self.name = cfg.name
        self.patterns = list(cfg.events)
        self.timeout_s = cfg.timeout_s
        self.servers = cfg.url.split(",")
        self.where = redact_userinfo(cfg.url)
        self.stream = cfg.stream
        self.prefix = cfg.subject_prefix
        self.create_stream = cfg.create_stream
        self.window_s = MIN_DUPLICATE_WINDOW_S
        self._auth = dict(auth)
        self._link: _Link | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        # (project, type) -> subject, and the header block around the event id, twice
        self._kinds: dict[tuple[str, str], tuple[str, str, str, str]] = {}
        # writing pre-encoded messages straight into the client's buffer is several times
        # cheaper than its `publish` (which re-validates every header of every message)
        self.fast = callable(getattr(NATS, "_send_command", None))

    # --- start -----------------------------------------------------------------------

    async def start(self, *, retry_span_s: float, strict: bool = False) -> None:
        """Connect and check (or create) the stream: missing, it stops the start.

        Unreachable, it is an error for `config check` (`strict`) and a warning for a
        run, whose deliveries keep trying.
        """
        self.window_s = duplicate_window_s(retry_span_s)
        try:
            await self._connection()
        except StreamMissing as e:
            raise ConfigError(f'handler "{self.name}": {e}') from None
        except HandlerError as e:
            if strict:
                raise BotasyncError(f'handler "{self.name}": {e}') from None
            log.warning("nats_not_ready", handler=self.name, url=self.where, error=str(e))
            return
        log.info("nats_ready", handler=self.name, url=self.where, stream=self.stream,
                 subjects=f"{self.prefix}.>")

    async def _connection(self) -> _Link:
        """The open connection, or a new one with the stream checked."""
        link = self._link
        if link is not None and link.nc.is_connected and not link.lost.is_set():
            return link
        async with self._lock:
            if self._closed:
                raise HandlerError("handler is closed")
            link = self._link
            if link is not None and link.nc.is_connected and not link.lost.is_set():
                return link
            await self._drop()
            link = await self._open()
            try:
                await self._ensure_stream(link.js)
            except BaseException:
                await _close(link)
                raise
            self._link = link
            return link

    async def _open(self) -> _Link:
        lost = asyncio.Event()
        ready = False
        errors: list[Exception] = []

        async def on_error(e: Exception) -> None:
            if not ready:  # a failed connect says it in its own error
                errors.append(e)
                return
            log.warning("nats_error", handler=self.name, url=self.where,
                        error=redact(describe(e)))

        async def on_gone() -> None:
            lost.set()

        nc = NATS()
        try:
            await nc.connect(
                servers=self.servers, name=f"botasync {self.name}", allow_reconnect=False,
                # each server tried twice at once, then the error: the dispatcher retries
                max_reconnect_attempts=1, reconnect_time_wait=0,
                connect_timeout=CONNECT_TIMEOUT_S, error_cb=on_error, disconnected_cb=on_gone,
                closed_cb=on_gone, token=self._auth.get("token"), user=self._auth.get("user"),
                password=self._auth.get("password"),
                user_credentials=self._auth.get("user_credentials"),
            )
        except Exception as e:
            with contextlib.suppress(Exception):
                await nc.close()
            why = errors[0] if errors else e  # "no servers available" hides the reason
            raise HandlerError(f"cannot connect to NATS at {self.where}: "
                               f"{redact(describe(why))}") from None
        ready = True
        link = _Link(nc, nc.jetstream(timeout=self.timeout_s), lost=lost)
        link.inbox = nc.new_inbox() + "."
        await nc.subscribe(link.inbox + "*", cb=link.on_ack)
        return link

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """The stream exists and takes `<prefix>.>`; with `create_stream`, make it so."""
        wanted = f"{self.prefix}.>"
        try:
            info = await js.stream_info(self.stream)
        except NotFoundError:
            if not self.create_stream:
                raise StreamMissing(
                    f"stream {self.stream} does not exist on {self.where} (create it, or "
                    "set create_stream = true)") from None
            await self._js_call(js.add_stream(StreamConfig(
                name=self.stream, subjects=[wanted], storage=StorageType.FILE,
                duplicate_window=self.window_s)))
            log.info("nats_stream_created", handler=self.name, stream=self.stream,
                     subjects=wanted, duplicate_window_s=self.window_s)
            return
        except nats.errors.Error as e:
            raise self._js_error(e) from None
        config = info.config
        subjects = list(config.subjects or [])
        taken = any(covers(s, wanted) for s in subjects)
        window = config.duplicate_window or 0.0
        if self.create_stream and (not taken or window < self.window_s):
            update = config.evolve(subjects=subjects if taken else [*subjects, wanted],
                                   duplicate_window=max(window, self.window_s))
            await self._js_call(js.update_stream(update))
            log.info("nats_stream_updated", handler=self.name, stream=self.stream,
                     subjects=update.subjects, duplicate_window_s=update.duplicate_window)
        elif not taken:
            raise StreamMissing(f"stream {self.stream} on {self.where} does not take "
                                f"{wanted} (its subjects: {', '.join(subjects) or 'none'})")
        elif window < self.window_s:
            log.warning("nats_duplicate_window_short", handler=self.name, stream=self.stream,
                        duplicate_window_s=window, retry_span_s=self.window_s)

    async def _js_call(self, call: Any) -> Any:
        try:
            return await call
        except nats.errors.Error as e:
            raise self._js_error(e) from None

    def _js_error(self, e: Exception) -> HandlerError:
        if isinstance(e, nats.errors.NoRespondersError | ServiceUnavailableError):
            return StreamMissing(f"JetStream is not enabled on {self.where} (nats-server -js)")
        return HandlerError(f"stream {self.stream}: {redact(describe(e))}")

    # --- delivering ------------------------------------------------------------------

    async def deliver(self, payload: bytes, event_id: str, event_type: str) -> None:
        """One event: a batch of one."""
        await self.deliver_batch([Outgoing(payload, event_id, event_type)])

    async def deliver_batch(self, events: Sequence[Outgoing]) -> None:
        """Publish the events in order and wait for their acks (`timeout_s` in all)."""
        if not events:
            return
        link = await self._connection()
        batch = link.begin(len(events))
        sent, error = await self._write(link, batch, events)
        acked, why = await self._acks(link, batch, sent)
        if acked == len(events):
            return
        if acked == sent and error:
            why = error
        if link.lost.is_set() or why.startswith("no ack"):
            await self._drop(link)  # the next attempt starts on a fresh connection
        raise BatchFailed(acked, why)

    async def _write(
        self, link: _Link, batch: _Batch, events: Sequence[Outgoing]
    ) -> tuple[int, str]:
        """Write the messages (not waiting for acks): how many went, and why the next did not."""
        nc = link.nc
        limit = nc.max_payload
        sent = 0
        try:
            for ev in events:
                if link.lost.is_set() or not nc.is_connected:
                    return sent, f"connection to {self.where} lost"
                if len(ev.payload) > limit:
                    return sent, f"event of {len(ev.payload)} bytes, over the server's {limit}"
                await self._send(nc, f"{link.inbox}{batch.base + sent}", ev)
                sent += 1
            await nc.flush(timeout=max(1, int(self.timeout_s)))
        except Exception as e:  # the connection failed under us: what went, went
            return sent, redact(describe(e))
        return sent, ""

    async def _send(self, nc: NATS, reply: str, ev: Outgoing) -> None:
        """One message into the client's buffer (written out at the batch's flush)."""
        project, created = envelope_facts(ev.payload)
        if not self.fast:
            await nc.publish(subject_for(self.prefix, project, ev.event_type), ev.payload,
                             reply=reply, headers=message_headers(
                                 ev.event_id, ev.event_type, project, created, self.stream))
            return
        subject, hdr = self.encoded(ev.event_id, ev.event_type, project, created)
        await nc._send_command(  # see `fast` in __init__
            f"HPUB {subject} {reply} {len(hdr)} {len(hdr) + len(ev.payload)}\r\n".encode()
            + hdr + ev.payload + b"\r\n")

    def encoded(
        self, event_id: str, event_type: str, project: str, created_at: str | None
    ) -> tuple[str, bytes]:
        """The subject and `header_block(message_headers(...))`, the parts that depend on
        the project and the type made once (a relay's cost is per event)."""
        kind = self._kinds.get((project, event_type))
        if kind is None:
            block = header_block(message_headers("\0", event_type, project, None, self.stream))
            head, middle, tail = block.decode().split("\0")
            kind = self._kinds[(project, event_type)] = (
                subject_for(self.prefix, project, event_type), head, middle, tail[:-2])
        subject, head, middle, tail = kind
        when = f"ce-time: {created_at}\r\n" if created_at is not None else ""
        return subject, f"{head}{event_id}{middle}{event_id}{tail}{when}\r\n".encode()

    async def _acks(self, link: _Link, batch: _Batch, sent: int) -> tuple[int, str]:
        """Wait for the acks of the `sent` messages: how many in a row came good, and why
        the next one did not."""
        if sent:
            lost = asyncio.ensure_future(link.lost.wait())
            waits: list[asyncio.Future[Any]] = [batch.done, lost]
            try:
                await asyncio.wait(waits, timeout=self.timeout_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
        acked = 0
        for result in batch.results[:sent]:
            if result != "":
                if result is not None:
                    return acked, result
                why = (f"connection to {self.where} lost" if link.lost.is_set()
                       else f"no ack from stream {self.stream} within {self.timeout_s:g}s")
                return acked, why
            acked += 1
        return acked, ""

    # --- closing ---------------------------------------------------------------------

    async def _drop(self, link: _Link | None = None) -> None:
        """Forget the connection (`link`, or whichever is open) and close it."""
        old = self._link
        if old is None or (link is not None and old is not link):
            return
        self._link = None
        await _close(old)

    async def aclose(self) -> None:
        """Close the connection; safe to call twice."""
        self._closed = True
        async with self._lock:
            await self._drop()


async def _close(link: _Link) -> None:
    """Close a connection within a bound: a dead server must not hold a shutdown."""
    link.lost.set()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await link.nc.close()


def build_nats_handler(
    cfg: NatsHandlerConfig, env: Mapping[str, str] | None = None
) -> NatsHandler:
    """The handler, its credentials read now (a missing one stops the start)."""
    return NatsHandler(cfg, credentials(cfg, os.environ if env is None else env))
