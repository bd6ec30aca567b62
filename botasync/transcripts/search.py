"""Full-text search over the mirrored transcripts: the FTS5 query and the SQL. Pure.

What a person types becomes an FTS5 expression that FTS5 always accepts, or a
`QuerySyntaxError` saying what is wrong (exit 2), never an SQLite error:

- every word is quoted, so `don't`, `C++`, `e-mail` or `NEAR` are searched as the words
  the tokenizer makes of them (`don t`, `c`, `e mail`), never read as syntax;
- `"a phrase"` in double quotes is searched as a phrase; `word*` (or `"a phr"*`) as a
  prefix;
- `AND`, `OR` and `NOT` (upper case only, as in FTS5) and parentheses combine them
  (`a AND NOT b` reads as FTS5's `a NOT b`); lower-case `and`, `or` and `not` are words;
- a word with no letter or digit (`+++`, `--`) holds nothing the tokenizer keeps: it is
  dropped, as the tokenizer would drop it from the text.

The match is on the segment's text only (`text : (...)`): `--speaker` filters by
speaker. Hits are ranked by bm25, best first, among the newest `RANK_CAP` matches (see
`search_sql`).

One index holds every project's segments: a search reads them all, or one project's
(`project`), and each hit names its project (the segment's, joined to its transcription
and recording on both columns).
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol

from rich.text import Text

from botasync.errors import BotasyncError

OPERATORS = frozenset({"AND", "OR", "NOT"})
# snippet() markers: control characters no transcript holds, rendered later as `[...]`
# (plain) or rich markup, so a `[` in the text can never pass for a marker
MARK_OPEN, MARK_CLOSE = "\x02", "\x03"
ELLIPSIS = "..."
SNIPPET_TOKENS = 24  # at most 64 (FTS5); most segments fit whole
MAX_LIMIT = 10_000
RANK_CAP = 2_000  # a query ranks at most the newest this many matches (see `search_sql`)


class QuerySyntaxError(BotasyncError):
    """The search query cannot be read (unbalanced quotes or parentheses, a bare operator)."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """What to search for, and the filters."""

    query: str
    speaker: str | None = None
    since: str | None = None  # compared with recordings.created_at, as stored (ISO text)
    limit: int = 20
    project: str | None = None  # one project's segments; None: every project's


@dataclass(frozen=True, slots=True)
class Hit:
    """One matching segment, with its recording. `snippet` carries MARK_OPEN/MARK_CLOSE."""

    project: str
    recording_id: str
    recording_name: str | None
    recording_created_at: str | None
    recording_deleted: bool
    transcription_id: str
    segment_id: int
    position: int
    speaker: str | None
    start_s: float | None
    end_s: float | None
    text: str
    snippet: str
    bm25: float

    @property
    def time(self) -> str:
        return time_label(self.start_s)

    def as_dict(self) -> dict[str, Any]:
        """The hit for `--json`: plain `[...]` markers, keys in a fixed order."""
        return {
            "project": self.project, "recording_id": self.recording_id,
            "recording_name": self.recording_name,
            "recording_created_at": self.recording_created_at,
            "recording_deleted": self.recording_deleted,
            "transcription_id": self.transcription_id, "segment_id": self.segment_id,
            "position": self.position, "speaker": self.speaker, "start_s": self.start_s,
            "end_s": self.end_s, "time": self.time, "snippet": plain_snippet(self.snippet),
            "text": self.text, "bm25": self.bm25,
        }


# --- the query language ------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")
_PIECE = re.compile(r'"([^"]*)"(\*?)|([()])|([^\s"()]+)')


def _has_token(text: str) -> bool:
    """Whether the unicode61 tokenizer keeps anything of `text` (letters, digits, private use)."""
    return any(unicodedata.category(c)[0] in "LN" or unicodedata.category(c) == "Co"
               for c in text)


def _clean(text: str) -> str:
    """Control characters (NUL ends an FTS5 string early) and lone surrogates (no UTF-8
    holds them: an undecodable byte in argv) read as spaces."""
    return "".join(" " if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)


def _utf8(text: str) -> str:
    """`text` with lone surrogates as U+FFFD, so SQLite can take it as a parameter."""
    return _SURROGATE.sub("\ufffd", text)


def _lex(text: str) -> list[str]:
    """The query as FTS5 pieces: quoted phrases (maybe `*`), operators, parentheses."""
    text = _clean(text)
    if text.count('"') % 2:
        raise QuerySyntaxError(
            'unbalanced quotes in the search query: a " opens a phrase that never closes '
            '(quote a phrase as "like this")')
    pieces: list[str] = []
    for m in _PIECE.finditer(text):
        phrase, star, paren, word = m.groups()
        if paren:
            pieces.append(paren)
        elif word == "NOT" and pieces[-1:] == ["AND"]:
            pieces[-1] = "NOT"  # `a AND NOT b` is what FTS5 writes `a NOT b`
        elif word in OPERATORS:
            pieces.append(word)
        else:
            if word is not None:
                stem = word.rstrip("*")
                phrase, star = (stem, "*") if stem and stem != word else (word, "")
            if _has_token(phrase):
                pieces.append(f'"{phrase}"{star}')
    return pieces


def _checked(pieces: list[str]) -> list[str]:
    """The pieces, each operator between two terms, each parenthesis matched and holding a
    term; an `AND` written out next to a parenthesis (FTS5 implies one between phrases only).
    """
    out: list[str] = []
    depth = 0
    wants_term = True  # at the start, after `(` and after an operator
    for piece in pieces:
        previous = out[-1] if out else ""
        if piece in OPERATORS:
            if wants_term:
                raise QuerySyntaxError(_needs(piece, previous))
            wants_term = True
        elif piece == ")":
            depth -= 1
            if depth < 0:
                raise QuerySyntaxError("unbalanced parentheses in the search query: "
                                       "a ) closes nothing")
            if wants_term:
                raise QuerySyntaxError(f"{previous} needs a word after it" if previous in
                                       OPERATORS else "empty parentheses in the search query: "
                                       "() holds no word")
        else:  # a term, or `(` opening one
            if not wants_term and (piece == "(" or previous == ")"):
                out.append("AND")
            depth += piece == "("
            wants_term = piece == "("
        out.append(piece)
    if depth:
        raise QuerySyntaxError("unbalanced parentheses in the search query: a ( is never closed")
    if out and out[-1] in OPERATORS:
        raise QuerySyntaxError(f"{out[-1]} needs a word after it")
    return out


def _needs(op: str, previous: str) -> str:
    """Why operator `op` cannot follow `previous`: nothing after that one, or nothing before."""
    if previous in OPERATORS:
        return f"{previous} needs a word after it"
    return (f"{op} needs a word before it (search for the word itself in lower case, "
            f'or quoted: "{op}")')


def fts_query(text: str) -> str:
    """The FTS5 MATCH expression for what a person typed, on the text column only.

    Raises `QuerySyntaxError` when it cannot be read or holds no word to search for.
    """
    pieces = _checked(_lex(text))
    if not any(p.startswith('"') for p in pieces):
        raise QuerySyntaxError("nothing to search for: the query holds no word")
    return f"text : ({' '.join(pieces)})"


# --- the SQL ---------------------------------------------------------------------------------

_JOINS = """JOIN transcript_segments {s} ON {s}.id = {fts}.rowid
JOIN transcriptions {t} ON {t}.project = {s}.project AND {t}.id = {s}.transcription_id
JOIN recordings {r} ON {r}.project = {t}.project AND {r}.id = {t}.recording_id"""

# The best `limit` matches by bm25 (`rank`: FTS5 sorts them itself, so only the hits
# returned are joined and snippeted) among the newest `cap` matches that pass the
# filters (the subquery finds the oldest of those; NULL, so all of them, when fewer).
_SELECT = """SELECT r.id AS recording_id, r.name AS recording_name,
       r.created_at AS recording_created_at, r.deleted_at AS recording_deleted_at,
       s.transcription_id, s.id AS segment_id, s.position, s.speaker, s.start_s, s.end_s,
       s.text, snippet(transcript_fts, 0, :mark_open, :mark_close, :ellipsis, :tokens)
       AS snippet, transcript_fts.rank AS bm25, s.project
