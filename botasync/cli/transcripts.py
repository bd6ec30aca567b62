"""`botasync transcripts ...`: the transcriptions and summaries mirrored. Parses, calls, renders.

Added to `main` by `botasync/cli/main.py`; `export.py` adds its subcommand to the group.

`status`, `download` and `retry` work on every configured project, or the one `--project`
names (each project has its own queue, and its own key and budget). With one project the
output is as it always was; with several, `status` shows each project's in turn (`--json`:
a list of the one-project objects, each naming its `project`), `download` fetches them
side by side and reports each, `retry` re-queues each project's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from botasync.cli.common import (
    _config_option,
    _known_project,
    _print_json,
    _state,
    err,
    handle_errors,
    out,
    project_option,
    run_async,
)
from botasync.config import Config
from botasync.store.base import Database
from botasync.transcripts import admin

_project_option = project_option(
    "One project, by its [[projects]] name (default: every configured project).")


def _projects(cfg: Config, project: str | None) -> list[str]:
    """The project named (it must be configured: exit 2 otherwise), or every one."""
    _known_project(cfg, project)
    return [project] if project is not None else cfg.project_names()


@click.group("transcripts")
def transcripts() -> None:
    """Transcriptions and summaries mirrored ([transcripts] download = true)."""


@transcripts.command("status")
@_config_option
@_project_option
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (with several projects, a list: one each).")
@handle_errors
def transcripts_status(project: str | None, as_json: bool) -> None:
    """Done, queued and failed transcripts, and how long the queue takes at the budget."""
    cfg = _state().load()
    names = _projects(cfg, project)

    async def collect(store: Database) -> list[dict[str, Any]]:
        return [await admin.transcripts_status(store, cfg.transcripts, name) for name in names]

    data: list[dict[str, Any]] = run_async(admin.with_store(cfg, collect))
    if as_json:
        _print_json(data[0] if len(data) == 1 else data)
        return
    for i, one in enumerate(data):
        if len(data) > 1:
            out.print(("\n" if i else "") + f"[bold]project {escape(one['project'])}[/bold]")
        _render_status(one)


def _render_status(data: dict[str, Any]) -> None:
    state = "on" if data["download"] else "off ([transcripts] download = false)"
    since = (f", queued since {data['enabled_at']}" if data["enabled_at"]
             else "; nothing queued before transcripts are first turned on")
    out.print(escape(f"transcripts {state}; summaries {'on' if data['summaries'] else 'off'}"
                     f"; {data['requests_per_minute']} requests a minute{since}"))
    done, q, failed = data["done"], data["queued"], data["failed"]
    table = Table(box=None, show_header=False)
    table.add_row("done", f"{done['recordings']:,}",
                  f"{done['transcriptions']:,} transcriptions, {done['segments']:,} segments, "
                  f"{done['summaries']:,} summaries")
    waiting = f"; {q['waiting']:,} wait for a transcription to finish or a retry" \
        if q["waiting"] else ""
    table.add_row("queued", f"{q['recordings']:,}",
                  escape(q["eta"] + waiting) if q["recordings"] else "")
    table.add_row("failed", f"{failed['transcriptions']:,}",
                  "transcriptions Bota failed" + (
                      f" ({failed['summaries']:,} summaries)" if failed["summaries"] else ""))
    gave_up = data["gave_up"]
    table.add_row("gave up", f"{gave_up['recordings']:,}",
                  "fetches that kept failing; `botasync transcripts retry` re-queues them"
                  if gave_up["recordings"] else "")
    out.print(table)
    for item in gave_up["items"]:
        out.print(f"[red]gave up[/red] {item['recording_id']}, {item['attempts']} attempts: "
                  f"{escape(item['error'] or '')}")


@transcripts.command("download")
@_config_option
@_project_option
@click.option("--limit", type=click.IntRange(1, None), metavar="N",
              help="Fetch at most this many recordings' transcripts (of each project), then "
                   "exit.")
@click.option("--timeout", type=click.FloatRange(0, None), default=86400.0, show_default=True,
              help="Seconds to spend before exiting; what is left stays queued.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON (with several projects, a list: one each).")
@handle_errors
def transcripts_download(project: str | None, limit: int | None, timeout: float,
                         as_json: bool) -> None:
    """Fetch the queued transcripts now (a progress bar on a terminal), then exit. Several
    projects are fetched side by side, each at its own budget."""
    from botasync.transcripts.progress import fetch_progress

    cfg = _state().load()
    names = _projects(cfg, project)
    tcfg = cfg.transcripts
    with fetch_progress(err, tcfg.requests_per_minute * len(names), tcfg.summaries,
                        enabled=not as_json) as bar:
        reports = run_async(admin.download_projects(
            cfg, names, within_s=timeout, limit=limit, on_progress=bar,
            on_start=(lambda statuses: bar.begin(statuses, limit)) if bar else None))
    if as_json:
        found = [dataclasses.asdict(r) for r in reports]
        _print_json(found[0] if len(found) == 1 else found)
        return
    for report in reports:
        of = f"project {report.project}: " if len(reports) > 1 else ""
        left = ("" if report.drained
                else "; the rest stays queued (see `botasync transcripts status`)")
        out.print(escape(
            f"{of}{report.recordings:,} recordings fetched ({report.transcriptions:,} "
            f"transcriptions, {report.segments:,} segments, {report.summaries:,} summaries, "
            f"{report.events:,} events) in {report.requests:,} requests, "
            f"{report.failures} failed{left}"))


@transcripts.command("retry")
@_config_option
@_project_option
@handle_errors
def transcripts_retry(project: str | None) -> None:
    """Put the recordings whose transcript fetch gave up back in the queue."""
    cfg = _state().load()
    names = _projects(cfg, project)

    async def retry(store: Database) -> dict[str, int]:
        return {name: await admin.retry_gave_up(store, name) for name in names}

    counts: dict[str, int] = run_async(admin.with_store(cfg, retry, readonly=False))
    each = (" (" + ", ".join(f"{name}: {n}" for name, n in counts.items()) + ")"
            if len(counts) > 1 else "")
    out.print(escape(f"{sum(counts.values())} recordings re-queued{each}"))
