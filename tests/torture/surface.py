"""Scenario 4: secrets and surface.

The API key must appear in no output (logs at debug level, the database and its WAL,
events, `status`, `config show`, error messages); the database file is 0600; a webhook
signature verifies with an HMAC computed here from scratch, and fails for a tampered
body or a stale timestamp; a command handler gets no shell, so a recording named
`; rm -rf x` or `$(touch pwned)` is inert.

Ids become file names and URL paths: against the deployed dialect, with files mirrored,
recordings whose ids would climb out of the files directory (`..`, `/`, `\\`, a NUL, an
absolute path) are never stored, asked for or written, and every file that is written
lands at `<files_dir>/<id>/<id>.<ext>` with the sha256 the API gave.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import sqlite3
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from botasync.simulator import Simulator, World, serve
from botasync.store.sqlite import Store
from tests.torture.harness import (
    API_KEYS,
    KEY,
    SECRET_ENV,
    WEBHOOK_SECRET,
    Run,
    base_sections,
    botasync,
    clean_env,
    spawn,
    stop,
    until,
    write_config,
)

CMD_HANDLER = Path(__file__).resolve().parents[1] / "helpers" / "cmd_handler.py"
HOSTILE_NAMES = ("; rm -rf x", "$(touch pwned)", "`touch pwned-too`", "x && rm -rf x | sh")
# each would, used as a path under the files directory, land outside it (`escape` marks them)
HOSTILE_IDS = ("rec_../../escape1", "rec_sub/../../../escape2", "rec_..", "../../escape3",
               "rec_back\\..\\..\\escape4", "rec_nul\x00escape5", "/tmp/botasync-escape6",
               "rec_%2e%2e%2fescape7")
TOLERANCE_S = 300


def independent_verify(secret: bytes, body: bytes, header: str, now: float) -> bool:
    """The README's receiver-side check, written here without botasync's code."""
    parts = dict(p.split("=", 1) for p in header.split(","))
    expected = hmac.new(secret, parts["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    fresh = abs(now - int(parts["t"])) <= TOLERANCE_S
    return fresh and hmac.compare_digest(expected, parts["v1"])


@dataclass
class SurfaceResult:
    """What the secrets-and-surface run found."""

    outputs_checked: int = 0
    leaks: list[str] = field(default_factory=list)
    modes: dict[str, str] = field(default_factory=dict)
    webhooks: int = 0
    signature_ok: int = 0
    tampered_rejected: int = 0
    stale_rejected: int = 0
    hostile_delivered: int = 0
    hostile_inert: bool = False
    exit_codes: dict[str, int] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = [f"key or secret in {p}" for p in self.leaks]
        out += [f"{f} has mode {m}" for f, m in self.modes.items() if m != "0o600"]
        if not self.webhooks or self.signature_ok != self.webhooks:
            out.append(f"{self.signature_ok}/{self.webhooks} signatures verified")
        if self.tampered_rejected != self.webhooks or self.stale_rejected != self.webhooks:
            out.append(f"tampered rejected {self.tampered_rejected}, stale rejected "
                       f"{self.stale_rejected}, of {self.webhooks}")
        if self.hostile_delivered != len(HOSTILE_NAMES) or not self.hostile_inert:
            out.append(f"hostile names: {self.hostile_delivered} delivered, inert "
                       f"{self.hostile_inert}")
        bad = {k: v for k, v in self.exit_codes.items() if v != (3 if "rejected" in k else 0)}
        return out + ([f"exit codes {bad}"] if bad else [])


async def _receiver(got: list[tuple[dict[str, str], bytes]]) -> tuple[web.AppRunner, str]:
    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


def _check_signatures(result: SurfaceResult, got: list[tuple[dict[str, str], bytes]]) -> None:
    secret = WEBHOOK_SECRET.encode()
    for headers, body in got:
        header = headers.get("Botasync-Signature", "")
        result.webhooks += 1
        if not header:
            continue
        t = int(dict(p.split("=", 1) for p in header.split(","))["t"])
        result.signature_ok += independent_verify(secret, body, header, now=time.time())
        tampered = body.replace(b'"type":"', b'"type":"x', 1) if body else b"x"
        result.tampered_rejected += not independent_verify(secret, tampered, header, now=t)
        result.stale_rejected += not independent_verify(secret, body, header,
                                                        now=t + TOLERANCE_S + 1)


async def run_surface(tmp: Path) -> SurfaceResult:
    """Sync with every handler kind at debug level, then every read command; grep it all."""
    result = SurfaceResult()
    got: list[tuple[dict[str, str], bytes]] = []
    runner, hook_url = await _receiver(got)
    sandbox = tmp / "cwd"
    (sandbox / "x").mkdir(parents=True)
    (sandbox / "x" / "keep-me").write_text("precious\n")
    try:
        async with serve(World(seed=61, recordings=60), api_keys=API_KEYS,
                         rate_limit=None) as sim:
            db = tmp / "botasync.db"
            out = tmp / "hostile.jsonl"
            cfg = write_config(tmp / "botasync.toml", base_sections(
                sim.url, db, logging={"level": "debug"},
                handlers=[
                    {"name": "cmd", "type": "command", "events": ["recording.updated"],
                     "command": [sys.executable, str(CMD_HANDLER), str(out), "append"]},
                    {"name": "hook", "type": "webhook", "url": hook_url, "secret_env": SECRET_ENV,
                     "signature": "botasync"},  # the scheme independent_verify checks
                    {"name": "log", "type": "log"},
                ]))
            env = clean_env(**{SECRET_ENV: WEBHOOK_SECRET})
            runs: dict[str, Run] = {}
            runs["sync"] = await botasync("sync", "--config", str(cfg), env=env, cwd=sandbox)
            for rid, name in zip(sim.world.ids()[3:], HOSTILE_NAMES, strict=False):
                sim.world.update(rid, name=name)
            runs["daemon"] = await _daemon_until_delivered(tmp, cfg, env, sandbox, out)
            result.modes = await _modes(db)
            await _read_commands(cfg, env, runs)
        result.exit_codes = {k: r.code for k, r in runs.items()}
        files = [db, db.with_name(db.name + "-wal"), out, tmp / "daemon.log"]
        _grep(result, runs, files)
        _check_signatures(result, got)
        _check_hostile(result, out, sandbox)
    finally:
        await runner.cleanup()
    return result


async def _daemon_until_delivered(
    tmp: Path, cfg: Path, env: dict[str, str], cwd: Path, out: Path
) -> Run:
    """`botasync run` until the command handler has every hostile rename, then SIGTERM."""
    log = tmp / "daemon.log"
    proc = await spawn("run", "--config", str(cfg), log_to=log, env=env, cwd=cwd)
    try:
        await until(lambda: out.exists() and len(out.read_text().splitlines())
                    >= len(HOSTILE_NAMES), 20)
    finally:
        code = await stop(proc, signal.SIGTERM)
    return Run(code, "", log.read_text())


async def _modes(db: Path) -> dict[str, str]:
    """The permissions of the database and, while it is open, of its WAL and shared memory."""
    async with await Store.open(db) as store:
        await store.fetchall("SELECT count(*) FROM recordings")
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        return {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files if f.exists()}


async def _read_commands(cfg: Path, env: dict[str, str], runs: dict[str, Run]) -> None:
    """Every command that shows something, and an error that quotes the request."""
    for name, args in {
        "status": ["status"], "status_json": ["status", "--json"],
        "config_show": ["config", "show"], "config_check": ["config", "check"],
        "events": ["events", "list", "--json", "--limit", "1000"],
        "recordings": ["recordings", "list", "--json", "--limit", "1000"],
    }.items():
        runs[name] = await botasync(*args, "--config", str(cfg), env=env)
    runs["rejected_key"] = await botasync(
        "sync", "--config", str(cfg), env={**env, "BOTA_API_KEY": "sk_test_T0rture-rejected-9"})


def _grep(result: SurfaceResult, runs: dict[str, Run], files: list[Path]) -> None:
    needles = [KEY.encode(), WEBHOOK_SECRET.encode(), b"sk_test_T0rture-rejected-9"]
    for name, run in runs.items():
        result.outputs_checked += 2
        text = (run.out + run.err).encode()
        result.leaks += [f"{name} output" for n in needles if n in text]
    for f in files:
        if f.exists():
            result.outputs_checked += 1
            data = f.read_bytes()
            result.leaks += [str(f) for n in needles if n in data]


def _check_hostile(result: SurfaceResult, out: Path, sandbox: Path) -> None:
    """Every hostile name reached the handler as plain data, and nothing ran."""
    seen: list[Any] = []
    for line in out.read_text().splitlines() if out.exists() else []:
        seen.append(json.loads(json.loads(line)["stdin"])["data"]["name"])
    result.hostile_delivered = len([n for n in HOSTILE_NAMES if n in seen])
    untouched = (sandbox / "x" / "keep-me").exists()
    spawned = [p.name for p in sandbox.iterdir() if p.name.startswith("pwned")]
    spawned += [p.name for p in Path.cwd().iterdir() if p.name.startswith("pwned")]
    result.hostile_inert = untouched and not spawned


# --- ids that would be paths (deployed dialect, files mirrored) ------------------------------


@dataclass
class PathsResult:
    """What the hostile-ids run found."""

    recordings: int = 0
    files_expected: int = 0
    files: list[str] = field(default_factory=list)  # relative to files_dir
    stored_hostile: list[str] = field(default_factory=list)
    asked_hostile: list[str] = field(default_factory=list)
    escaped: list[str] = field(default_factory=list)
    hash_wrong: list[str] = field(default_factory=list)
    exit_codes: dict[str, int] = field(default_factory=dict)

    def problems(self) -> list[str]:
        out = [f"stored: {i!r}" for i in self.stored_hostile]
        out += [f"requested: {p!r}" for p in self.asked_hostile]
        out += [f"outside files_dir: {p}" for p in self.escaped]
        out += [f"sha256 differs: {p}" for p in self.hash_wrong]
        if len(self.files) != self.files_expected:
            out.append(f"{len(self.files)} files, not {self.files_expected}")
        bad = {k: v for k, v in self.exit_codes.items() if v != 0}
        return out + ([f"exit codes {bad}"] if bad else [])


async def run_hostile_ids(tmp: Path) -> PathsResult:
    """Mirror a deployed world, files included, with hostile ids at the top of its list."""
    result = PathsResult()
    work, files_dir = tmp / "cwd", tmp / "deep" / "files"
    work.mkdir(parents=True)
    async with serve(World(seed=62, recordings=12, dialect="deployed"), api_keys=API_KEYS,
                     rate_limit=None, download_rate_limit=None) as sim:
        donor = next(i for i in sim.world.all() if i.get("audio_url"))
        for n, rec_id in enumerate(HOSTILE_IDS):  # each with a working file URL
            sim.world.put_raw({**donor, "id": rec_id}, n)
        db = tmp / "botasync.db"
        cfg = write_config(tmp / "botasync.toml", base_sections(
            sim.url, db, media={"download": True, "files_dir": str(files_dir),
                                "requests_per_minute": 100_000, "concurrency": 4}))
        for name, args in {"sync": ["sync"],
                           "download": ["files", "download", "--timeout", "60"]}.items():
            run = await botasync(*args, "--config", str(cfg), cwd=work, timeout=90)
            result.exit_codes[name] = run.code
        _check_paths(result, sim, db, files_dir, tmp)
    return result


def _check_paths(result: PathsResult, sim: Simulator, db: Path, files_dir: Path,
                 tmp: Path) -> None:
    """Nothing of a hostile id stored or asked for; every file where it belongs, intact."""
    world = {i["id"]: i for i in sim.world.all() if i.get("id") not in HOSTILE_IDS}
    result.recordings = len(world)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        stored = {r[0] for r in conn.execute("SELECT id FROM recordings UNION "
                                             "SELECT recording_id FROM media")}
    result.stored_hostile = sorted(stored & set(HOSTILE_IDS))
    result.asked_hostile = sorted({r.path for r in sim.requests if "escape" in r.path
                                   or "/.." in r.path or r.path.endswith("/rec_..")})
    with_file = [i for i in world.values() if i.get("audio_url")]
    result.files_expected = len(with_file)
    root = files_dir.resolve()
    lock = files_dir / ".botasync.lock"  # the downloader's own, one per files directory
    for path in sorted(p for p in files_dir.rglob("*") if p.is_file() and p != lock):
        rel = path.relative_to(files_dir)
        result.files.append(str(rel))
        item = world.get(rel.parts[0])
        if not path.resolve().is_relative_to(root) or item is None or len(rel.parts) != 2 \
                or not rel.name.startswith(f"{item['id']}."):
            result.escaped.append(str(rel))
        elif hashlib.sha256(path.read_bytes()).hexdigest() != item.get("content_sha256"):
            result.hash_wrong.append(str(rel))
    result.escaped += [str(p) for p in (*tmp.rglob("*escape*"), *Path("/tmp").glob(
        "botasync-escape*"))]
