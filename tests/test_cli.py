"""The command line: help everywhere, one clear line per failure, the documented exit codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from botasync.cli.main import main
from botasync.simulator import Simulator, World, run_forever
from botasync.store import migrations

KEY = "sk_test_botasync"


class ThreadedSim:
    """The simulator on its own loop in a thread, so CLI commands can run asyncio.run()."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.url = ""
        self.sim: Simulator | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()

            def ready(sim: Simulator) -> None:
                self.sim, self.url = sim, sim.url
                self._ready.set()

            await run_forever(self.world, rate_limit=None, on_ready=ready)

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(serve())

    def __enter__(self) -> ThreadedSim:
        self._thread.start()
        assert self._ready.wait(10), "simulator did not start"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._loop and self._task:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


@pytest.fixture(scope="module")
def sim() -> Iterator[ThreadedSim]:
    with ThreadedSim(World(seed=11, recordings=250)) as s:
        yield s


def cli_env(sim: ThreadedSim, db: Path, config: Path | None = None) -> dict[str, str]:
    """The environment a CLI run needs: the simulator, a key, a database, a config or none."""
    return {"BOTA_API_URL": sim.url, "BOTA_API_KEY": KEY, "BOTASYNC_DB": str(db),
            "BOTASYNC_CONFIG": str(config) if config else ""}


@pytest.fixture
def env(sim: ThreadedSim, tmp_path: Path) -> dict[str, str]:
    return cli_env(sim, tmp_path / "botasync.db")


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, args, env=env or {"BOTASYNC_CONFIG": ""},
                              catch_exceptions=False)


def one_clear_line(result: Result) -> str:
    """The one `error:` line; anything else on stderr must be a JSON log line (retries)."""
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert all(ln.startswith("{") for ln in lines if ln not in errors), result.stderr
    return errors[0]


def all_commands(group: click.Group, prefix: list[str]) -> Iterator[list[str]]:
    for name, cmd in group.commands.items():
        yield [*prefix, name]
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, [*prefix, name])


