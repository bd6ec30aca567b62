"""Metrics and probes: a real daemon serving /metrics, /livez and /readyz over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from botasync import config, metrics
from botasync.errors import BotasyncError, ConfigError
from botasync.service.daemon import Daemon
from botasync.service.monitor import MonitorServer
from botasync.simulator import World
from tests.conftest import SimulatorFactory, wait_for
from tests.pgserver import TestDb
from tests.test_cli import run

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk_test_botasync"
DASHBOARD = ROOT / "contrib" / "grafana-dashboard.json"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def take(event: dict[str, Any]) -> None:
    """A python handler that takes every event."""


async def refuse(event: dict[str, Any]) -> None:
    """A python handler that fails every event (its deliveries die)."""
    raise RuntimeError("refused")


def write_config(tmp_path: Path, url: str, *, handlers: bool = True, **sections: str) -> Path:
    """A TOML file for a fast daemon on loopback: 0.1 s ticks, metrics on any free port;
    `sections` adds lines to [api] or [metrics], or a [media] or [transcripts] section."""
    text = f"""
[api]
base_url = "{url}"
api_key = "{KEY}"
requests_per_minute = 100000
retry_base_s = 0.01
retry_max_s = 0.05
{sections.get("api", "")}
[database]
path = "{tmp_path / 'botasync.db'}"
{sections.get("database", "")}
[sync]
interval_s = 0.1
reconcile_every_s = 3600
[events]
deliver_backfill = true
max_attempts = 2
backoff_base_s = 0.01
backoff_max_s = 0.02
[metrics]
listen = "127.0.0.1:0"
{sections.get("metrics", "")}
"""
    if handlers:
        text += """
[[handlers]]
name = "take"
type = "python"
target = "tests.test_metrics:take"
[[handlers]]
name = "refuse"
type = "python"
target = "tests.test_metrics:refuse"
events = ["recording.created"]
"""
    for name in ("media", "transcripts"):
        if name in sections:
            text += f"\n[{name}]\n{sections[name]}\n"
    path = tmp_path / "botasync.toml"
    path.write_text(text)
    return path


@contextlib.asynccontextmanager
async def running(cfg: config.Config) -> AsyncIterator[Daemon]:
    """A daemon serving its endpoints, stopped (cleanly) at the end of the block."""
    daemon = Daemon(cfg, handle_signals=False)
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.monitor is not None and daemon.monitor.port, timeout=10)
        yield daemon
    finally:
        daemon.stop()
        assert await asyncio.wait_for(task, 10) == 0


async def get(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}{path}") as resp:
        return resp.status, await resp.text()


async def scrape(port: int) -> Samples:
    """Every sample of /metrics, parsed by prometheus_client's own parser."""
    status, text = await get(port, "/metrics")
    assert status == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


# --- the pure parts ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "endpoint"), [
    ("/recordings", "list"),
    ("/recordings/rec_01HX", "detail"),
    ("/recordings/rec_01HX/download-url", "download_url"),
    ("/v1/recordings/rec_a%2Fb", "detail"),
    ("/transcriptions", "transcriptions"),
    ("/transcriptions/txn_1", "transcriptions"),
    ("/summaries", "summaries"),
    ("/summaries/sum_1", "summaries"),
    ("/recordings/rec_1/media/med_1", "other"),
    ("/devices", "other"),
    ("/", "other"),
])
def test_endpoints_are_a_fixed_set_never_an_id(path: str, endpoint: str) -> None:
    """A request is labelled by its endpoint, from six values, whatever ids it carries."""
    assert metrics.endpoint_of(path) == endpoint
    assert endpoint in metrics.ENDPOINTS


def test_code_label() -> None:
    """The code label is the HTTP status, or `error` when no answer came."""
    assert [metrics.code_label(c) for c in (200, 429, 503, None, 0)] == [
        "200", "429", "503", "error", "error"]


