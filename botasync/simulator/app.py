"""The simulator server: `Simulator` (state + lifecycle), `serve` and `run_forever`.

A `Simulator` owns the aiohttp runner, the request log and its projects
(`projects.Project`): one per Bota project it serves, each with its API key(s), its
world, its rate limiters, its faults and an optional background task that keeps its
world moving. `serve` is the context manager tests use; `run_forever` is what
`botasync simulate` runs.

One `World` is one project, whatever keys `api_keys` holds. `projects=N` serves N
worlds (the one given and N-1 built like it from derived seeds) under the keys
`sk_test_project_0`..; a mapping of key -> World serves those. A request reads the world
of its key's project and counts against that project's limits only.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import hashlib
import hmac
import importlib.resources
import itertools
import math
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import structlog
from aiohttp import web

from botasync.simulator import admin, api, api_deployed, api_transcripts
from botasync.simulator.faults import Faults
from botasync.simulator.files import sign
from botasync.simulator.projects import Project, project_worlds
from botasync.simulator.ratelimit import RateLimiter
from botasync.simulator.world import Dialect, World

DEFAULT_API_KEYS: dict[str, tuple[str, ...]] = {
    "sk_test_botasync": ("recordings:read",),
    "sk_test_noscope": (),
}

log = structlog.get_logger("botasync.simulator")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it; `status` 0 means no answer (dropped); `project`
    the index of the project its key (or its file URL) belongs to."""

    t: float
    method: str
    path: str
    query: str
    status: int
    project: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able data."""
        return asdict(self)


def _keyed_worlds(
    world: World | Mapping[str, World], projects: int | None,
    api_keys: Mapping[str, Iterable[str]] | None,
) -> tuple[dict[str, World], dict[str, frozenset[str]], bool]:
    """(key -> world, key -> scopes, whether each world is its key's project alone).

    One `World` without `projects` is one project that every key of `api_keys` reaches.
    """
    if isinstance(world, World):
        if projects is None:
            keys = DEFAULT_API_KEYS if api_keys is None else api_keys
            scopes = {key: frozenset(s) for key, s in keys.items()}
            shown = next((k for k, s in scopes.items() if api.READ_SCOPE in s),
                         next(iter(scopes), ""))
            return {shown: world}, scopes, False
        worlds = project_worlds(world, projects)
    elif projects is not None:
        raise ValueError("projects=N builds the worlds from one World; a mapping of key -> "
                         "World already names them")
    else:
        worlds = dict(world)
    if not worlds:
        raise ValueError("a simulator serves at least one project")
    for key, each in worlds.items():
        if not isinstance(key, str) or not key or key != key.strip() or " " in key:
            raise ValueError(f"an API key must be a string without spaces, got {key!r}")
        if not isinstance(each, World):
            raise ValueError(f"the project of {key} must be a World, got {type(each).__name__}")
    if len({id(w) for w in worlds.values()}) < len(worlds):
        raise ValueError("each project needs a World of its own (two keys share one)")
    if len({w.dialect for w in worlds.values()}) > 1:
        raise ValueError("every project's world must speak the same dialect: "
                         + ", ".join(f"{k}: {w.dialect}" for k, w in worlds.items()))
    unknown = sorted(set(api_keys or {}) - set(worlds))
    if unknown:
        raise ValueError(f"api_keys names keys of no project: {', '.join(unknown)} (with "
                         "several projects, api_keys only sets the scopes of their keys)")
    given = api_keys or {}
    scopes = {key: frozenset(given.get(key, (api.READ_SCOPE,))) for key in worlds}
    return worlds, scopes, True


class Simulator:
    """A running Bota API simulator over one `World` (one project) or several (`projects=N`,
    or a mapping of API key -> World), in the worlds' dialect.

    `sim.world`, `sim.faults` and the limiters are the first project's; `sim.projects` has
    them all, `sim.project(index or key)` one. `faults` (the object) is the first project's;
    `latency_s`, `rate_limit`, `download_rate_limit` and `transcription_rate_limit` apply to
    each project (per key: a key never uses up another key's allowance).
    """

    def __init__(
        self, world: World | Mapping[str, World], *, projects: int | None = None,
        api_keys: Mapping[str, Iterable[str]] | None = None,
        rate_limit: int | None = 100, download_rate_limit: int | None = 30,
        latency_s: float = 0.0, faults: Faults | None = None, range_requests: bool = True,
        url_ttl_s: float = 3600.0, secret: bytes | None = None,
        transcription_rate_limit: int | None = 10,
    ) -> None:
        worlds, self.api_keys, keyed = _keyed_worlds(world, projects, api_keys)
        self.projects: list[Project] = []
        for index, (key, served) in enumerate(worlds.items()):
            own = faults if index == 0 and faults is not None else Faults(seed=index)
            if latency_s:
                own.latency_s = latency_s
            self.projects.append(Project(
                index, key, served, rate_limit=rate_limit,
                download_rate_limit=download_rate_limit,
                transcription_rate_limit=transcription_rate_limit, faults=own))
        # which project a key reaches; a key of none (unknown, or added later to api_keys)
        # is counted and faulted as the first project's, then refused (or served) by auth
        self._by_key: dict[str, Project] = (
            {p.key: p for p in self.projects} if keyed
            else dict.fromkeys(self.api_keys, self.projects[0]))
        self.range_requests = range_requests
        self.url_ttl_s = url_ttl_s
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        self.requests: list[RequestRecord] = []
        # a long-running simulator (`botasync simulate`, the demo) keeps the newest
        # `max_logged` requests; `logged_before` counts the ones it let go
        self.max_logged: int | None = None
        self.logged_before = 0
        self.ignore_offset = False  # misbehave: every list page is the first (torture)
        self.ignore_status_filter = False  # misbehave: list pages ignore `status`
        self._nonces = itertools.count(1)
        self.status_counts: Counter[int] = Counter()
        self.host = "127.0.0.1"
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._openapi: bytes | None = None

    # -- projects ------------------------------------------------------------------------------

    @property
    def world(self) -> World:
        """The first project's world (the only one, unless several projects are served)."""
        return self.projects[0].world

    @property
    def worlds(self) -> dict[str, World]:
        """Every project's world by its key, in project order."""
        return {p.key: p.world for p in self.projects}

    @property
    def faults(self) -> Faults:
        """The first project's faults (`sim.project(i).faults` for another's)."""
        return self.projects[0].faults

    @property
    def limiter(self) -> RateLimiter:
        """The first project's overall limiter."""
        return self.projects[0].limiter

    @property
    def download_limiter(self) -> RateLimiter:
        """The first project's download-url limiter."""
        return self.projects[0].download_limiter

    @property
    def transcription_limiter(self) -> RateLimiter:
        """The first project's transcription and summary limiter."""
        return self.projects[0].transcription_limiter

    def project(self, which: int | str) -> Project:
        """A project by its index (0, 1, .. or "0", "1", ..) or by an API key of it;
        KeyError when there is none."""
        if isinstance(which, int) or (which.isascii() and which.isdigit() and len(which) < 10):
            index = int(which)
            if 0 <= index < len(self.projects):
                return self.projects[index]
            raise KeyError(which)
        return self._by_key[which]

    def project_for_key(self, key: str | None) -> Project:
        """The project a request with this bearer key reads and counts against: the key's
        own, or the first project for a missing or unknown key (auth then refuses it)."""
        return self._by_key.get(key or "", self.projects[0])

    def secret_of(self, index: int) -> bytes:
        """The key that signs project `index`'s file URLs: `secret` for the first project, one
        derived from it for the others (so a URL cannot be moved to another project)."""
        if index == 0:
            return self.secret
        return hmac.new(self.secret, f"project:{index}".encode(), hashlib.sha256).digest()

    @staticmethod
    def project_query(index: int) -> str:
        """What a file URL of project `index` adds to its query (nothing for the first)."""
        return f"&project={index}" if index else ""

    # -- addresses and settings ------------------------------------------------------------

    @property
    def origin(self) -> str:
        """`http://host:port`, where the file URLs and admin endpoints live."""
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL for a client, `http://host:port/v1`."""
        return f"{self.origin}/v1"

    @property
    def dialect(self) -> Dialect:
        """The dialect served: the worlds' (they all speak the same)."""
        return self.world.dialect

    def file_url(self, origin: str, file_id: str, project: int = 0) -> str:
        """A newly signed URL to a file of project `project` (an index); its nonce makes
        every one differ from the last."""
        clock = self.projects[project].world.clock
        expires = math.ceil(clock.now() + self.url_ttl_s)
        nonce = format(next(self._nonces), "x")
        sig = sign(self.secret_of(project), file_id, expires, nonce)
        return (f"{origin}/_files/{file_id}?expires={expires}&nonce={nonce}&sig={sig}"
                f"{self.project_query(project)}")

    def _sign_here(self, project: int, file_id: str) -> str:
        return self.file_url(self.origin, file_id, project)

    @property
    def rate_limit(self) -> int | None:
        """Requests per minute per key, or None when off (the first project's); setting it
        sets every project's and starts a new window."""
        return self.limiter.limit

    @rate_limit.setter
    def rate_limit(self, value: int | None) -> None:
        for project in self.projects:
            project.rate_limit = value

    @property
    def transcription_rate_limit(self) -> int | None:
        """Transcription and summary requests per minute per key (None: off; the first
        project's); setting it sets every project's and starts a new window."""
        return self.transcription_limiter.limit

    @transcription_rate_limit.setter
    def transcription_rate_limit(self, value: int | None) -> None:
        for project in self.projects:
            project.transcription_rate_limit = value

    def openapi_text(self) -> bytes:
        """The OpenAPI contract shipped in the package."""
        if self._openapi is None:
            self._openapi = (importlib.resources.files("botasync") / "openapi.yaml").read_bytes()
        return self._openapi

    # -- the request log ---------------------------------------------------------------------

    def record(
        self, t: float, method: str, path: str, query: str, status: int, project: int = 0,
    ) -> None:
        """Append one request (of project index `project`) to the log."""
        self.requests.append(RequestRecord(t, method, path, query, status, project))
        self.status_counts[status] += 1
        counted = self.projects[project]
        counted.requests += 1
        counted.status_counts[status] += 1
        if self.max_logged is not None and len(self.requests) > self.max_logged:
            drop = len(self.requests) - self.max_logged // 2
            del self.requests[:drop]
            self.logged_before += drop

    def max_requests_in_window(
        self, window_s: float = 60.0, path_prefix: str = "/v1/", project: int | None = None,
    ) -> int:
        """The most requests under `path_prefix` (of project index `project`, or any) that
        arrived within any `window_s` span."""
        times = sorted(r.t for r in self.requests if r.path.startswith(path_prefix)
                       and (project is None or r.project == project))
        best = 0
        for i, t in enumerate(times):
            best = max(best, bisect.bisect_left(times, t + window_s, lo=i) - i)
        return best

    def stats(self) -> dict[str, Any]:
        """Counts for dashboards and benchmarks: recordings and requests summed over the
        projects, the settings of the first, and each project's own under `projects`."""
        by_status: Counter[str] = Counter()
        for project in self.projects:
            by_status.update(project.world.counts())
        return {
            "dialect": self.dialect,
            "recordings": sum(len(p.world) for p in self.projects),
            "by_status": {s: by_status[s] for s in self.world.statuses},
            "requests": self.logged_before + len(self.requests),
            "by_status_code": {str(code): n for code, n in sorted(self.status_counts.items())},
            "faults": self.faults.snapshot(),
            "rate_limit": self.rate_limit,
            "transcription_rate_limit": self.transcription_rate_limit,
            "moving": self.moving,
            "projects": [p.stats() for p in self.projects],
        }

    # -- the worlds moving --------------------------------------------------------------------

    @property
    def moving(self) -> bool:
        """Whether a background task is changing any project's world."""
        return any(p.moving for p in self.projects)

    def start_moving(self, every_s: float, changes: int = 1) -> None:
        """Every `every_s` seconds (real time) make `changes` random changes to each
        project's world (`sim.project(i).start_moving` for one)."""
        for project in self.projects:
            project.start_moving(every_s, changes)

    async def stop_moving(self) -> None:
        """Stop every project's background changes (idempotent)."""
        for project in self.projects:
            await project.stop_moving()

    # -- lifecycle ----------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """The aiohttp application serving this simulator."""
        app = web.Application(middlewares=[api.log_requests, api.api_gate])
        app[api.SIM_KEY] = self
        (api_deployed if self.world.deployed else api).add_routes(app)
        api_transcripts.add_routes(app, deployed=self.world.deployed)
        admin.add_routes(app)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Bind and serve; `port=0` picks a free port, read it back from `.port`."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        # A short shutdown timeout: a `slow` fault in flight must not hold up teardown.
        runner = web.AppRunner(self.make_app(), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await self.aclose()
            raise
        self.host, self.port = host, runner.addresses[0][1]
        for project in self.projects:  # `world.get`/`all` sign for this server now
            project.world.signer = functools.partial(self._sign_here, project.index)
        log.info("simulator.started", url=self.url, recordings=len(self.world),
                 dialect=self.dialect, rate_limit=self.rate_limit, projects=len(self.projects))

    async def aclose(self) -> None:
        """Stop moving and stop serving (idempotent)."""
        await self.stop_moving()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("simulator.stopped", url=self.url, requests=len(self.requests))

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@contextlib.asynccontextmanager
async def serve(
    world: World | Mapping[str, World], *, host: str = "127.0.0.1", port: int = 0,
    projects: int | None = None,
    api_keys: Mapping[str, Iterable[str]] | None = None, rate_limit: int | None = 100,
    download_rate_limit: int | None = 30, latency_s: float = 0.0, faults: Faults | None = None,
    range_requests: bool = True, url_ttl_s: float = 3600.0,
    transcription_rate_limit: int | None = 10,
) -> AsyncIterator[Simulator]:
    """Serve `world` (one project; `projects=N` for N built like it; or a mapping of API key
    -> World) on host:port (0 = any free port) for the duration of the block."""
    sim = Simulator(world, projects=projects, api_keys=api_keys, rate_limit=rate_limit,
                    download_rate_limit=download_rate_limit, latency_s=latency_s, faults=faults,
                    range_requests=range_requests, url_ttl_s=url_ttl_s,
                    transcription_rate_limit=transcription_rate_limit)
    await sim.start(host, port)
    try:
        yield sim
    finally:
        await sim.aclose()


LONG_RUN_LOG = 100_000  # requests a long-running simulator remembers (~10 MB)


def _announce(sim: Simulator) -> None:
    if len(sim.projects) == 1:
        print(f"Bota simulator serving {len(sim.world)} recordings ({sim.dialect} dialect) at "
              f"{sim.url}", flush=True)
        return
    lines = [f"Bota simulator serving {len(sim.projects)} projects ({sim.dialect} dialect) at "
             f"{sim.url}"]
    lines += [f"  project {p.index}: key {p.key} ({len(p.world)} recordings, seed "
              f"{p.world.seed})" for p in sim.projects]
    print("\n".join(lines), flush=True)


async def run_forever(
    world: World | Mapping[str, World], *, host: str = "127.0.0.1", port: int = 0,
    projects: int | None = None, api_keys: Mapping[str, Iterable[str]] | None = None,
    rate_limit: int | None = 100, download_rate_limit: int | None = 30, latency_s: float = 0.0,
    faults: Faults | None = None, range_requests: bool = True, url_ttl_s: float = 3600.0,
    move_every_s: float | None = None, changes_per_move: int = 1,
    on_ready: Callable[[Simulator], None] | None = None, max_logged: int | None = LONG_RUN_LOG,
    transcription_rate_limit: int | None = 10,
) -> None:
    """Serve until cancelled (Ctrl-C); `on_ready` (default: print the URL) runs once bound.

    The dialect is the world's (`World(..., dialect=...)`); `projects=N` serves N projects
    (see `serve`), each moving when `move_every_s` is set. The request log keeps the
    newest `max_logged` entries (None: all of them). `transcription_rate_limit` is the
    transcription and summary endpoints' own limit per key and minute (None: off).
    """
    async with serve(world, host=host, port=port, projects=projects, api_keys=api_keys,
                     rate_limit=rate_limit, download_rate_limit=download_rate_limit,
                     latency_s=latency_s,
                     faults=faults, range_requests=range_requests, url_ttl_s=url_ttl_s,
                     transcription_rate_limit=transcription_rate_limit) as sim:
        sim.max_logged = max_logged
        if move_every_s:
            sim.start_moving(move_every_s, changes_per_move)
        (on_ready or _announce)(sim)
        await asyncio.Event().wait()
