"""Several workers on one PostgreSQL, one killed with SIGKILL in the middle of a walk:
`python bench/workers.py [--workers 3] [--projects 6] [--write]`.

Issue 16's second must-hold: its projects go on within `lease_s` plus one tick; 0 rows
wrong, 0 events lost, no event delivered twice except those in flight at the kill (same
id).

The run: a throwaway PostgreSQL (`pg_virtualenv`, fsync on), the simulator serving
`--projects` worlds in its own process (`bench/projects_sim.py`: a key, a world and a
server-side rate limit per project, answers delayed `--latency-ms`), and `--workers`
`botasync run` processes with one config: the database URL, every project as a
`[[projects]]` entry at `--rpm` requests a minute (lowered from 90 so that a first walk
spans minutes and the kill lands inside one), `[events] deliver_backfill = true` (every
event of the first walks is delivered too: thousands in the outbox at the kill) and one
handler, `bench/workers_sink.py`, which appends `<pid> <event id>` to a file per
delivery. The worlds keep changing from the start to the end (`/_sim/move`).

Once every worker holds a project and the chosen one (the worker holding the most
projects) is in the middle of a walk, it is killed with SIGKILL. Then, per project it
held: the seconds from the kill to the first pass another worker started on it (from
`sync_runs`). When the worlds stop moving, the bench waits for a complete walk of every
project started after that, and compares each mirror with its world field by field
(`tests/mirror.py`); then for the handler to have every event of the outbox, and counts
the events never delivered, those delivered more than once, and of these the ones whose
every delivery but the last was the killed worker's (in flight at the kill: allowed).
Also counted: two walks, or two ticks, of one project that overlapped in time (two workers
syncing it at once; the killed worker's unfinished pass excepted; a tick beside its own
worker's reconcile walk is by design). The survivors are stopped with
SIGTERM and must exit 0.

`--write` puts the table into bench/RESULTS.md between the `workers` markers.
Exits 1 when a must-hold figure is missed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from env import PY, load_average, machine  # noqa: E402
from procs import Background, http_json  # noqa: E402
from sections import replace_section  # noqa: E402

from tests.mirror import mirror_diff  # noqa: E402
from tests.pgserver import PgServer, TestDb  # noqa: E402
from tests.pgserver import start as start_postgres  # noqa: E402

SINK = "sink"


def say(text: str) -> None:
    print(f"[workers {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def wait(what: str, check: Any, timeout_s: float, every_s: float = 0.25) -> Any:
    """Poll `check()` until it returns something true; its value, or exit on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


class Sim:
    """The simulator process serving N projects, and its admin endpoints."""

    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        argv = [PY, str(BENCH / "projects_sim.py"), "--projects", str(args.projects),
                "--recordings", str(args.recordings), "--seed", str(args.seed),
                "--latency-ms", str(args.latency_ms),
                "--rate-limit", str(math.ceil(args.rpm / 0.9))]
        self.bg = Background(argv, log_path=log_path)
        ready = json.loads(self.bg.readline(timeout_s=600))
        self.url: str = ready["url"]
        self.origin: str = ready["origin"]
        self.keys: list[str] = ready["keys"]

    def move(self, project: int, every_s: float) -> None:
        http_json(f"{self.origin}/_sim/move?every_s={every_s}&changes=1&project={project}",
                  "POST")

    def freeze(self, project: int) -> None:
        http_json(f"{self.origin}/_sim/freeze?project={project}", "POST")

    def world(self, project: int) -> list[dict[str, Any]]:
        return http_json(f"{self.origin}/_sim/recordings?project={project}",  # type: ignore[no-any-return]
                         timeout_s=300)["data"]

    def stop(self) -> None:
        self.bg.stop(signal.SIGINT, grace_s=10)


def write_config(path: Path, args: argparse.Namespace, sim: Sim, url: str) -> None:
    lines = ["[api]", f"base_url = {json.dumps(sim.url)}", f"requests_per_minute = {args.rpm}",
             "", "[database]", f"url = {json.dumps(url)}", f"lease_s = {args.lease_s}", "",
             "[sync]", f"interval_s = {args.interval_s}",
             f"reconcile_every_s = {args.reconcile_every_s}", "",
             "[events]", "deliver_backfill = true", "",
             "[logging]", 'level = "info"', 'format = "json"', "",
             "[[handlers]]", f'name = "{SINK}"', 'type = "python"',
             'target = "workers_sink:handle"', ""]
    for i in range(args.projects):
        lines += ["[[projects]]", f'name = "p{i}"', f"api_key = {json.dumps(sim.keys[i])}", ""]
    path.write_text("\n".join(lines))


