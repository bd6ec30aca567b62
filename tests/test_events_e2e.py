"""Events end to end: `botasync sync` processes deliver a world's changes to real handlers.

The main scenario runs against both dialects of the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from botasync.simulator import Dialect, Simulator, World
from tests import zygote
from tests.conftest import SimulatorFactory, wait_for
from tests.mirror import mirror_diff
from tests.pgserver import TestDb

KEY = "sk_test_botasync"
HANDLER = '''
import json, os, sys, time
out, mode = sys.argv[1], sys.argv[2]
event = json.loads(sys.stdin.read())
if mode == "fail":
    sys.exit(4)
if mode == "block":
    with open(out + ".started", "a") as f:
        f.write(f"{os.getpid()} {event['id']}\\n")
    time.sleep(60)
with open(out, "a") as f:
    f.write(json.dumps({"env_id": os.environ["BOTASYNC_EVENT_ID"], "event": event}) + "\\n")
'''


def write_cfg(tmp_path: Path, sim: Simulator, handlers: list[tuple[str, str]],
              max_attempts: int = 10, db: TestDb | None = None) -> Path:
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    db = db or TestDb("sqlite", tmp_path / "botasync.db")
    lines = ["[api]", f'base_url = "{sim.url}"', f'api_key = "{KEY}"',
             "[database]", f'path = "{db.path}"', f'url = "{db.url}"',
             "[events]", f"max_attempts = {max_attempts}", "backoff_base_s = 0.01",
             "backoff_max_s = 0.05"]
    for name, mode in handlers:
        argv = [sys.executable, str(script), str(tmp_path / f"{name}.jsonl"), mode]
        lines += ["[[handlers]]", f'name = "{name}"', 'type = "command"',
                  f"command = {json.dumps(argv)}", "timeout_s = 20"]
    path = tmp_path / "botasync.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def botasync(*args: str, cfg: Path) -> tuple[int, str, str]:
    proc = await zygote.botasync(*args, "--config", str(cfg), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, env={**os.environ, "BOTASYNC_CONFIG": ""})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def delivered(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# Per dialect: (status before the backfill, the change after it) per recording, and the
# events the second sync must deliver. The deployed dialect has its own statuses
# (`streaming`, `integrity_failure`) and no transcript id on the recording.
Move = tuple[dict[str, Any], dict[str, Any]]
MOVES: dict[str, list[Move]] = {
    "documented": [
        ({"status": "processing", "transcription_id": None},
         {"status": "completed", "transcription_id": "txn_a1"}),
        ({"status": "processing", "transcription_id": None},
         {"status": "completed", "transcription_id": "txn_a2"}),
        ({"status": "processing", "transcription_id": None}, {"status": "completed"}),
        ({"status": "uploaded", "transcription_id": None}, {"status": "processing"}),
        ({"status": "uploaded", "transcription_id": None}, {"status": "processing"}),
    ],
    "deployed": [
        ({"status": "processing"}, {"status": "completed"}),
        ({"status": "processing"}, {"status": "completed"}),
        ({"status": "processing"}, {"status": "failed"}),
        ({"status": "uploaded"}, {"status": "processing"}),
        ({"status": "uploaded"}, {"status": "processing"}),
        ({"status": "pending"}, {"status": "streaming"}),
        ({"status": "uploaded"}, {"status": "integrity_failure"}),
    ],
}
EXPECTED: dict[str, dict[str, int]] = {
    "documented": {
        "recording.completed": 3, "recording.processing": 2, "recording.status_changed": 5,
        "recording.transcribed": 2, "recording.updated": 1, "recording.deleted": 1,
        "recording.created": 1,
    },
    "deployed": {
        "recording.completed": 2, "recording.failed": 1, "recording.processing": 2,
        "recording.streaming": 1, "recording.integrity_failure": 1,
        "recording.status_changed": 7, "recording.updated": 1, "recording.deleted": 1,
        "recording.created": 1,
    },
}


@pytest.mark.parametrize("dialect", ["documented", "deployed"])
async def test_backfill_then_changes_deliver_exactly_their_events(
    simulator_factory: SimulatorFactory, tmp_path: Path, dialect: Dialect,
) -> None:
    """After a backfill of 300, one sync delivers each change's events once, with unique ids."""
    sim = await simulator_factory(World(seed=31, recordings=300, dialect=dialect))
    world = sim.world
    ids = [i["id"] for i in world.all()[20:300:25]]
    moves = MOVES[dialect]
    moved, rename, victim = ids[:len(moves)], ids[len(moves)], ids[len(moves) + 1]
    for rid, (before, _) in zip(moved, moves, strict=True):
        world.update(rid, **before)
    cfg = write_cfg(tmp_path, sim, [("cmd", "append")])
    code, _, err = await botasync("sync", cfg=cfg)
    assert code == 0, err
    assert delivered(tmp_path / "cmd.jsonl") == []  # the backfill stays in the outbox

    for rid, (_, after) in zip(moved, moves, strict=True):
        world.update(rid, **after)
    world.update(rename, name="Renamed in the test")
    old_name = _old_name(tmp_path, rename)
    world.delete(victim)
    new = world.create(name="Brand new")
    code, _, err = await botasync("sync", cfg=cfg)
    assert code == 0, err

    got = delivered(tmp_path / "cmd.jsonl")
    events = [g["event"] for g in got]
    assert all(g["env_id"] == g["event"]["id"] for g in got)
    assert len({e["id"] for e in events}) == len(events)
    assert Counter(e["type"] for e in events) == EXPECTED[dialect]
    for rid, (before, after) in zip(moved, moves, strict=True):  # each its own status event
        named = [e for e in events if e["type"] == f"recording.{after['status']}"
                 and e["data"]["id"] == rid]
        assert [(e["data"]["status"], e["previous"]) for e in named] == \
            [(after["status"], {"status": before["status"]})]
    transcribed = {e["data"]["id"] for e in events if e["type"] == "recording.transcribed"}
    assert transcribed == {rid for rid, (_, a) in zip(moved, moves, strict=True)
                           if a.get("transcription_id")}
    assert [(e["data"]["id"], e["previous"]) for e in events
            if e["type"] == "recording.updated"] == [(rename, {"name": old_name})]
    assert [e["data"]["id"] for e in events if e["type"] == "recording.deleted"] == [victim]
    assert [e["data"]["id"] for e in events if e["type"] == "recording.created"] == [new["id"]]
    assert mirror_diff(tmp_path / "botasync.db", world.all()) == []

    code, _out, err = await botasync("sync", cfg=cfg)
    assert code == 0
    assert len(delivered(tmp_path / "cmd.jsonl")) == len(got)  # nothing changed, nothing new


