"""`botasync search` and `botasync transcripts export` on a real database, through click."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import click
import pytest
import srt
import webvtt
from click.testing import CliRunner, Result

from botasync.cli.main import main
from botasync.store.sqlite import Store
from tests.test_search import put_recording, put_transcription

SEGMENTS = [
    (0.0, 2.5, "Alice", "Good morning, the budget first."),
    (2.5, 6.25, "Bob", "The budget moved to Friday & the memo <draft> too."),
    (6.25, 9.0, None, "Thanks."),
]


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """A database: transcripts completed, replaced, pending, missing and deleted."""
    path = tmp_path / "botasync.db"
    async with await Store.open(path) as store:
        await put_recording(store, "rec_a", name="Standup", created_at="2026-10-01T09:00:00.000Z")
        await put_transcription(store, "rec_a", "txn_a", SEGMENTS)
        # a re-run still processing: the replaced transcript stays the recording's
        await put_recording(store, "rec_b", name="Review", created_at="2026-11-20T09:00:00.000Z")
        await put_transcription(store, "rec_b", "txn_b_old",
                                [(0.0, 3.0, "Carol", "Old budget words.")],
                                created_at="2026-11-20T10:00:00.000Z")
        await put_transcription(store, "rec_b", "txn_b_new", [], status="processing", text="",
                                created_at="2026-11-21T10:00:00.000Z")
        await put_recording(store, "rec_pending", created_at="2026-11-21T09:00:00.000Z")
        await put_transcription(store, "rec_pending", "txn_pending", [], status="pending",
                                text="")
        await put_recording(store, "rec_none", created_at="2026-11-22T09:00:00.000Z")
        await put_recording(store, "rec_gone", created_at="2026-11-02T09:00:00.000Z",
                            deleted_at="2026-11-03T09:00:00.000Z")
        await put_transcription(store, "rec_gone", "txn_gone",
                                [(1.0, 2.0, "Dan", "Archived budget.")])
        await put_recording(store, "rec_text", created_at="2026-11-05T09:00:00.000Z")
        await put_transcription(store, "rec_text", "txn_text", [],
                                text="No segments, only text.")
    return path


def invoke(cmd: click.Command, args: list[str], db: Path) -> Result:
    return CliRunner().invoke(cmd, args, env={"BOTASYNC_DB": str(db), "BOTASYNC_CONFIG": ""},
                              catch_exceptions=False)


def export(args: list[str], db: Path) -> Result:
    return invoke(main, ["transcripts", "export", *args], db)


def one_line(result: Result) -> str:
    """The one line on stderr, with no traceback."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def digest(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


# --- search ---------------------------------------------------------------------------------------


def test_search_prints_hits_with_plain_markers_off_a_terminal(db: Path) -> None:
    """Off a terminal each hit reads recording, name, time, speaker and `[match]`."""
    before = digest(db)
    result = invoke(main, ["search", "budget"], db)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["recording", "name", "created", "(UTC)", "time", "speaker",
                                "matched"]
    row = next(ln for ln in lines if ln.startswith("rec_gone"))
    assert "(deleted)" in row and "00:01" in row and "Dan" in row and "Archived [budget]." in row
    assert any("[budget] moved to Friday & the memo <draft> too." in ln for ln in lines)
    assert "4 matches" in lines[-1]
    wal = Path(f"{db}-wal")
    assert digest(db) == before and (not wal.exists() or wal.stat().st_size == 0)  # read-only


def test_search_json_is_machine_readable(db: Path) -> None:
    """--json: a list of hits with fixed keys, best first, the same on every run."""
    result = invoke(main, ["search", "budget", "--json", "--speaker", "bob"], db)
    assert result.exit_code == 0
    hits = json.loads(result.stdout)
    assert [list(h) for h in hits] == [[
        "project", "recording_id", "recording_name", "recording_created_at", "recording_deleted",
        "transcription_id", "segment_id", "position", "speaker", "start_s", "end_s", "time",
        "snippet", "text", "bm25"]]
    assert hits[0]["snippet"] == "The [budget] moved to Friday & the memo <draft> too."
    assert hits[0]["time"] == "00:02" and hits[0]["recording_id"] == "rec_a"
    assert invoke(main, ["search", "budget", "--json", "--speaker", "bob"], db).stdout \
        == result.stdout


def test_search_since_filters_and_refuses_what_is_no_date(db: Path) -> None:
    """--since keeps recordings created since; anything but ISO 8601 is exit 2."""
    result = invoke(main, ["search", "budget", "--json", "--since", "2026-11-01"], db)
    assert {h["recording_id"] for h in json.loads(result.stdout)} == {"rec_b", "rec_gone"}
    bad = invoke(main, ["search", "budget", "--since", "yesterday"], db)
    assert bad.exit_code == 2 and "'yesterday' is not an ISO 8601 date or time" in bad.stderr


