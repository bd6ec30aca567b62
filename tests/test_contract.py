"""Every answer the simulator gives is valid against the contract in `botasync/openapi.yaml`.

Two ways: schemathesis generates requests (valid and invalid) per operation and checks the
answers against the spec, and recorded answers (every recording, error envelopes, headers)
are validated with jsonschema against the spec's own schemas.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import re
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import orjson
import pytest
import requests
import schemathesis
import yaml  # type: ignore[import-untyped]
from hypothesis import HealthCheck, settings

from botasync.simulator import Faults, ManualClock, Simulator, World, serve
from tests.conftest import API_KEY, SimulatorFactory

AUTH = {"Authorization": f"Bearer {API_KEY}"}
URI = re.compile(r"[a-z][a-z0-9+.-]*://\S+$")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def load_spec() -> dict[str, Any]:
    """The packaged contract, with the shared rate-limit headers inlined.

    The file writes `headers: {$ref: "#/components/x-rate-limit-headers"}`, a reference
    to a whole headers map, which OpenAPI does not allow (only each header may be a
    reference) and which schemathesis cannot read; inlining keeps the meaning.
    """
    spec: dict[str, Any] = yaml.safe_load(
        (importlib.resources.files("botasync") / "openapi.yaml").read_text("utf-8"))
    for operations in spec["paths"].values():
        for operation in operations.values():
            for response in operation["responses"].values():
                headers = response.get("headers")
                if isinstance(headers, dict) and set(headers) == {"$ref"}:
                    response["headers"] = spec["components"][headers["$ref"].rsplit("/", 1)[1]]
    return spec


SPEC = load_spec()
SCHEMA = schemathesis.openapi.from_dict(SPEC)


# -- schemathesis against a live server ----------------------------------------------------------


@pytest.fixture(scope="module")
def live_simulator() -> Iterator[Simulator]:
    """A simulator on its own thread and loop, for schemathesis' synchronous calls.

    Limits are high but on, so every answer carries the rate-limit headers to check.
    """
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with serve(World(seed=3, recordings=200), rate_limit=1_000_000,
                         download_rate_limit=1_000_000) as sim:
            box.update(sim=sim, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            ready.set()
            await box["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the simulator thread did not start"
    yield box["sim"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(10)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """A requests session that ignores proxy settings (the server is on loopback)."""
    with requests.Session() as s:
        s.trust_env = False
        yield s


@SCHEMA.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_get_answers_the_contract_allows(
    case: schemathesis.Case[Any], live_simulator: Simulator, session: requests.Session,
) -> None:
    """Valid and invalid generated requests get documented statuses, bodies and headers."""
    case.call_and_validate(base_url=live_simulator.url, headers=AUTH, session=session)


def test_the_generated_run_reached_the_server(live_simulator: Simulator) -> None:
    """The schemathesis run above answered successes and refusals, not only one kind."""
    if not live_simulator.requests:
        pytest.skip("meaningful only after the generated tests in this module")
    statuses = {r.status for r in live_simulator.requests}
    assert {200, 400, 401, 404} <= statuses
    assert 500 not in statuses


# -- recorded answers against the spec's schemas -------------------------------------------------


def _format_checker() -> jsonschema.FormatChecker:
    """Checks date-time and uri without optional packages (same result on every machine)."""
    checker = jsonschema.FormatChecker(formats=())

    def date_time(value: object) -> bool:
        return not isinstance(value, str) or (
            RFC3339.fullmatch(value) is not None and bool(datetime.fromisoformat(value)))

    def uri(value: object) -> bool:
        return not isinstance(value, str) or URI.match(value) is not None

    checker.checks("date-time")(date_time)
    checker.checks("uri")(uri)
    return checker


FORMATS = _format_checker()


def validator(pointer: str) -> jsonschema.Draft202012Validator:
    """A validator for the schema at `pointer` (e.g. `#/components/schemas/Recording`)."""
    return jsonschema.Draft202012Validator({**SPEC, "$ref": pointer}, format_checker=FORMATS)


def _ptr(*parts: str) -> str:
    return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


RECORDING = validator("#/components/schemas/Recording")
ENVELOPE = validator("#/components/schemas/ErrorEnvelope")
LIST_PAGE = validator(_ptr("paths", "/recordings", "get", "responses", "200", "content",
                           "application/json", "schema"))
DOWNLOAD = validator(_ptr("paths", "/recordings/{id}/download-url", "post", "responses", "200",
                          "content", "application/json", "schema"))
CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         429: "rate_limit_exceeded", 500: "internal_error", 503: "internal_error"}


def assert_valid(check: jsonschema.Draft202012Validator, body: Any) -> None:
    """Fail with every schema error listed."""
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(body)]
    assert errors == []


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any,
) -> tuple[int, Any, dict[str, str]]:
    """Make a request; return (status, JSON body, headers) after checking it is JSON."""
    kwargs.setdefault("headers", AUTH)
    async with http.request(method, url, **kwargs) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        return r.status, orjson.loads(await r.read()), dict(r.headers)


def assert_error(status: int, body: Any, headers: dict[str, str], expected: int) -> None:
    """The answer is an envelope of the expected status with its documented code."""
    assert status == expected
    assert_valid(ENVELOPE, body)
    assert body["error"]["code"] == CODES[expected]
    if expected == 429:
        assert headers["Retry-After"].isdigit()


def assert_rate_headers(headers: dict[str, str]) -> None:
    """The three X-RateLimit headers are there and are integers, as the spec says."""
    for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert headers[name].isdigit(), name


async def test_every_recording_matches_the_schema_before_and_after_moving(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """All list pages, every item and sampled details are valid, also after 300 random changes."""
    for round_ in range(2):
        offset, items = 0, []
        while True:
            status, page, _ = await fetch(http, "GET", f"{simulator.url}/recordings",
                                          params={"limit": 100, "offset": offset})
            assert status == 200
            assert_valid(LIST_PAGE, page)
            items += page["data"]
            if not page["has_more"]:
                break
            offset += 100
        for item in items:
            assert_valid(RECORDING, item)
        for item in items[:: max(1, len(items) // 20)]:
            status, detail, _ = await fetch(http, "GET", f"{simulator.url}/recordings/{item['id']}")
            assert status == 200
            assert_valid(RECORDING, detail)
        assert len(items) == len(simulator.world)
        if round_ == 0:
            simulator.world.step(300)


async def test_download_url_answer_matches_the_schema(
    simulator: Simulator, http: aiohttp.ClientSession,
) -> None:
    """A download-url answer is valid and its expires_at is an RFC 3339 date-time."""
    item = next(i for i in simulator.world.all()
                if any(m["status"] == "uploaded" for m in i["media"]))
    media = next(m for m in item["media"] if m["status"] == "uploaded")
    status, body, _ = await fetch(http, "POST",
                                  f"{simulator.url}/recordings/{item['id']}/download-url",
                                  json={"media_id": media["id"]})
    assert status == 200
    assert_valid(DOWNLOAD, body)


async def test_error_answers_are_documented_envelopes(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession,
) -> None:
    """400, 401, 403, 404, 429 and 5xx answers are valid envelopes with rate-limit headers."""
    clock = ManualClock()
    sim = await simulator_factory(World(seed=4, recordings=30, clock=clock), rate_limit=12,
                                  faults=Faults(seed=1))
    base = f"{sim.url}/recordings"
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", base, {"params": {"limit": 0}}, 400),
        ("GET", base, {"headers": {}}, 401),
        ("GET", base, {"headers": {"Authorization": "Bearer sk_test_noscope"}}, 403),
        ("GET", f"{base}/rec_gone", {}, 404),
        ("POST", f"{base}/rec_gone/download-url", {"json": {"media_id": "med_x"}}, 404),
        ("POST", f"{base}/{sim.world.ids()[0]}/download-url", {"data": b"{"}, 400),
    ]
    for method, url, kwargs, expected in cases:
        status, body, headers = await fetch(http, method, url, **kwargs)
        assert_error(status, body, headers, expected)
        assert_rate_headers(headers)
    for kind, expected in (("rate_limited", 429), ("server_error", 500)):
        sim.faults.queue(kind)
        status, body, headers = await fetch(http, "GET", base)
        assert_error(status, body, headers, 503 if status == 503 else expected)
        assert_rate_headers(headers)
    for _ in range(20):  # the key has used 6 of its 12; the 7th from here is refused
        status, body, headers = await fetch(http, "GET", base)
        if status != 200:
            break
    assert_error(status, body, headers, 429)
    assert_rate_headers(headers)
    assert headers["X-RateLimit-Remaining"] == "0"