def worker_env(config: Path, sink: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOTA_", "BOTASYNC_"))}
    env.update(BOTASYNC_CONFIG=str(config), BOTASYNC_BENCH_SINK=str(sink),
               PYTHONPATH=os.pathsep.join([str(BENCH), env.get("PYTHONPATH", "")]).rstrip(
                   os.pathsep))
    return env


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


class Db:
    """The bench's reads of the shared database (plain psycopg, outside botasync)."""

    def __init__(self, server: PgServer, name: str, path: Path) -> None:
        self.handle = TestDb("postgres", path, server.url(name), server, name)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.handle.rows(sql, params)
        except Exception:  # no tables yet, while the first worker migrates
            return []

    def holders(self) -> dict[str, int]:
        """Project -> the pid of the worker holding its lease now (unexpired)."""
        now = time.time()
        return {str(n).removeprefix("project:"): int(pid) for n, pid, until in self.rows(
            "SELECT l.name, w.pid, l.expires_at FROM leases l JOIN workers w "
            "ON w.id = l.holder WHERE l.name LIKE 'project:%'")
            if (ts(until) or 0) > now}

    def walking(self) -> set[str]:
        """Projects with a walk in progress that has committed a page."""
        return {str(r[0]) for r in self.rows(
            "SELECT project FROM sync_runs WHERE kind IN ('full', 'reconcile') "
            "AND ended_at IS NULL AND position > 0")}

    def runs(self) -> list[tuple[str, str, float | None, float | None, bool]]:
        return [(str(p), str(k), ts(s), ts(e), bool(c)) for p, k, s, e, c in self.rows(
            "SELECT project, kind, started_at, ended_at, complete FROM sync_runs ORDER BY id")]

    def event_ids(self) -> set[str]:
        return {str(r[0]) for r in self.rows("SELECT id FROM events")}


def overlaps(runs: list[tuple[str, str, float | None, float | None, bool]]) -> int:
    """Pairs of one project's walks, or of its ticks, that ran at the same time: two holders
    at once (one worker runs a tick beside its own reconcile walk, by design, but never two
    walks nor two ticks of a project). A pass the kill left unfinished (no end) is ignored."""
    by: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for project, kind, start, end, _ in runs:
        if start is not None and end is not None:
            by.setdefault((project, kind in ("full", "reconcile")), []).append((start, end))
    count = 0
    for spans in by.values():
        spans.sort()
        count += sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1] - 1e-3)
    return count


