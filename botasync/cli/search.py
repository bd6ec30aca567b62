"""`botasync search`: full-text search over the mirrored transcripts. Parses, runs one
query, renders.

Added to `main` by `botasync/cli/main.py`. The query and its SQL are built in
`botasync/transcripts/search.py`; `search` below is the whole code path the command
and the bench run.

Every project's transcripts are searched unless `--project` names one; each hit names
its project (`--json`; a `project` column when the configuration or the hits hold more
than one).
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from botasync.cli.common import (
    _config_option,
    _known_project,
    _print_json,
    _since,
    _state,
    _with_store,
    handle_errors,
    out,
    project_option,
    run_async,
)
from botasync.store.base import Database
from botasync.store.dialect import POSTGRES
from botasync.transcripts.search import (
    MAX_LIMIT,
    Hit,
    SearchRequest,
    hit_from_row,
    plain_snippet,
    rich_snippet,
    search_sql,
    search_sql_pg,
)


async def search(store: Database, request: SearchRequest) -> list[Hit]:
    """The best `request.limit` segments for the query, best first (bm25; on PostgreSQL
    ts_rank)."""
    build = search_sql_pg if store.dialect == POSTGRES else search_sql
    sql, params = build(request)
    return [hit_from_row(row) for row in await store.fetchall(sql, params)]


SEARCH_HELP = """Search the mirrored transcripts, best matches first (bm25).

Words are searched as words (don't, C++ and e-mail work as typed); "a phrase" in double
quotes as a phrase; word* as a prefix; AND, OR, NOT (upper case) and parentheses combine
them. Each hit shows the recording, the speaker, the time into the recording and the
matching words. Transcripts of recordings deleted remotely are searched too (they are
kept, and marked "deleted"). Every project's transcripts are searched, unless --project
names one.
"""


@click.command("search", help=SEARCH_HELP)
@_config_option
@click.argument("query")
@click.option("--speaker", metavar="NAME", help="Only segments of this speaker (any case).")
@click.option("--since", metavar="ISO", callback=_since,
              help="Only recordings created at or after this date or time (ISO 8601, UTC "
                   "unless it says).")
@project_option("Only this project's transcripts, by its [[projects]] name (default: every "
                "project's).")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output (matches marked [like this]).")
@handle_errors
def search_command(query: str, speaker: str | None, since: str | None, project: str | None,
                   limit: int, as_json: bool) -> None:
    request = SearchRequest(query=query, speaker=speaker, since=since, limit=limit,
                            project=project)
    search_sql(request)  # a query that cannot be read says so before the database is opened
    cfg = _state().load()
    _known_project(cfg, project)
    hits: list[Hit] = run_async(_with_store(cfg, lambda s: search(s, request)))
    if as_json:
        _print_json([h.as_dict() for h in hits])
        return
    if not hits and not run_async(_with_store(cfg, any_transcript)):
        out.print("no matches: no transcript is mirrored yet ([transcripts] download = true "
                  "fetches them; see `botasync transcripts status`)", soft_wrap=True)
        return
    projects = len(cfg.project_names()) > 1 or len({h.project for h in hits}) > 1
    _render(hits, limit, rich=out.is_terminal, projects=projects)


async def any_transcript(store: Database) -> bool:
    """Whether the mirror holds any transcript segment at all."""
    return await store.fetchone("SELECT 1 FROM transcript_segments LIMIT 1") is not None


def _render(hits: list[Hit], limit: int, *, rich: bool, projects: bool = False) -> None:
    """A table of hits; off a terminal the matches are marked `[like this]`, no markup.
    `projects`: a column names each hit's project."""
    if not hits:
        out.print("no matches")
        return
    table = Table(box=None, pad_edge=False)
    if projects:
        table.add_column("project", no_wrap=True)
    table.add_column("recording", no_wrap=True)
    table.add_column("name", overflow="ellipsis", no_wrap=True, max_width=30)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("time", no_wrap=True, justify="right")
    table.add_column("speaker", overflow="ellipsis", no_wrap=True, max_width=20)
    table.add_column("matched")
    for h in hits:
        title = Text(h.recording_name or "")
        if h.recording_deleted:
            title.append(" (deleted)" if h.recording_name else "(deleted)", style="dim")
        snippet = rich_snippet(h.snippet) if rich else Text(plain_snippet(h.snippet))
        table.add_row(*([h.project] if projects else []), h.recording_id, title,
                      _day(h.recording_created_at), h.time, Text(h.speaker or ""), snippet)
    out.print(table)
    more = ", the best; --limit for more" if len(hits) == limit else ""
    out.print(f"[dim]{len(hits):,} {'match' if len(hits) == 1 else 'matches'}{more}[/dim]")


def _day(created_at: Any) -> str:
    return str(created_at or "")[:16].replace("T", " ")
