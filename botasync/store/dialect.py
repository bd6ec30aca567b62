"""The two SQL dialects of the store, and the small translation from one to the other.

The SQL botasync runs is written once, in the subset SQLite and PostgreSQL share, with
`?` (or `:name`) placeholders. `translate` turns such a statement into what psycopg sends
to PostgreSQL; it is pure and small on purpose, and refuses what it does not know rather
than guess:

- `?` -> `%s`, `:name` -> `%(name)s`, every literal `%` -> `%%` (psycopg reads `%` in
  the whole text, string literals included); numbered `?1` is refused;
- `INSERT OR IGNORE INTO ...` -> `INSERT INTO ... ON CONFLICT DO NOTHING`;
  `INSERT OR REPLACE` and `REPLACE INTO` are refused (they need a conflict target);
- SQLite's scalar `max(a, b, ...)` / `min(a, b, ...)` -> `GREATEST` / `LEAST` (the
  one-argument aggregates stay);
- SQLite's null-safe `a IS b` / `a IS NOT b` (b not NULL, TRUE or FALSE) -> `a IS NOT
  DISTINCT FROM b` / `a IS DISTINCT FROM b`;
- `json_extract(x, '$.k')` -> `(x ->> 'k')`, `json_type(x, '$.k')` -> `(x -> 'k')` (NULL
  alike when the key is missing; `json_type` then says 'null' for a JSON null, `->` a jsonb
  `null`: both not NULL); a nested `'$.a.b'` -> `(x #>> '{a,b}')`, `(x #> '{a,b}')`;
- `PRAGMA`, `GLOB` and `COLLATE NOCASE` are refused: where a statement truly differs
  (the full-text search, a snapshot, integrity checks) its caller picks one per dialect
  (`Database.dialect`), and a glob goes through `glob_condition`.

Anything else passes through as written, so a statement outside the shared subset fails in
PostgreSQL with PostgreSQL's own message.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from botasync.errors import StoreError

Dialect = Literal["sqlite", "postgres"]
SQLITE: Final = "sqlite"
POSTGRES: Final = "postgres"


class TranslationError(StoreError):
    """A statement the translation refuses: it has no PostgreSQL form here."""


def dialect_of(conn: Any) -> str:
    """The dialect of a connection a store yielded (`sqlite` unless it says otherwise)."""
    return str(getattr(conn, "dialect", SQLITE))


_TOKEN = re.compile(r"""
    (?P<str>'(?:[^']|'')*')
  | (?P<qid>"(?:[^"]|"")*")
  | (?P<open>['"])
  | (?P<comment>--[^\n]*|/\*.*?\*/)
  | (?P<cast>::)
  | (?P<param>\?\d*|:[A-Za-z_]\w*)
  | (?P<word>[A-Za-z_][\w$]*)
  | (?P<space>\s+)
  | (?P<op>.)
""", re.S | re.X)

Token = tuple[str, str]  # (kind, text)


def _tokens(sql: str) -> list[Token]:
    out: list[Token] = []
    for m in _TOKEN.finditer(sql):
        kind = m.lastgroup or "op"
        text = m.group()
        if kind == "open":  # a quote that never closes
            raise TranslationError(f"unterminated string literal in: {sql.strip()[:80]}")
        out.append((kind, text))
    return out


def _words(tokens: Sequence[Token]) -> list[tuple[int, str]]:
    """(index, upper-cased word) of each word token."""
    return [(i, t.upper()) for i, (k, t) in enumerate(tokens) if k == "word"]


def _matching(tokens: Sequence[Token], open_at: int) -> int:
    """The index of the `)` closing the `(` at `open_at`."""
    depth = 0
    for i in range(open_at, len(tokens)):
        kind, text = tokens[i]
        if kind == "op" and text == "(":
            depth += 1
        elif kind == "op" and text == ")":
            depth -= 1
            if depth == 0:
                return i
    raise TranslationError("unbalanced parentheses")


def _split_args(tokens: Sequence[Token]) -> list[list[Token]]:
    """A call's argument tokens split at its top-level commas."""
    args: list[list[Token]] = [[]]
    depth = 0
    for tok in tokens:
        kind, text = tok
        if kind == "op" and text == "(":
            depth += 1
        elif kind == "op" and text == ")":
            depth -= 1
        elif kind == "op" and text == "," and depth == 0:
            args.append([])
            continue
        args[-1].append(tok)
    return args


def _json_path(path: str, func: str) -> list[str]:
    """`'$.key'` -> `['key']`, `'$.a.b'` -> `['a', 'b']`; any other path is refused."""
    m = re.fullmatch(r"'\$((?:\.[A-Za-z_]\w*)+)'", path.strip())
    if m is None:
        raise TranslationError(f"{func}: only a '$.key' or '$.a.b' path translates, "
                               f"not {path.strip()}")
    return m.group(1)[1:].split(".")


def _json_get(value: str, path: str, func: str, *, text: bool) -> str:
    keys = _json_path(path, func)
    if len(keys) == 1:
        return f"({value} {'->>' if text else '->'} '{keys[0]}')"
    return f"({value} {'#>>' if text else '#>'} '{{{','.join(keys)}}}')"


def _greatest(name: str) -> Callable[[list[str]], str | None]:
    def build(args: list[str]) -> str | None:
        return f"{name}({', '.join(args)})" if len(args) >= 2 else None  # 1: the aggregate
    return build


def _json_extract(args: list[str]) -> str:
    if len(args) != 2:
        raise TranslationError("json_extract: exactly (value, '$.key') translates")
    return _json_get(args[0], args[1], "json_extract", text=True)


def _json_type(args: list[str]) -> str:
    if len(args) != 2:
        raise TranslationError("json_type: exactly (value, '$.key') translates")
    return _json_get(args[0], args[1], "json_type", text=False)


_FUNCTIONS: dict[str, Callable[[list[str]], str | None]] = {
    "MAX": _greatest("GREATEST"), "MIN": _greatest("LEAST"),
    "JSON_EXTRACT": _json_extract, "JSON_TYPE": _json_type,
}


def _render(tokens: Sequence[Token]) -> str:
    """The tokens as text, with the function calls of `_FUNCTIONS` rewritten."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        build = _FUNCTIONS.get(text.upper()) if kind == "word" else None
        if build is not None:
            j = i + 1
            while j < len(tokens) and tokens[j][0] == "space":
                j += 1
            if j < len(tokens) and tokens[j] == ("op", "("):
                close = _matching(tokens, j)
                args = [_render(a).strip() for a in _split_args(tokens[j + 1:close])]
                replaced = build(args)
                if replaced is not None:
                    out.append(replaced)
                    i = close + 1
                    continue
        out.append(text)
        i += 1
    return "".join(out)


_IS_KEEPS = frozenset({"NULL", "TRUE", "FALSE", "UNKNOWN", "DISTINCT", "NOT"})


def _next(tokens: Sequence[Token], i: int) -> int:
    """The index of the first token after `i` that is not white space (len: none)."""
    i += 1
    while i < len(tokens) and tokens[i][0] in ("space", "comment"):
        i += 1
    return i


def _null_safe(tokens: list[Token]) -> list[Token]:
    """SQLite's `a IS b` / `a IS NOT b` between two values (not NULL, TRUE, FALSE) is
    PostgreSQL's `IS NOT DISTINCT FROM` / `IS DISTINCT FROM`."""
    out = list(tokens)
    for i, (kind, text) in enumerate(tokens):
        if kind != "word" or text.upper() != "IS":
            continue
        j = _next(tokens, i)
        word = tokens[j][1].upper() if j < len(tokens) and tokens[j][0] == "word" else ""
        if word == "NOT":
            k = _next(tokens, j)
            after = tokens[k][1].upper() if k < len(tokens) and tokens[k][0] == "word" else ""
            if after not in _IS_KEEPS:
                out[j] = ("word", "DISTINCT FROM")
        elif word not in _IS_KEEPS:
            out[i] = ("word", "IS NOT DISTINCT FROM")
    return out


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """A statement of the shared subset (SQLite's placeholders) as psycopg takes it."""
    tokens = _tokens(sql)
    words = _words(tokens)
    upper = [w for _, w in words]
    if upper[:1] == ["PRAGMA"]:
        raise TranslationError(f"PRAGMA has no PostgreSQL form: {sql.strip()[:80]}")
    if upper[:1] == ["REPLACE"]:
        raise TranslationError("REPLACE INTO needs a conflict target on PostgreSQL: "
                               "write INSERT ... ON CONFLICT (...) DO UPDATE")
    if "GLOB" in upper:
        raise TranslationError("GLOB has no PostgreSQL form: use dialect.glob_condition")
    for (_, a), (_, b) in itertools.pairwise(words):
        if (a, b) == ("COLLATE", "NOCASE"):
            raise TranslationError("COLLATE NOCASE has no PostgreSQL form: compare lower()")
    on_conflict = False
    if upper[:3] == ["INSERT", "OR", "IGNORE"]:
        if "RETURNING" in upper or "CONFLICT" in upper:
            raise TranslationError("INSERT OR IGNORE with RETURNING or ON CONFLICT")
        drop = {index for index, _ in words[1:3]}
        drop |= {i + 1 for i in drop if i + 1 < len(tokens) and tokens[i + 1][0] == "space"}
        tokens = [t for i, t in enumerate(tokens) if i not in drop]
        on_conflict = True
    elif upper[:2] == ["INSERT", "OR"]:
        raise TranslationError(f"INSERT OR {upper[2] if len(upper) > 2 else ''} needs a "
                               "conflict target on PostgreSQL: write ON CONFLICT (...)")
    styles = set()
    for i, (kind, text) in enumerate(tokens):
        if kind == "param":
            if text == "?":
                styles.add("?")
                tokens[i] = ("param", "%s")
            elif text.startswith("?"):
                raise TranslationError(f"numbered parameter {text}: use ? or :name")
            else:
                styles.add(":")
                tokens[i] = ("param", f"%({text[1:]})s")
        elif "%" in text:
            tokens[i] = (kind, text.replace("%", "%%"))
    if len(styles) > 1:
        raise TranslationError("a statement mixes ? and :name parameters")
    out = _render(_null_safe(tokens))
    if on_conflict:
        body = out.rstrip().rstrip(";").rstrip()
        out = f"{body} ON CONFLICT DO NOTHING"
    return out


# --- globs -------------------------------------------------------------------------------


def glob_regex(pattern: str) -> str:
    """An fnmatch pattern (`*`, `?`, `[abc]`, `[!abc]`) as an anchored POSIX regex."""
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and (end := pattern.find("]", i + 2 if pattern[i + 1:i + 2] in "!^"
                                                 else i + 1)) > i:
            body = pattern[i + 1:end]
            if body[:1] in ("!", "^"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", c))
        i += 1
    out.append("$")
    return "".join(out)


def glob_condition(dialect: str, column: str, pattern: str) -> tuple[str, str]:
    """`column` matching an fnmatch pattern, as SQL with one `?` and its parameter."""
    if dialect == POSTGRES:
        return f"{column} ~ ?", glob_regex(pattern)
    return f"{column} GLOB ?", pattern.replace("[!", "[^")
