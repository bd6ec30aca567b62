"""Handlers: a real command, a real loopback webhook receiver, Python callables, the log."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from botasync import __version__
from botasync.config import (
    CommandHandlerConfig,
    LogHandlerConfig,
    PythonHandlerConfig,
    WebhookHandlerConfig,
)
from botasync.envelope import Event, EventIds
from botasync.errors import ConfigError, HandlerError
from botasync.events.handlers import Handler, build_handler
from botasync.jsoncodec import dumps

SCRIPT = str(Path(__file__).parent / "helpers" / "cmd_handler.py")
_IDS = EventIds()


def envelope(name: str = "Standup", event_type: str = "recording.completed") -> tuple[bytes, str]:
    """An event payload as the outbox stores it, and its id."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    ev = Event(
        id=_IDS.new(now), type=event_type, created_at="2025-01-01T00:00:00.000Z",
        recording_id="rec_1", data={"id": "rec_1", "name": name, "status": "completed"},
        previous={"status": "processing"},
    )
    return dumps(ev.envelope()).encode(), ev.id


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll `predicate` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def command(tmp_path: Path, mode: str, timeout_s: float = 10.0) -> tuple[Handler, Path]:
    """A command handler running the helper script in `mode`, and its output file."""
    out = tmp_path / "out.jsonl"
    cfg = CommandHandlerConfig(
        name="cmd", type="command", command=[sys.executable, SCRIPT, str(out), mode],
        timeout_s=timeout_s,
    )
    return build_handler(cfg), out


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True


# --- command -------------------------------------------------------------------------


async def test_command_gets_the_event_on_stdin_and_its_id_and_type_in_env(tmp_path: Path) -> None:
    """The program reads the exact payload on stdin and sees BOTASYNC_EVENT_ID/TYPE."""
    handler, out = command(tmp_path, "append")
    payload, event_id = envelope()
    await handler.deliver(payload, event_id, "recording.completed")
    assert lines(out) == [
        {"event_id": event_id, "event_type": "recording.completed", "stdin": payload.decode()}
    ]


async def test_command_nonzero_exit_fails_with_code_and_stderr_tail(tmp_path: Path) -> None:
    """A non-zero exit is a failure whose one-line reason has the code and stderr's end."""
    handler, out = command(tmp_path, "fail")
    payload, event_id = envelope()
    with pytest.raises(HandlerError) as info:
        await handler.deliver(payload, event_id, "recording.completed")
    assert str(info.value) == "exit code 3: first line | boom: cannot take this event"
    assert lines(out) == []


async def test_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    """A hanging program fails after timeout_s and its whole process group is killed."""
    handler, out = command(tmp_path, "hang", timeout_s=1.0)
    payload, event_id = envelope()
    started = time.monotonic()
    with pytest.raises(HandlerError, match=r"^timed out after 1s \(killed\)$"):
        await handler.deliver(payload, event_id, "recording.completed")
    assert time.monotonic() - started < 5
    pids = [int(p) for p in out.read_text().split()]
    assert len(pids) == 2
    await wait_until(lambda: all(gone(p) for p in pids))


async def test_command_flooding_stdout_and_stderr_neither_hangs_nor_fails(tmp_path: Path) -> None:
    """16 MiB on each of stdout and stderr is read and dropped; the delivery succeeds."""
    handler, out = command(tmp_path, "flood")
    payload, event_id = envelope()
    await handler.deliver(payload, event_id, "recording.completed")
    assert [ln["event_id"] for ln in lines(out)] == [event_id]


async def test_command_that_never_stops_writing_times_out(tmp_path: Path) -> None:
    """Endless output is drained with a bounded buffer until the timeout kills it."""
    handler, _ = command(tmp_path, "flood-forever", timeout_s=1.0)
    payload, event_id = envelope()
    started = time.monotonic()
    with pytest.raises(HandlerError, match="timed out"):
        await handler.deliver(payload, event_id, "recording.completed")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("program", ["/nonexistent/notify", "botasync-no-such-program-xyz"])
