"""The NATS JetStream handler against a real `nats-server -js` on loopback.

Subjects, headers and bodies as stored; order per subject; a retried publish stored once;
the stream created, updated or found missing (exit 2); credentials never logged; the
server stopped and started again; `botasync run` killed with SIGKILL while it relays.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StreamConfig
from structlog.testing import capture_logs

from botasync.config import EventsConfig, NatsHandlerConfig, load
from botasync.errors import BotasyncError, ConfigError, HandlerError
from botasync.events.handlers import BatchFailed, Outgoing, build_handler
from botasync.events.nats import (
    NatsHandler,
    ack_error,
    covers,
    credentials,
    duplicate_window_s,
    envelope_facts,
    header_block,
    message_headers,
    subject_for,
)
from botasync.events.outbox import Dispatcher, retry_span_s, start_handlers
from botasync.store.sqlite import Store
from tests.natsrelay import (
    NatsServer,
    Stored,
    add_events,
    check_stream,
    connect,
    read_stream,
    stream_count,
)
from tests.torture.harness import base_sections, botasync, clean_env, write_config

FAST = {"backoff_base_s": 0.02, "backoff_max_s": 0.2}
TOKEN = "s3cr3t-T0ken-never-logged-4d1c"
PASSWORD = "p4ss-W0rd-never-logged-77aa"

ServerFactory = Callable[..., Awaitable[NatsServer]]


@pytest.fixture
async def nats_servers(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start real `nats-server -js` processes (a failure to start fails the test); all are
    stopped at teardown."""
    made: list[NatsServer] = []

    async def start(*args: str, name: str = "nats") -> NatsServer:
        server = NatsServer(tmp_path / name, args)
        made.append(server)
        await server.start()
        return server

    yield start
    for server in made:
        await server.aclose()


@pytest.fixture
async def nats_server(nats_servers: ServerFactory) -> NatsServer:
    """One server, JetStream on, no credentials."""
    return await nats_servers()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "botasync.db")
    yield s
    await s.aclose()


def nats_cfg(url: str, **keys: Any) -> NatsHandlerConfig:
    return NatsHandlerConfig(**{"name": "relay", "type": "nats", "url": url,
                                "timeout_s": 5.0, **keys})


@contextlib.asynccontextmanager
async def handler(url: str, *, span: float = 0.0, **keys: Any) -> AsyncIterator[NatsHandler]:
    h = build_handler(nats_cfg(url, **keys))
    assert isinstance(h, NatsHandler)
    try:
        await h.start(retry_span_s=span)
        yield h
    finally:
        await h.aclose()


async def stored(url: str, stream: str = "BOTASYNC", subjects: str = "botasync.>") -> list[Stored]:
    nc = await connect(url)
    try:
        return await read_stream(nc, stream, subjects)
    finally:
        await nc.close()


async def count(url: str, stream: str = "BOTASYNC") -> int:
    nc = await connect(url)
    try:
        return await stream_count(nc, stream)
    finally:
        await nc.close()


async def relay(store: Store, url: str, events: EventsConfig | None = None,
                **keys: Any) -> Dispatcher:
    """A started dispatcher with one NATS handler (create_stream on unless said)."""
    keys.setdefault("create_stream", True)
    d = Dispatcher(store, [build_handler(nats_cfg(url, **keys))],
                   events or EventsConfig(deliver_backfill=True, **FAST))
    await d.start()
    return d


# --- pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(("prefix", "project", "event_type", "subject"), [
    ("botasync", "default", "recording.completed", "botasync.default.recording.completed"),
    ("acme.bota", "prod", "media.created", "acme.bota.prod.media.created"),
    ("botasync", "proj.with dots*>", "recording.x y", "botasync.proj_with_dots__.recording.x_y"),
    ("botasync", "", "recording..odd", "botasync._.recording._.odd"),
])
def test_subject_is_prefix_project_and_type_with_unsafe_characters_replaced(
    prefix: str, project: str, event_type: str, subject: str
) -> None:
    """Each part a valid subject token: wildcards, spaces and dots in a project never leak."""
    assert subject_for(prefix, project, event_type) == subject


