"""Every answer the simulator gives is valid against the contract in `botasync/openapi.yaml`.

In both dialects, two ways: schemathesis generates requests (valid and invalid) per
operation and checks the answers against the spec, and recorded answers (every recording,
errors, headers) are validated with jsonschema against the spec's own schemas, each
dialect against its own shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.resources
import re
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import aiohttp
import jsonschema
import orjson
import pytest
import requests
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.core.result import Ok

from botasync.simulator import DIALECTS, Dialect, Faults, ManualClock, Simulator, World, serve
from tests.conftest import API_KEY, SimulatorFactory

AUTH = {"Authorization": f"Bearer {API_KEY}"}
URI = re.compile(r"[a-z][a-z0-9+.-]*://\S+$")
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def load_spec() -> dict[str, Any]:
    """The packaged contract, as the simulator serves it."""
    spec: dict[str, Any] = yaml.safe_load(
        (importlib.resources.files("botasync") / "openapi.yaml").read_text("utf-8"))
    return spec


def dialect_view(spec: dict[str, Any], dialect: Dialect) -> dict[str, Any]:
    """The contract as one dialect's server sees it: the `x-dialect` parts of the other
    dropped, `x-dialect-schema` applied.

    One spec cannot be right for both servers' validation (documented refuses `offset=-1`
    and ignores `cursor`, deployed the other way round), so each is fuzzed against its own
    view. `cursor` is left out of generation too: it is opaque, so every generated one is
    (rightly) a 400; cursors are checked by the walks below and in test_simulator_deployed.
    """
    view: dict[str, Any] = copy.deepcopy(spec)
    for path, operations in list(view["paths"].items()):
        for method, operation in list(operations.items()):
            if operation.get("x-dialect", dialect) != dialect:
                del operations[method]
                continue
            params = []
            for param in operation.get("parameters", []):
                if param.get("x-dialect", dialect) != dialect or param["name"] == "cursor":
                    continue
                if "x-dialect-schema" in param:
                    param["schema"] = param["x-dialect-schema"][dialect]
                params.append(param)
            operation["parameters"] = params
        if not operations:
            del view["paths"][path]
    return view


def fuzzable(spec: dict[str, Any]) -> schemathesis.BaseSchema:
    """A schemathesis schema for the view, generating only what a negative case can mean here.

    Both servers ignore query parameters they do not know (as the real API does), and the
    tests always send the key (`ignored_auth` still checks a request without it is
    refused), so negative cases neither add undeclared parameters nor drop the key: those
    would be "accepted" for reasons of the harness, not of the contract.
    """
    schema = schemathesis.openapi.from_dict(spec)
    schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)
    return schema


SPEC = load_spec()
VIEWS = {d: fuzzable(dialect_view(SPEC, d)) for d in DIALECTS}


# -- schemathesis against a live server ----------------------------------------------------------


@contextlib.contextmanager
def threaded_simulator(dialect: Dialect) -> Iterator[Simulator]:
    """A simulator on its own thread and loop, for schemathesis' synchronous calls.

    Limits are high but on, so every documented answer carries the rate-limit headers to
    check (and every deployed one must still have none).
    """
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with serve(World(seed=3, recordings=200, dialect=dialect), rate_limit=1_000_000,
                         download_rate_limit=1_000_000,
                         transcription_rate_limit=1_000_000) as sim:
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
def live_documented() -> Iterator[Simulator]:
    """A documented simulator on its own thread."""
    with threaded_simulator("documented") as sim:
        yield sim


@pytest.fixture(scope="module")
def live_deployed() -> Iterator[Simulator]:
    """A deployed simulator on its own thread."""
    with threaded_simulator("deployed") as sim:
        yield sim


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """A requests session that ignores proxy settings (the server is on loopback)."""
    with requests.Session() as s:
        s.trust_env = False
        yield s


FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# The generated tests and the check after them share the module's live servers: pytest-xdist
# keeps a file's tests on one worker, in order (`--dist loadfile`, pyproject.toml). Each
# generated test carries a parametrize of its own (`fuzz`): schemathesis names a test per
# operation (`...[GET /recordings]`) but, under pytest 9, gives them all one node id, and xdist
# runs one test per node id; with a parametrize the operation is in the node id.


@VIEWS["documented"].parametrize()
@FUZZ
@pytest.mark.parametrize("fuzz", ["documented"])
def test_generated_requests_get_documented_answers(
    case: schemathesis.Case[Any], fuzz: Dialect, live_documented: Simulator,
    session: requests.Session,
) -> None:
    """Documented: generated requests get the statuses, bodies and headers the contract allows."""
    case.call_and_validate(base_url=live_documented.url, headers=AUTH, session=session)


@VIEWS["deployed"].parametrize()
@FUZZ
@pytest.mark.parametrize("fuzz", ["deployed"])
def test_generated_requests_get_deployed_answers(
    case: schemathesis.Case[Any], fuzz: Dialect, live_deployed: Simulator,
    session: requests.Session,
) -> None:
    """Deployed: the same, and never a rate-limit header."""
    response = case.call_and_validate(base_url=live_deployed.url, headers=AUTH, session=session)
    assert not any(h.lower().startswith(("x-ratelimit", "retry-after")) for h in response.headers)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_generated_run_reached_the_server(
    request: pytest.FixtureRequest, dialect: Dialect,
) -> None:
    """The schemathesis runs above reached every operation and answered successes and
    refusals, not only one kind."""
    sim: Simulator = request.getfixturevalue(f"live_{dialect}")
    operations = {}
    for result in VIEWS[dialect].get_all_operations():
        assert isinstance(result, Ok), result.err()  # an operation the view could not load
        operations[result.ok().label] = result.ok()
    selected = {getattr(i, "operation_label", None) for i in request.session.items
                if i.name.startswith(f"test_generated_requests_get_{dialect}_answers[")}
    if selected != set(operations):  # some deselected (-k, node ids): this run proves nothing
        pytest.skip("meaningful only with all the generated tests of this module selected")
    for label, op in operations.items():
        parts = re.split(r"\{[^}]+\}", op.full_path)  # /v1/recordings/{id} -> a pattern
        template = re.compile("[^/]+".join(map(re.escape, parts)) + "$")
        assert any(r.method == op.method.upper() and template.match(r.path)
                   for r in sim.requests), f"the generated tests never sent {label}"
    statuses = {r.status for r in sim.requests}
    # which refusals the fuzzer draws varies from run to run (an unknown id's 404, a wrong
    # method's 405): at least one of them, besides successes, bad parameters and no key
    assert {200, 400, 401} <= statuses and statuses & {404, 405}
    assert 500 not in statuses
    for prefix in ("/v1/transcriptions", "/v1/summaries"):
        assert {r.status for r in sim.requests if r.path.startswith(prefix)} >= (
            {200, 404} if dialect == "deployed" else {404})


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


def _response_schema(path: str, method: str) -> jsonschema.Draft202012Validator:
    return validator(_ptr("paths", path, method, "responses", "200", "content",
                          "application/json", "schema"))


RECORDING = validator("#/components/schemas/Recording")  # either dialect
LIST_PAGE = _response_schema("/recordings", "get")
TRANSCRIPTION = _response_schema("/transcriptions/{id}", "get")  # either dialect
SUMMARY = _response_schema("/summaries/{id}", "get")
ERROR = validator("#/components/schemas/Error")
SHAPES = {  # what each dialect must send, more strictly than the union
    "documented": {
        "recording": validator("#/components/schemas/DocumentedRecording"),
        "page": validator("#/components/schemas/DocumentedPage"),
        "error": validator("#/components/schemas/ErrorEnvelope"),
        "download": _response_schema("/recordings/{id}/download-url", "post"),
        "transcription": validator("#/components/schemas/DocumentedTranscription"),
        "summary": validator("#/components/schemas/DocumentedSummary"),
    },
    "deployed": {
        "recording": validator("#/components/schemas/DeployedRecording"),
        "page": validator("#/components/schemas/DeployedPage"),
        "error": validator("#/components/schemas/PlainError"),
        "message": validator("#/components/schemas/PlainMessage"),
        "download": _response_schema("/recordings/{id}/download-url", "get"),
        "transcription": validator("#/components/schemas/DeployedTranscription"),
        "summary": validator("#/components/schemas/DeployedSummary"),
        "transcription_page": _response_schema("/transcriptions", "get"),
        "summary_page": _response_schema("/summaries", "get"),
    },
}
CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
         405: "invalid_request", 429: "rate_limit_exceeded", 500: "internal_error",
         503: "internal_error"}
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def assert_valid(check: jsonschema.Draft202012Validator, body: Any) -> None:
    """Fail with every schema error listed."""
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in check.iter_errors(body)]
    assert errors == []


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> Dialect:
    """Each dialect in turn."""
    return request.param  # type: ignore[no-any-return]


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any,
) -> tuple[int, Any, dict[str, str]]:
    """Make a request; return (status, JSON body, headers) after checking it is JSON."""
    kwargs.setdefault("headers", AUTH)
    async with http.request(method, url, **kwargs) as r:
        assert r.headers["Content-Type"].startswith("application/json")
        return r.status, orjson.loads(await r.read()), dict(r.headers)


def assert_error(
    dialect: Dialect, status: int, body: Any, headers: dict[str, str], expected: int,
) -> None:
    """The answer is an error of the expected status in the dialect's form."""
    assert status == expected
    assert_valid(ERROR, body)
    if dialect == "deployed":
        plain = "message" if status == 405 or status >= 500 else "error"
        assert_valid(SHAPES["deployed"][plain], body)
        assert list(body) == [plain]
        assert "Retry-After" not in headers
        return
    assert_valid(SHAPES["documented"]["error"], body)
    assert body["error"]["code"] == CODES[expected]
    if expected == 429:
        assert headers["Retry-After"].isdigit()