FROM transcript_fts
{joins}
WHERE transcript_fts MATCH :query{filters}
  AND transcript_fts.rowid >= coalesce((
    SELECT f.rowid FROM transcript_fts f{inner_joins}
    WHERE f.transcript_fts MATCH :query{inner_filters}
    ORDER BY f.rowid DESC LIMIT 1 OFFSET :cap - 1), 0)
ORDER BY transcript_fts.rank
LIMIT :limit"""


def _filters(request: SearchRequest, s: str, r: str) -> str:
    where = ""
    if request.project is not None:
        where += f"\n  AND {s}.project = :project"
    if request.speaker is not None:
        where += f"\n  AND {s}.speaker = :speaker COLLATE NOCASE"
    if request.since is not None:
        where += f"\n  AND {r}.created_at >= :since"
    return where


def match_expression(request: SearchRequest) -> str:
    """The MATCH expression: the query on the text column, and with `--speaker` the
    speaker's words on the speaker column, so FTS5 itself skips the other speakers
    (the exact, case-blind comparison follows in SQL)."""
    expression = fts_query(request.query)
    speaker = _clean(request.speaker or "")
    if _has_token(speaker):
        expression += f' AND speaker : ("{speaker.replace(chr(34), chr(34) * 2)}")'
    return expression


def search_sql(request: SearchRequest) -> tuple[str, dict[str, Any]]:
    """The one SELECT a search runs, and its named parameters (raises `QuerySyntaxError`).

    Hits are the best by bm25 among the newest `RANK_CAP` (or `limit`, if more) matching
    segments that pass the filters (all of them when fewer match), so a query for the
    commonest words costs a bounded time. Tombstoned recordings are searched too: they
    keep their transcripts.
    """
    # the subquery joins only what its filters read: without filters it reads the index alone
    inner = _JOINS.format(s="s2", t="t2", r="r2", fts="f").splitlines()
    segment_filter = request.speaker is not None or request.project is not None
    inner = inner[:3 if request.since is not None else 1 if segment_filter else 0]
    sql = _SELECT.format(
        joins=_JOINS.format(s="s", t="t", r="r", fts="transcript_fts"),
        filters=_filters(request, "s", "r"),
        inner_joins="".join(f"\n    {join}" for join in inner),
        inner_filters=_filters(request, "s2", "r2").replace("\n", "\n    "))
    limit = max(1, min(request.limit, MAX_LIMIT))
    params = {"mark_open": MARK_OPEN, "mark_close": MARK_CLOSE, "ellipsis": ELLIPSIS,
              "tokens": SNIPPET_TOKENS, "query": match_expression(request),
              "cap": max(RANK_CAP, limit), "limit": limit}
    if request.speaker is not None:
        params["speaker"] = _utf8(request.speaker)
    if request.since is not None:
        params["since"] = _utf8(request.since)
    if request.project is not None:
        params["project"] = _utf8(request.project)
    return sql, params


# --- the SQL on PostgreSQL ---------------------------------------------------------------------
# The same query language, run against `transcript_fts`, PostgreSQL's GIN index of
# `to_tsvector('simple', text)`: each quoted piece becomes `phraseto_tsquery` (a prefix,
# `to_tsquery` with `:*` on its last word), combined with the tsquery operators as FTS5
# combines them (NOT binds tightest, then AND, written or implied, then OR). Ranking is
# `ts_rank`, not bm25 (returned negated as `bm25`, so lower is better on both backends);
# the snippet is `ts_headline`. Case folds; accents do not (no `unaccent` here).

_PG_CONFIG = "'simple'::regconfig"
_PG_VECTOR = f"to_tsvector({_PG_CONFIG}, {{s}}.text)"
_PG_HEADLINE = (f"StartSel={MARK_OPEN}, StopSel={MARK_CLOSE}, MaxWords={SNIPPET_TOKENS}, "
                "MinWords=12, ShortWord=0")

_PG_SELECT = """WITH q AS (SELECT {query} AS query),
matched AS (
    SELECT s2.id FROM transcript_segments s2{inner_joins}, q
    WHERE {inner_vector} @@ q.query{inner_filters}
    ORDER BY s2.id DESC LIMIT :cap)