@pytest.mark.parametrize(("payload", "facts"), [
    (b'{"id": "evt_1", "created_at": "2026-01-02T03:04:05.678Z"}',
     ("default", "2026-01-02T03:04:05.678Z")),
    (b'{"project": "staging", "created_at": "2026-01-02T03:04:05Z"}',
     ("staging", "2026-01-02T03:04:05Z")),
    (b'{"project": "", "created_at": "yesterday\\r\\nX: 1"}', ("default", None)),
    (b'{"project": 7}', ("default", None)),
    (b'{"id":"evt_1","type":"recording.created","created_at":"2026-01-02T03:04:05.678Z",'
     b'"data":{"project":"inner"}}', ("default", "2026-01-02T03:04:05.678Z")),
    (b'{"id":"evt_1","type":"recording.created","created_at":"2026-01-02T03:04:05.678Z",'
     b'"data":{},"project":"p2"}', ("p2", "2026-01-02T03:04:05.678Z")),
    (b'{"id":"evt_1","type":"recording.created","created_at":"soon","data":{}}',
     ("default", None)),
    (b"not json", ("default", None)),
    (b"[1, 2]", ("default", None)),
])
def test_envelope_facts_project_and_time(payload: bytes, facts: tuple[str, str | None]) -> None:
    """The project (issue 16's envelope key, else default) and a well-formed created_at."""
    assert envelope_facts(payload) == facts


@pytest.mark.parametrize(("pattern", "wanted", "taken"), [
    ("botasync.>", "botasync.>", True),
    (">", "botasync.>", True),
    ("*.>", "botasync.>", True),
    ("botasync.*", "botasync.>", False),
    ("botasync.default.>", "botasync.>", False),
    ("other.>", "botasync.>", False),
    ("acme.*.>", "acme.bota.>", True),
    ("acme.bota", "acme.bota.>", False),
])
def test_covers(pattern: str, wanted: str, taken: bool) -> None:
    """A stream subject takes our subjects only if it matches every one of them."""
    assert covers(pattern, wanted) is taken


@pytest.mark.parametrize(("data", "status", "error"), [
    (b'{"stream": "BOTASYNC", "seq": 4}', None, ""),
    (b'{"stream": "BOTASYNC", "seq": 4, "duplicate": true}', None, ""),
    (b"", "503", "no stream answered (none takes this subject)"),
    (b'{"error": {"code": 400, "err_code": 10060, "description": "expected stream does not '
     b'match"}}', None, "stream refused it: expected stream does not match (code 400, "
     "err_code 10060)"),
    (b"{}", None, "unreadable ack"),
    (b"garbage", None, "unreadable ack: garbage"),
])
def test_ack_error(data: bytes, status: str | None, error: str) -> None:
    """A PubAck, a duplicate's too, is delivered; anything else says why not."""
    assert ack_error(data, status) == error


@pytest.mark.parametrize(("event_id", "event_type", "project", "created"), [
    ("evt_01", "recording.completed", "default", "2026-01-02T03:04:05.678Z"),
    ("evt_02", "media.created", "staging", None),
    ("evt_03", "recording.x", "odd.project name", "2026-01-02T03:04:05Z"),
])
def test_the_fast_encoding_is_the_same_bytes(
    event_id: str, event_type: str, project: str, created: str | None
) -> None:
    """What the handler writes per event equals `header_block(message_headers(...))`."""
    h = build_handler(nats_cfg("nats://127.0.0.1:1", subject_prefix="acme.bota"))
    assert isinstance(h, NatsHandler)
    for _ in range(2):  # made once, then from the cache
        subject, block = h.encoded(event_id, event_type, project, created)
        assert subject == subject_for("acme.bota", project, event_type)
        assert block == header_block(message_headers(event_id, event_type, project, created,
                                                     "BOTASYNC"))


def test_header_block_is_the_nats_wire_format() -> None:
    """`NATS/1.0`, one `Key: value` a line, a blank line."""
    assert header_block({"A": "1", "ce-id": "evt_x"}) == b"NATS/1.0\r\nA: 1\r\nce-id: evt_x\r\n\r\n"


@pytest.mark.parametrize(("events", "timeout_s", "span"), [
    ({}, 30.0, 511 + 300),  # 1+2+...+256 s of waits, 10 attempts of up to 30 s
    ({"max_attempts": 1}, 30.0, 30),
    ({"max_attempts": 3, "backoff_base_s": 10, "backoff_max_s": 15}, 5.0, 25 + 15),
    ({"max_attempts": 1_000_000, "backoff_base_s": 1, "backoff_max_s": 2}, 0.0,
     1 + 2 * 999_998),
])
def test_retry_span_covers_every_attempt_and_the_longest_waits(
    events: dict[str, Any], timeout_s: float, span: float
) -> None:
    """The dispatcher's retry span: waits at the top of their jitter, plus every attempt."""
    assert retry_span_s(EventsConfig(**events), timeout_s) == pytest.approx(span)