def assert_rate_headers(dialect: Dialect, headers: dict[str, str]) -> None:
    """Documented: the three X-RateLimit headers are integers. Deployed: there are none."""
    for name in RATE_HEADERS:
        if dialect == "deployed":
            assert name not in headers, name
        else:
            assert headers[name].isdigit(), name


async def walk_pages(
    http: aiohttp.ClientSession, sim: Simulator,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every page and every item of the list, by offset or by cursor as the dialect wants."""
    pages: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        status, page, _ = await fetch(http, "GET", f"{sim.url}/recordings", params=params)
        assert status == 200
        pages.append(page)
        if not page["has_more"]:
            return pages, [i for p in pages for i in p["data"]]
        if sim.world.deployed:
            params["cursor"] = page["next_cursor"]
        else:
            params["offset"] = params.get("offset", 0) + 100


async def test_every_recording_matches_the_schema_before_and_after_moving(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """All list pages (so every item) and sampled details are valid for the contract and for
    the dialect's own shapes, also after 300 random changes."""
    sim = await simulator_factory(World(seed=7, recordings=200, dialect=dialect))
    shapes = SHAPES[dialect]
    for round_ in range(2):
        pages, items = await walk_pages(http, sim)
        for page in pages:
            assert_valid(LIST_PAGE, page)
            assert_valid(shapes["page"], page)
        for item in items[:: max(1, len(items) // 20)]:
            status, detail, _ = await fetch(http, "GET", f"{sim.url}/recordings/{item['id']}")
            assert status == 200
            assert_valid(RECORDING, detail)
            assert_valid(shapes["recording"], detail)
        assert len(items) == len(sim.world)
        if round_ == 0:
            sim.world.step(300)


async def test_download_url_answer_matches_the_schema(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """A download-url answer (POST documented, GET deployed) is valid for its dialect."""
    sim = await simulator_factory(World(seed=7, recordings=60, dialect=dialect))
    if dialect == "deployed":
        answers = []
        for source in ("device", "app_import", "api_upload"):
            item = next(i for i in sim.world.all() if i["audio_url"] and i["source"] == source)
            answers.append(await fetch(http, "GET",
                                       f"{sim.url}/recordings/{item['id']}/download-url"))
    else:
        item = next(i for i in sim.world.all()
                    if any(m["status"] == "uploaded" for m in i["media"]))
        media = next(m for m in item["media"] if m["status"] == "uploaded")
        answers = [await fetch(http, "POST", f"{sim.url}/recordings/{item['id']}/download-url",
                               json={"media_id": media["id"]})]
    for status, body, _ in answers:
        assert status == 200
        assert_valid(SHAPES[dialect]["download"], body)


async def test_error_answers_are_documented(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """400, 401, 403, 404, 405, 429 and 5xx answers take the dialect's error form and headers."""
    clock = ManualClock()
    sim = await simulator_factory(World(seed=4, recordings=30, clock=clock, dialect=dialect),
                                  rate_limit=14, faults=Faults(seed=1))
    base = f"{sim.url}/recordings"
    rec_id = sim.world.ids()[0]
    deployed = dialect == "deployed"
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", base, {"params": {"limit": 0}}, 400),
        ("GET", base, {"params": {"cursor": "?" if deployed else "ignored"}}, 400 if deployed
         else 200),
        ("GET", base, {"headers": {}}, 401),
        ("GET", base, {"headers": {"Authorization": "Bearer sk_test_noscope"}}, 403),
        ("GET", f"{base}/rec_gone", {}, 404),
        ("GET" if deployed else "POST", f"{base}/rec_gone/download-url",
         {} if deployed else {"json": {"media_id": "med_x"}}, 404),
        ("POST" if deployed else "GET", f"{base}/{rec_id}/download-url",
         {"json": {"media_id": "med_x"}} if deployed else {}, 405),
    ]
    if not deployed:
        cases.append(("POST", f"{base}/{rec_id}/download-url", {"data": b"{"}, 400))
    for method, url, kwargs, expected in cases:
        status, body, headers = await fetch(http, method, url, **kwargs)
        if expected != 200:
            assert_error(dialect, status, body, headers, expected)
        assert_rate_headers(dialect, headers)
    for kind, expected in (("rate_limited", 429), ("server_error", 500)):
        sim.faults.queue(kind)
        status, body, headers = await fetch(http, "GET", base)
        assert_error(dialect, status, body, headers, 503 if status == 503 else expected)
        assert_rate_headers(dialect, headers)
    for _ in range(20):  # the key has used 9 or 10 of its 14; soon one is refused
        status, body, headers = await fetch(http, "GET", base)
        if status != 200:
            break
    assert_error(dialect, status, body, headers, 429)
    assert_rate_headers(dialect, headers)
    if not deployed:
        assert headers["X-RateLimit-Remaining"] == "0"


# -- transcriptions and summaries ---------------------------------------------------------------


def _varied(world: World) -> None:
    """Give a world transcriptions in every status: failed, re-run in flight, new in flight."""
    completed = [t for r in world.ids()[:60] for t in world.transcriptions_of(r)
                 if t["status"] == "completed"]
    world.fail_transcription(completed[0]["recording_id"], "Audio could not be decoded")
    world.retranscribe(completed[1]["recording_id"], status="processing")
    world.retranscribe(completed[2]["recording_id"], status="pending")
    if world.deployed:
        world.add_transcription(completed[3]["recording_id"])
        world.create(status="processing")


async def _fetch_transcripts(
    http: aiohttp.ClientSession, sim: Simulator,
) -> tuple[list[Any], list[Any], list[Any]]:
    """(transcriptions, summaries, list pages) of the first 80 recordings, as a client gets
    them in the dialect: linked ids (documented) or lists by recording (deployed)."""
    found, summaries, pages = [], [], []
    for rec_id in sim.world.ids()[:80]:
        if sim.world.deployed:
            status, page, _ = await fetch(http, "GET", f"{sim.url}/transcriptions",
                                          params={"recording_id": rec_id, "limit": 1})
            assert status == 200
            pages.append(page)
            ids = [t["id"] for t in sim.world.transcriptions_of(rec_id)]
        else:
            ids = [t for t in [sim.world.get(rec_id)["transcription_id"]] if t]  # type: ignore[index]
        for txn_id in ids:
            status, txn, headers = await fetch(http, "GET", f"{sim.url}/transcriptions/{txn_id}")
            assert status == 200
            assert_rate_headers(sim.dialect, headers)
            found.append(txn)
            if sim.world.deployed:
                status, page, _ = await fetch(http, "GET", f"{sim.url}/summaries",
                                              params={"transcription_id": txn_id})
                pages.append(page)
                sum_ids = [s["id"] for s in page["data"]]
            else:
                sum_ids = [txn["summary_id"]] if txn["summary_id"] else []
            for sum_id in sum_ids:
                status, summary, headers = await fetch(http, "GET", f"{sim.url}/summaries/{sum_id}")
                assert status == 200
                assert_rate_headers(sim.dialect, headers)
                summaries.append(summary)
    return found, summaries, pages


async def test_transcriptions_and_summaries_match_the_schema(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """Transcriptions in every status, their summaries and (deployed) their list pages are
    valid for the contract and for the dialect's own shapes; documented answers carry the
    transcription limit's headers, deployed ones none."""
    world = World(seed=7, recordings=150, dialect=dialect, clock=ManualClock())
    sim = await simulator_factory(world, rate_limit=1_000_000,
                                  transcription_rate_limit=1_000_000)
    _varied(world)
    world.step(100)
    transcriptions, summaries, pages = await _fetch_transcripts(http, sim)
    shapes = SHAPES[dialect]
    for txn in transcriptions:
        assert_valid(TRANSCRIPTION, txn)
        assert_valid(shapes["transcription"], txn)
    for summary in summaries:
        assert_valid(SUMMARY, summary)
        assert_valid(shapes["summary"], summary)
    for page in pages:
        kind = "transcription_page" if page["data"] and "recording_id" in page["data"][0] else (
            "summary_page")
        assert_valid(shapes[kind], page)
    assert {t["status"] for t in transcriptions} == {"pending", "processing", "completed",
                                                     "failed"}
    assert {"completed", "failed"} <= {s["status"] for s in summaries}
    assert dialect == "documented" or any(p["has_more"] for p in pages)


async def test_transcript_error_answers_are_documented(
    simulator_factory: SimulatorFactory, http: aiohttp.ClientSession, dialect: Dialect,
) -> None:
    """404, 400 (deployed lists) and the transcription limit's 429 take the dialect's form."""
    clock = ManualClock()
    sim = await simulator_factory(World(seed=4, recordings=30, clock=clock, dialect=dialect),
                                  rate_limit=1000, transcription_rate_limit=100)
    deployed = dialect == "deployed"
    cases: list[tuple[str, dict[str, Any], int]] = [
        (f"{sim.url}/transcriptions/txn_gone", {}, 404),
        (f"{sim.url}/summaries/sum_gone", {}, 404),
        (f"{sim.url}/transcriptions", {"recording_id": "rec_x"}, 200 if deployed else 404),
    ]
    if deployed:
        cases += [(f"{sim.url}/transcriptions", {}, 400),
                  (f"{sim.url}/summaries", {"transcription_id": "txn_x", "cursor": "x"}, 400)]
    for url, params, expected in cases:
        status, body, headers = await fetch(http, "GET", url, params=params)
        if expected != 200:
            assert_error(dialect, status, body, headers, expected)
        assert_rate_headers(dialect, headers)
    sim.transcription_rate_limit = 1  # a new window: one more answer, then the 429
    await fetch(http, "GET", f"{sim.url}/transcriptions/txn_gone")
    status, body, headers = await fetch(http, "GET", f"{sim.url}/transcriptions/txn_gone")
    assert_error(dialect, status, body, headers, 429)
    assert_rate_headers(dialect, headers)
