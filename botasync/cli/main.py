"""The command line: click + rich. Parses, calls one library function, renders. No logic.

Every expected failure is a `BotasyncError`: one line on stderr and its exit code
(2 config/usage, 3 auth, 1 otherwise). Tracebacks only with `--debug`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Literal, NoReturn

import click
from rich.markup import escape
from rich.table import Table

from botasync import __version__, config, health
from botasync.cli import export as _export  # noqa: F401  (adds `transcripts export`)
from botasync.cli.common import (
    State,
    _config_option,
    _known_project,
    _plural,
    _print_json,
    _since,
    _state,
    _with_store,
    err,
    handle_errors,
    out,
    project_option,
    run_async,
)
from botasync.cli.files import files as files_group
from botasync.cli.search import search_command
from botasync.cli.transcripts import transcripts
from botasync.envelope import utc_now
from botasync.errors import BotasyncError
from botasync.jsoncodec import dumps
from botasync.logging import configure
from botasync.store import queries


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", metavar="PATH",
              help="Configuration file (else $BOTASYNC_CONFIG).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(__version__, prog_name="botasync")
@click.pass_context
def main(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """Keep a local SQLite mirror of a Bota project's recordings, and turn changes into events."""
    state = ctx.ensure_object(State)
    state.config_path = config_path
    state.debug = debug


# --- sync and run --------------------------------------------------------------------


def _summary(stats: Any) -> str:
    return (
        f"{stats.kind} pass: {stats.pages} pages, {stats.requests} requests, "
        f"{stats.created} created, {stats.updated} updated, {stats.unchanged} unchanged, "
        f"{stats.invalid} invalid, {stats.deleted} deleted, {stats.events} events "
        f"in {stats.seconds:.1f} s"
    )


@main.command()
@_config_option
@click.option("--full/--quick", default=True,
              help="--full walks every page (default); --quick runs the daemon's tick "
              "(hot + head).")
@click.option("--deliver-timeout", type=float, default=30.0, show_default=True,
              help="Seconds to spend delivering the pass's events before exiting.")
@click.option("--json", "as_json", is_flag=True, help="Print the pass summary as JSON.")
@project_option("Sync this project alone (default: every project, side by side).")
@handle_errors
def sync(full: bool, deliver_timeout: float, as_json: bool, project: str | None) -> None:
    """Run one pass against the API, deliver its events, and exit."""
    from botasync.service.app import sync_once
    from botasync.sync.progress import walk_progress

    # on a terminal the summary below reports the pass: the log must not say it again
    cfg = _state().load(mute=("pass_done",) if err.is_terminal and not as_json else ())
    _known_project(cfg, project)
    # one bar follows one walk: with several projects at once the log tells their progress
    one = project is not None or len(cfg.project_names()) == 1
    view = cfg.for_project(project or cfg.project_names()[0])
    skipped: list[str] = []  # PostgreSQL: what running workers hold, one line each

    def skip(line: str) -> None:
        skipped.append(line)
        click.echo(line, err=True)

    try:
        with walk_progress(err, view.api.requests_per_minute, view.sync.page_size,
                           enabled=not as_json and one) as progress:
            stats, delivered = run_async(sync_once(
                cfg, full=full, deliver_timeout=deliver_timeout, on_progress=progress,
                on_budget=progress.watch_budget if progress else None, only=project,
                on_skip=skip))
    except KeyboardInterrupt:
        err.print(escape(_where_it_resumes(cfg)), soft_wrap=True)
        sys.exit(130)
    if as_json:
        _print_json({"passes": [s.as_dict() for s in stats], "delivered": delivered,
                     "skipped": skipped})
        return
    for s in stats:
        click.echo(_summary(s))
    if not delivered:
        click.echo(f"some events are still undelivered after {deliver_timeout:g} s; "
                   "they stay in the outbox for the next run", err=True)


def _where_it_resumes(cfg: config.Config) -> str:
    """After Ctrl-C: where the next `botasync sync` picks the walk up."""
    if not cfg.database.url and not Path(cfg.database.path).exists():
        return "interrupted before anything was saved; the next `botasync sync` starts afresh"
    try:
        walk = run_async(_with_store(cfg, queries.resume_point))
    except BotasyncError:
        walk = None
    if walk is None:
        return "interrupted; the next `botasync sync` runs a new pass"
    return f"interrupted; {walk}"


