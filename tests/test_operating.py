"""Operating botasync for real: no command destroys data, server-side commands work without
the key and with read access only, and every failure is one line with the right code."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from botasync.config import Config
from botasync.errors import StoreError
from botasync.events.handlers import CommandHandler, build_handler
from botasync.locks import ExclusiveLock
from botasync.service.demo import DEMO_MARK, NotADemoDatabase, clear_demo_database, prepare
from botasync.simulator import World
from botasync.store import migrations
from botasync.store.sqlite import Store
from tests.test_cli import ThreadedSim, cli_env, one_clear_line, run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(World(seed=5, recordings=120)) as s:
        yield s


def fingerprint(path: Path) -> tuple[str, int]:
    """A file's bytes (hashed) and its mtime: what "left alone" means."""
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def db_files(db: Path) -> list[Path]:
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


# --- 1. the demo never destroys what it did not make ---------------------------------------


def test_demo_refuses_a_text_file(tmp_path: Path) -> None:
    """`demo --db notes.txt`: one line, exit 2, the notes byte for byte as they were."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n")
    before = fingerprint(notes)
    result = run(["demo", "--db", str(notes), "--for", "1"])
    assert result.exit_code == 2
    assert "is not a database made by `botasync demo`" in one_clear_line(result)
    assert fingerprint(notes) == before
    assert db_files(notes) == [notes]


def test_demo_refuses_a_live_mirror(sim: ThreadedSim, tmp_path: Path) -> None:
    """A mirror made by `botasync sync` is not the demo's: refused, its rows all there."""
    db = tmp_path / "botasync.db"
    assert run(["sync"], cli_env(sim, db)).exit_code == 0
    before = fingerprint(db)
    result = run(["demo", "--db", str(db), "--for", "1"])
    assert result.exit_code == 2
    assert f"{db} exists and is not a database made by `botasync demo`" in one_clear_line(result)
    assert fingerprint(db) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone()[0] == 120
    conn.close()


async def test_demo_takes_the_lock_before_touching_anything(tmp_path: Path) -> None:
    """With a daemon (or another demo) holding the database, the demo stops, exit 1, and the
    database keeps its bytes, its -wal and its -shm."""
    db = tmp_path / "botasync-demo.db"
    lock = await prepare(db)  # a demo database, marked
    lock.release()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO state (key, value) VALUES ('sentinel', 'kept')")
    conn.close()
    before = fingerprint(db)
    held = ExclusiveLock(db.with_name(db.name + ".lock"), "held by the test")
    held.acquire()
    try:
        result = await asyncio.to_thread(run, ["demo", "--db", str(db), "--for", "1"])
    finally:
        held.release()
    assert result.exit_code == 1
    assert "another botasync daemon is already using" in one_clear_line(result)
    assert fingerprint(db) == before


async def test_a_previous_demo_database_is_replaced(tmp_path: Path) -> None:
    """The demo's own database (marked in `state`) is cleared and made anew, marked again."""
    db = tmp_path / "botasync-demo.db"
    (await prepare(db)).release()
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO state (key, value) VALUES ('sentinel', 'old')")
    conn.close()
    (await prepare(db)).release()
    with sqlite3.connect(db) as conn:
        keys = {r[0] for r in conn.execute("SELECT key FROM state")}
    conn.close()
    assert DEMO_MARK in keys and "sentinel" not in keys


def test_demo_refuses_a_symlink_and_a_directory(tmp_path: Path) -> None:
    """Neither a symlink (even to a demo database) nor a directory is removed."""
    (tmp_path / "a-dir").mkdir()
    with pytest.raises(NotADemoDatabase):
        clear_demo_database(tmp_path / "a-dir")
    target = tmp_path / "elsewhere.db"
    target.write_text("x")
    link = tmp_path / "link.db"
    link.symlink_to(target)
    with pytest.raises(NotADemoDatabase):
        clear_demo_database(link)
    assert link.is_symlink() and target.read_text() == "x"


# --- 2. a failed first sync leaves nothing behind -------------------------------------------