@pytest.mark.parametrize(("query", "says"), [
    ('"budget', "unbalanced quotes"),
    ("AND", "AND needs a word before it"),
    ("budget OR", "OR needs a word after it"),
    ("(budget", "never closed"),
    ("+++", "nothing to search for"),
])
def test_search_query_that_cannot_be_read_is_one_line_exit_2(
        db: Path, query: str, says: str) -> None:
    """A query FTS5 could not read: one `error:` line and exit 2, never a traceback."""
    result = invoke(main, ["search", query], db)
    assert result.exit_code == 2
    line = one_line(result)
    assert line.startswith("error: ") and says in line


def test_search_words_as_typed(db: Path) -> None:
    """Punctuation in a word is no syntax: `Friday&` and `<draft>` find what was said."""
    for query in ("Friday&", "<draft>", "moved-to", "budget*"):
        result = invoke(main, ["search", query, "--json"], db)
        assert result.exit_code == 0 and json.loads(result.stdout), query


def test_search_no_match_and_no_database(db: Path, tmp_path: Path) -> None:
    """No match is not a failure; no database is one line, exit 1."""
    result = invoke(main, ["search", "zeppelin"], db)
    assert result.exit_code == 0 and result.stdout.strip() == "no matches"
    assert invoke(main, ["search", "zeppelin", "--json"], db).stdout.strip() == "[]"
    missing = invoke(main, ["search", "budget"], tmp_path / "nowhere.db")
    assert missing.exit_code == 1 and "no database" in one_line(missing)


@pytest.fixture
async def no_transcripts(tmp_path: Path) -> Path:
    """A mirror of one recording, without transcripts."""
    path = tmp_path / "empty.db"
    async with await Store.open(path) as store:
        await put_recording(store, "rec_a")
    return path


def test_search_without_any_transcript_says_so(no_transcripts: Path) -> None:
    """A mirror without transcripts says why nothing matches, and how to get them."""
    result = invoke(main, ["search", "budget"], no_transcripts)
    assert result.exit_code == 0 and "no transcript is mirrored yet" in result.stdout