@main.command()
@_config_option
@handle_errors
def run() -> None:
    """Run the daemon: passes on a schedule, events to handlers, until SIGTERM/SIGINT."""
    from botasync.service.daemon import Daemon

    cfg = _state().load()
    daemon = Daemon(cfg, settle_heap=True)
    code = run_async(daemon.run())
    if daemon.error is not None:
        raise daemon.error
    sys.exit(code)


@main.command()
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--check", is_flag=True,
              help="For monitoring: exit 1 if passes stopped or failed, or letters are dead.")
@click.option("--max-age", "max_age_s", type=click.FloatRange(min=1), metavar="SECONDS",
              help="With --check: how old the newest finished pass may be "
                   "(default 3 intervals).")
@click.option("--max-undelivered-age", "max_undelivered_s", type=click.FloatRange(min=0),
              metavar="SECONDS",
              help="With --check: how long an event may wait for a handler (default "
                   "[events] max_undelivered_age_s; 0: no limit).")
@handle_errors
def status(as_json: bool, check: bool, max_age_s: float | None,
           max_undelivered_s: float | None) -> None:
    """Last passes, recordings by status, outbox backlog, dead deliveries, budget."""
    from botasync.service.status import collect

    cfg = _state().load()
    data = run_async(collect(cfg))
    if check:
        limits = health.Limits(
            max_age_s=max_age_s or health.default_max_age(cfg.sync.interval_s),
            max_undelivered_s=cfg.events.max_undelivered_age_s
            if max_undelivered_s is None else max_undelivered_s)
        _check(data, limits, as_json)
    if as_json:
        _print_json(data)
        return
    from botasync.service.status import render

    render(out, data)


def _check(data: dict[str, Any], limits: health.Limits, as_json: bool) -> NoReturn:
    """`status --check`: print the verdict and exit 0 (healthy) or 1."""
    now = utc_now()
    found = health.problems(data, limits, now=now)
    if as_json:
        _print_json({"ok": not found, "problems": found})
    elif found:
        for line in found:
            click.echo(f"problem: {line}")
    else:
        click.echo(health.summary(data, now))
    sys.exit(1 if found else 0)


# --- recordings ------------------------------------------------------------------------


@main.group()
def recordings() -> None:
    """Query the mirrored recordings."""








@recordings.command("list")
@_config_option
@click.option("--status", metavar="STATUS",
              help=f"Only this status ({', '.join(config.RECORDING_STATUSES)}, or any other "
                   "the API sent).")
@click.option("--device", help="Only this device id.")
@click.option("--user", help="Only this end user id.")
@click.option("--since", metavar="ISO", callback=_since,
              help="Created at or after this date or time (ISO 8601, UTC unless it says).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--deleted", is_flag=True, help="Include tombstoned (deleted) recordings.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@project_option("Only this project's recordings (default: every project's).")