@pytest.mark.parametrize(("change", "code", "words"), [
    ({"BOTA_API_KEY": "sk_test_wrong"}, 3, "API key rejected"),
    ({"BOTA_API_URL": "http://127.0.0.1:9/v1"}, 1, "cannot connect to 127.0.0.1:9"),
])
def test_a_failed_first_sync_leaves_no_database(
    sim: ThreadedSim, tmp_path: Path, change: dict[str, str], code: int, words: str
) -> None:
    """401 or connection refused on a first sync: the one line, and no file at all."""
    db = tmp_path / "sub" / "botasync.db"
    db.parent.mkdir()
    if "BOTA_API_URL" in change:  # refused at once: retried quickly, not for ~15 s
        fast = tmp_path / "fast.toml"
        fast.write_text("[api]\nmax_retries = 1\nretry_base_s = 0.01\n")
        change = {**change, "BOTASYNC_CONFIG": str(fast)}
    result = run(["sync"], {**cli_env(sim, db), **change})
    assert result.exit_code == code
    assert words in one_clear_line(result)
    assert sorted(p.name for p in db.parent.iterdir()) == []


def test_a_404_base_url_hints_at_v1_and_leaves_no_database(
    sim: ThreadedSim, tmp_path: Path
) -> None:
    """A base_url without /v1 answers 404: the line asks about /v1, no database is left."""
    db = tmp_path / "botasync.db"
    result = run(["sync"], {**cli_env(sim, db), "BOTA_API_URL": sim.url.removesuffix("/v1")})
    assert result.exit_code == 1
    assert one_clear_line(result).endswith("not found (404); does base_url end in /v1?")
    assert db_files(db) == []


def test_a_failed_sync_keeps_an_existing_database(sim: ThreadedSim, tmp_path: Path) -> None:
    """Only a database the failed run created goes: an existing mirror stays as it was."""
    db = tmp_path / "botasync.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    assert run(["sync"], {**env, "BOTA_API_KEY": "sk_test_wrong"}).exit_code == 3
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone()[0] == 120
    conn.close()


# --- 3. commands that never call the API need no key ---------------------------------------


def server_config(tmp_path: Path) -> Path:
    """The README's systemd configuration: the key is a credential, outside the service
    invisible (no $CREDENTIALS_DIRECTORY)."""
    cfg = tmp_path / "botasync.toml"
    cfg.write_text('[api]\napi_key_file = "%d/bota-api-key"\n')
    return cfg


def test_read_and_admin_commands_run_without_the_key(sim: ThreadedSim, tmp_path: Path) -> None:
    """status, status --check, recordings list/show, events list/prune and config show work
    with `api_key_file = "%d/..."` and no key anywhere; sync says what is missing, exit 2."""
    db = tmp_path / "botasync.db"
    assert run(["sync"], cli_env(sim, db)).exit_code == 0
    env = {"BOTASYNC_CONFIG": str(server_config(tmp_path)), "BOTASYNC_DB": str(db),
           "BOTA_API_KEY": "", "CREDENTIALS_DIRECTORY": ""}
    rec_id = sim.world.all()[0]["id"]
    for args in (["status"], ["status", "--check"], ["recordings", "list"],
                 ["recordings", "show", rec_id], ["events", "list"],
                 ["events", "prune", "--dry-run"], ["events", "prune"], ["config", "show"]):
        result = run(args, env)
        assert result.exit_code == 0, (args, result.stderr)
        assert "error" not in result.stderr, (args, result.stderr)
    result = run(["sync"], env)
    assert result.exit_code == 2
    assert "needs $CREDENTIALS_DIRECTORY" in one_clear_line(result)


# --- 4. commands that only read open the database read-only --------------------------------


READ_COMMANDS = (["status"], ["status", "--check"], ["recordings", "list"], ["events", "list"],
                 ["events", "prune", "--dry-run"])


def test_read_commands_change_no_byte(sim: ThreadedSim, tmp_path: Path) -> None:
    """Reads leave the database file's bytes and mtime exactly as they were."""
    db = tmp_path / "botasync.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    before = fingerprint(db)
    for args in READ_COMMANDS:
        assert run(args, env).exit_code == 0, args
    assert fingerprint(db) == before


async def test_a_readonly_store_refuses_to_write(sim: ThreadedSim, tmp_path: Path) -> None:
    """`Store.open_readonly` opens with `mode=ro`: a write fails, nothing changes."""
    db = tmp_path / "botasync.db"
    assert (await asyncio.to_thread(run, ["sync"], cli_env(sim, db))).exit_code == 0
    before = fingerprint(db)
    async with await Store.open_readonly(db) as store:
        assert store.readonly
        with pytest.raises(StoreError, match="readonly"):
            async with store.transaction() as conn:
                await conn.execute("DELETE FROM recordings")
    assert fingerprint(db) == before