@pytest.mark.parametrize(("listen", "problem"), [
    ("9464", "expected host:port, like 127.0.0.1:9464, got '9464'"),
    (":9464", "expected host:port"),
    ("localhost:http", "expected host:port"),
    ("::1:9464", "an IPv6 address goes in brackets"),
    ("127.0.0.1:65536", "port 65536 is out of range (0-65535)"),
])
def test_a_bad_listen_is_one_line_naming_the_key(listen: str, problem: str) -> None:
    """`[metrics] listen` that is not host:port stops the load with one line."""
    with pytest.raises(ConfigError, match=r"^\[metrics\] listen: ") as err:
        config.load(env={}, overrides={"metrics": {"listen": listen}})
    assert problem in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("listen", "warned"), [
    ("", False), ("127.0.0.1:9464", False), ("127.0.0.53:1", False), ("[::1]:9464", False),
    ("localhost:9464", False), ("0.0.0.0:9464", True), ("[::]:9464", True),
    ("192.168.1.5:9464", True), ("metrics.example.org:9464", True),
])
def test_a_listener_beyond_loopback_is_warned_about(listen: str, warned: bool) -> None:
    """Valid, but said: the endpoints have no authentication."""
    cfg = config.load(env={}, overrides={"metrics": {"listen": listen}})
    assert bool(cfg.warnings()) is warned
    if warned:
        assert cfg.warnings()[0].startswith(f"[metrics] listen: {listen} is not a loopback")


def test_config_check_refuses_a_bad_listen(tmp_path: Path) -> None:
    """`botasync config check` exits 2 with the key named, before any API call."""
    path = tmp_path / "botasync.toml"
    path.write_text('[metrics]\nlisten = "localhost"\n')
    result = run(["config", "check", "--config", str(path)], env={"BOTA_API_KEY": KEY})
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: [metrics] listen: Value error, expected host:port, "
                                     "like 127.0.0.1:9464, got 'localhost'")


# --- against a running daemon ------------------------------------------------------------


async def test_metrics_after_a_sync(
    simulator_factory: SimulatorFactory, tmp_path: Path, database: TestDb,
) -> None:
    """After a sync, /metrics parses and holds every metric with plausible values; /livez
    answers; /readyz names the dead deliveries as `status --check` does (the daemon with
    media and transcripts on, on either backend)."""
    sim = await simulator_factory(World(seed=31, recordings=40), rate_limit=100_000,
                                  download_rate_limit=None, transcription_rate_limit=None)
    sim.faults.queue("server_error", 1)  # the first list request: a 5xx, retried
    path = write_config(tmp_path, sim.url, media=(
        f'download = true\nfiles_dir = "{tmp_path / "files"}"\nrequests_per_minute = 100000\n'
        "min_free_bytes = 0"), transcripts="download = true\nrequests_per_minute = 100000",
        database=f'url = "{database.url}"')
    cfg = config.load(path, env={})
    before = await _counters()
    async with running(cfg) as daemon:
        assert daemon.monitor is not None
        port = daemon.monitor.port
        assert await get(port, "/livez") == (200, "ok\n")

        async def synced() -> Samples | None:
            s = await scrape(port)
            done = (value(s, "botasync_recordings") == 40
                    and value(s, "botasync_media_files", state="queued") == 0
                    and value(s, "botasync_media_files", state="done") > 0
                    and value(s, "botasync_transcripts", state="done") > 0
                    and value(s, "botasync_transcripts", state="queued") == 0
                    and value(s, "botasync_deliveries_total", handler="refuse", result="dead") > 0
                    and value(s, "botasync_outbox_pending") == 0
                    # read apart from the pending count: one taken between the two reads
                    # leaves a scrape with none pending and an oldest one's age
                    and value(s, "botasync_outbox_oldest_pending_age_seconds",
                              handler="take") == 0)
            return s if done else None

        samples = await wait_for(synced, timeout=15, interval=0.05)
        status, body = await get(port, "/readyz")
    _plausible(samples, before, sim.world)
    assert status == 503
    problems = json.loads(body)["problems"]
    assert problems and problems[0].startswith("handler refuse has ")
    assert "dead deliveries" in problems[0]
    assert value(samples, "botasync_ready") == 0
    # alone (SQLite) or the only worker (PostgreSQL): the project's and each handler's lease
    assert value(samples, "botasync_lease_held", lease="project:default") == 1
    assert value(samples, "botasync_lease_held", lease="handler:refuse") == 1
    check_dashboard(samples)
    check_readme(samples)


