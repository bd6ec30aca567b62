"""`botasync transcripts ...`: the transcriptions and summaries mirrored. Parses, calls, renders.

Added to `main` by `botasync/cli/main.py`; `export.py` adds its subcommand to the group.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from botasync.cli.common import (
    _config_option,
    _print_json,
    _state,
    err,
    handle_errors,
    out,
    run_async,
)
from botasync.transcripts import admin


@click.group("transcripts")
def transcripts() -> None:
    """Transcriptions and summaries mirrored ([transcripts] download = true)."""


@transcripts.command("status")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def transcripts_status(as_json: bool) -> None:
    """Done, queued and failed transcripts, and how long the queue takes at the budget."""
    cfg = _state().load()
    data = run_async(admin.with_store(
        cfg, lambda s: admin.transcripts_status(s, cfg.transcripts)))
    if as_json:
        _print_json(data)
        return
    _render_status(data)


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
@click.option("--limit", type=click.IntRange(1, None), metavar="N",
              help="Fetch at most this many recordings' transcripts, then exit.")
@click.option("--timeout", type=click.FloatRange(0, None), default=86400.0, show_default=True,
              help="Seconds to spend before exiting; what is left stays queued.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@handle_errors
def transcripts_download(limit: int | None, timeout: float, as_json: bool) -> None:
    """Fetch the queued transcripts now (a progress bar on a terminal), then exit."""
    from botasync.transcripts.progress import fetch_progress

    cfg = _state().load()
    tcfg = cfg.transcripts
    with fetch_progress(err, tcfg.requests_per_minute, tcfg.summaries,
                        enabled=not as_json) as bar:
        report = run_async(admin.download_now(
            cfg, within_s=timeout, limit=limit, on_progress=bar,
            on_start=(lambda status: bar.begin(status, limit)) if bar else None))
    if as_json:
        _print_json(dataclasses.asdict(report))
        return
    left = "" if report.drained else "; the rest stays queued (see `botasync transcripts status`)"
    out.print(f"{report.recordings:,} recordings fetched ({report.transcriptions:,} "
              f"transcriptions, {report.segments:,} segments, {report.summaries:,} summaries, "
              f"{report.events:,} events) in {report.requests:,} requests, "
              f"{report.failures} failed{left}")


@transcripts.command("retry")
@_config_option
@handle_errors
def transcripts_retry() -> None:
    """Put the recordings whose transcript fetch gave up back in the queue."""
    cfg = _state().load()
    n = run_async(admin.with_store(cfg, admin.retry_gave_up, readonly=False))
    out.print(f"{n} recordings re-queued")