async def test_an_older_schema_is_one_line_for_a_reader(tmp_path: Path) -> None:
    """A database an older botasync wrote is not migrated by a reader: it says so."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(migrations.STEPS[0])
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    before = fingerprint(db)
    result = await asyncio.to_thread(
        run, ["status"], {"BOTASYNC_DB": str(db), "BOTASYNC_CONFIG": ""})
    assert result.exit_code == 1
    line = one_clear_line(result)
    assert f"database schema version 1 is older than this botasync's ({migrations.LATEST})" in line
    assert fingerprint(db) == before


def _without_dac(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run botasync as root without the capabilities that bypass file modes, so the
    modes hold as for any user (setpriv drops them from the bounding set)."""
    return subprocess.run(
        ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner",
         sys.executable, "-m", "botasync", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env}, check=False)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to drop the file-mode bypass")
def test_read_access_alone_is_enough(sim: ThreadedSim, tmp_path: Path) -> None:
    """Database 0444 in a directory 0555: status, recordings list and events list answer."""
    home = tmp_path / "ro"
    home.mkdir()
    db = home / "botasync.db"
    assert run(["sync"], cli_env(sim, db)).exit_code == 0
    assert db_files(db) == [db]  # closed cleanly: the WAL is folded in
    db.chmod(0o444)
    home.chmod(0o555)
    env = {"BOTASYNC_DB": str(db), "BOTASYNC_CONFIG": "", "BOTA_API_KEY": ""}
    try:
        denied = _without_dac(["sync"], {**env, "BOTA_API_KEY": "sk_test_botasync",
                                         "BOTA_API_URL": sim.url})
        assert denied.returncode == 1  # the modes really hold for this process
        for args in (["status"], ["recordings", "list", "--json"], ["events", "list"]):
            out = _without_dac(args, env)
            assert out.returncode == 0, (args, out.stderr)
            assert out.stderr == "", (args, out.stderr)
        rows = json.loads(_without_dac(["recordings", "list", "--json"], env).stdout)
        assert len(rows) == 50
    finally:
        home.chmod(0o755)
        db.chmod(0o600)
    assert db_files(db) == [db]


# --- 6. snapshot: a consistent copy beside a running daemon ----------------------------------


def test_snapshot_writes_a_consistent_copy(sim: ThreadedSim, tmp_path: Path) -> None:
    """`botasync snapshot PATH` copies every row into a new 0600 file that opens without a
    WAL (Datasette --immutable can read it); it never overwrites a file."""
    db = tmp_path / "botasync.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    before = fingerprint(db)
    copy = tmp_path / "copy.db"
    result = run(["snapshot", str(copy)], env)
    assert result.exit_code == 0, result.stderr
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    with sqlite3.connect(f"file:{copy}?immutable=1", uri=True) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone()[0] == 120
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 120
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert fingerprint(db) == before
    again = run(["snapshot", str(copy)], env)
    assert again.exit_code == 1 and "already exists" in one_clear_line(again)


# --- 7. one line, the right code --------------------------------------------------------------


def test_config_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    result = run(["status", "--config", str(tmp_path)])
    assert result.exit_code == 2
    assert one_clear_line(result) == f"error: config file {tmp_path} is a directory, not a file"


