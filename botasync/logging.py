"""Logging setup: structlog, JSON off a terminal (journald), pretty on one; secrets redacted.

Logs go to stderr so that `--json` output on stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, MutableMapping
from typing import Any, TextIO

import structlog

_SECRETS: set[str] = set()


def add_secret(value: str) -> None:
    """Register a value (the API key, a webhook secret) that must never be logged."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        for s in _SECRETS:
            if s in value:
                value = value.replace(s, "***")
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    return value


def redact(value: str) -> str:
    """A string with every registered secret replaced by `***`."""
    out: str = _scrub(value)
    return out


class RedactSecrets:
    """Processor: replace registered secrets in every value of the event dict."""

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not _SECRETS:
            return event_dict
        return {k: _scrub(v) for k, v in event_dict.items()}


class Mute:
    """Processor: drop the events named (`botasync sync` on a terminal prints its own
    summary of each pass, so its `pass_done` line would say it twice)."""

    def __init__(self, events: Collection[str]) -> None:
        self.events = frozenset(events)

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event_dict.get("event") in self.events:
            raise structlog.DropEvent
        return event_dict


class _CurrentStderr:
    """Whatever `sys.stderr` is at the time of writing: a progress bar on the terminal
    swaps in a proxy that prints log lines above the bar instead of across it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None,
              *, mute: Collection[str] = ()) -> None:
    """Set up structlog once per process: level, renderer, redaction; `mute` drops events."""
    out: Any = stream or _CurrentStderr()
    json_out = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_out
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            Mute(mute),
            structlog.processors.format_exc_info,
            RedactSecrets(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