async def _counters() -> Samples:
    """The process-wide counters now (they count across tests in one process)."""
    from botasync.service.monitor import instruments

    out: Samples = {}
    for collector in instruments().collectors():
        for family in collector.collect():
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _plausible(s: Samples, before: Samples, world: World) -> None:
    """The values agree with the world and with what the daemon did."""
    def delta(name: str, **labels: str) -> float:
        return value(s, name, **labels) - value(before, name, **labels)

    for (name, labels), _ in s.items():
        assert ("project", "default") in labels, name
    by_status: dict[str, int] = {}
    for rec in world.all():
        by_status[rec["status"]] = by_status.get(rec["status"], 0) + 1
    for st, n in by_status.items():
        assert value(s, "botasync_recordings", status=st) == n, st
    assert delta("botasync_api_requests_total", endpoint="list", code="200") >= 1
    assert delta("botasync_api_requests_total", endpoint="list", code="500") + delta(
        "botasync_api_requests_total", endpoint="list", code="503") == 1
    assert delta("botasync_api_requests_total", endpoint="download_url", code="200") >= 1
    assert delta("botasync_api_requests_total", endpoint="transcriptions", code="200") >= 1
    endpoints = {dict(ls)["endpoint"] for n, ls in s if n == "botasync_api_requests_total"}
    assert endpoints <= set(metrics.ENDPOINTS)
    assert 0 < value(s, "botasync_api_rate_limit_remaining") <= 100_000
    now = time.time()
    for kind in ("head", "hot"):
        last = value(s, "botasync_last_success_timestamp_seconds", kind=kind)
        assert now - 30 < last <= now + 1, kind
        assert delta("botasync_pass_duration_seconds_count", kind=kind) >= 1
    assert delta("botasync_deliveries_total", handler="take", result="delivered") > 40
    assert delta("botasync_deliveries_total", handler="refuse", result="failed") >= 1
    assert value(s, "botasync_outbox_oldest_pending_age_seconds", handler="take") == 0
    assert value(s, "botasync_transcripts", state="failed") == 0


def check_dashboard(samples: Samples) -> None:
    """Every metric name the dashboard's expressions use is in a real scrape."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in _panels(board) for t in p.get("targets", [])]
    exprs += [v.get("query", "") if isinstance(v.get("query"), str) else v["query"]["query"]
              for v in board["templating"]["list"] if v["type"] == "query"]
    used = {n for e in exprs for n in re.findall(r"\bbotasync_[a-z_]+", e)}
    assert used, "no botasync metric in the dashboard"
    assert used <= names(samples), used - names(samples)
    assert len(exprs) >= 10


def check_readme(samples: Samples) -> None:
    """The README's Monitoring section names only metrics a real scrape has, and all of them."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(r"^### Monitoring\n(.*?)(?=^#+ )", readme, re.S | re.M)
    assert match
    section = match.group(1)
    rules = "".join(re.findall(r"```yaml\n(.*?)```", section, re.S))
    used = set(re.findall(r"\bbotasync_[a-z_]+", rules))
    assert {"botasync_last_success_timestamp_seconds", "botasync_ready"} <= used
    assert used <= names(samples), used - names(samples)
    families = {n.removesuffix("_total").removesuffix("_bucket") for n in names(samples)
                if n.startswith("botasync_") and not n.endswith(("_created", "_sum", "_count"))}
    for family in families:
        assert f"`{family}" in section, family


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out += p.get("panels", [])
    return out


def test_dashboard_is_importable_grafana_json() -> None:
    """The dashboard names its datasource as a variable and has a project variable."""
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["project"]["type"] == "query"
    assert variables["project"]["datasource"]["uid"] == "${DS_PROMETHEUS}"
    for p in _panels(board):
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        for t in p["targets"]:
            assert 'project=~"$project"' in t["expr"], (p["title"], t["expr"])
    ids = [p["id"] for p in _panels(board)]
    assert len(ids) == len(set(ids))


