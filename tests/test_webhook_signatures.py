"""Webhook signatures on the wire: a receiver checking as Bota's do, Standard Webhooks, botasync.

The Bota receiver below is written from the rules Bota documents for its own example
receivers (`api/webhook-receiver-python` and `-node` in Bota's examples repository),
not from their code: exactly one `X-Bota-Signature: v1=<64 hex>` and one
`X-Bota-Timestamp` of 10 decimal digits (Unix seconds) at most 300 s away from now,
HMAC-SHA256 keyed with the secret's UTF-8 bytes over `<timestamp>.<raw body>`, JSON
content type, one decimal Content-Length up to 1 MiB, no transfer or content encoding,
an `evt_` id, a dotted type, a timezone-bearing `created_at`, an object `data`, no
duplicate keys, and an optional `X-Bota-Event-Id` equal to the body's `id`; an id
already stored with other bytes is a conflict.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from multidict import CIMultiDictProxy
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from botasync import config
from botasync.cli.main import main
from botasync.config import WebhookHandlerConfig
from botasync.envelope import EVENT_TYPES, Event, EventIds
from botasync.errors import ConfigError, HandlerError
from botasync.events.handlers import Handler, WebhookHandler, build_handler
from botasync.events.signing import signing_key
from botasync.events.signing import verify as botasync_verify
from botasync.jsoncodec import dumps
from botasync.service.app import sync_once
from botasync.simulator import World
from tests.conftest import API_KEY, SimulatorFactory

SECRET = "bota-endpoint-secret-\u00e9"  # not ASCII: the key is its UTF-8 bytes
STANDARD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MAX_BODY = 1024 * 1024
TOLERANCE_S = 300
EVENT_ID = re.compile(r"evt_[A-Za-z0-9_-]{1,200}")
EVENT_TYPE = re.compile(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*")
_IDS = EventIds()


class Rejected(Exception):
    """A delivery the receiver refuses, with the status it answers."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _one(headers: CIMultiDictProxy[str], name: str, required: bool = True) -> str | None:
    """The one value of a header; a missing required or a repeated one is refused."""
    values = headers.getall(name, [])
    if len(values) > 1 or (required and len(values) != 1):
        raise Rejected(400, f"missing or repeated {name}")
    return values[0] if values else None


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def check_envelope(body: bytes, header_id: str | None) -> dict[str, Any]:
    """The event in a signed body, or 400: the envelope rules of Bota's receivers."""
    try:
        event = json.loads(body.decode("utf-8"), object_pairs_hook=_strict_object,
                           parse_constant=_no_constant)
        if not isinstance(event, dict):
            raise ValueError("not an object")
        if not isinstance(event.get("id"), str) or not EVENT_ID.fullmatch(event["id"]):
            raise ValueError("id")
        kind = event.get("type")
        if not isinstance(kind, str) or len(kind) > 100 or not EVENT_TYPE.fullmatch(kind):
            raise ValueError("type")
        created = event.get("created_at")
        if not isinstance(created, str) or len(created) > 64:
            raise ValueError("created_at")
        if datetime.fromisoformat(created).tzinfo is None:
            raise ValueError("created_at without a timezone")
        if not isinstance(event.get("data"), dict):
            raise ValueError("data")
        if header_id is not None and header_id != event["id"]:
            raise ValueError("X-Bota-Event-Id differs from the body's id")
    except (ValueError, UnicodeError, RecursionError) as e:
        raise Rejected(400, f"invalid event: {e}") from None
    return event


