"""The simulator server: `Simulator` (state + lifecycle), `serve` and `run_forever`.

A `Simulator` owns the aiohttp runner, the request log, the rate limiters and an
optional background task that keeps the world moving. `serve` is the context
manager tests use; `run_forever` is what `botasync simulate` runs.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
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
from botasync.simulator.ratelimit import RateLimiter
from botasync.simulator.world import Dialect, World

DEFAULT_API_KEYS: dict[str, tuple[str, ...]] = {
    "sk_test_botasync": ("recordings:read",),
    "sk_test_noscope": (),
}

log = structlog.get_logger("botasync.simulator")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it; `status` 0 means no answer (dropped)."""

    t: float
    method: str
    path: str
    query: str
    status: int

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able data."""
        return asdict(self)


class Simulator:
    """A running Bota API simulator over one `World`, in the world's dialect."""

    def __init__(
        self, world: World, *, api_keys: Mapping[str, Iterable[str]] | None = None,
        rate_limit: int | None = 100, download_rate_limit: int | None = 30,
        latency_s: float = 0.0, faults: Faults | None = None, range_requests: bool = True,
        url_ttl_s: float = 3600.0, secret: bytes | None = None,
        transcription_rate_limit: int | None = 10,
    ) -> None:
        self.world = world
        self.faults = faults if faults is not None else Faults()
        if latency_s:
            self.faults.latency_s = latency_s
        keys = DEFAULT_API_KEYS if api_keys is None else api_keys
        self.api_keys = {key: frozenset(scopes) for key, scopes in keys.items()}
        self.limiter = RateLimiter(rate_limit, world.clock)
        self.download_limiter = RateLimiter(download_rate_limit, world.clock)
        # the transcription and summary endpoints' own bucket, besides the overall limit
        self.transcription_limiter = RateLimiter(transcription_rate_limit, world.clock)
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
        self._mover: asyncio.Task[None] | None = None
        self._openapi: bytes | None = None

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
        """The dialect served: the world's."""
        return self.world.dialect

    def file_url(self, origin: str, file_id: str) -> str:
        """A newly signed URL to a file; its nonce makes every one differ from the last."""
        expires = math.ceil(self.world.clock.now() + self.url_ttl_s)
        nonce = format(next(self._nonces), "x")
        sig = sign(self.secret, file_id, expires, nonce)
        return f"{origin}/_files/{file_id}?expires={expires}&nonce={nonce}&sig={sig}"

    def _sign_here(self, file_id: str) -> str:
        return self.file_url(self.origin, file_id)

    @property
    def rate_limit(self) -> int | None:
        """Requests per minute per key, or None when off; setting it starts a new window."""
        return self.limiter.limit

    @rate_limit.setter
    def rate_limit(self, value: int | None) -> None:
        self.limiter.limit = value
        self.limiter.reset()

    @property
    def transcription_rate_limit(self) -> int | None:
        """Transcription and summary requests per minute per key (None: off); setting it
        starts a new window."""
        return self.transcription_limiter.limit

    @transcription_rate_limit.setter
    def transcription_rate_limit(self, value: int | None) -> None:
        self.transcription_limiter.limit = value
        self.transcription_limiter.reset()

    def openapi_text(self) -> bytes:
        """The OpenAPI contract shipped in the package."""
        if self._openapi is None:
            self._openapi = (importlib.resources.files("botasync") / "openapi.yaml").read_bytes()
        return self._openapi

    # -- the request log ---------------------------------------------------------------------

    def record(self, t: float, method: str, path: str, query: str, status: int) -> None:
        """Append one request to the log."""
        self.requests.append(RequestRecord(t, method, path, query, status))
        self.status_counts[status] += 1
        if self.max_logged is not None and len(self.requests) > self.max_logged:
            drop = len(self.requests) - self.max_logged // 2
            del self.requests[:drop]
            self.logged_before += drop

    def max_requests_in_window(self, window_s: float = 60.0, path_prefix: str = "/v1/") -> int:
        """The most requests under `path_prefix` that arrived within any `window_s` span."""
        times = sorted(r.t for r in self.requests if r.path.startswith(path_prefix))
        best = 0
        for i, t in enumerate(times):
            best = max(best, bisect.bisect_left(times, t + window_s, lo=i) - i)
        return best

    def stats(self) -> dict[str, Any]:
        """Counts for dashboards and benchmarks."""
        return {
            "dialect": self.dialect,
            "recordings": len(self.world),
            "by_status": self.world.counts(),
            "requests": self.logged_before + len(self.requests),
            "by_status_code": {str(code): n for code, n in sorted(self.status_counts.items())},
            "faults": self.faults.snapshot(),
            "rate_limit": self.rate_limit,
            "transcription_rate_limit": self.transcription_rate_limit,
            "moving": self.moving,
        }

    # -- the world moving ---------------------------------------------------------------------

    @property
    def moving(self) -> bool:
        """Whether a background task is changing the world."""
        return self._mover is not None and not self._mover.done()

    def start_moving(self, every_s: float, changes: int = 1) -> None:
        """Every `every_s` seconds (real time) make `changes` random changes to the world."""
        if every_s <= 0 or changes < 1:
            raise ValueError("every_s must be > 0 and changes >= 1")
        if self._mover is not None:
            self._mover.cancel()  # replaced: the old task ends at its next sleep
        self._mover = asyncio.get_running_loop().create_task(self._move(every_s, changes))

    async def _move(self, every_s: float, changes: int) -> None:
        while True:
            await asyncio.sleep(every_s)
            log.debug("simulator.moved", changes=self.world.step(changes))

    async def stop_moving(self) -> None:
        """Stop the background changes (idempotent)."""
        mover, self._mover = self._mover, None
        if mover is not None:
            mover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await mover

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
        self.world.signer = self._sign_here  # `world.get`/`all` sign for this server now
        log.info("simulator.started", url=self.url, recordings=len(self.world),
                 dialect=self.dialect, rate_limit=self.rate_limit)

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
    world: World, *, host: str = "127.0.0.1", port: int = 0,
    api_keys: Mapping[str, Iterable[str]] | None = None, rate_limit: int | None = 100,
    download_rate_limit: int | None = 30, latency_s: float = 0.0, faults: Faults | None = None,
    range_requests: bool = True, url_ttl_s: float = 3600.0,
    transcription_rate_limit: int | None = 10,
) -> AsyncIterator[Simulator]:
    """Serve `world` on host:port (0 = any free port) for the duration of the block."""
    sim = Simulator(world, api_keys=api_keys, rate_limit=rate_limit,
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
    print(f"Bota simulator serving {len(sim.world)} recordings ({sim.dialect} dialect) at "
          f"{sim.url}", flush=True)


async def run_forever(
    world: World, *, host: str = "127.0.0.1", port: int = 0,
    api_keys: Mapping[str, Iterable[str]] | None = None, rate_limit: int | None = 100,
    download_rate_limit: int | None = 30, latency_s: float = 0.0, faults: Faults | None = None,
    range_requests: bool = True, url_ttl_s: float = 3600.0, move_every_s: float | None = None,
    changes_per_move: int = 1, on_ready: Callable[[Simulator], None] | None = None,
    max_logged: int | None = LONG_RUN_LOG, transcription_rate_limit: int | None = 10,
) -> None:
    """Serve until cancelled (Ctrl-C); `on_ready` (default: print the URL) runs once bound.

    The dialect is the world's (`World(..., dialect=...)`). The request log keeps the
    newest `max_logged` entries (None: all of them). `transcription_rate_limit` is the
    transcription and summary endpoints' own limit per key and minute (None: off).
    """
    async with serve(world, host=host, port=port, api_keys=api_keys, rate_limit=rate_limit,
                     download_rate_limit=download_rate_limit, latency_s=latency_s,
                     faults=faults, range_requests=range_requests, url_ttl_s=url_ttl_s,
                     transcription_rate_limit=transcription_rate_limit) as sim:
        sim.max_logged = max_logged
        if move_every_s:
            sim.start_moving(move_every_s, changes_per_move)
        (on_ready or _announce)(sim)
        await asyncio.Event().wait()