@handle_errors
def recordings_list(status: str | None, device: str | None, user: str | None,
                    since: str | None, limit: int, deleted: bool, as_json: bool,
                    project: str | None) -> None:
    """List recordings, newest first."""
    cfg = _state().load()
    _known_project(cfg, project)
    filters: dict[str, Any] = {"status": status, "device": device, "user": user,
                               "since": since, "include_deleted": deleted, "project": project}

    async def both(s: Any) -> tuple[list[dict[str, Any]], int]:
        return (await queries.list_recordings(s, limit=limit, **filters),
                await queries.count_recordings(s, **filters))

    rows, total = run_async(_with_store(cfg, both))
    if as_json:
        _print_json(rows)
        return
    table = Table(box=None)
    several = len(cfg.project_names()) > 1
    if several:
        table.add_column("project", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("name", overflow="ellipsis", no_wrap=True, max_width=40)
    table.add_column("device", no_wrap=True)
    table.add_column("duration", no_wrap=True, justify="right")
    table.add_column("created (UTC)", no_wrap=True)
    for r in rows:
        name = escape(r["name"] or "")
        if r["deleted_at"]:
            name = f"[strike]{name}[/strike] (deleted)"
        table.add_row(*([r["project"]] if several else []), r["id"], r["status"], name,
                      r["device_id"] or "", _duration(r["duration_ms"]),
                      (r["created_at"] or "")[:16].replace("T", " "))
    out.print(table)
    more = f" of {total:,}, --limit for more" if total > len(rows) else ""
    out.print(f"[dim]{_plural(len(rows), 'recording')}{more}[/dim]" if not more else
              f"[dim]{len(rows):,}{more}[/dim]")


def _duration(ms: int | None) -> str:
    if ms is None:
        return ""
    minutes, seconds = divmod(round(ms / 1000), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else (
        f"{minutes}:{seconds:02d}")


@recordings.command("show")
@_config_option
@click.argument("recording_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@project_option("The project the recording is in (needed only when two projects have it).")
@handle_errors
def recordings_show(recording_id: str, as_json: bool, project: str | None) -> None:
    """One recording with its media and its event history."""
    cfg = _state().load()
    _known_project(cfg, project)

    async def one(s: Any) -> dict[str, Any] | None:
        where = [project] if project else await queries.projects_of(s, recording_id)
        if len(where) > 1:
            raise BotasyncError(f"recording {recording_id} is in projects {', '.join(where)}: "
                                "say which with --project")
        return await queries.show_recording(s, recording_id, where[0]) if where else None

    rec = run_async(_with_store(cfg, one))
    if rec is None:
        raise BotasyncError(f"no recording {recording_id} in the mirror")
    if as_json:
        _print_json(rec)
        return
    fields = Table(show_header=False, box=None)
    for k, v in rec.items():
        if k not in ("media", "events"):
            text = "" if v is None else dumps(v) if isinstance(v, dict | list) else str(v)
            fields.add_row(f"[bold]{k}[/bold]", escape(text))
    out.print(fields)
    media = Table("media", "type", "mime", "bytes", "status", title="media", box=None)
    for m in rec["media"]:
        media.add_row(m["id"], m["type"], m["mime_type"] or "", str(m["file_size_bytes"]),
                      m["status"])
    out.print(media)
    evs = Table("seq", "event", "type", "created", title="events", box=None)
    for e in rec["events"]:
        evs.add_row(str(e["seq"]), e["id"], e["type"], e["created_at"])
    out.print(evs)


# --- events ------------------------------------------------------------------------------


@main.group()
def events() -> None:
    """Look at the outbox and re-deliver events."""


@events.command("list")
@_config_option
@click.option("--type", "type_", metavar="GLOB", help="Only types matching this glob.")
@click.option("--undelivered", is_flag=True, help="Only events some handler still has to take.")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@project_option("Only this project's events (default: every project's).")
@handle_errors
def events_list(type_: str | None, undelivered: bool, limit: int, as_json: bool,
                project: str | None) -> None:
    """List events, newest first."""
    from botasync.events.outbox import list_events

    cfg = _state().load()
    _known_project(cfg, project)
    rows = run_async(_with_store(cfg, lambda s: list_events(
        s, type_pattern=type_, undelivered=undelivered, limit=limit, project=project)))
    if as_json:
        _print_json([dataclasses.asdict(r) for r in rows])
        return
    several = len(cfg.project_names()) > 1
    table = Table("seq", "id", "type", *(["project"] if several else []), "recording", "created",
                  "deliveries", box=None)
    for r in rows:
        states = ", ".join(f"{h}: {st}" for h, st in r.deliveries.items())
        table.add_row(str(r.seq), r.id, r.type, *([r.project] if several else []),
                      r.recording_id or "", r.created_at, states)
    out.print(table)


@events.command("replay")
@_config_option
@click.option("--handler", "handler_name", required=True, help="The handler to deliver to.")
@click.option("--since", "since_seq", type=int, metavar="SEQ", help="From this event seq on.")
@click.option("--type", "type_", metavar="GLOB", help="Only types matching this glob.")
@project_option("Only this project's events.")
@handle_errors
def events_replay(handler_name: str, since_seq: int | None, type_: str | None,
                  project: str | None) -> None:
    """Deliver stored events to one handler again, in order."""
    from botasync.service.app import replay_events as replay

    cfg = _state().load()
    _known_project(cfg, project)
    result = run_async(replay(cfg, handler_name, since_seq=since_seq, type_pattern=type_,
                              project=project))
    click.echo(f"replayed to {handler_name}: {result.delivered} delivered, {result.failed} failed")
    if result.failed:
        sys.exit(1)


@events.command("prune")
@_config_option
@click.option("--days", type=click.IntRange(0), metavar="N",
              help="Forget settled events older than N days (default: [events] retention_days; "
                   "0: every settled event).")
@click.option("--dry-run", is_flag=True, help="Count what would go; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def events_prune(days: int | None, dry_run: bool, as_json: bool) -> None:
    """Forget settled events older than the retention (never pending or dead ones)."""
    from botasync.store import retention

    cfg = _state().load()
    if days is None:
        if not cfg.events.retention_days:
            raise click.UsageError("[events] retention_days is 0 (keep every event): say --days N")
        days = cfg.events.retention_days
    handlers = [h.name for h in cfg.handlers]
    result = run_async(_with_store(cfg, lambda s: retention.prune_events(
        s, retention.cutoff(days), handlers, dry_run=dry_run), write=not dry_run))
    if as_json:
        _print_json({**dataclasses.asdict(result), "dry_run": dry_run})
        return
    verb = "would forget" if dry_run else "forgot"
    click.echo(f"{verb} {_plural(result.events, 'settled event')} created before "
               f"{result.before}")


# --- config ------------------------------------------------------------------------------


@main.group("config")
def config_group() -> None:
    """Check or show the configuration."""


@config_group.command("check")
@_config_option
@handle_errors
def config_check() -> None:
    """Validate the config, resolve the key, and call the API once."""
    from botasync.service.app import check

    cfg = _state().load()
    for warning in cfg.warnings():
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", soft_wrap=True)
    for line in run_async(check(cfg)):
        out.print(f"[green]ok[/green] {line}")


@config_group.command("show")
@_config_option
@handle_errors
def config_show() -> None:
    """Print the effective configuration (file + environment) with the key redacted."""
    cfg = _state().load()
    data = cfg.redacted()
    if sys.stdout.isatty():  # for a person: indented; for a pipe: one line of JSON
        import json

        click.echo(json.dumps(data, indent=2))
    else:
        _print_json(data)


# --- simulator and demo ----------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--recordings", "n", type=click.IntRange(0, 10_000_000), default=500,
              show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--api-key", default="sk_test_botasync", show_default=True)
@click.option("--rate-limit", type=click.IntRange(1, 1_000_000), default=100, show_default=True,
              help="Requests a minute per key.")
@click.option("--no-rate-limit", is_flag=True, help="Serve without a rate limit.")
@click.option("--latency-ms", type=click.IntRange(0, 60_000), default=0, show_default=True)
@click.option("--move-every", type=float, default=0.0, show_default=True,
              help="Seconds between world changes (0: a still world).")
@click.option("--dialect", type=click.Choice(["documented", "deployed"]), default="documented",
              show_default=True,
              help="Speak the API as documented (offset pages, media[]) or as deployed "
                   "(cursor pages, one signed file per recording, seven statuses).")
@click.option("--projects", type=click.IntRange(1, 1000), default=None, metavar="N",
              help="Serve N Bota projects, each with its own key (sk_test_project_0, ...), "
                   "world (seeds derived from --seed) and rate limit; prints [[projects]] "
                   "entries to paste.")
@handle_errors
def simulate(host: str, port: int, n: int, seed: int, api_key: str, rate_limit: int,
             no_rate_limit: bool, latency_ms: int, move_every: float,
             dialect: Literal["documented", "deployed"], projects: int | None) -> None:
    """Serve the built-in Bota API simulator (for trying botasync without a key)."""
    from botasync.simulator import DEFAULT_API_KEYS, World, run_forever

    configure("info", "auto")
    if projects is not None and api_key != "sk_test_botasync":
        raise click.UsageError("--api-key is the key of the one project; with --projects the "
                               "keys are sk_test_project_0, sk_test_project_1, ...")
    if not _is_loopback(host):
        err.print(f"[yellow]warning:[/yellow] binding {escape(host)}, not a loopback address: "
                  "anyone who can reach this host can use the simulator", soft_wrap=True)
    world = World(seed=seed, recordings=n, dialect=dialect)

    def ready(sim: Any) -> None:
        if projects is None:
            err.print(f"simulator serving {n} recordings ({dialect} dialect) at [bold]{sim.url}"
                      f"[/bold] (key {api_key}); "
                      f"try: BOTA_API_URL={sim.url} BOTA_API_KEY={api_key} botasync sync")
            return
        lines = [f"simulator serving {projects} projects of {n} recordings ({dialect} dialect) "
                 f"at {sim.url}, one key each; admin: {sim.origin}/_sim/...?project=INDEX|KEY",
                 "", "[api]", f'base_url = "{sim.url}"']
        for p in sim.projects:
            lines += ["", "[[projects]]", f'name = "project_{p.index}"',
                      f'api_key = "{p.key}"  # seed {p.world.seed}']
        err.print("\n".join(lines), markup=False, highlight=False, soft_wrap=True)

    try:
        run_async(run_forever(
            world, host=host, port=port, projects=projects,
            api_keys=None if projects else {**DEFAULT_API_KEYS, api_key: {"recordings:read"}},
            rate_limit=None if no_rate_limit else rate_limit,
            download_rate_limit=None if no_rate_limit else 30, latency_s=latency_ms / 1000,
            move_every_s=move_every or None, on_ready=ready))
    except OSError as e:
        why = os.strerror(e.errno).lower() if e.errno else str(e)
        raise BotasyncError(f"cannot serve on {host}:{port}: {why}"
                            + (" (try --port 0 for any free port)"
                               if e.errno in (98, 48) else "")) from None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


@main.command()
@click.option("--for", "seconds", type=click.FloatRange(1, None), metavar="SECONDS",
              help="Stop by itself after this many seconds (default: run until Ctrl-C).")
@click.option("--db", "db_path", default="botasync-demo.db", show_default=True,
              help="Where the demo mirror goes (a previous demo's is replaced; any other "
                   "file is refused).")
@click.option("--recordings", "n", type=click.IntRange(1, 100_000), default=300, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--move-every", type=click.FloatRange(0.1, None), default=1.5, show_default=True,
              help="Seconds between changes in the simulated world.")
@click.option("--dialect", type=click.Choice(["documented", "deployed"]), default="deployed",
              show_default=True,
              help="The API the simulator plays: as deployed (cursor pages, seven statuses) or "
                   "as Bota's reference pages document it.")
@handle_errors
def demo(seconds: float | None, db_path: str, n: int, seed: int, move_every: float,
         dialect: Literal["documented", "deployed"]) -> None:
    """Mirror a simulated, moving Bota project and print its events live. No key needed."""
    from botasync.service.demo import next_steps, run_demo

    configure("warning", "auto")
    printer = run_async(run_demo(out, db=Path(db_path), seconds=seconds, recordings=n,
                                 seed=seed, move_every_s=move_every, dialect=dialect))
    out.print(f"\n[bold]{_plural(printer.count, 'event')} delivered[/bold] "
              f"({_plural(printer.status_changes, 'status change')}). Try next:", soft_wrap=True)
    for line in next_steps(Path(db_path)):
        out.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)


# --- snapshot ------------------------------------------------------------------------------


@main.command()
@_config_option
@click.argument("path", type=click.Path(dir_okay=False, writable=True))
@handle_errors
def snapshot(path: str) -> None:
    """Write a consistent copy of the database to PATH (SQLite VACUUM INTO), safe while the
    daemon runs; open the copy with anything, Datasette --immutable included."""
    from botasync.store.snapshot import snapshot as take

    cfg = _state().load()
    if cfg.database.url:
        raise BotasyncError(
            "snapshot copies a SQLite file; the store is on PostgreSQL ([database] url): "
            "take a consistent copy with pg_dump (see README, PostgreSQL)")
    size = run_async(take(cfg.database.path, path))
    out.print(f"snapshot of {escape(cfg.database.path)} written to {escape(path)} "
              f"({size / 1e6:.1f} MB)", soft_wrap=True)


main.add_command(files_group)
main.add_command(transcripts)
main.add_command(search_command)