def test_search_help_says_deleted_recordings_are_searched() -> None:
    """--help names the query syntax and that deleted recordings' transcripts are searched."""
    result = CliRunner().invoke(main, ["search", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "deleted remotely are searched too" in text and '"a phrase"' in text


def test_the_readme_sql_finds_what_search_finds(db: Path) -> None:
    """The README's plain-SQL search, run as written, gives the command's hits in its order."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Search and export", 1)[1]
    sql = re.search(r"```sql\n(.*?)```", section, re.S)
    assert sql is not None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(sql.group(1), ('text : ("budget")',)).fetchall()
    conn.close()
    hits = json.loads(invoke(main, ["search", "budget", "--json"], db).stdout)
    assert [(r[0], r[3], r[5]) for r in rows] == [
        (h["recording_id"], h["speaker"], h["snippet"]) for h in hits]


# --- export ---------------------------------------------------------------------------------------


def test_export_txt_to_stdout(db: Path) -> None:
    """By recording id, to standard output: `[mm:ss] Speaker: text` lines."""
    result = export(["rec_a"], db)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "[00:00] Alice: Good morning, the budget first.",
        "[00:02] Bob: The budget moved to Friday & the memo <draft> too.",
        "[00:06] Thanks.",
    ]


def test_export_srt_parses(db: Path, tmp_path: Path) -> None:
    """The srt file the command writes reads back with the `srt` package: times, speakers."""
    out = tmp_path / "a.srt"
    assert export(["rec_a", "--format", "srt", "--out", str(out)], db).exit_code == 0
    cues = list(srt.parse(out.read_text(encoding="utf-8"), ignore_errors=False))
    ms = timedelta(milliseconds=1)
    assert [(c.start // ms, c.end // ms, c.content) for c in cues] == [
        (0, 2500, "Alice: Good morning, the budget first."),
        (2500, 6250, "Bob: The budget moved to Friday &amp; the memo &lt;draft&gt; too."),
        (6250, 9000, "Thanks."),
    ]


def test_export_vtt_parses(db: Path, tmp_path: Path) -> None:
    """The vtt file reads back with `webvtt-py`: cue times, voices and text."""
    out = tmp_path / "a.vtt"
    assert export(["txn_a", "--format", "vtt", "--out", str(out)], db).exit_code == 0
    captions = webvtt.read(str(out)).captions
    assert [(c.start, c.end, c.voice, c.text) for c in captions] == [
        ("00:00:00.000", "00:00:02.500", "Alice", "Good morning, the budget first."),
        ("00:00:02.500", "00:00:06.250", "Bob",
         "The budget moved to Friday &amp; the memo &lt;draft&gt; too."),
        ("00:00:06.250", "00:00:09.000", None, "Thanks."),
    ]


def test_export_json_and_csv(db: Path, tmp_path: Path) -> None:
    """json by transcription id carries every segment; csv reads back row for row."""
    data = json.loads(export(["txn_a", "--format", "json"], db).stdout)
    assert data["recording_id"] == "rec_a" and data["transcription_id"] == "txn_a"
    assert [s["speaker"] for s in data["segments"]] == ["Alice", "Bob", None]
    out = tmp_path / "a.csv"
    export(["rec_a", "--format", "csv", "--out", str(out)], db)
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["start_s"], r["speaker"], r["text"]) for r in rows] == [
        (str(s[0]), s[2] or "", s[3]) for s in SEGMENTS]


def test_export_picks_the_completed_transcription(db: Path) -> None:
    """A re-run still processing leaves the replaced transcript the one exported; a text
    without segments exports as its text."""
    assert export(["rec_b"], db).stdout == "[00:00] Carol: Old budget words.\n"
    assert export(["rec_text"], db).stdout == "No segments, only text.\n"
    assert "Archived budget." in export(["rec_gone"], db).stdout


@pytest.mark.parametrize(("ref", "says"), [
    ("rec_none", "recording rec_none has no stored transcript"),
    ("rec_pending", "its transcription txn_pending is pending"),
    ("txn_b_new", "transcription txn_b_new is processing"),
    ("rec_missing", "no recording or transcription rec_missing in the mirror"),
    ("txn_missing", "no transcription txn_missing in the mirror"),
])
def test_export_without_a_transcript_is_one_line_exit_1(db: Path, ref: str, says: str) -> None:
    """No stored transcript: one line, exit 1, nothing on stdout."""
    result = export([ref], db)
    assert result.exit_code == 1 and result.stdout == ""
    assert says in one_line(result)


def test_export_replaces_a_file_whole(db: Path, tmp_path: Path) -> None:
    """--out replaces an existing file by a rename; a failed write leaves nothing behind."""
    out = tmp_path / "a.txt"
    out.write_text("old\n")
    assert export(["rec_a", "--out", str(out)], db).exit_code == 0
    assert out.read_text().startswith("[00:00] Alice:")
    assert [p.name for p in tmp_path.iterdir() if "botasync.db" not in p.name] == ["a.txt"]
    bad = export(["rec_a", "--out", str(tmp_path / "no" / "a.txt")], db)
    assert bad.exit_code == 1 and "cannot write" in one_line(bad)


def test_export_all(db: Path, tmp_path: Path) -> None:
    """--all: one `<recording_id>.<ext>` per recording with a transcript, the rest counted."""
    out = tmp_path / "exports"
    result = export(["--all", "--format", "srt", "--out", str(out)], db)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "rec_a.srt", "rec_b.srt", "rec_gone.srt", "rec_text.srt"]
    assert result.stdout.strip() == (f"exported 4 transcripts (srt) to {out}; 2 recordings "
                                     "without a stored transcript skipped")
    for path in out.iterdir():
        list(srt.parse(path.read_text(encoding="utf-8"), ignore_errors=False))
    recent = tmp_path / "recent"
    result = export(["--all", "--since", "2026-11-03", "--format", "json",
                                     "--out", str(recent)], db)
    assert sorted(p.name for p in recent.iterdir()) == ["rec_b.json", "rec_text.json"]
    assert "; 2 recordings without" in result.stdout


@pytest.mark.parametrize("args", [
    ["--all"],
    ["rec_a", "--all", "--out", "x"],
    ["rec_a", "--since", "2026-11-01"],
    [],
    ["rec_a", "--format", "html"],
    ["--all", "--out", "x", "--since", "last week"],
])
def test_export_usage_errors_exit_2(db: Path, args: list[str]) -> None:
    """Wrong combinations and values are usage errors, exit 2."""
    assert export(args, db).exit_code == 2


# --- two projects in one database -----------------------------------------------------------------


@pytest.fixture
async def two_projects(tmp_path: Path) -> Path:
    """A configuration of projects alpha and beta over one database in which both have a
    recording `rec_1` with a transcription `txn_1`, said apart, and a recording `rec_p`,
    transcribed in alpha and still pending in beta; beta has `rec_b` too."""
    db = tmp_path / "two.db"
    async with await Store.open(db) as store:
        for project, said in (("alpha", "Alpha budget words."), ("beta", "Beta budget words.")):
            await put_recording(store, "rec_1", name=f"{project} call", project=project)
            await put_transcription(store, "rec_1", "txn_1", [(0.0, 2.0, "Ann", said)],
                                    project=project)
        await put_recording(store, "rec_b", project="beta")
        await put_transcription(store, "rec_b", "txn_b", [(0.0, 1.0, None, "Only beta.")],
                                project="beta")
        for project in ("alpha", "beta"):
            await put_recording(store, "rec_p", project=project)
        await put_transcription(store, "rec_p", "txn_p", [(0.0, 1.0, None, "Alpha's own.")],
                                project="alpha", created_at="2026-11-30T10:00:00.000Z")
        await put_transcription(store, "rec_p", "txn_q", [], status="pending", text="",
                                project="beta")
    conf = tmp_path / "botasync.toml"
    conf.write_text(f'[database]\npath = "{db}"\n[logging]\nlevel = "error"\n'
                    '[[projects]]\nname = "alpha"\n[[projects]]\nname = "beta"\n')
    return conf


def in_projects(args: list[str], conf: Path) -> Result:
    return CliRunner().invoke(main, args, env={"BOTASYNC_CONFIG": str(conf)},
                              catch_exceptions=False)


def test_search_every_project_or_one(two_projects: Path) -> None:
    """Every project's transcripts are searched, each hit naming its project (a column in
    the table); --project keeps one; a project not configured is a usage error."""
    hits = json.loads(in_projects(["search", "budget", "--json"], two_projects).stdout)
    assert sorted((h["project"], h["recording_id"], h["transcription_id"], h["text"])
                  for h in hits) == [("alpha", "rec_1", "txn_1", "Alpha budget words."),
                                     ("beta", "rec_1", "txn_1", "Beta budget words.")]
    table = in_projects(["search", "budget"], two_projects).stdout.splitlines()
    assert table[0].split()[:2] == ["project", "recording"]
    assert sorted(ln.split()[:2] for ln in table[1:3]) == [["alpha", "rec_1"], ["beta", "rec_1"]]
    one = json.loads(in_projects(["search", "budget", "--json", "--project", "beta"],
                                 two_projects).stdout)
    assert [(h["project"], h["text"]) for h in one] == [("beta", "Beta budget words.")]
    bad = in_projects(["search", "budget", "--project", "gamma"], two_projects)
    assert bad.exit_code == 2 and "no project 'gamma'" in bad.stderr


def test_export_an_id_of_two_projects_needs_project(two_projects: Path) -> None:
    """An id two projects have: one line naming them, exit 2; --project picks one; an id
    one project has needs none."""
    for ref, what in (("rec_1", "recording rec_1"), ("txn_1", "transcription txn_1")):
        both = in_projects(["transcripts", "export", ref], two_projects)
        assert both.exit_code == 2 and both.stdout == ""
        assert one_line(both) == (f"error: {what} is in more than one project (alpha, beta): "
                                  "name one with --project")
        for project in ("alpha", "beta"):
            result = in_projects(["transcripts", "export", ref, "--project", project],
                                 two_projects)
            assert result.stdout == f"[00:00] Ann: {project.title()} budget words.\n"
    assert in_projects(["transcripts", "export", "rec_b"], two_projects).stdout == (
        "[00:00] Only beta.\n")
    missing = in_projects(["transcripts", "export", "rec_b", "--project", "alpha"], two_projects)
    assert missing.exit_code == 1
    assert one_line(missing) == "error: no recording or transcription rec_b in project alpha"
    assert in_projects(["transcripts", "export", "rec_p", "--project", "alpha"],
                       two_projects).stdout == "[00:00] Alpha's own.\n"
    pending = in_projects(["transcripts", "export", "rec_p", "--project", "beta"], two_projects)
    assert pending.exit_code == 1 and one_line(pending) == (
        "error: recording rec_p has no stored transcript: its transcription txn_q is pending")


def test_export_all_of_two_projects_one_directory_each(two_projects: Path,
                                                       tmp_path: Path) -> None:
    """--all writes each project's files into its own directory, so the same id cannot
    overwrite another project's; with --project, that project's alone, flat."""
    out = tmp_path / "all"
    result = in_projects(["transcripts", "export", "--all", "--out", str(out)], two_projects)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == (
        f"exported 4 transcripts (txt) to {out} (one directory per project: alpha, beta); 1 "
        "recordings without a stored transcript skipped")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.txt")) == [
        "alpha/rec_1.txt", "alpha/rec_p.txt", "beta/rec_1.txt", "beta/rec_b.txt"]
    assert (out / "alpha" / "rec_1.txt").read_text() == "[00:00] Ann: Alpha budget words.\n"
    beta = tmp_path / "beta"
    in_projects(["transcripts", "export", "--all", "--project", "beta", "--out", str(beta)],
                two_projects)
    assert sorted(p.name for p in beta.iterdir()) == ["rec_1.txt", "rec_b.txt"]
    assert (beta / "rec_1.txt").read_text() == "[00:00] Ann: Beta budget words.\n"