def test_duplicate_window_is_the_retry_span_and_never_under_two_minutes() -> None:
    assert duplicate_window_s(811) == 811
    assert duplicate_window_s(3) == 120


# --- config ----------------------------------------------------------------------------


def test_defaults_and_secret_env_names(tmp_path: Path) -> None:
    """The keys' defaults; the credentials' variables are withheld from commands like
    BOTA_API_KEY; `config show` hides a URL's password."""
    path = write_config(tmp_path / "c.toml", {"handlers": [
        {"name": "a", "type": "nats"},
        {"name": "b", "type": "nats", "url": "nats://relay:hunter2@127.0.0.1:4222",
         "token_env": "", "user": "", "subject_prefix": "acme.bota"},
        {"name": "c", "type": "nats", "token_env": "NATS_TOKEN"},
        {"name": "d", "type": "nats", "user": "u", "password_env": "NATS_PASSWORD"},
    ]})
    cfg = load(path, env={})
    a = cfg.handlers[0]
    assert isinstance(a, NatsHandlerConfig)
    assert (a.url, a.stream, a.subject_prefix, a.create_stream) == (
        "nats://127.0.0.1:4222", "BOTASYNC", "botasync", False)
    assert {"NATS_TOKEN", "NATS_PASSWORD"} <= cfg.secret_env_names()
    assert "hunter2" not in json.dumps(cfg.redacted())
    assert cfg.redacted()["handlers"][1]["url"] == "nats://relay:***@127.0.0.1:4222"