@dataclass
class BotaReceiver:
    """A loopback receiver that accepts exactly what Bota's example receivers accept."""

    secret: bytes
    now: Callable[[], float] = time.time
    url: str = ""
    accepted: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    inbox: dict[str, bytes] = field(default_factory=dict)
    posts: int = 0

    def check_headers(self, request: web.Request) -> tuple[str, str, str | None, int]:
        """Signature, timestamp, event id and length, or the status Bota's receivers answer."""
        h = request.headers
        if request.path != "/webhooks/bota":
            raise Rejected(404, "not found")
        if h.getall("Transfer-Encoding", []):
            raise Rejected(400, "transfer encoding is unsupported")
        if h.getall("Content-Encoding", []):
            raise Rejected(415, "content encoding is unsupported")
        content_type = _one(h, "Content-Type") or ""
        if content_type.split(";", 1)[0].strip().lower() != "application/json":
            raise Rejected(415, "expected JSON")
        length = _one(h, "Content-Length") or ""
        if not re.fullmatch(r"[0-9]{1,10}", length):
            raise Rejected(400, "invalid body length")
        if int(length) > MAX_BODY:
            raise Rejected(413, "payload too large")
        signature = _one(h, "X-Bota-Signature") or ""
        timestamp = _one(h, "X-Bota-Timestamp") or ""
        header_id = _one(h, "X-Bota-Event-Id", required=False)
        if not re.fullmatch(r"[0-9]{10}", timestamp) or \
                not re.fullmatch(r"v1=[0-9a-fA-F]{64}", signature):
            raise Rejected(401, "invalid signature")
        return signature, timestamp, header_id, int(length)

    def check_signature(self, signature: str, timestamp: str, body: bytes) -> None:
        """HMAC-SHA256 of `<timestamp>.<body>`, fresh within the tolerance, compared in constant time."""
        if abs(self.now() - int(timestamp)) > TOLERANCE_S:
            raise Rejected(401, "invalid signature (timestamp outside the tolerance)")
        mac = hmac.new(self.secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
        if not hmac.compare_digest(mac.digest(), bytes.fromhex(signature[len("v1="):])):
            raise Rejected(401, "invalid signature")

    async def handle(self, request: web.Request) -> web.Response:
        self.posts += 1
        try:
            signature, timestamp, header_id, length = self.check_headers(request)
            body = await request.read()
            if len(body) != length:
                raise Rejected(400, "incomplete body")
            self.check_signature(signature, timestamp, body)
            event = check_envelope(body, header_id)
            if self.inbox.setdefault(event["id"], body) != body:
                raise Rejected(409, "conflicting event id")
        except Rejected as e:
            self.rejected.append((e.status, e.reason))
            return web.Response(status=e.status, text=e.reason)
        self.accepted.append(event)
        return web.Response(status=200, text="Accepted")


@dataclass
class Recorder:
    """A loopback receiver that answers 204 and keeps each request's headers and body."""

    url: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=204)