def test_unknown_section_suggests_the_known_one(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[synk]\ninterval_s = 5\n")
    result = run(["config", "show", "--config", str(cfg)])
    assert result.exit_code == 2
    assert one_clear_line(result) == "error: unknown section [synk]; did you mean [sync]?"


def test_simulate_on_a_busy_port_is_one_line() -> None:
    """A port in use: one line (and the non-loopback warning before it), no traceback."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(["simulate", "--host", "0.0.0.0", "--port", str(port)])
    assert result.exit_code == 1
    assert "warning: binding 0.0.0.0, not a loopback address" in result.stderr
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert line == [f"error: cannot serve on 0.0.0.0:{port}: address already in use "
                    "(try --port 0 for any free port)"]
    assert "Traceback" not in result.stderr


def test_a_broken_pipe_is_a_quiet_exit_0(sim: ThreadedSim, tmp_path: Path) -> None:
    """`botasync status | head -2`: the reader left; no error, exit 0 (stdout a pipe whose
    reading end is closed, as after `head` exits)."""
    db = tmp_path / "botasync.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    for args in (["status"], ["events", "list"]):
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = subprocess.run([sys.executable, "-m", "botasync", *args], stdout=write_end,
                                  stderr=subprocess.PIPE, text=True, timeout=60,
                                  env={**os.environ, **env}, check=False)
        finally:
            os.close(write_end)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == ""


def test_a_name_that_does_not_resolve_says_so(tmp_path: Path) -> None:
    """A DNS failure is not "cannot connect": the line names the host that did not resolve."""
    result = run(["config", "check"], {"BOTA_API_URL": "http://no-such-host.invalid/v1",
                                       "BOTA_API_KEY": "sk_test_x", "BOTASYNC_CONFIG": "",
                                       "BOTASYNC_DB": str(tmp_path / "x.db")})
    assert result.exit_code == 1
    assert "the host name no-such-host.invalid could not be resolved" in one_clear_line(result)


# --- 9. small things ---------------------------------------------------------------------------


def test_list_says_how_many_match(sim: ThreadedSim, tmp_path: Path) -> None:
    """"50 of N, --limit for more" when the limit cut the list; any status string is taken."""
    db = tmp_path / "botasync.db"
    env = cli_env(sim, db)
    assert run(["sync"], env).exit_code == 0
    out = run(["recordings", "list"], env).stdout
    assert out.rstrip().endswith("50 of 120, --limit for more")
    for status in ("integrity_failure", "streaming", "archived"):
        assert run(["recordings", "list", "--status", status], env).exit_code == 0
    one = run(["recordings", "list", "--limit", "1", "--since", "2000-01-01"], env).stdout
    assert one.rstrip().endswith("1 of 120, --limit for more")
    rec = next(r for r in sim.world.all() if r.get("metadata"))
    shown = run(["recordings", "show", rec["id"]], env).stdout
    assert json.dumps(rec["metadata"], separators=(",", ":"))[:20] in shown.replace(" ", "")


# --- 10. command handlers do not get botasync's secrets -----------------------------------------


async def test_command_handlers_get_no_secret_unless_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BOTA_API_KEY and every secret_env are withheld; pass_env hands one on by name."""
    monkeypatch.setenv("BOTA_API_KEY", "sk_live_secret")
    monkeypatch.setenv("HOOK_SECRET", "whsec_secret")
    monkeypatch.setenv("HANDLER_SETTING", "visible")
    cfg = Config.model_validate({"handlers": [
        {"name": "hook", "type": "webhook", "url": "http://127.0.0.1:9/", "secret_env":
         "HOOK_SECRET"},
        {"name": "plain", "type": "command", "command": [sys.executable, "-c", DUMP_ENV,
                                                         str(tmp_path / "plain.json")]},
        {"name": "fetcher", "type": "command", "pass_env": ["BOTA_API_KEY"],
         "command": [sys.executable, "-c", DUMP_ENV, str(tmp_path / "fetcher.json")]},
    ]})
    withhold = cfg.secret_env_names()
    assert withhold == {"BOTA_API_KEY", "HOOK_SECRET"}
    for h in cfg.handlers[1:]:
        handler = build_handler(h, withhold=withhold)
        assert isinstance(handler, CommandHandler)
        await handler.deliver(b"{}", "evt_1", "recording.created")
    plain = json.loads((tmp_path / "plain.json").read_text())
    fetcher = json.loads((tmp_path / "fetcher.json").read_text())
    assert "BOTA_API_KEY" not in plain and "HOOK_SECRET" not in plain
    assert plain["HANDLER_SETTING"] == "visible" and plain["BOTASYNC_EVENT_ID"] == "evt_1"
    assert fetcher["BOTA_API_KEY"] == "sk_live_secret" and "HOOK_SECRET" not in fetcher


DUMP_ENV = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"


def test_a_missing_command_stops_the_start(sim: ThreadedSim, tmp_path: Path) -> None:
    """A command handler whose program does not exist: exit 2 at start, no database made."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[handlers]]\nname = "notify"\ntype = "command"\n'
                   'command = ["/nonexistent/notify"]\n')
    db = tmp_path / "botasync.db"
    for args in (["sync"], ["run"], ["config", "check"]):
        result = run(args, cli_env(sim, db, cfg))
        assert result.exit_code == 2, args
        assert one_clear_line(result) == (
            'error: handler "notify": command /nonexistent/notify does not exist')
    assert db_files(db) == []
    cfg.write_text('[[handlers]]\nname = "notify"\ntype = "command"\n'
                   'command = ["botasync-no-such-program"]\n')
    result = run(["sync"], cli_env(sim, db, cfg))
    assert result.exit_code == 2
    assert "command botasync-no-such-program not found on PATH" in one_clear_line(result)