SELECT r.id AS recording_id, r.name AS recording_name,
       r.created_at AS recording_created_at, r.deleted_at AS recording_deleted_at,
       s.transcription_id, s.id AS segment_id, s.position, s.speaker, s.start_s, s.end_s,
       s.text, ts_headline({config}, s.text, q.query, :headline) AS snippet,
       -ts_rank({vector}, q.query) AS bm25, s.project
FROM matched
JOIN transcript_segments s ON s.id = matched.id
JOIN transcriptions t ON t.project = s.project AND t.id = s.transcription_id
JOIN recordings r ON r.project = t.project AND r.id = t.recording_id
CROSS JOIN q
ORDER BY bm25, s.id DESC
LIMIT :limit"""


def _pg_text(text: str) -> str:
    """A parameter PostgreSQL can take: no lone surrogate, no NUL (no text it stores holds
    one, so the filter still matches nothing)."""
    return _utf8(text).replace("\x00", "\ufffd")


def _pg_term(piece: str, params: dict[str, Any]) -> str:
    """One quoted piece (`"words"` or `"words"*`) as a tsquery expression."""
    phrase, star = piece[1:].rsplit('"', 1)
    name = f"t{len(params)}"
    if star:
        words = re.findall(r"\w+", phrase.lower())
        params[name] = " <-> ".join(f"'{w}'" for w in words) + ":*"
        return f"to_tsquery({_PG_CONFIG}, :{name})"
    params[name] = _utf8(phrase)
    return f"phraseto_tsquery({_PG_CONFIG}, :{name})"


def _pg_tsquery(pieces: list[str], params: dict[str, Any]) -> str:
    """The checked pieces as one tsquery expression in SQL (the terms as parameters)."""
    pos = 0

    def take() -> str:
        nonlocal pos
        pos += 1
        return pieces[pos - 1]

    def peek() -> str | None:
        return pieces[pos] if pos < len(pieces) else None

    def either() -> str:
        left = both()
        while peek() == "OR":
            take()
            left = f"({left} || {both()})"
        return left

    def both() -> str:
        left = unless()
        while peek() not in (None, "OR", ")"):
            if peek() == "AND":
                take()
            left = f"({left} && {unless()})"
        return left

    def unless() -> str:
        left = primary()
        while peek() == "NOT":
            take()
            left = f"({left} && !!{primary()})"
        return left

    def primary() -> str:
        piece = take()
        if piece == "(":
            inner = either()
            take()  # the `)`: `_checked` matched it
            return inner
        return _pg_term(piece, params)

    return either()


def _pg_filters(request: SearchRequest, s: str, r: str) -> str:
    where = ""
    if request.project is not None:
        where += f"\n  AND {s}.project = :project"
    if request.speaker is not None:
        where += f"\n  AND lower({s}.speaker) = lower(:speaker)"
    if request.since is not None:
        where += f"\n  AND {r}.created_at >= :since"
    return where


def search_sql_pg(request: SearchRequest) -> tuple[str, dict[str, Any]]:
    """`search_sql` for PostgreSQL: the same hits' columns, ranked by `ts_rank` among the
    newest `RANK_CAP` (or `limit`) matches that pass the filters."""
    pieces = _checked(_lex(request.query))
    if not any(p.startswith('"') for p in pieces):
        raise QuerySyntaxError("nothing to search for: the query holds no word")
    params: dict[str, Any] = {}
    query = _pg_tsquery(pieces, params)
    inner = ("\n    JOIN transcriptions t2 ON t2.project = s2.project "
             "AND t2.id = s2.transcription_id"
             "\n    JOIN recordings r2 ON r2.project = t2.project AND r2.id = t2.recording_id"
             if request.since is not None else "")
    sql = _PG_SELECT.format(
        query=query, inner_joins=inner, inner_vector=_PG_VECTOR.format(s="s2"),
        inner_filters=_pg_filters(request, "s2", "r2").replace("\n", "\n    "),
        config=_PG_CONFIG, vector=_PG_VECTOR.format(s="s"))
    limit = max(1, min(request.limit, MAX_LIMIT))
    params.update({"headline": _PG_HEADLINE, "cap": max(RANK_CAP, limit), "limit": limit})
    if request.speaker is not None:
        params["speaker"] = _pg_text(request.speaker)
    if request.since is not None:
        params["since"] = _pg_text(request.since)
    if request.project is not None:
        params["project"] = _pg_text(request.project)
    return sql, params


class Row(Protocol):
    """A result row readable by column name (`sqlite3.Row`, a dict)."""

    def __getitem__(self, key: str, /) -> Any: ...


def hit_from_row(row: Row) -> Hit:
    """A result row of `search_sql` as a `Hit`."""
    return Hit(
        project=row["project"], recording_id=row["recording_id"],
        recording_name=row["recording_name"],
        recording_created_at=row["recording_created_at"],
        recording_deleted=row["recording_deleted_at"] is not None,
        transcription_id=row["transcription_id"], segment_id=int(row["segment_id"]),
        position=int(row["position"]), speaker=row["speaker"], start_s=row["start_s"],
        end_s=row["end_s"], text=row["text"], snippet=row["snippet"] or "",
        bm25=float(row["bm25"]),
    )


# --- rendering helpers ---------------------------------------------------------------------


def time_label(seconds: float | None) -> str:
    """`mm:ss` into the recording, `h:mm:ss` from the first hour on; "" when unknown."""
    if seconds is None or isinstance(seconds, bool) or not math.isfinite(seconds) or seconds < 0:
        return ""
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def plain_snippet(snippet: str) -> str:
    """The snippet with each match as `[match]`."""
    return snippet.replace(MARK_OPEN, "[").replace(MARK_CLOSE, "]")


def rich_snippet(snippet: str, style: str = "bold yellow") -> Text:
    """The snippet as rich `Text`, each match in `style` (no markup: the text prints as is)."""
    text = Text()
    inside = False
    for part in re.split(f"([{MARK_OPEN}{MARK_CLOSE}])", snippet):
        if part in (MARK_OPEN, MARK_CLOSE):
            inside = part == MARK_OPEN
        elif part:
            text.append(part, style=style if inside else None)
    return text