@pytest.mark.parametrize(("keys", "message"), [
    ({"url": "http://127.0.0.1:4222"}, "url: Value error, must be nats://host:port"),
    ({"stream": "BOTA.SYNC"}, "stream: Value error, a stream name has no spaces"),
    ({"subject_prefix": "botasync.>"}, "subject_prefix: Value error, must be subject tokens"),
    ({"subject_prefix": "a..b"}, "subject_prefix: Value error"),
    ({"user": "u"}, "user needs password_env or password_file"),
    ({"password_env": "P"}, "a password needs user"),
    ({"token_env": "T", "token_file": "/t"}, "token_env and token_file: give one"),
    ({"token_env": "T", "creds_file": "/c"}, "give one kind of credentials, not token and "
     "creds_file"),
    ({"type": "natz"}, "type must be one of command, webhook, python, log, nats"),
])
def test_bad_keys_are_one_line_naming_them(
    tmp_path: Path, keys: dict[str, Any], message: str
) -> None:
    path = write_config(tmp_path / "c.toml", {"handlers": [{"name": "n", "type": "nats", **keys}]})
    with pytest.raises(ConfigError, match=r"^\[\[handlers\]\] #1[ :]") as err:
        load(path, env={})
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_credentials_from_environment_and_files(tmp_path: Path) -> None:
    """A token or password comes from a variable or a file (`%d`: systemd's credentials);
    a missing one stops the start naming the key, never the value."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path), "NATS_PASSWORD": PASSWORD}
    assert credentials(nats_cfg("nats://h", token_file="%d/token"), env) == {"token": TOKEN}
    assert credentials(nats_cfg("nats://h", user="u", password_env="NATS_PASSWORD"), env) == {
        "user": "u", "password": PASSWORD}
    with pytest.raises(ConfigError, match='handler "relay": token_env NATS_TOKEN is not set'):
        credentials(nats_cfg("nats://h", token_env="NATS_TOKEN"), env)
    with pytest.raises(ConfigError, match=r"token_file .* cannot be read"):
        credentials(nats_cfg("nats://h", token_file=str(tmp_path / "absent")), env)
    with pytest.raises(ConfigError, match=r"creds_file .* does not exist"):
        credentials(nats_cfg("nats://h", creds_file=str(tmp_path / "absent.creds")), env)


def test_other_handler_types_take_no_batches(tmp_path: Path) -> None:
    """Only the NATS handler offers `deliver_batch`: the others go one event at a time."""
    from botasync.config import LogHandlerConfig
    from botasync.events.handlers import batching

    assert batching(build_handler(LogHandlerConfig(name="l", type="log"))) is None
    assert batching(build_handler(nats_cfg("nats://127.0.0.1:1"))) is not None


# --- publishing ------------------------------------------------------------------------


async def test_each_event_on_its_subject_with_its_headers_and_its_stored_bytes(
    nats_server: NatsServer, store: Store
) -> None:
    """Subject `<prefix>.<project>.<type>`, `Nats-Msg-Id` and CloudEvents headers, the
    body byte for byte as `events.payload`; a project in the envelope names the subject."""
    events = await add_events(store, 30, backfill=True)
    events += await add_events(store, 5, backfill=True, project="staging", seed=2)
    d = await relay(store, nats_server.url)
    try:
        assert await d.drain(20)
    finally:
        await d.aclose()
    got = await stored(nats_server.url)
    assert [m.headers["Nats-Msg-Id"] for m in got] == [e[0] for e in events]
    for m, (event_id, event_type, payload) in zip(got, events, strict=True):
        project = "staging" if b'"project":"staging"' in payload else "default"
        assert m.subject == f"botasync.{project}.{event_type}"
        assert m.data == payload
        assert m.headers == {
            "Nats-Msg-Id": event_id, "Nats-Expected-Stream": "BOTASYNC",
            "ce-specversion": "1.0", "ce-id": event_id, "ce-type": event_type,
            "ce-source": f"botasync/{project}", "ce-time": "2026-11-28T10:00:00.000Z",
            "ce-datacontenttype": "application/json",
        }


async def test_order_per_subject_over_many_batches(nats_server: NatsServer, store: Store) -> None:
    """2,000 events in batches: every one stored once, each subject in outbox order, the
    cursor at the last event and every delivery recorded."""
    await add_events(store, 2000, backfill=True, recordings=7)
    d = await relay(store, nats_server.url)
    try:
        assert await d.drain(60)
    finally:
        await d.aclose()
    outbox = [(int(r[0]), r[1]) for r in await store.fetchall(
        "SELECT seq, id FROM events ORDER BY seq")]
    check = check_stream(await stored(nats_server.url), outbox)
    assert check.problems() == []
    row = await store.fetchone("SELECT seq FROM handler_cursors WHERE handler = 'relay'")
    assert row is not None and row["seq"] == outbox[-1][0]
    row = await store.fetchone("SELECT count(*) FROM deliveries WHERE state = 'delivered'")
    assert row is not None and row[0] == 2000


async def test_a_retried_publish_is_stored_once(nats_server: NatsServer) -> None:
    """The same event published twice (a retry after a lost ack, a crash before the cursor
    moved): the stream acks both, keeps one."""
    event = Outgoing(b'{"id": "evt_A", "created_at": "2026-01-01T00:00:00Z"}', "evt_A",
                     "recording.created")
    async with handler(nats_server.url, create_stream=True) as h:
        await h.deliver(event.payload, event.event_id, event.event_type)
        await h.deliver_batch([event, Outgoing(b"{}", "evt_B", "recording.created"), event])
    got = await stored(nats_server.url)
    assert [m.headers["Nats-Msg-Id"] for m in got] == ["evt_A", "evt_B"]


async def test_the_fallback_publish_path_stores_the_same(nats_server: NatsServer) -> None:
    """The client's own `publish` (used when its buffer is not reachable) makes the same
    messages as the fast path."""
    async with handler(nats_server.url, create_stream=True) as h:
        h.fast = False
        await h.deliver_batch([Outgoing(b'{"a": 1}', f"evt_{i}", "media.created")
                               for i in range(3)])
    got = await stored(nats_server.url)
    assert [(m.subject, m.headers["ce-id"], m.data) for m in got] == [
        ("botasync.default.media.created", f"evt_{i}", b'{"a": 1}') for i in range(3)]


async def test_a_batch_stops_at_its_first_refused_event(nats_server: NatsServer) -> None:
    """An event over the server's max_payload fails the batch there: the ones before it
    are delivered, none after it is sent (order kept)."""
    big = b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}'
    batch = [Outgoing(b"{}", "evt_1", "recording.created"),
             Outgoing(big, "evt_2", "recording.created"),
             Outgoing(b"{}", "evt_3", "recording.created")]
    async with handler(nats_server.url, create_stream=True) as h:
        with pytest.raises(BatchFailed, match="over the server's") as err:
            await h.deliver_batch(batch)
    assert err.value.delivered == 1
    assert [m.headers["ce-id"] for m in await stored(nats_server.url)] == ["evt_1"]


# --- the stream ------------------------------------------------------------------------


async def test_create_stream_makes_it_with_a_window_as_long_as_the_retry_span(
    nats_server: NatsServer,
) -> None:
    """`create_stream = true`: the stream on `<prefix>.>`, its duplicate window the
    dispatcher's retry span for this handler."""
    events = EventsConfig(max_attempts=12, backoff_base_s=1, backoff_max_s=600)
    h = build_handler(nats_cfg(nats_server.url, create_stream=True, subject_prefix="acme.bota",
                               stream="EVENTS"))
    try:
        await start_handlers([h], events)
    finally:
        await h.aclose()
    nc = await connect(nats_server.url)
    try:
        info = await nc.jetstream().stream_info("EVENTS")
    finally:
        await nc.close()
    span = retry_span_s(events, 5.0)
    assert span == 1 + 2 + 4 + 8 + 16 + 32 + 64 + 128 + 256 + 512 + 600 + 12 * 5
    assert info.config.subjects == ["acme.bota.>"]
    assert info.config.duplicate_window == pytest.approx(span)