def test_the_systemd_unit_lets_the_listener_bind() -> None:
    """The hardened unit allows a TCP listener: no private network, AF_INET allowed, no
    address filter that would cut off loopback."""
    unit = (ROOT / "systemd" / "botasync.service").read_text()
    settings = dict(line.split("=", 1) for line in unit.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings.get("PrivateNetwork", "no") == "no"
    assert {"AF_INET", "AF_INET6"} <= set(settings["RestrictAddressFamilies"].split())
    assert "any" not in settings.get("IPAddressDeny", "")
    assert "SocketBindDeny" not in settings
    assert settings["SystemCallFilter"] == "~@privileged @resources"  # bind/listen stay allowed


async def test_readyz_follows_an_api_outage(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """/readyz turns 503 within its max age of an outage, and 200 after it; 429s show."""
    sim = await simulator_factory(World(seed=32, recordings=30, dialect="deployed"))
    path = write_config(tmp_path, sim.url, handlers=False, api="max_retries = 1",
                        metrics="max_age_s = 1.0")
    cfg = config.load(path, env={})
    before = await _counters()
    async with running(cfg) as daemon:
        assert daemon.monitor is not None
        port = daemon.monitor.port

        await wait_for(lambda: _readyz_is(port, 200), timeout=10, interval=0.02)
        sim.faults.queue("rate_limited", 1)  # a 429 without Retry-After (deployed)
        await wait_for(lambda: sim.faults.pending == 0, timeout=5)
        started = time.monotonic()
        sim.faults.set_rates(server_error=1.0)
        await wait_for(lambda: _readyz_is(port, 503), timeout=cfg.metrics.max_age_s + 1,
                       interval=0.02)
        to_503 = time.monotonic() - started
        status, body = await get(port, "/readyz")
        down = await scrape(port)
        started = time.monotonic()
        sim.faults.clear()
        await wait_for(lambda: _readyz_is(port, 200), timeout=5, interval=0.02)
        to_200 = time.monotonic() - started
        up = await scrape(port)
    print(f"\n/readyz 503 after {to_503:.2f} s of outage (max age {cfg.metrics.max_age_s} s), "
          f"200 again {to_200:.2f} s after it ended")
    assert to_503 <= cfg.metrics.max_age_s
    assert status == 503
    problems = json.loads(body)["problems"]
    assert any("server error 50" in p for p in problems), problems
    assert value(down, "botasync_ready") == 0 and value(up, "botasync_ready") == 1
    assert value(up, "botasync_api_requests_total", code="429") - value(
        before, "botasync_api_requests_total", code="429") == 1
    errors = sum(value(down, "botasync_api_requests_total", code=c) - value(
        before, "botasync_api_requests_total", code=c) for c in ("500", "503"))
    assert errors >= 1  # the outage's 5xx, counted by code


async def test_readyz_turns_503_when_passes_stop_finishing(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """An API that hangs fails no pass: /readyz turns 503 when the newest successful pass
    is older than the max age, and 200 once passes finish again."""
    sim = await simulator_factory(World(seed=34, recordings=20, dialect="deployed"))
    path = write_config(tmp_path, sim.url, handlers=False, metrics="max_age_s = 0.5")
    cfg = config.load(path, env={})
    async with running(cfg) as daemon:
        assert daemon.monitor is not None
        port = daemon.monitor.port
        await wait_for(lambda: _readyz_is(port, 200), timeout=10, interval=0.02)
        started = time.monotonic()
        sim.faults.latency_s = 1.5  # every answer from now on takes 1.5 s: the tick hangs
        await wait_for(lambda: _readyz_is(port, 503), timeout=5, interval=0.02)
        to_503 = time.monotonic() - started
        problems = json.loads((await get(port, "/readyz"))[1])["problems"]
        sim.faults.latency_s = 0
        await wait_for(lambda: _readyz_is(port, 200), timeout=5, interval=0.02)
    print(f"\n/readyz 503 after {to_503:.2f} s of a hung API (max age 0.5 s)")
    # the newest pass grew too old: no pass failed (the API still answers, slowly)
    assert problems[0].startswith("the newest pass finished ")
    assert problems[0].endswith("is the daemon running?")


async def _readyz_is(port: int, status: int) -> bool:
    return (await get(port, "/readyz"))[0] == status


async def test_readyz_when_the_database_does_not_open(tmp_path: Path) -> None:
    """No database file: /readyz is 503 saying so, /metrics still serves the counters."""
    cfg = config.load(env={}, overrides={
        "database": {"path": str(tmp_path / "missing.db")},
        "metrics": {"listen": "127.0.0.1:0"}})
    async with MonitorServer(cfg) as server:
        await server.start()
        status, body = await get(server.port, "/readyz")
        assert status == 503
        assert json.loads(body)["problems"][0].startswith("database: no database at ")
        samples = await scrape(server.port)
        assert value(samples, "botasync_ready") == 0
        assert "botasync_recordings" not in names(samples)
        assert await get(server.port, "/livez") == (200, "ok\n")


async def test_a_port_in_use_stops_the_start(
    simulator_factory: SimulatorFactory, tmp_path: Path
) -> None:
    """The daemon does not start without its listener: one line naming the key."""
    sim = await simulator_factory(World(seed=33, recordings=5))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = write_config(tmp_path, sim.url, handlers=False)
        cfg = config.load(path, env={}, overrides={"metrics": {"listen": f"127.0.0.1:{port}"}})
        daemon = Daemon(cfg, handle_signals=False)
        with pytest.raises(BotasyncError, match=rf"^\[metrics\] listen: cannot listen on "
                                                rf"127.0.0.1:{port}: address already in use$"):
            await daemon.run()
