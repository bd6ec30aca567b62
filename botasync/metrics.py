"""What happens in-process, told to the metrics: requests, deliveries, passes, leases.

The client, the outbox and the daemon call the functions here where things happen; they
do nothing until the daemon serves metrics (`[metrics] listen`) and installs a `Sink`
(`health_http.Instruments`, Prometheus counters and a histogram). This module imports
no Prometheus code, so the one-shot commands that share the client start as fast as before.

Label values come from small fixed sets: a request is named by its endpoint, never by
an id, and a status the API invents is counted as `other`.
"""

from __future__ import annotations

from typing import Protocol

PROJECT = "default"  # the project of `[api]` alone (config.DEFAULT_PROJECT)
ENDPOINTS = ("list", "detail", "download_url", "transcriptions", "summaries", "other")
NO_ANSWER = "error"  # the `code` of a request that got no HTTP answer (refused, timed out)
DELIVERY_RESULTS = ("delivered", "failed", "dead")


class Sink(Protocol):
    """Where the in-process observations go (the Prometheus instruments)."""

    def api_response(self, endpoint: str, code: str, remaining: int | None,
                     project: str) -> None: ...

    def deliveries(self, handler: str, result: str, count: int) -> None: ...

    def pass_finished(self, kind: str, seconds: float, project: str) -> None: ...

    def lease(self, project: str, lease: str, held: bool) -> None: ...


_sink: Sink | None = None


def install(sink: Sink | None) -> None:
    """Send the observations to `sink` from now on (None: drop them)."""
    global _sink
    _sink = sink


def endpoint_of(path: str) -> str:
    """The endpoint of an API path, from a fixed set: `/recordings/rec_1` is `detail`."""
    parts = [p for p in path.split("?")[0].split("/") if p]
    if parts[:1] == ["v1"]:
        parts = parts[1:]
    if parts[:1] == ["recordings"]:
        if len(parts) == 1:
            return "list"
        if len(parts) == 2:
            return "detail"
        if len(parts) == 3 and parts[2] == "download-url":
            return "download_url"
    elif parts[:1] == ["transcriptions"] and len(parts) <= 2:
        return "transcriptions"
    elif parts[:1] == ["summaries"] and len(parts) <= 2:
        return "summaries"
    return "other"


def code_label(status: int | None) -> str:
    """The `code` label: the HTTP status, or `error` when no answer came."""
    return str(status) if status is not None and 100 <= status <= 599 else NO_ANSWER


def api_response(path: str, status: int | None, remaining: int | None = None,
                 project: str = PROJECT) -> None:
    """One answer of the API (`status` None: none came); `remaining` from X-RateLimit-*."""
    if _sink is not None:
        _sink.api_response(endpoint_of(path), code_label(status), remaining, project)


def deliveries_recorded(handler: str, delivered: int, failure: str | None = None) -> None:
    """The outbox recorded `delivered` successes and maybe one failure (`pending`: it
    will be retried, `dead`: given up)."""
    if _sink is None:
        return
    if delivered:
        _sink.deliveries(handler, "delivered", delivered)
    if failure is not None:
        _sink.deliveries(handler, "dead" if failure == "dead" else "failed", 1)


def pass_finished(kind: str, seconds: float, project: str = PROJECT) -> None:
    """A pass (head, hot, full, reconcile) of a project succeeded in `seconds`."""
    if _sink is not None:
        _sink.pass_finished(kind, seconds, project)


def lease_held(lease: str, held: bool) -> None:
    """This process started (`held`) or stopped the work of `lease` (`project:<name>`,
    `handler:<name>`): alone on SQLite every lease is its own, among workers its share."""
    if _sink is not None:
        kind, _, name = lease.partition(":")
        _sink.lease(name if kind == "project" else PROJECT, lease, held)