async def test_missing_command_fails_with_command_not_found(program: str) -> None:
    """A program that does not exist is a failure naming it, not a crash."""
    handler = build_handler(CommandHandlerConfig(name="c", type="command", command=[program]))
    payload, event_id = envelope()
    with pytest.raises(HandlerError) as info:
        await handler.deliver(payload, event_id, "recording.completed")
    assert str(info.value) == f"command not found: {program}"


async def test_shell_syntax_in_an_event_is_inert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name holding `; rm -rf x` and `$(touch pwned)` reaches stdin verbatim, harmlessly."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep").write_text("still here")
    handler, out = command(tmp_path, "append")
    payload, event_id = envelope(name="; rm -rf x $(touch pwned) `touch pwned2` && echo hi")
    await handler.deliver(payload, event_id, "recording.completed")
    got = lines(out)
    assert json.loads(got[0]["stdin"])["data"]["name"] == (
        "; rm -rf x $(touch pwned) `touch pwned2` && echo hi"
    )
    assert (tmp_path / "x" / "keep").read_text() == "still here"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


async def test_cancelled_command_is_killed(tmp_path: Path) -> None:
    """Cancelling a delivery (shutdown past its grace) kills the program too."""
    handler, out = command(tmp_path, "hang", timeout_s=30.0)
    payload, event_id = envelope()
    task = asyncio.create_task(handler.deliver(payload, event_id, "recording.completed"))
    await wait_until(lambda: out.exists() and len(out.read_text().split()) == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pids = [int(p) for p in out.read_text().split()]
    await wait_until(lambda: all(gone(p) for p in pids))


# --- webhook -------------------------------------------------------------------------


@dataclass
class Receiver:
    """A loopback HTTP server that records what it is sent."""

    url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    """Serve /ok (204), /redirect (302), /missing (404), /broken (503), /slow on 127.0.0.1:0."""
    rec = Receiver(url="")

    async def record(request: web.Request) -> None:
        rec.requests.append((request.path, dict(request.headers), await request.read()))

    async def ok(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.Response(status=204)

    async def redirect(request: web.Request) -> web.StreamResponse:
        await record(request)
        raise web.HTTPFound("/ok")

    async def missing(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.Response(status=404, text="no such hook\nsecond line")

    async def broken(request: web.Request) -> web.StreamResponse:
        await record(request)
        return web.Response(status=503)

    async def slow(request: web.Request) -> web.StreamResponse:
        await record(request)
        await rec.release.wait()
        return web.Response(status=200)

    app = web.Application()
    for path, fn in [("/ok", ok), ("/redirect", redirect), ("/missing", missing),
                     ("/broken", broken), ("/slow", slow)]:
        app.router.add_post(path, fn)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}"
    yield rec
    rec.release.set()
    await runner.cleanup()


def webhook(url: str, secret_env: str = "", timeout_s: float = 5.0) -> Handler:
    return build_handler(WebhookHandlerConfig(
        name="hook", type="webhook", url=url, secret_env=secret_env, timeout_s=timeout_s,
    ))


async def test_webhook_posts_the_payload_with_headers_and_a_valid_signature(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2xx is a delivery; the body, headers and HMAC signature are as documented."""
    monkeypatch.setenv("TEST_HOOK_SECRET", "s3cret")
    handler = webhook(receiver.url + "/ok", secret_env="TEST_HOOK_SECRET")
    payload, event_id = envelope()
    await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    [(path, headers, body)] = receiver.requests
    assert (path, body) == ("/ok", payload)
    assert headers["Content-Type"] == "application/json"
    assert headers["Botasync-Event-Id"] == event_id
    assert headers["Botasync-Event-Type"] == "recording.completed"
    assert headers["User-Agent"] == f"botasync/{__version__}"
    # signed as Bota signs (the default `signature = "bota"`; tests/test_webhook_signatures.py)
    assert headers["X-Bota-Event-Id"] == event_id
    t = headers["X-Bota-Timestamp"]
    assert abs(int(t) - time.time()) < 60
    expected = hmac.new(b"s3cret", t.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Bota-Signature"] == f"v1={expected}"


async def test_webhook_without_secret_sends_no_signature(receiver: Receiver) -> None:
    """No `secret_env`, no signature header (and the delivery still works)."""
    handler = webhook(receiver.url + "/ok")
    payload, event_id = envelope()
    await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    sent = receiver.requests[0][1]
    assert not {"X-Bota-Signature", "X-Bota-Timestamp", "Botasync-Signature"} & set(sent)


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/redirect", "HTTP 302 (redirects are not followed)"),
        ("/missing", "HTTP 404: no such hook | second line"),
        ("/broken", "HTTP 503"),
    ],
)
async def test_webhook_non_2xx_is_a_failure(receiver: Receiver, path: str, reason: str) -> None:
    """3xx (not followed), 4xx and 5xx answers fail with the status in the reason."""
    handler = webhook(receiver.url + path)
    payload, event_id = envelope()
    with pytest.raises(HandlerError) as info:
        await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    assert str(info.value).startswith(reason)
    assert [r[0] for r in receiver.requests] == [path]  # the redirect target never hit


async def test_webhook_connection_refused_is_a_failure() -> None:
    """Nothing listening on the port is a failure, not an exception escaping."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    handler = webhook(f"http://127.0.0.1:{port}/hook")
    payload, event_id = envelope()
    with pytest.raises(HandlerError, match="ClientConnectorError"):
        await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()


async def test_webhook_timeout_is_a_failure(receiver: Receiver) -> None:
    """A receiver slower than timeout_s is a failure."""
    handler = webhook(receiver.url + "/slow", timeout_s=0.3)
    payload, event_id = envelope()
    with pytest.raises(HandlerError, match=r"^timed out after 0.3s$"):
        await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    assert [r[0] for r in receiver.requests] == ["/slow"]


@pytest.mark.parametrize("value", [None, ""])
def test_webhook_secret_env_missing_or_empty_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """A configured secret that is not there stops the start, naming the handler and variable."""
    if value is None:
        monkeypatch.delenv("TEST_HOOK_SECRET", raising=False)
    else:
        monkeypatch.setenv("TEST_HOOK_SECRET", value)
    with pytest.raises(ConfigError) as info:
        webhook("http://127.0.0.1:1/x", secret_env="TEST_HOOK_SECRET")
    assert str(info.value) == 'handler "hook": secret_env TEST_HOOK_SECRET is not set or is empty'


# --- python --------------------------------------------------------------------------

HOOKS = '''
import asyncio, threading
calls = []
def on_sync(event):
    calls.append(("sync", threading.get_ident(), event))
async def on_async(event):
    calls.append(("async", threading.get_ident(), event))
class _Obj:
    async def __call__(self, event):
        calls.append(("obj", threading.get_ident(), event))
obj = _Obj()
def boom(event):
    raise ValueError("nope " + event["id"])
async def slow(event):
    await asyncio.Event().wait()
def mutate(event):
    event["data"]["name"] = "changed"
    calls.append(("mutate", threading.get_ident(), event))
not_callable = 42
'''


@pytest.fixture
def hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh importable module of handler functions, under a unique name."""
    name = f"bs_hooks_{uuid.uuid4().hex}"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / f"{name}.py").write_text(HOOKS)
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    import importlib

    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def python(target: str, timeout_s: float = 5.0) -> Handler:
    return build_handler(
        PythonHandlerConfig(name="py", type="python", target=target, timeout_s=timeout_s)
    )


async def test_python_sync_function_runs_in_a_thread_with_the_event_dict(hooks: Any) -> None:
    """A sync callable gets the event as a dict, off the loop thread."""
    payload, event_id = envelope()
    await python(f"{hooks.__name__}:on_sync").deliver(payload, event_id, "recording.completed")
    [(kind, thread, event)] = hooks.calls
    assert (kind, event) == ("sync", json.loads(payload))
    assert thread != threading.get_ident()


@pytest.mark.parametrize("attr", ["on_async", "obj"])
async def test_python_async_callable_is_awaited_on_the_loop(hooks: Any, attr: str) -> None:
    """An async function (or an object with `async def __call__`) is awaited in the loop."""
    payload, event_id = envelope()
    await python(f"{hooks.__name__}:{attr}").deliver(payload, event_id, "recording.completed")
    [(_, thread, event)] = hooks.calls
    assert event == json.loads(payload)
    assert thread == threading.get_ident()


async def test_python_handler_gets_its_own_copy_of_the_event(hooks: Any) -> None:
    """Mutating the dict cannot change what the next delivery of the payload sees."""
    payload, event_id = envelope()
    handler = python(f"{hooks.__name__}:mutate")
    await handler.deliver(payload, event_id, "recording.completed")
    await handler.deliver(payload, event_id, "recording.completed")
    assert json.loads(payload)["data"]["name"] == "Standup"
    assert len(hooks.calls) == 2


async def test_python_exception_is_a_failure_with_type_and_message(hooks: Any) -> None:
    """An exception becomes a HandlerError carrying its type and message."""
    payload, event_id = envelope()
    with pytest.raises(HandlerError) as info:
        await python(f"{hooks.__name__}:boom").deliver(payload, event_id, "recording.completed")
    assert str(info.value) == f"ValueError: nope {event_id}"


async def test_python_timeout_is_a_failure(hooks: Any) -> None:
    """A callable that does not finish within timeout_s fails."""
    payload, event_id = envelope()
    with pytest.raises(HandlerError, match=r"^timed out after 0.2s$"):
        await python(f"{hooks.__name__}:slow", timeout_s=0.2).deliver(
            payload, event_id, "recording.completed"
        )


async def test_python_entry_point_target(
    hooks: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target without a colon names an entry point of group botasync.handlers."""
    dist = tmp_path / "site" / "bs_ep_pkg-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bs-ep-pkg\nVersion: 1.0\n")
    ep = f"ep_{uuid.uuid4().hex[:8]}"
    entry = f"[botasync.handlers]\n{ep} = {hooks.__name__}:on_sync\n"
    (dist / "entry_points.txt").write_text(entry)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    payload, event_id = envelope()
    await python(ep).deliver(payload, event_id, "recording.completed")
    assert [c[0] for c in hooks.calls] == ["sync"]


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("bs_no_such_module_xyz:fn", "cannot load"),
        ("{mod}:missing", "AttributeError"),
        ("{mod}:not_callable", "is not callable"),
        ("bs-no-such-entry-point", "no entry point"),
    ],
)
def test_python_bad_target_is_a_config_error_naming_the_handler(
    hooks: Any, target: str, reason: str
) -> None:
    """An unimportable, missing or non-callable target stops the start with a clear line."""
    with pytest.raises(ConfigError) as info:
        python(target.format(mod=hooks.__name__))
    assert str(info.value).startswith('handler "py": ')
    assert reason in str(info.value)


