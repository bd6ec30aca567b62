"""`botasync files ...`: the media files mirrored to disk. Parses, calls one function, renders.

Added to `main` by `botasync/cli/main.py`; the shared helpers are in `common.py`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from botasync import config
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
from botasync.humanize import human_bytes, human_seconds
from botasync.media import admin as media_admin


def _project_option(every: str) -> Callable[[Any], Any]:
    """`--project NAME`: one configured project; without it, `every` says what is done."""
    return project_option(f"One project, by its [[projects]] name (default: {every}).")


def _load(project: str | None) -> config.Config:
    """The configuration, with the project (when one is named) checked against it: an
    unknown name is a usage error listing the configured ones."""
    cfg = _state().load()
    _known_project(cfg, project)
    return cfg


@click.group("files")
def files() -> None:
    """The media files mirrored to disk ([media] download = true)."""


@files.command("status")
@_config_option
@_project_option("every project, and each one's counts")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def files_status(project: str | None, as_json: bool) -> None:
    """Downloaded, queued and failed files (counts and bytes), and free disk space."""
    cfg = _load(project)
    data = run_async(media_admin.with_store(
        cfg, lambda s: media_admin.files_status(s, cfg.media, project)))
    if as_json:
        _print_json(data)
        return
    _render_status(data)


def _render_status(data: dict[str, Any]) -> None:
    state = "on" if data["download"] else "off ([media] download = false)"
    out.print(escape(f"downloads {state}; types {', '.join(data['types']) or 'none'}; "
                     f"files in {data['files_dir']}"))
    table = Table("", "files", "bytes", "", box=None)
    q, f = data["queued"], data["failed"]
    note = f"{q['retrying']} retrying, " if q["retrying"] else ""
    table.add_row("downloaded", str(data["downloaded"]["files"]),
                  human_bytes(data["downloaded"]["bytes"]), "")
    eta = f"{note}~{human_seconds(q['eta_s'])} at the download budget" if q["files"] else ""
    table.add_row("queued", str(q["files"]), human_bytes(q["bytes"]), eta)
    table.add_row("failed", str(f["files"]), human_bytes(f["bytes"]),
                  "gave up; `botasync files retry` re-queues them" if f["files"] else "")
    table.add_row("kept (deleted recordings)", str(data["deleted_kept"]["files"]),
                  human_bytes(data["deleted_kept"]["bytes"]),
                  "`botasync files prune --deleted` removes them"
                  if data["deleted_kept"]["files"] else "")
    out.print(table)
    disk = data["disk"]
    if disk["message"]:
        out.print(f"[yellow]{escape(disk['message'])}[/yellow]")
    else:
        out.print(f"[dim]{human_bytes(disk['free_bytes'])} free "
                  f"(min_free_bytes {human_bytes(disk['min_free_bytes'])})[/dim]")
    many = len(data["projects"]) > 1
    if many:
        _render_projects(data["projects"])
    for item in f["items"]:
        whose = f"{item['project']}: " if many else ""
        out.print(f"[red]failed[/red] {escape(whose)}{item['media_id']} ({item['recording_id']}), "
                  f"{item['attempts']} attempts: {escape(item['error'] or '')}")


def _render_projects(projects: dict[str, dict[str, Any]]) -> None:
    """One row per project: its files downloaded, queued, failed and kept."""
    table = Table("project", "downloaded", "queued", "failed", "kept (deleted)", box=None)

    def cell(c: dict[str, Any]) -> str:
        return f"{c['files']} ({human_bytes(c['bytes'])})" if c["files"] else "0"

    for name, c in projects.items():
        table.add_row(escape(name), cell(c["downloaded"]), cell(c["queued"]), cell(c["failed"]),
                      cell(c["deleted_kept"]))
    out.print(table)


@files.command("verify")
@_config_option
@_project_option("every project")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def files_verify(project: str | None, as_json: bool) -> None:
    """Re-hash every downloaded file; re-queue the missing or altered ones."""
    cfg = _load(project)
    report = run_async(media_admin.with_store(
        cfg, lambda s: media_admin.verify(s, project=project)))
    if as_json:
        _print_json(report.as_dict())
    else:
        for p in report.problems:
            out.print(f"[red]{escape(p.reason)}[/red] {escape(p.path)} ({p.media_id}): re-queued")
        out.print(f"{report.checked} files checked, {report.ok} good "
                  f"({human_bytes(report.bytes)}), {len(report.problems)} re-queued")
    if report.problems:
        sys.exit(1)


@files.command("prune")
@_config_option
@click.option("--deleted", is_flag=True, required=True,
              help="Remove the files of recordings deleted remotely (kept until now).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@_project_option("every project")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def files_prune(deleted: bool, dry_run: bool, project: str | None, as_json: bool) -> None:
    """Remove files the mirror keeps only for deleted recordings."""
    if not deleted:
        raise click.UsageError("say what to prune: --deleted")
    cfg = _load(project)
    report = run_async(media_admin.with_store(
        cfg, lambda s: media_admin.prune_deleted(s, cfg.media, project=project,
                                                 dry_run=dry_run)))
    if as_json:
        _print_json(report.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {report.files} files ({human_bytes(report.bytes)}) "
              f"of {report.recordings} deleted recordings")


@files.command("retry")
@_config_option
@_project_option("every project")
@handle_errors
def files_retry(project: str | None) -> None:
    """Put the downloads that gave up back in the queue."""
    cfg = _load(project)
    n = run_async(media_admin.with_store(
        cfg, lambda s: media_admin.retry_failed(s, cfg.media, project=project)))
    out.print(f"{n} downloads re-queued")


@files.command("download")
@_config_option
@click.option("--timeout", type=click.FloatRange(0, None), default=3600.0, show_default=True,
              help="Seconds to spend before exiting; what is left stays queued.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@_project_option("every configured project, side by side")
@handle_errors
def files_download(timeout: float, as_json: bool, project: str | None) -> None:
    """Download the queued files now (with a progress bar on a terminal), then exit."""
    from botasync.media.progress import download_progress

    cfg = _load(project)
    with download_progress(err, cfg.media.requests_per_minute, enabled=not as_json) as bar:
        report = run_async(media_admin.download_now(
            cfg, within_s=timeout, on_progress=bar, on_start=bar.begin if bar else None,
            project=project))
    if as_json:
        _print_json(dataclasses.asdict(report))
        return
    if len(report.projects) > 1:
        for name, p in report.projects.items():
            out.print(escape(f"{name}: {p['files']} files ({human_bytes(p['bytes'])}), "
                             f"{p['failures']} failed attempts"))
    left = "" if report.drained else "; the rest stays queued (see `botasync files status`)"
    out.print(f"{report.files} files downloaded ({human_bytes(report.bytes)}), "
              f"{report.failures} failed attempts{left}")