def _old_name(tmp_path: Path, rec_id: str) -> Any:
    """The name the backfill stored, from the recording.created event of the backfill."""
    with sqlite3.connect(tmp_path / "botasync.db") as conn:
        payload = conn.execute("SELECT payload FROM events WHERE recording_id = ? AND "
                               "type = 'recording.created'", (rec_id,)).fetchone()[0]
    return json.loads(payload)["data"]["name"]


async def test_failing_handler_goes_dead_and_others_get_everything(
    simulator_factory: SimulatorFactory, tmp_path: Path, database: TestDb,
) -> None:
    """A handler that always fails ends dead after max_attempts; the other got every event."""
    sim = await simulator_factory(World(seed=32, recordings=120))
    cfg = write_cfg(tmp_path, sim, [("good", "append"), ("bad", "fail")], max_attempts=3,
                    db=database)
    assert (await botasync("sync", cfg=cfg))[0] == 0
    for item in sim.world.all()[:4]:
        sim.world.update(item["id"], name="changed " + item["id"])
    code, _, err = await botasync("sync", cfg=cfg)
    assert code == 0, err
    good = delivered(tmp_path / "good.jsonl")
    assert Counter(g["event"]["type"] for g in good) == {"recording.updated": 4}
    rows = database.rows("SELECT state, attempts FROM deliveries WHERE handler = 'bad'")
    assert rows and all(r == ("dead", 3) for r in rows) and len(rows) == 4
    code, out, _ = await botasync("status", "--json", cfg=cfg)
    assert json.loads(out)["handlers"]["bad"]["dead"] == 4


async def test_sigkill_between_commit_and_delivery_loses_nothing(
    simulator_factory: SimulatorFactory, tmp_path: Path, database: TestDb,
) -> None:
    """Killed while a handler holds an event, the next run delivers it with the same id."""
    sim = await simulator_factory(World(seed=33, recordings=80))
    assert (await botasync("sync", cfg=write_cfg(tmp_path, sim, [("h", "append")],
                                                 db=database)))[0] == 0
    for item in sim.world.all()[:3]:
        sim.world.update(item["id"], name="edited")
    cfg = write_cfg(tmp_path, sim, [("h", "block")], db=database)
    proc = await zygote.botasync("sync", "--config", str(cfg), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL,
                                 env={**os.environ, "BOTASYNC_CONFIG": ""})
    started = tmp_path / "h.jsonl.started"
    # the handler opens the file, then writes its line: wait for the line, not the file
    await wait_for(lambda: started.exists() and len(started.read_text().split()) >= 2,
                   timeout=30)
    handler_pid, first_id = started.read_text().split()[:2]
    proc.kill()
    await proc.wait()
    os.kill(int(handler_pid), signal.SIGKILL)
    committed = [r[0] for r in database.rows(
        "SELECT id FROM events WHERE type = 'recording.updated' ORDER BY seq")]
    assert first_id in committed and len(committed) == 3
    code, _, err = await botasync("sync", cfg=write_cfg(tmp_path, sim, [("h", "append")],
                                                        db=database))
    assert code == 0, err
    got = [g["event"]["id"] for g in delivered(tmp_path / "h.jsonl")]
    assert got == committed  # every committed event, in order, the interrupted one included


async def test_replay_and_list_the_backfill(
    simulator_factory: SimulatorFactory, tmp_path: Path, database: TestDb,
) -> None:
    """The backfill stays in the outbox; `events replay` delivers it, in order, on demand."""
    sim = await simulator_factory(World(seed=34, recordings=60))
    cfg = write_cfg(tmp_path, sim, [("cmd", "append")], db=database)
    assert (await botasync("sync", cfg=cfg))[0] == 0
    code, out, _ = await botasync("events", "list", "--json", "--limit", "100", cfg=cfg)
    listed = json.loads(out)
    assert code == 0 and len(listed) == 60 and all(e["backfill"] for e in listed)
    code, out, err = await botasync("events", "replay", "--handler", "cmd", "--type",
                                    "recording.*", cfg=cfg)
    assert code == 0, err
    assert "60 delivered, 0 failed" in out
    got = [g["event"]["id"] for g in delivered(tmp_path / "cmd.jsonl")]
    assert got == [e["id"] for e in reversed(listed)]  # seq order
    code, _, err = await botasync("events", "replay", "--handler", "nope", cfg=cfg)
    assert code == 2 and "no handler named 'nope'" in err