# --- log -----------------------------------------------------------------------------


async def test_log_handler_logs_id_and_type() -> None:
    """The log handler writes one `event_delivered` line with the id, type and recording."""
    handler = build_handler(LogHandlerConfig(name="audit", type="log"))
    payload, event_id = envelope()
    with capture_logs() as logs:
        await handler.deliver(payload, event_id, "recording.completed")
    assert logs == [{"event": "event_delivered", "handler": "audit", "event_id": event_id,
                     "event_type": "recording.completed", "recording_id": "rec_1",
                     "log_level": "info"}]


async def test_command_leaving_a_background_child_does_not_hold_the_delivery(
    tmp_path: Path,
) -> None:
    """A program that exits 0 while a detached child keeps its pipes open is delivered quickly."""
    handler, out = command(tmp_path, "background", timeout_s=10.0)
    payload, event_id = envelope()
    started = time.monotonic()
    try:
        await handler.deliver(payload, event_id, "recording.completed")
        assert time.monotonic() - started < 3
    finally:
        os.kill(int(out.read_text()), 9)


async def test_log_handler_names_the_recording_of_a_transcript_event() -> None:
    """A transcription's event carries the transcription; the log line names its recording."""
    from structlog.testing import capture_logs

    from botasync.events.handlers import LogHandler

    body = b'{"id": "evt_1", "type": "transcription.completed", ' \
           b'"data": {"id": "txn_1", "recording_id": "rec_1"}}'
    with capture_logs() as logs:
        await LogHandler("log", ["*"]).deliver(body, "evt_1", "transcription.completed")
    assert [e["recording_id"] for e in logs if e["event"] == "event_delivered"] == ["rec_1"]