def sink_lines(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, _, eid = line.partition(" ")
        if eid:
            out.append((int(pid), eid))
    return out


def run(args: argparse.Namespace, work: Path, server: PgServer) -> dict[str, Any]:
    name = server.create_database()
    db = Db(server, name, work / "botasync.db")
    say(f"simulator: {args.projects} projects x {args.recordings:,} recordings ...")
    sim = Sim(args, work / "simulator.log")
    config, sink = work / "botasync.toml", work / "sink.txt"
    write_config(config, args, sim, server.url(name))
    workers: dict[int, Background] = {}
    names: dict[int, str] = {}
    try:
        for i in range(args.projects):
            sim.move(i, args.move_every_s)
        for k in range(args.workers):
            bg = Background([PY, "-m", "botasync", "run"], env=worker_env(config, sink),
                            log_path=work / f"worker{k}.log")
            workers[bg.proc.pid] = bg
            names[bg.proc.pid] = f"w{k}"
        say(f"{args.workers} workers started; waiting for each to hold a project and one "
            "to be inside a walk ...")

        def victim() -> int | None:
            held = db.holders()
            mid = db.walking()
            owners = Counter(held.values())
            if len(held) < args.projects or any(owners[p] == 0 for p in workers):
                return None
            busy = [(owners[pid], pid) for p, pid in held.items() if p in mid]
            return max(busy)[1] if busy else None

        target = wait("a worker inside a walk", victim, args.timeout)
        held_before = db.holders()
        victims = sorted(p for p, pid in held_before.items() if pid == target)
        mid_walk = sorted(set(victims) & db.walking())
        killed_at = time.time()
        workers[target].proc.send_signal(signal.SIGKILL)
        workers[target].proc.wait()
        say(f"killed {names[target]} (pid {target}) holding {victims}, in a walk on {mid_walk}")

        def taken_over() -> dict[str, float] | None:
            firsts: dict[str, float] = {}
            for project, _kind, start, _end, _ in db.runs():
                if project in victims and start is not None and start > killed_at:
                    firsts.setdefault(project, start - killed_at)
            return firsts if len(firsts) == len(victims) else None

        takeover = wait("the killed worker's projects to go on", taken_over,
                        args.lease_s + args.interval_s + args.timeout)
        held_after = db.holders()
        say(f"taken over in {max(takeover.values()):.1f} s at most")
        for i in range(args.projects):
            sim.freeze(i)
        frozen_at = time.time()

        def walked_since() -> bool:
            done = {p for p, k, s, _e, c in db.runs()
                    if k in ("full", "reconcile") and c and s is not None and s > frozen_at}
            return len(done) == args.projects

        say("worlds frozen; waiting for a complete walk of every project ...")
        wait("a complete walk of every project after the freeze", walked_since,
             args.reconcile_every_s * 2 + args.timeout, every_s=1.0)
        problems = {f"p{i}": mirror_diff(db.handle, sim.world(i), f"p{i}")
                    for i in range(args.projects)}
        ids = db.event_ids()
        say(f"mirrors compared; waiting for the handler to have all {len(ids):,} events ...")

        def delivered_all() -> bool:
            return ids <= {e for _, e in sink_lines(sink)}

        drained = True
        try:
            wait("every event delivered", delivered_all, args.timeout, every_s=1.0)
        except SystemExit:
            drained = False
        lines = sink_lines(sink)
        stopped = {names[pid]: bg.stop(signal.SIGTERM, grace_s=30)
                   for pid, bg in workers.items() if pid != target}
    finally:
        for bg in workers.values():
            bg.stop(signal.SIGKILL, grace_s=5)
        sim.stop()
    per_id: dict[str, list[int]] = {}
    for pid, eid in lines:
        per_id.setdefault(eid, []).append(pid)
    repeated = {e: p for e, p in per_id.items() if len(p) > 1}
    in_flight = {e for e, p in repeated.items() if all(x == target for x in p[:-1])}
    return {
        "workers": args.workers, "projects": args.projects, "recordings": args.recordings,
        "victim": names[target], "victim_projects": victims, "mid_walk": mid_walk,
        "holders_before": {p: names.get(pid, str(pid)) for p, pid in sorted(held_before.items())},
        "holders_after": {p: names.get(pid, str(pid)) for p, pid in sorted(held_after.items())},
        "takeover_s": {p: round(s, 2) for p, s in sorted(takeover.items())},
        "takeover_max_s": round(max(takeover.values()), 2),
        "bound_s": args.lease_s + args.interval_s,
        "rows_wrong": sum(len(v) for v in problems.values()),
        "problems": {p: v[:3] for p, v in problems.items() if v},
        "events": len(ids), "deliveries": len(lines), "drained": drained,
        "lost": len(ids - set(per_id)), "repeated": len(repeated),
        "repeated_in_flight": len(in_flight), "repeated_wrong": len(repeated) - len(in_flight),
        "overlapping_passes": overlaps(db.runs()),
        "exit_codes": stopped,
    }


def holds(r: dict[str, Any]) -> list[str]:
    missed = []
    if r["takeover_max_s"] > r["bound_s"]:
        missed.append(f"takeover {r['takeover_max_s']} s > lease_s + one tick ({r['bound_s']} s)")
    for key in ("rows_wrong", "lost", "repeated_wrong", "overlapping_passes"):
        if r[key]:
            missed.append(f"{key} {r[key]}")
    if not r["drained"]:
        missed.append("not every event delivered")
    if any(code != 0 for code in r["exit_codes"].values()):
        missed.append(f"exit codes {r['exit_codes']}")
    return missed


def render(r: dict[str, Any], args: argparse.Namespace, m: dict[str, Any], took: float,
           version: str) -> str:
    missed = holds(r)
    take = ", ".join(f"{p} {s} s" for p, s in r["takeover_s"].items())
    after = ", ".join(f"{p} {w}" for p, w in r["holders_after"].items()
                      if p in r["victim_projects"])
    return "\n".join([
        "## Several workers on one PostgreSQL, one killed",
        "",
        f"Written by `python bench/workers.py --write` on {m['date']} ({m['cores']} cores, "
        f"{m['cpu_model']}; Python {m['python']}; PostgreSQL {version}, a throwaway cluster "
        f"with fsync on; botasync commit `{m['commit']}`; load average {m['load_start']} at "
        f"the start, {load_average()} at the end; {took / 60:.1f} minutes in all).",
        "",
        f"{args.workers} `botasync run` workers share {args.projects} projects x "
        f"{args.recordings:,} recordings (each its own key, world and server limit of "
        f"{math.ceil(args.rpm / 0.9)} a minute; botasync's budget {args.rpm}), `lease_s = "
        f"{args.lease_s}`, `interval_s = {args.interval_s}`, `reconcile_every_s = "
        f"{args.reconcile_every_s}`, every event delivered (backfill included) to one "
        f"handler that appends `<pid> <event id>` per delivery; the worlds change every "
        f"{args.move_every_s} s each until the end. {r['victim']} was killed with SIGKILL "
        f"while it held {', '.join(r['victim_projects'])} and walked "
        f"{', '.join(r['mid_walk'])}.",
        "",
        "| figure | measured | must hold |",
        "| --- | --- | --- |",
        f"| its projects going on (kill to another worker's first pass) | {take} "
        f"(now held by: {after}) | within lease_s + one tick = {r['bound_s']:g} s |",
        f"| rows wrong (every project's mirror vs its world, after a walk) | "
        f"{r['rows_wrong']} | 0 |",
        f"| events (backfill and changes) / deliveries | {r['events']:,} / "
        f"{r['deliveries']:,} | |",
        f"| events never delivered | {r['lost']} | 0 |",
        f"| events delivered twice: in flight at the kill (same id) / other | "
        f"{r['repeated_in_flight']} / {r['repeated_wrong']} | any / 0 |",
        f"| two walks, or two ticks, of one project at the same time | "
        f"{r['overlapping_passes']} | 0 |",
        f"| survivors' exit codes at SIGTERM | "
        f"{', '.join(f'{k} {v}' for k, v in r['exit_codes'].items())} | 0 |",
        "",
        "Must hold: " + ("**all held**." if not missed else "**missed**: " + "; ".join(missed)),
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--projects", type=int, default=6)
    p.add_argument("--recordings", type=int, default=3000, help="per project")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--latency-ms", type=int, default=30)
    p.add_argument("--rpm", type=int, default=30,
                   help="each project's requests_per_minute (low: a walk spans minutes)")
    p.add_argument("--lease-s", type=float, default=30.0)
    p.add_argument("--interval-s", type=float, default=5.0)
    p.add_argument("--reconcile-every-s", type=float, default=120.0)
    p.add_argument("--move-every-s", type=float, default=2.0)
    p.add_argument("--timeout", type=float, default=900.0, help="for each wait (s)")
    p.add_argument("--work", type=Path, help="scratch directory, kept (default: a temporary one)")
    p.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    args = p.parse_args()
    started = time.monotonic()
    m = machine()
    server, why = start_postgres(gucs=())
    if server is None:
        raise SystemExit(why)
    tmp = None
    if args.work:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="botasync-workers-")
        work = Path(tmp.name)
    try:
        with server.connect() as conn:
            version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
        result = run(args, work, server)
    finally:
        server.stop()
        if tmp is not None:
            tmp.cleanup()
    print(json.dumps(result, indent=1))
    text = render(result, args, m, time.monotonic() - started, version)
    print(text)
    if args.write:
        replace_section(BENCH / "RESULTS.md", "workers", text)
    return 1 if holds(result) else 0


if __name__ == "__main__":
    sys.exit(main())