async def _serve(handle: Callable[[web.Request], Any]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@pytest.fixture
async def bota_receiver() -> AsyncIterator[BotaReceiver]:
    """A Bota-rules receiver for SECRET on 127.0.0.1, at /webhooks/bota."""
    rec = BotaReceiver(secret=SECRET.encode("utf-8"))
    runner, base = await _serve(rec.handle)
    rec.url = base + "/webhooks/bota"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    """A receiver that records everything, for the other schemes."""
    rec = Recorder()
    runner, rec.url = await _serve(rec.handle)
    yield rec
    await runner.cleanup()


def envelope(name: str = "Standup", event_type: str = "recording.completed") -> tuple[bytes, str]:
    """An event payload as the outbox stores it, and its id."""
    ev = Event(id=_IDS.new(datetime.now(UTC)), type=event_type,
               created_at="2026-11-25T10:00:00.123Z", recording_id="rec_1",
               data={"id": "rec_1", "name": name, "status": "completed"},
               previous={"status": "processing"})
    return dumps(ev.envelope()).encode(), ev.id


def webhook(url: str, secret: str | None, signature: str = "bota",
            clock: Callable[[], float] = time.time) -> WebhookHandler:
    """A webhook handler as `build_handler` makes it, with a clock of our choosing."""
    cfg = WebhookHandlerConfig(name="hook", type="webhook", url=url, timeout_s=5,
                               signature=signature)
    key = signing_key(cfg.signature, secret) if secret is not None else None
    return WebhookHandler(cfg.name, ["*"], cfg.url, cfg.timeout_s, key,
                          signature=cfg.signature, clock=clock)


# --- bota ------------------------------------------------------------------------------


async def test_every_delivery_of_real_syncs_is_accepted_by_a_bota_receiver(
    bota_receiver: BotaReceiver, simulator_factory: SimulatorFactory, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A backfill and a round of changes, every event delivered once and accepted, none refused."""
    sim = await simulator_factory(World(seed=23, recordings=40))
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    db = tmp_path / "botasync.db"
    cfg_file = tmp_path / "botasync.toml"
    cfg_file.write_text(
        f'[api]\nbase_url = "{sim.url}"\napi_key = "{API_KEY}"\n'
        f'[database]\npath = "{db}"\n'
        "[events]\ndeliver_backfill = true\nbackoff_base_s = 0.01\nbackoff_max_s = 0.05\n"
        f'[[handlers]]\nname = "bota"\ntype = "webhook"\nurl = "{bota_receiver.url}"\n'
        'secret_env = "HOOK_SECRET"\n'  # no `signature` key: the default is Bota's scheme
    )
    cfg = config.load(cfg_file, env={})
    _, delivered = await sync_once(cfg, deliver_timeout=30)
    assert delivered
    world = sim.world
    ids = world.ids()
    world.step(8)
    world.update(ids[1], name="Renamed \u2014 caf\u00e9 \U0001f399")
    world.delete(ids[2])
    world.create(name="Brand new")
    _, delivered = await sync_once(cfg, deliver_timeout=30)
    assert delivered

    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("SELECT id, payload FROM events").fetchall())
    assert len(stored) > 40  # the backfill's 40 recordings and the changes' events
    assert bota_receiver.rejected == []
    assert sorted(e["id"] for e in bota_receiver.accepted) == sorted(stored)
    assert {i: b.decode() for i, b in bota_receiver.inbox.items()} == stored  # the exact bytes
    types = {e["type"] for e in bota_receiver.accepted}
    assert types <= set(EVENT_TYPES) and len(types) >= 4, types


async def test_a_bota_receiver_rejects_a_wrong_secret(bota_receiver: BotaReceiver) -> None:
    """Signed with another secret, the delivery is refused (401) and fails."""
    handler = webhook(bota_receiver.url, "another-secret")
    payload, event_id = envelope()
    with pytest.raises(HandlerError, match=r"^HTTP 401: invalid signature$"):
        await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    assert bota_receiver.accepted == []


@pytest.mark.parametrize(("skew_s", "accepted"), [(-299, True), (299, True), (-301, False),
                                                  (301, False)])
async def test_a_bota_receiver_takes_timestamps_within_300_seconds(
    bota_receiver: BotaReceiver, skew_s: int, accepted: bool
) -> None:
    """The timestamp is Unix seconds; a sender clock 301 s off either way is refused."""
    handler = webhook(bota_receiver.url, SECRET, clock=lambda: time.time() + skew_s)
    payload, event_id = envelope()
    if accepted:
        await handler.deliver(payload, event_id, "recording.completed")
    else:
        with pytest.raises(HandlerError, match=r"^HTTP 401: invalid signature"):
            await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    assert [e["id"] for e in bota_receiver.accepted] == ([event_id] if accepted else [])


async def test_a_retry_is_signed_anew_and_accepted_again(bota_receiver: BotaReceiver) -> None:
    """The same event sent twice minutes apart: each attempt has its own fresh timestamp."""
    now = [time.time() - 250]
    handler = webhook(bota_receiver.url, SECRET, clock=lambda: now[0])
    payload, event_id = envelope()
    await handler.deliver(payload, event_id, "recording.completed")
    now[0] += 240  # the first timestamp would be 490 s old by now
    await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    assert [e["id"] for e in bota_receiver.accepted] == [event_id, event_id]
    assert bota_receiver.rejected == []


def readme_verify() -> Callable[..., bool]:
    """The `verify` function of the README's webhook section, as a reader would paste it."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "X-Bota-Signature" in b]
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # our own README
    fn: Callable[..., bool] = namespace["verify"]
    return fn


async def test_the_readme_verify_snippet_accepts_a_delivery_and_nothing_else(
    recorder: Recorder,
) -> None:
    """The README's snippet verifies a real delivery; another secret, body or old one fails."""
    verify = readme_verify()
    handler = webhook(recorder.url + "/hook", SECRET)
    stale = webhook(recorder.url + "/hook", SECRET, clock=lambda: time.time() - 301)
    payload, event_id = envelope()
    await handler.deliver(payload, event_id, "recording.completed")
    await stale.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    await stale.aclose()
    [(headers, body), (old_headers, _)] = recorder.requests
    assert body == payload and headers["X-Bota-Event-Id"] == json.loads(body)["id"]
    assert verify(SECRET, body, headers) is True
    assert verify("another-secret", body, headers) is False
    assert verify(SECRET, body + b" ", headers) is False
    assert verify(SECRET, body, old_headers) is False


# --- standard webhooks -------------------------------------------------------------------


async def test_standard_deliveries_verify_with_the_standardwebhooks_package(
    recorder: Recorder,
) -> None:
    """`Webhook(secret).verify(body, headers)` accepts each delivery; another secret does not."""
    handler = webhook(recorder.url + "/hook", STANDARD_SECRET, signature="standard")
    sent = [envelope(name=n) for n in ("Standup", "R\u00e9union \U0001f399", 'quote " and \\')]
    for payload, event_id in sent:
        await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    assert len(recorder.requests) == len(sent)
    other = "whsec_" + "QUJD" * 8
    for (headers, body), (payload, event_id) in zip(recorder.requests, sent, strict=True):
        assert body == payload
        assert headers["webhook-id"] == event_id
        assert Webhook(STANDARD_SECRET).verify(body, headers) == json.loads(payload)
        with pytest.raises(WebhookVerificationError):
            Webhook(other).verify(body, headers)
        assert not {"X-Bota-Signature", "Botasync-Signature"} & set(headers)


# --- botasync --------------------------------------------------------------------------


async def test_botasync_mode_sends_the_original_header_unchanged(recorder: Recorder) -> None:
    """`signature = "botasync"`: `Botasync-Signature: t=..,v1=..`, as before; another secret fails."""
    handler = webhook(recorder.url + "/hook", "s3cret", signature="botasync")
    payload, event_id = envelope()
    await handler.deliver(payload, event_id, "recording.completed")
    await handler.aclose()
    [(headers, body)] = recorder.requests
    header = headers["Botasync-Signature"]
    parts = dict(p.split("=", 1) for p in header.split(","))
    mac = hmac.new(b"s3cret", parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    assert parts["v1"] == mac
    assert botasync_verify(b"s3cret", body, header, int(time.time()))
    assert not botasync_verify(b"other", body, header, int(time.time()))
    assert not {"X-Bota-Signature", "webhook-signature"} & set(headers)


# --- configuration -----------------------------------------------------------------------


def test_an_unknown_signature_mode_is_one_clear_config_line(tmp_path: Path) -> None:
    """`signature = "hmac"` stops the load with one line naming the key and the modes."""
    f = tmp_path / "c.toml"
    f.write_text('[[handlers]]\nname = "h"\ntype = "webhook"\nurl = "http://127.0.0.1:1/x"\n'
                 'signature = "hmac"\n')
    with pytest.raises(ConfigError) as info:
        config.load(f, env={})
    assert str(info.value) == \
        "[[handlers]] #1 signature: Input should be 'bota', 'standard' or 'botasync'"


@pytest.mark.parametrize(
    ("secret", "why"),
    [("plain-secret", "it does not start with whsec_"),
     ("whsec_not base64!", "the rest is not base64"),
     ("whsec_", "the key after whsec_ is empty")],
)
def test_a_standard_secret_that_is_not_whsec_base64_stops_the_start(
    monkeypatch: pytest.MonkeyPatch, secret: str, why: str
) -> None:
    """Building the handler (at start and in `config check`) refuses it with one line."""
    monkeypatch.setenv("HOOK_SECRET", secret)
    cfg = WebhookHandlerConfig(name="hook", type="webhook", url="http://127.0.0.1:1/x",
                               secret_env="HOOK_SECRET", signature="standard")
    with pytest.raises(ConfigError) as info:
        build_handler(cfg)
    assert str(info.value) == ('handler "hook": secret_env HOOK_SECRET: a "standard" secret '
                               f"must be whsec_ followed by base64 ({why})")


@pytest.mark.parametrize("mode", ["bota", "botasync"])
def test_other_modes_take_any_secret_as_text(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Only `standard` decodes its secret; a `whsec_` one is plain text to the others."""
    monkeypatch.setenv("HOOK_SECRET", STANDARD_SECRET)
    cfg = WebhookHandlerConfig(name="hook", type="webhook", url="http://127.0.0.1:1/x",
                               secret_env="HOOK_SECRET", signature=mode)
    handler: Handler = build_handler(cfg)
    assert isinstance(handler, WebhookHandler) and handler.signature == mode


def test_config_check_says_what_is_wrong_with_a_standard_secret(tmp_path: Path) -> None:
    """`botasync config check`: exit 2 and one `error:` line naming the handler and variable."""
    f = tmp_path / "c.toml"
    f.write_text('[[handlers]]\nname = "out"\ntype = "webhook"\nurl = "http://127.0.0.1:1/x"\n'
                 'secret_env = "OUT_SECRET"\nsignature = "standard"\n')
    result = CliRunner().invoke(main, ["config", "check", "--config", str(f)], env={
        "BOTA_API_KEY": API_KEY, "BOTASYNC_CONFIG": "", "OUT_SECRET": "c2VjcmV0"})
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == ['error: handler "out": secret_env OUT_SECRET: a "standard" secret must be '
                      "whsec_ followed by base64 (it does not start with whsec_)"]