def test_every_command_has_help() -> None:
    """Each command and group answers --help with exit 0 and a description."""
    commands = list(all_commands(main, []))
    assert len(commands) >= 14
    for path in commands:
        result = run([*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage:" in result.output and len(result.output.splitlines()) > 3, path


def test_sync_mirrors_and_prints_summary(env: dict[str, str], sim: ThreadedSim) -> None:
    """`botasync sync` exits 0, prints one summary line, leaves a 0600 database."""
    result = run(["sync"], env)
    assert result.exit_code == 0, result.output + result.stderr
    assert "full pass: 3 pages" in result.stdout and "250 created" in result.stdout
    db = Path(env["BOTASYNC_DB"])
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM recordings").fetchone()[0] == 250
    again = run(["sync", "--json"], env)
    data = json.loads(again.stdout)
    assert data["passes"][0]["unchanged"] == 250 and data["passes"][0]["created"] == 0
    quick = run(["sync", "--quick", "--json"], env)
    assert [p["kind"] for p in json.loads(quick.stdout)["passes"]] == ["head", "hot"]


def test_queries_after_sync(env: dict[str, str], sim: ThreadedSim) -> None:
    """recordings list/show, events list and status answer from the mirror, in JSON too."""
    assert run(["sync"], env).exit_code == 0
    rows = json.loads(run(["recordings", "list", "--json", "--limit", "5"], env).stdout)
    assert len(rows) == 5 and rows[0]["id"] == sim.world.all()[0]["id"]
    done = json.loads(run(["recordings", "list", "--json", "--status", "completed",
                           "--limit", "1000"], env).stdout)
    assert len(done) == sum(1 for i in sim.world.all() if i["status"] == "completed")
    one = json.loads(run(["recordings", "show", rows[0]["id"], "--json"], env).stdout)
    assert one["id"] == rows[0]["id"]
    assert [e["type"] for e in one["events"]] == ["recording.created"]
    served = sim.world.get(rows[0]["id"])
    assert served is not None
    assert len(one["media"]) == len(served["media"])
    table = run(["recordings", "list"], env)
    assert rows[0]["id"] in table.stdout
    events = json.loads(run(["events", "list", "--json", "--limit", "3"], env).stdout)
    assert len(events) == 3 and events[0]["type"] == "recording.created"
    status = json.loads(run(["status", "--json"], env).stdout)
    assert sum(status["recordings"].values()) == 250
    assert status["last_walk"]["complete"] == 1
    assert status["events"]["total"] == 250 and status["events"]["retention_days"] == 90
    every = json.loads(run(["events", "list", "--json", "--limit", "1000"], env).stdout)
    assert status["events"]["oldest_at"] == min(e["created_at"] for e in every)
    assert "(settled ones kept 90 days)" in run(["status"], env).stdout
    missing = run(["recordings", "show", "rec_nope"], env)
    assert missing.exit_code == 1 and "no recording rec_nope" in one_clear_line(missing)


def test_bad_key_exits_3(env: dict[str, str]) -> None:
    """A rejected key is one line and exit 3; a key without the scope too."""
    result = run(["sync"], {**env, "BOTA_API_KEY": "sk_test_wrong"})
    assert result.exit_code == 3
    assert "API key rejected" in one_clear_line(result)
    assert "sk_test_wrong" not in result.stderr + result.stdout
    result = run(["sync"], {**env, "BOTA_API_KEY": "sk_test_noscope"})
    assert result.exit_code == 3
    assert "recordings:read" in one_clear_line(result)


def test_missing_key_exits_2(env: dict[str, str]) -> None:
    """No key at all is a configuration error."""
    result = run(["sync"], {**env, "BOTA_API_KEY": ""})
    assert result.exit_code == 2 and "no API key" in one_clear_line(result)


def test_bad_config_exits_2(env: dict[str, str], tmp_path: Path) -> None:
    """A config mistake is one line naming the key, exit 2, on every command."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[sync]\ninterval_s = -1\n")
    for args in (["sync"], ["run"], ["status"], ["config", "check"], ["recordings", "list"]):
        result = run([*args, "--config", str(cfg)], env)
        assert result.exit_code == 2, args
        assert "[sync] interval_s: Input should be greater than 0" in one_clear_line(result)
    result = run(["--config", str(cfg), "sync"], env)
    assert result.exit_code == 2


def test_usage_error_exits_2() -> None:
    """An unknown option is a usage error, exit 2."""
    assert run(["sync", "--bogus"]).exit_code == 2
    since = run(["recordings", "list", "--since", "yesterday"])
    assert since.exit_code == 2
    assert "'yesterday' is not an ISO 8601 date or time" in since.stderr


def test_unreachable_api_exits_1(env: dict[str, str]) -> None:
    """An API nobody answers is one line, exit 1; config check says so without long retries."""
    cfg_env = {**env, "BOTA_API_URL": "http://127.0.0.1:9/v1"}
    result = run(["config", "check"], cfg_env)
    assert result.exit_code == 1, result.stderr
    assert "cannot connect to 127.0.0.1:9" in one_clear_line(result)


def test_config_check_and_show(env: dict[str, str], sim: ThreadedSim) -> None:
    """config check calls the API once; config show redacts the key."""
    result = run(["config", "check"], env)
    assert result.exit_code == 0, result.stderr
    assert "accepted the key" in result.stdout
    shown = json.loads(run(["config", "show"], env).stdout)
    assert shown["api"]["api_key"] == "***" and shown["api"]["base_url"] == sim.url


def test_newer_database_is_refused(env: dict[str, str]) -> None:
    """A database from a newer botasync is one clear line, and is left untouched."""
    db = Path(env["BOTASYNC_DB"])
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {migrations.LATEST + 5}")
    before = db.read_bytes()
    result = run(["sync"], env)
    assert result.exit_code == 1 and "newer" in one_clear_line(result)
    assert db.read_bytes() == before


def test_unwritable_database_path(env: dict[str, str], tmp_path: Path) -> None:
    """A database path that cannot be created (its parent is a file) is one line, exit 1."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run(["sync"], {**env, "BOTASYNC_DB": str(blocker / "x.db")})
    assert result.exit_code == 1
    assert "cannot open database" in one_clear_line(result)


def test_python_m_botasync_works() -> None:
    """`python -m botasync --version` runs the same command line."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "botasync", "--version"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.startswith("botasync, version")


def test_run_with_rejected_key_is_one_line(env: dict[str, str]) -> None:
    """The daemon stops on a rejected key with exit 3 and one `error:` line."""
    result = run(["run"], {**env, "BOTA_API_KEY": "sk_test_wrong"})
    assert result.exit_code == 3
    assert "API key rejected" in one_clear_line(result)


def test_config_check_warns_of_a_metrics_listener_off_loopback(
    env: dict[str, str], sim: ThreadedSim, tmp_path: Path,
) -> None:
    """Valid but probably unwanted: one `warning:` line, and the check still passes."""
    path = tmp_path / "metrics.toml"
    path.write_text('[metrics]\nlisten = "0.0.0.0:9464"\n')
    result = run(["config", "check", "--config", str(path)], env)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("warning: [metrics] listen: 0.0.0.0:9464 is not a loopback")