async def test_create_stream_widens_an_existing_streams_subjects_and_window(
    nats_server: NatsServer,
) -> None:
    """An existing stream keeps its subjects and gains ours; a shorter window is lengthened."""
    nc = await connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="BOTASYNC", subjects=["other.>"],
                                         duplicate_window=60))
        async with handler(nats_server.url, create_stream=True, span=900):
            pass
        info = await js.stream_info("BOTASYNC")
    finally:
        await nc.close()
    assert info.config.subjects == ["other.>", "botasync.>"]
    assert info.config.duplicate_window == pytest.approx(900)


async def test_a_missing_stream_stops_the_start(nats_server: NatsServer) -> None:
    """Without `create_stream`, a stream that is not there is a config error at start."""
    h = build_handler(nats_cfg(nats_server.url))
    with pytest.raises(ConfigError) as err:
        await start_handlers([h], EventsConfig())
    await h.aclose()
    assert str(err.value) == (f'handler "relay": stream BOTASYNC does not exist on '
                              f"{nats_server.url} (create it, or set create_stream = true)")


async def test_a_stream_not_taking_our_subjects_stops_the_start(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(StreamConfig(name="BOTASYNC", subjects=["other.>"]))
    finally:
        await nc.close()
    h = build_handler(nats_cfg(nats_server.url))
    with pytest.raises(ConfigError, match=r"does not take botasync\.> \(its subjects: other\.>\)"):
        await start_handlers([h], EventsConfig())
    await h.aclose()


async def test_an_unreachable_server_warns_at_run_and_fails_a_check() -> None:
    """`run` starts anyway (its deliveries retry); `config check` says it, exit 1."""
    url = "nats://127.0.0.1:1"
    h = build_handler(nats_cfg(url))
    with capture_logs() as logs:
        await start_handlers([h], EventsConfig())
    assert [e["event"] for e in logs] == ["nats_not_ready"]
    with pytest.raises(BotasyncError) as err:
        await start_handlers([h], EventsConfig(), strict=True)
    assert not isinstance(err.value, ConfigError)
    assert str(err.value).startswith(f'handler "relay": cannot connect to NATS at {url}')
    with pytest.raises(HandlerError, match="cannot connect"):
        await h.deliver(b"{}", "evt_1", "recording.created")
    await h.aclose()


async def test_commands_exit_2_on_a_missing_stream(nats_server: NatsServer, tmp_path: Path) -> None:
    """`botasync config check` and `botasync run` stop with one line, exit 2."""
    cfg = write_config(tmp_path / "botasync.toml", base_sections(
        "http://127.0.0.1:1/v1", tmp_path / "botasync.db",
        handlers=[{"name": "relay", "type": "nats", "url": nats_server.url}]))
    line = (f'error: handler "relay": stream BOTASYNC does not exist on {nats_server.url} '
            "(create it, or set create_stream = true)")
    for command in ("config check", "run"):
        run = await botasync(*command.split(), "--config", str(cfg), timeout=60)
        assert (command, run.code) == (command, 2)
        assert run.err_lines()[-1] == line, run.err


# --- credentials -----------------------------------------------------------------------


async def test_credentials_are_used_and_never_logged(
    nats_servers: ServerFactory, tmp_path: Path
) -> None:
    """A token from the environment and a user:password URL connect; a wrong one fails;
    neither value shows in any log line, error or delivery record."""
    by_token = await nats_servers("--auth", TOKEN, name="token")
    by_user = await nats_servers("--user", "relay", "--pass", PASSWORD, name="user")
    os.environ["TEST_NATS_TOKEN"] = TOKEN
    try:
        with capture_logs() as logs:
            async with handler(by_token.url, create_stream=True, token_env="TEST_NATS_TOKEN") as h:
                await h.deliver(b"{}", "evt_1", "recording.created")
            user_url = f"nats://relay:{PASSWORD}@127.0.0.1:{by_user.port}"
            async with handler(user_url, create_stream=True) as h:
                assert h.where == f"nats://relay:***@127.0.0.1:{by_user.port}"
                await h.deliver(b"{}", "evt_2", "recording.created")
            wrong = f"nats://relay:{PASSWORD}x@127.0.0.1:{by_user.port}"
            with pytest.raises(BotasyncError) as err:
                await start_handlers([build_handler(nats_cfg(wrong))], EventsConfig(),
                                     strict=True)
            await start_handlers([build_handler(nats_cfg(wrong))], EventsConfig())
    finally:
        del os.environ["TEST_NATS_TOKEN"]
    assert "Authorization Violation" in str(err.value)
    text = json.dumps(logs) + str(err.value)
    assert TOKEN not in text and PASSWORD not in text
    assert "nats://relay:***@" in text
    # a real process: `config check` with each, wrong and right; its output has neither
    outputs = []
    for url, env in ((by_token.url, {"TEST_NATS_TOKEN": TOKEN}),
                     (by_token.url, {"TEST_NATS_TOKEN": TOKEN + "x"}),
                     (user_url, {}), (wrong, {})):
        keys: dict[str, Any] = {"token_env": "TEST_NATS_TOKEN"} if env else {}
        cfg = write_config(tmp_path / "c.toml", base_sections(
            "http://127.0.0.1:1/v1", tmp_path / "botasync.db", logging={"level": "debug"},
            handlers=[{"name": "relay", "type": "nats", "url": url, "create_stream": True,
                       **keys}]))
        run = await botasync("config", "check", "--config", str(cfg), env=clean_env(**env))
        outputs.append(run.out + run.err)
        assert run.code == 1  # the API is not there; NATS passed or failed before it
    assert "Authorization Violation" in outputs[1] and "Authorization Violation" in outputs[3]
    assert all(TOKEN not in o and PASSWORD not in o for o in outputs), outputs


# --- outages ---------------------------------------------------------------------------


async def test_server_stopped_for_a_while_deliveries_resume_nothing_lost(
    tmp_path: Path, store: Store, nats_server: NatsServer
) -> None:
    """The server goes away mid-relay for 3 s (events keep coming): deliveries fail, are
    retried, and resume when it is back; each event stored once, in order per subject."""
    from tests.natsrelay import run_outage

    result = await run_outage(store, nats_server, outage_s=3.0, before=3000, during=500)
    assert result.failures > 0  # it did notice
    assert result.check.problems() == []
    assert result.check.events == 3500


# --- kill -9 ---------------------------------------------------------------------------


@pytest.mark.torture
@pytest.mark.timeout(600)
async def test_sigkill_while_relaying_stores_each_event_once(
    tmp_path: Path, nats_server: NatsServer, torture_full: bool
) -> None:
    """`botasync run` relaying a backlog, killed with SIGKILL at 5 moments (20 with
    --torture) and started again: the stream holds each event exactly once, in order."""
    from tests.natsrelay import run_kill9_relay

    kills, backlog = (20, 40_000) if torture_full else (5, 10_000)
    result = await run_kill9_relay(tmp_path, nats_server, kills=kills, backlog=backlog)
    assert result.kills == kills
    assert result.during >= kills - 1  # killed while the stream was growing
    assert result.check.problems() == []
    assert result.check.events >= backlog
    assert result.final_exit == 0
