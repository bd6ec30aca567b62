"""Fault injection: which request fails and how, decided without I/O.

Two sources, checked in this order: a deterministic queue ("the next 2 list calls
get a 503") and seeded random rates per kind ("5% of calls are dropped"). The
server (`app.py`) turns a kind into a response; this module only picks it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

API_KINDS = ("server_error", "rate_limited", "drop", "malformed", "html_502", "slow", "non_utf8")
FILE_KINDS = ("truncate",)
KINDS = API_KINDS + FILE_KINDS
API_PREFIX = "/v1/recordings"
FILE_PREFIX = "/_files"


@dataclass(slots=True)
class _Queued:
    kind: str
    left: int
    path_prefix: str


class Faults:
    """Seeded random fault rates plus a queue of faults for the next matching requests.

    `latency_s` delays every /v1 answer (a realistic API answer time); a `slow` fault
    adds `slow_s` on top. Faults apply to /v1 paths, and `truncate` to file downloads.
    """

    def __init__(
        self, seed: int = 0, *, rates: Mapping[str, float] | None = None,
        slow_s: float = 2.0, latency_s: float = 0.0,
    ) -> None:
        self._rng = random.Random(seed)
        self.rates: dict[str, float] = {}
        self.slow_s = slow_s
        self.latency_s = latency_s
        self.injected: Counter[str] = Counter()
        self._queue: list[_Queued] = []
        self.set_rates(rates or {})

    def set_rates(self, rates: Mapping[str, float] | None = None, /, **more: float) -> None:
        """Replace the random rates (a probability per kind; absent kinds get 0)."""
        merged = {**(rates or {}), **more}
        for kind, rate in merged.items():
            if kind not in KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"fault rate for {kind} must be within 0..1, got {rate}")
        if sum(r for k, r in merged.items() if k in API_KINDS) > 1.0:
            raise ValueError("the API fault rates add up to more than 1")
        self.rates = {k: float(r) for k, r in merged.items() if r > 0}

    def queue(self, kind: str, n: int = 1, path_prefix: str | None = None) -> None:
        """Make the next `n` requests whose path starts with `path_prefix` fail as `kind`.

        The prefix defaults to /v1/recordings, or /_files for `truncate`.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(KINDS)}")
        if path_prefix is None:
            path_prefix = FILE_PREFIX if kind in FILE_KINDS else API_PREFIX
        if n > 0:
            self._queue.append(_Queued(kind, n, path_prefix))

    def clear(self) -> None:
        """No more faults: empty the queue and zero the rates (latency stays)."""
        self._queue.clear()
        self.rates = {}

    @property
    def pending(self) -> int:
        """How many queued faults are still to be served."""
        return sum(q.left for q in self._queue)

    def pick(self, path: str) -> str | None:
        """The fault for a request to `path`, or None; queued ones come first.

        Only kinds that make sense for the path are picked: `truncate` for files, the
        others for the API.
        """
        kinds = FILE_KINDS if path.startswith(FILE_PREFIX) else API_KINDS
        for entry in self._queue:
            if entry.kind in kinds and path.startswith(entry.path_prefix):
                entry.left -= 1
                if entry.left <= 0:
                    self._queue.remove(entry)
                self.injected[entry.kind] += 1
                return entry.kind
        live = [(k, self.rates[k]) for k in kinds if k in self.rates]
        if not live:
            return None  # no draw, so a fault-free run leaves the generator untouched
        draw = self._rng.random()
        for kind, rate in live:
            if draw < rate:
                self.injected[kind] += 1
                return kind
            draw -= rate
        return None

    def server_error_status(self) -> int:
        """500 or 503, at random (both are 'Bota's side, retry')."""
        return self._rng.choice((500, 503))

    def snapshot(self) -> dict[str, object]:
        """The current settings and counts, as JSON-able data for the admin endpoint."""
        return {
            "rates": dict(self.rates), "slow_s": self.slow_s, "latency_s": self.latency_s,
            "queued": [{"kind": q.kind, "n": q.left, "path_prefix": q.path_prefix}
                       for q in self._queue],
            "injected": dict(self.injected),
        }
