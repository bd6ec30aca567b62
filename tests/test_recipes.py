"""The README's operating recipes, run as written: install from a wheel built in a checkout,
the systemd service and the admin commands on the server, Datasette beside a running daemon.

They install packages from the index (a minute or two each), so they are not part of the
test command: `.ci/run` runs them after it, with BOTASYNC_RECIPES=1 (so can anyone). The systemd recipe runs in a private
mount namespace (/etc and /root overlaid, /opt and /var/lib fresh), with stand-ins for
`sudo`, `systemctl` and `journalctl` in tests/recipes/ (no systemd runs here; /mnt stands
for systemd's /run). The one
change to the checkout: the example configuration's base_url points at a local simulator,
since a test cannot reach api.bota.dev.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from botasync.simulator import World
from tests.simproc import simulate
from tests.test_cli import ThreadedSim

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SHIMS = ROOT / "tests" / "recipes"
KEY = "sk_live_..."  # the recipe's key, as written; the simulator is told to accept it

pytestmark = [
    pytest.mark.skipif(not os.environ.get("BOTASYNC_RECIPES"),
                       reason="installs from the package index: .ci/run runs it with "
                              "BOTASYNC_RECIPES=1"),
    pytest.mark.timeout(1200),
]


def section(heading: str) -> str:
    """The README text under a `##`/`###` heading, up to the next heading of any level."""
    match = re.search(rf"^#+ {re.escape(heading)}\n(.*?)(?=^#+ )", README, re.S | re.M)
    assert match, heading
    return match.group(1)


def sh_blocks(heading: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", section(heading), re.S)


def checkout(tmp_path: Path) -> Path:
    """A copy of the working tree's files (tracked and new), without .venv and caches."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    dest = tmp_path / "botasync"
    for name in names:
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BOTA", "VIRTUAL_ENV", "PYTHON"))}
    return {**env, **extra}


