"""What every command shares: the consoles, the group's state, `--config`, one-line errors,
running a coroutine, and opening the existing database for one call."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from botasync import config
from botasync.envelope import iso
from botasync.errors import BotasyncError
from botasync.jsoncodec import dumps
from botasync.logging import configure, redact

F = TypeVar("F", bound=Callable[..., Any])


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class _Console(Console):
    """rich's Console, except that a reader gone (`| head`) ends the command quietly, exit 0:
    it had what it wanted."""

    def on_broken_pipe(self) -> None:
        _quiet_stdout()
        raise SystemExit(0)


# off a terminal (a pipe, a file) tables get room instead of rich's default 80 columns
out = _Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    """What the group options leave for the commands."""

    def __init__(self) -> None:
        self.config_path: str | None = None
        self.debug = False

    def load(self, *, mute: tuple[str, ...] = ()) -> config.Config:
        """The configuration; the key file is read later, only by commands that call the API
        (`status` on a server must not need the daemon's systemd credential)."""
        cfg = config.load(self.config_path, resolve_key=False)
        configure(cfg.logging.level, cfg.logging.format, mute=mute)
        return cfg


def _config_option(f: F) -> F:
    """`--config PATH` on every command (also accepted before the command name)."""

    def remember(ctx: click.Context, _p: click.Parameter, value: str | None) -> None:
        if value:
            ctx.ensure_object(State).config_path = value

    return click.option("--config", "config_path", metavar="PATH", expose_value=False,
                        callback=remember, help="Configuration file (else $BOTASYNC_CONFIG).")(f)


def handle_errors(f: F) -> F:
    """Turn a BotasyncError into one red line and its exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except BotasyncError as e:
            if _state().debug:
                raise
            err.print(f"[red]error:[/red] {escape(redact(str(e)))}", markup=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:
            _quiet_stdout()  # `botasync status | head -2`: the reader has all it wanted
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


def _state() -> State:
    return click.get_current_context().ensure_object(State)


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def _print_json(data: Any) -> None:
    click.echo(dumps(data))

async def _with_store(cfg: config.Config, fn: Callable[[Any], Coroutine[Any, Any, Any]],
                      *, write: bool = False) -> Any:
    """Open the existing database for one call: read-only (`mode=ro`, nothing written, no
    migration) unless the command writes."""
    from botasync.store import open_existing

    async with await open_existing(cfg.database, readonly=not write) as store:
        return await fn(store)


def _since(_ctx: click.Context, _p: click.Parameter, value: str | None) -> str | None:
    """`--since`: an ISO 8601 date or time (UTC unless it says), as stored; else exit 2."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (like 2026-11-01 or "
            "2026-11-01T09:30Z)") from None
    if len(value) == 10:  # a date alone: the stored timestamps compare as text
        return when.date().isoformat()
    return iso(when if when.tzinfo else when.replace(tzinfo=UTC))


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


def project_option(help_text: str) -> Callable[[F], F]:
    """`--project NAME`: a `[[projects]]` name (`default` with `[api]` alone)."""
    return click.option("--project", metavar="NAME", help=help_text)


def _known_project(cfg: config.Config, project: str | None) -> None:
    """A `--project` the configuration does not name is a usage error (exit 2)."""
    if project is not None and project not in cfg.project_names():
        raise click.BadParameter(
            f"no project {project!r} (configured: {', '.join(cfg.project_names())})",
            param_hint="--project")