def test_install_from_a_wheel(tmp_path: Path) -> None:
    """The wheel recipe builds botasync-*.whl in a checkout and installs it into a venv."""
    src = checkout(tmp_path)
    block = next(b for b in sh_blocks("Quick start") if "pip wheel" in b)
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=src, env=clean_env(),
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert [p.name for p in (src / "dist").iterdir()] == ["botasync-0.1.0-py3-none-any.whl"]
    where = subprocess.run([str(src / ".venv/bin/python"), "-c",
                            "import botasync; print(botasync.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert "site-packages" in where
    version = subprocess.run([str(src / ".venv/bin/botasync"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    assert version.startswith("botasync, version")


@pytest.fixture
def simulator_process() -> Iterator[str]:
    """`botasync simulate` accepting the recipe's key, in its own process; its URL."""
    with simulate(["--recordings", "150", "--api-key", KEY, "--no-rate-limit"],
                  clean_env(BOTASYNC_CONFIG="")) as url:
        yield url


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private mount namespace")
def test_systemd_and_admin_recipes(tmp_path: Path, simulator_process: str) -> None:
    """The service installs, starts as a dynamic user and mirrors; every admin command of
    the README answers as root on the server, without the key (config check with it)."""
    src = checkout(tmp_path)
    example = src / "config" / "botasync.example.toml"
    example.write_text(example.read_text().replace(
        'base_url = "https://api.bota.dev/v1"', f'base_url = "{simulator_process}"'))
    home = tmp_path / "harness"
    home.mkdir()
    (install,) = sh_blocks("Running under systemd")
    (admin,) = sh_blocks("Admin commands on the server")
    steps = [f"echo '### {line}'\n{line}" for line in admin.strip().splitlines()]
    script = f"""set -euo pipefail
for d in etc root; do mkdir -p {home}/$d-up {home}/$d-work
  mount -t overlay overlay -o lowerdir=/$d,upperdir={home}/$d-up,workdir={home}/$d-work /$d
done
mount -t tmpfs tmpfs /opt && mount -t tmpfs tmpfs /var/lib && mount -t tmpfs tmpfs /mnt
trap 'systemctl stop botasync || true' EXIT
{install}
echo '### the first pass'
for i in $(seq 600); do
  n=$(sqlite3 -readonly /var/lib/botasync/botasync.db "SELECT count(*) FROM recordings" \\
      2>/dev/null || true)
  [ "$n" = 150 ] && break
  sleep 0.1
done
echo "### files: $(stat -c '%u %a' /var/lib/private/botasync /var/lib/private/botasync/botasync.db)"
{chr(10).join(steps)}
"""
    env = clean_env(PATH=f"{SHIMS}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    RECIPE_SHIMS=str(SHIMS), RECIPE_HOME=str(home))
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", script],
                         cwd=src, env=env, capture_output=True, text=True, timeout=900,
                         check=False)
    journal = (home / "journal.log").read_text() if (home / "journal.log").exists() else ""
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:] + journal[-2000:]
    said = dict(re.findall(r"^### (.*?)\n(.*?)(?=^### |\Z)", out.stdout, re.S | re.M))
    assert any('"event": "pass_done"' in line for line in journal.splitlines())
    assert "files: 61999 700\n61999 600" in out.stdout
    by_cmd = {cmd.split("botasync.toml ")[-1]: text for cmd, text in said.items()}
    assert "daemon running" in by_cmd["status"]
    assert by_cmd["status --check"].startswith("ok: newest pass finished")
    assert "completed" in by_cmd["recordings list --status completed"]
    assert by_cmd["events prune --dry-run"].startswith("would forget 0 settled events")
    assert by_cmd["snapshot /root/botasync-copy.db"].startswith(
        "snapshot of /var/lib/botasync/botasync.db written to /root/botasync-copy.db")
    sqlite_line = next(t for c, t in said.items() if c.startswith("sudo sqlite3"))
    assert sqlite_line.strip() == "150"
    assert "accepted the key" in by_cmd["config check"]
    assert "error" not in out.stderr, out.stderr[-3000:]


# --- Datasette beside a running daemon ---------------------------------------------------------


def _get(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _get(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _count(base: str, db: str, table: str) -> int:
    rows = _get(f"{base}/{db}.json?sql=select+count(*)+as+n+from+{table}&_shape=array")
    assert isinstance(rows, list)
    return int(rows[0]["n"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(20)


def test_datasette_recipes_beside_a_running_daemon(tmp_path: Path) -> None:
    """`datasette serve botasync.db` sees the daemon's new rows live; the snapshot recipe
    serves a consistent copy with --immutable. Each line run as the README gives it."""
    (block,) = [b for b in sh_blocks("The database") if "datasette" in b]
    install, live, frozen = (ln.split("  #")[0].strip() for ln in block.strip().splitlines())
    venv = tmp_path / "ds"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    path = f"{venv / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    subprocess.run(["bash", "-c", install], env=clean_env(PATH=path), cwd=tmp_path, check=True,
                   capture_output=True, timeout=600)
    with ThreadedSim(World(seed=4, recordings=120)) as sim:
        cfg = tmp_path / "botasync.toml"
        cfg.write_text("[sync]\ninterval_s = 0.5\n")
        env = clean_env(PATH=path, BOTA_API_URL=sim.url, BOTA_API_KEY="sk_test_botasync",
                        BOTASYNC_CONFIG=str(cfg))
        daemon = subprocess.Popen(["botasync", "run"], cwd=tmp_path, env=env,
                                  start_new_session=True, stderr=subprocess.DEVNULL)
        servers: list[subprocess.Popen[bytes]] = []
        try:
            db = tmp_path / "botasync.db"
            _poll(lambda: _rows(db) == 120)
            servers.append(subprocess.Popen(["bash", "-c", live], cwd=tmp_path, env=env,
                                            start_new_session=True, stderr=subprocess.DEVNULL))
            base = "http://127.0.0.1:8001"
            _wait_http(f"{base}/-/versions.json")
            assert _count(base, "botasync", "recordings") == 120
            sim.world.create(name="made while Datasette serves")
            _poll(lambda: _count(base, "botasync", "recordings") == 121)
            _stop(servers.pop())
            servers.append(subprocess.Popen(["bash", "-c", frozen], cwd=tmp_path, env=env,
                                            start_new_session=True, stderr=subprocess.DEVNULL))
            _wait_http(f"{base}/-/versions.json")
            copy = _count(base, "botasync-copy", "recordings")
            assert copy == 121
            assert _count(base, "botasync-copy", "events") == _rows(db, "events")
        finally:
            for proc in [*servers, daemon]:
                _stop(proc)


def _rows(db: Path, table: str = "recordings") -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            n = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        conn.close()
    except sqlite3.Error:
        return -1
    return n


def _poll(predicate: object, timeout: float = 60.0) -> None:
    """`wait_for` for a test without an event loop: poll until true or fail."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"still false after {timeout} s")
        time.sleep(0.1)
