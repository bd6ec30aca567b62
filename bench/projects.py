"""Many Bota projects in one botasync process: `python bench/projects.py [--projects 20]
[--recordings 5000] [--write] [--database-url URL] [--profile]`.

Issue 16's first must-hold: N projects x R recordings in one process, every project
exact, no project ever over its own budget, peak RSS under 300 MB, and the first sync of
all N about as long as one project's alone (they run side by side: the ratio).

The simulator (`bench/projects_sim.py`) runs in its own process: `projects=N`, keys
`sk_test_project_0..N-1`, each its own seeded world and its own rate limit per key,
answers delayed `--latency-ms` (60) like a real API across a network. botasync runs as
`python -m botasync sync --json` in a child process with a config of `[[projects]]`
entries (name `pI`, `api_key = "sk_test_project_I"`), into a fresh SQLite file per run
(or `[database] url` with `--database-url`). Measured per run: wall time (spawn to
exit), the process's peak RSS as the kernel counts it (VmHWM, its high-water mark since
exec, read every 50 ms; not `ru_maxrss`, which for a child counts the pages of the
bench it was forked from), its CPU time (`wait4`), its threads' time on a core and
waiting for one (`schedstat`), and the simulator's CPU over the same span. Then, from the
simulator's request log: each key's list / detail requests, 429s, and the most requests
that key sent in any 60 s span (sliding, so it is at least any fixed window's count)
against its budget; and each project's mirror compared with its world field by field
(`tests/mirror.py`'s `mirror_diff`).

Two cases, each "one project alone" (a config with one entry) then "all N at once":

1. budget-bound, as in production. 5,000 recordings are ~50 list pages per project; at
   the default 90 a minute that fits in one window, so the rate limit never paces the
   sync and the machine's speed decides. Here `requests_per_minute` is lowered (default
   20, the server enforcing ceil(20 / 0.9) = 23 per key, the 90/100 proportion of Bota)
   and the window is Bota's real 60 s, so one project's ~53 requests need three windows:
   the rate limit paces it, as at 90 a minute it paces any project of more than ~9,000
   recordings (90 pages of 100). Lowering the rate rather than compressing the window
   keeps botasync unpatched (a `botasync sync` child process cannot be given a shorter
   client window; only `requests_per_minute` is configurable) and leaves a real minute
   of CPU time to each window's pages, so the ratio tests the side-by-side design rather
   than the machine's speed.
2. the defaults (90 a minute, the server enforcing 100): the whole first sync fits in
   the first window, so nothing but latency and CPU bounds it; the ratio there says how
   much one process (one core for the event loop; SQLite, one writer) costs when N
   projects' pages land at once. `--profile` runs that all-N sync again under cProfile
   and lists where the time goes.

`--write` puts the tables into bench/RESULTS.md between the `projects` markers.
Exits 1 when a must-hold figure is missed (a mirror not exact, a key over its budget or
answered 429, peak RSS of the all-N process at 300 MB or more, the budget-bound ratio
above 1.1: the bench's reading of "about as long"). The defaults' ratio is reported, not
judged: there the machine's speed decides it.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from env import PY, load_average, machine  # noqa: E402
from procs import Background, http_json, kill_tree, tree_rss  # noqa: E402
from sections import replace_section  # noqa: E402

from tests.mirror import mirror_diff  # noqa: E402
from tests.pgserver import TestDb  # noqa: E402
from tests.pgserver import start as start_postgres  # noqa: E402

WINDOW_S = 60.0  # Bota's window; the client's budget window too (not configurable)
MUST_RSS_MB = 300.0
MUST_RATIO = 1.1
CLK = os.sysconf("SC_CLK_TCK")


@dataclass
class Case:
    name: str
    rpm: int
    server_limit: int
    why: str


@dataclass
class Run:
    case: str
    which: str  # "one" or "all"
    projects: list[int]
    wall_s: float = 0.0
    cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    peak_rss_mb: float = 0.0  # VmHWM, last seen (polled every 50 ms)
    main_cpu_s: float = 0.0  # the event loop's thread on a CPU (sampled every 50 ms)
    main_wait_s: float = 0.0  # ... and runnable, waiting for a CPU (the machine's load)
    other_threads_cpu_s: float = 0.0  # aiosqlite's and any other threads
    other_threads_wait_s: float = 0.0
    exit_code: int | None = None
    timed_out: bool = False
    passes: list[dict[str, Any]] = field(default_factory=list)
    per_project: list[dict[str, Any]] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def exact(self) -> bool | None:
        checks = [p["exact"] for p in self.per_project]
        return None if any(c is None for c in checks) else all(checks)

    @property
    def requests(self) -> int:
        return sum(p["list"] + p["detail"] + p["other"] for p in self.per_project)


def say(msg: str) -> None:
    print(f"[projects {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the simulator process ---------------------------------------------------------------------

class Sim:
    def __init__(self, args: argparse.Namespace, log_path: Path) -> None:
        argv = [PY, str(BENCH / "projects_sim.py"), "--projects", str(args.projects),
                "--recordings", str(args.recordings), "--seed", str(args.seed),
                "--latency-ms", str(args.latency_ms)]
        self.bg = Background(argv, log_path=log_path)
        ready = json.loads(self.bg.readline(timeout_s=600))
        self.url: str = ready["url"]
        self.origin: str = ready["origin"]
        self.keys: list[str] = ready["keys"]
        self.world_build_s: float = ready["world_build_s"]
        self.mark = 0  # the request log's next index

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.bg.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK  # utime, stime

    def set_limit(self, limit: int | None) -> None:
        """Each project's limit per key and minute; setting it opens fresh windows."""
        for i in range(len(self.keys)):
            http_json(f"{self.origin}/_sim/rate-limit?limit={limit or 'off'}&project={i}",
                      "POST")

    def new_requests(self) -> list[dict[str, Any]]:
        got = http_json(f"{self.origin}/_sim/requests?since={self.mark}", timeout_s=120)
        self.mark = got["next"]
        return got["requests"]  # type: ignore[no-any-return]

    def world(self, project: int) -> list[dict[str, Any]]:
        return http_json(f"{self.origin}/_sim/recordings?project={project}",  # type: ignore[no-any-return]
                         timeout_s=300)["data"]

    def rss_mb(self) -> float:
        return tree_rss(self.bg.proc.pid) / 2**20

    def stop(self) -> None:
        self.bg.stop(signal.SIGINT, grace_s=10)


# -- one measured botasync process -------------------------------------------------------------

def write_config(path: Path, sim: Sim, projects: list[int], rpm: int, db: str | None,
                 url: str | None) -> None:
    lines = ["[api]", f"base_url = {json.dumps(sim.url)}", f"requests_per_minute = {rpm}", "",
             "[database]"]
    lines.append(f"url = {json.dumps(url)}" if url else f"path = {json.dumps(db)}")
    lines += ["", "[logging]", 'level = "warning"', 'format = "json"', ""]
    for i in projects:
        lines += ["[[projects]]", f'name = "p{i}"', f"api_key = {json.dumps(sim.keys[i])}", ""]
    path.write_text("\n".join(lines))


def child_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOTA_", "BOTASYNC_"))}
    env["BOTASYNC_CONFIG"] = str(config)
    return env


def vm_hwm(pid: int) -> int:
    """The process's peak RSS so far (VmHWM, bytes): the kernel's high-water mark of its
    address space since exec, so a spike between two polls is not missed."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class _Peak(threading.Thread):
    """Polls one process every 50 ms (its own /proc files: cheap, so the bench does not
    steal the CPU it measures): VmHWM, and its threads' scheduler times."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.halt = pid, 0, threading.Event()
        self.threads: dict[int, tuple[float, float]] = {}  # tid -> last seen

    def run(self) -> None:
        while not self.halt.is_set():
            self.peak = max(self.peak, vm_hwm(self.pid))
            self.threads.update(thread_cpu(self.pid))
            self.halt.wait(0.05)


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """Per thread of `pid` alive now: (seconds on a CPU, seconds runnable but waiting for
    one), from /proc/PID/task/TID/schedstat (the scheduler's own nanosecond counts)."""
    out: dict[int, tuple[float, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            run_ns, wait_ns, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        out[int(tid)] = (int(run_ns) / 1e9, int(wait_ns) / 1e9)
    return out


def run_botasync(run: Run, argv: list[str], env: dict[str, str], log: Path, sim: Sim,
                 timeout_s: float) -> str:
    """Run argv to exit; fill wall, CPU, peak RSS, thread times, the simulator's CPU."""
    sim_cpu = sim.cpu_s()
    started = time.monotonic()
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=err,
                                start_new_session=True)
        peak = _Peak(proc.pid)
        peak.start()
        out: list[bytes] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()

        def too_long() -> None:
            run.timed_out = True
            kill_tree(proc.pid)

        watchdog = threading.Timer(timeout_s, too_long)
        watchdog.start()
        _, status, usage = os.wait4(proc.pid, 0)  # blocks: no polling loop beside the run
        run.wall_s = time.monotonic() - started
        watchdog.cancel()
        peak.halt.set()
        peak.join()
        reader.join(timeout=10)
    proc.returncode = os.waitstatus_to_exitcode(status)
    run.exit_code = proc.returncode
    run.cpu_s = usage.ru_utime + usage.ru_stime
    # not `ru_maxrss`: a child's counts the bench's own pages it was forked with (before exec)
    run.peak_rss_mb = peak.peak / 2**20
    run.main_cpu_s, run.main_wait_s = peak.threads.get(proc.pid, (0.0, 0.0))
    run.other_threads_cpu_s = sum(v[0] for k, v in peak.threads.items() if k != proc.pid)
    run.other_threads_wait_s = sum(v[1] for k, v in peak.threads.items() if k != proc.pid)
    run.sim_cpu_s = sim.cpu_s() - sim_cpu
    run.stderr_tail = log.read_text(errors="replace")[-1500:]
    return b"".join(out).decode(errors="replace")


def max_in_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window_s, lo=i) - i
                for i, t in enumerate(times)), default=0)


def requests_of(entries: list[dict[str, Any]], project: int) -> dict[str, Any]:
    mine = [e for e in entries if e["project"] == project and e["path"].startswith("/v1/")]
    out = {"list": 0, "detail": 0, "other": 0, "429": 0}
    for e in mine:
        if e["status"] == 429:
            out["429"] += 1
        if e["path"] == "/v1/recordings":
            out["list"] += 1
        elif e["path"].startswith("/v1/recordings/"):
            out["detail"] += 1
        else:
            out["other"] += 1
    out["max_per_window"] = max_in_window([e["t"] for e in mine], WINDOW_S)
    return out


def measure(sim: Sim, case: Case, which: str, projects: list[int], args: argparse.Namespace,
            work: Path, profile: Path | None = None) -> Run:
    run = Run(case.name, which, projects)
    tag = f"{case.name}-{which}" + ("-profiled" if profile else "")
    db = str(work / f"{tag}.db")
    url = args.database_url.replace("{run}", tag.replace("-", "_")) if args.database_url else None
    mirror: Path | TestDb | None = None if url else Path(db)
    if args.pg is not None:  # --postgres: a new database on the bench's own cluster
        name = args.pg.create_database()
        url = args.pg.url(name)
        mirror = TestDb("postgres", Path(db), url, args.pg, name)
    cfg = work / f"{tag}.toml"
    for old in (Path(db), Path(db + "-wal"), Path(db + "-shm"), Path(db + ".lock")):
        old.unlink(missing_ok=True)  # a first sync: an empty database every time
    write_config(cfg, sim, projects, case.rpm, db, url)
    sim.set_limit(case.server_limit)  # fresh server windows for this run's keys
    sim.new_requests()  # skip what came before
    argv = [PY, "-m", "botasync", "sync", "--json"]
    if profile:
        argv = [PY, "-m", "cProfile", "-o", str(profile), "-m", "botasync", "sync", "--json"]
    stdout = run_botasync(run, argv, child_env(cfg), work / f"{tag}.log", sim, args.timeout)
    try:
        run.passes = json.loads(stdout)["passes"]
    except (ValueError, KeyError):
        run.passes = []
    entries = sim.new_requests()
    for k, i in enumerate(projects):
        row = {"project": i, **requests_of(entries, i)}
        p = run.passes[k] if k < len(run.passes) else {}
        row["pass_s"] = round(p.get("seconds", 0.0), 2)
        row["complete"] = bool(p.get("complete"))
        row["created"] = p.get("created")
        if mirror is None or profile:
            row["exact"], row["problems"] = None, []
        else:
            problems = mirror_diff(mirror, sim.world(i), f"p{i}")
            row["exact"], row["problems"] = not problems, problems[:3]
        run.per_project.append(row)
    return run


# -- the report -----------------------------------------------------------------------------------

def over_budget(run: Run, case: Case) -> list[int]:
    return [p["project"] for p in run.per_project
            if p["max_per_window"] > case.rpm or p["429"]]


def holds(results: dict[str, Any]) -> list[str]:
    """The must-hold figures missed (empty: all held)."""
    missed = []
    for c in results["cases"]:
        case = Case(**c["case"])
        for run in (c["one"], c["all"]):
            r = Run(**run)
            if r.exit_code != 0 or r.timed_out:
                missed.append(f"{case.name} {r.which}: exit {r.exit_code}")
            if r.exact is False:
                missed.append(f"{case.name} {r.which}: a mirror is not exact")
            if over_budget(r, case):
                missed.append(f"{case.name} {r.which}: over budget {over_budget(r, case)}")
        if c["all"]["peak_rss_mb"] >= MUST_RSS_MB:
            missed.append(f"{case.name} all: peak RSS {c['all']['peak_rss_mb']:.1f} MB")
        if case.name == "budget-bound" and c["ratio"] > MUST_RATIO:
            missed.append(f"budget-bound: ratio {c['ratio']:.3f} > {MUST_RATIO}")
    return missed


def _yes(v: bool | None) -> str:
    return "not checked" if v is None else ("yes" if v else "NO")


def span(v: list[int]) -> str:
    return f"{v[0]}" if len(v) == 1 else f"{v[0]}-{v[-1]}"


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    m = results["machine"]
    n, rec = args.projects, args.recordings
    store = f"SQLite {m['sqlite']}"
    if args.postgres:
        store = f"PostgreSQL {args.pg_version} (a throwaway cluster, default durability)"
    elif args.database_url:
        store = "PostgreSQL (`[database] url`)"
    out = [
        "## Many projects in one process" + (", on PostgreSQL" if args.postgres else ""),
        "",
        f"Written by `{results['command']}` on {m['date']}; the run took "
        f"{results['bench_s'] / 60:.1f} min. Machine: {m['cores']} cores, {m['cpu_model']}, "
        f"{m['memory_gib']} GiB; Linux {m['kernel']}; Python {m['python']}; store {store}; "
        f"botasync commit `{m['commit']}`. Load average {m['load_start']} at the start, "
        f"{results['load_end']} at the end (a shared machine: CPU-bound times drift).",
        "",
        f"Issue 16's first must-hold, on {'PostgreSQL' if args.postgres else 'SQLite'}: "
        f"{n} projects x {rec:,} recordings in one "
        "`botasync sync` process (every project its own key, simulator world and server-side "
        "limit per key; the simulator in its own process, answers delayed "
        f"{args.latency_ms} ms). Wall time is spawn to exit; peak RSS is the botasync "
        "process's VmHWM (its RSS high-water mark since exec); botasync CPU is "
        "the process's (`wait4`); the event loop's thread (the main one) from its "
        "`schedstat`: seconds on a CPU, and seconds runnable but waiting for one (other "
        "work on the machine had the cores); \"max / 60 s\" is the most "
        "requests the simulator saw from one key in any 60 s span (sliding), worst key, "
        "against the client's budget; 429 is summed over keys. Exact: every project's "
        "mirror compared with its world field by field (`tests/mirror.py`). World build: "
        f"{results['world_build_s']:.1f} s for all {n} worlds.",
        "",
        "| case | budget / server limit per key and min | run | projects | wall s | "
        "x one alone | requests (list / detail) per project | max / 60 s (worst key) | 429 | "
        "peak RSS MB | botasync CPU s | event loop thread: on CPU / waiting for a CPU s | "
        "simulator CPU s | exact |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in results["cases"]:
        case = Case(**c["case"])
        for which in ("one", "all"):
            r = Run(**c[which])
            lists = sorted({p["list"] for p in r.per_project})
            details = sorted({p["detail"] for p in r.per_project})
            worst = max(p["max_per_window"] for p in r.per_project)
            ratio = "1" if which == "one" else f"**{c['ratio']:.3f}**"
            out.append(
                f"| {case.name} | {case.rpm} / {case.server_limit} | "
                f"{'one alone' if which == 'one' else f'all {n}'} | {len(r.projects)} | "
                f"{r.wall_s:.2f} | {ratio} | {span(lists)} / {span(details)} | {worst} / "
                f"{case.rpm} | {sum(p['429'] for p in r.per_project)} | {r.peak_rss_mb:.1f} "
                f"| {r.cpu_s:.2f} | {r.main_cpu_s:.2f} / "
                f"{r.main_wait_s:.2f} | {r.sim_cpu_s:.2f} | "
                f"{_yes(r.exact)} |")
    out += ["", "Per project, all at once (pass seconds from `sync --json`; max / 60 s is "
            "that key's own):", ""]
    head = "| project | " + " | ".join(
        f"{Case(**c['case']).name}: pass s | requests | max / 60 s | exact"
        for c in results["cases"]) + " |"
    out += [head, "| --- |" + " --- | --- | --- | --- |" * len(results["cases"])]
    for k in range(n):
        cells = []
        for c in results["cases"]:
            case, p = Case(**c["case"]), c["all"]["per_project"][k]
            cells.append(f"{p['pass_s']} | {p['list'] + p['detail'] + p['other']} | "
                         f"{p['max_per_window']} / {case.rpm} | {_yes(p['exact'])}")
        out.append(f"| p{k} | " + " | ".join(cells) + " |")
    out += ["", "What bounds each case:", ""]
    for c in results["cases"]:
        out.append(f"- {c['bound']}")
    if results.get("profile"):
        prof = results["profile"]
        out += ["", f"Where the all-{n} defaults sync's event loop spends its time (cProfile "
                f"on the same sync again: {prof['wall_s']:.1f} s wall under the profiler, "
                f"{prof['total_s']:.1f} s profiled in the main thread; cProfile's clock is "
                "the wall's, so these include the waits for a core; `select.epoll.poll` is "
                "the loop waiting for I/O, `SimpleQueue.put_nowait` the hand-off of each "
                "statement to aiosqlite's thread, whose SQLite time is not profiled); top "
                "functions by own time:", "",
                "| function | own s | share | calls |", "| --- | --- | --- | --- |"]
        for f in prof["top"]:
            out.append(f"| `{f['func']}` | {f['tottime']:.2f} | {f['share']:.1%} | "
                       f"{f['calls']:,} |")
        out += ["", "By module (own time):", "", "| module | own s | share |",
                "| --- | --- | --- |"]
        for f in prof["modules"]:
            out.append(f"| `{f['module']}` | {f['tottime']:.2f} | {f['share']:.1%} |")
    missed = results["missed"]
    out += ["", "Must hold: every project exact, no key over its budget (nor answered 429), "
            f"peak RSS under {MUST_RSS_MB:.0f} MB, budget-bound ratio at most {MUST_RATIO}: "
            + ("**all held**." if not missed else "**missed**: " + "; ".join(missed) + ".")]
    return "\n".join(out) + "\n"


def slowest_pass(run: Run) -> float:
    return max((p["pass_s"] for p in run.per_project), default=0.0)


def threads(r: Run) -> str:
    idle = max(0.0, r.wall_s - r.main_cpu_s - r.main_wait_s)
    return (f"the event loop's thread ran {r.main_cpu_s:.1f} s, waited for a core "
            f"{r.main_wait_s:.1f} s and was blocked (network, the store thread's answers) "
            f"{idle:.1f} s; the other threads (SQLite runs in aiosqlite's; PostgreSQL's own "
            f"processes are not counted) ran "
            f"{r.other_threads_cpu_s:.1f} s and waited for a core {r.other_threads_wait_s:.1f} "
            f"s; the simulator ran {r.sim_cpu_s:.1f} s")


def explain(case: Case, one: Run, all_: Run, n: int, recordings: int) -> str:
    per = one.requests
    windows = math.ceil(per / case.rpm)
    one_pass, all_pass = slowest_pass(one), slowest_pass(all_)
    pass_ratio = all_pass / one_pass if one_pass else 0.0
    if windows > 1:
        floor = (windows - 1) * WINDOW_S
        return (f"{case.name}: {per} requests at {case.rpm} a minute need {windows} "
                f"windows, so no pass can end before {floor:.0f} s (its last window opens "
                f"then). One alone: {one.wall_s:.1f} s wall, its pass {one_pass:.1f} s "
                f"({one_pass - floor:.1f} s past the last window's opening). All {n}: "
                f"{all_.wall_s:.1f} s wall, the slowest pass {all_pass:.1f} s "
                f"({all_pass - floor:.1f} s past it; x{pass_ratio:.3f} the one pass). The "
                f"budget's windows bound both; what the {n} add is the CPU of their last "
                f"windows' pages, which all arrive at once ({n} projects started together, "
                f"so their windows open together), in one event loop: {threads(all_)}.")
    cores = os.cpu_count() or 1
    wall = all_.wall_s
    idle = max(0.0, wall - all_.main_cpu_s - all_.main_wait_s)
    # the loop's CPU per 1,000 recordings, at the margin: all N minus one alone (which
    # removes the start-up both pay once) over the N - 1 more projects' recordings
    per_k = ((all_.main_cpu_s - one.main_cpu_s) / ((n - 1) * recordings / 1000) if n > 1
             else all_.main_cpu_s / (recordings / 1000))
    window_cpu = n * case.rpm * 100 / 1000 * per_k  # a full window of pages, every project
    keeps = math.floor(WINDOW_S / (case.rpm * 100 / 1000 * per_k)) if per_k > 0 else 0
    text = (f"{case.name}: {per} requests fit in the first window of {case.rpm}, so the "
            "budget never waits: CPU and latency bound the sync. One alone: "
            f"{one.wall_s:.1f} s wall (its pass {one_pass:.1f} s; the rest is start-up and "
            f"exit), {one.cpu_s:.1f} s botasync CPU. All {n}: {wall:.1f} s wall "
            f"(slowest pass {all_pass:.1f} s: x{pass_ratio:.2f} the one pass), botasync CPU "
            f"{all_.cpu_s:.1f} s: {threads(all_)}; both processes used "
            f"{(all_.cpu_s + all_.sim_cpu_s) / wall:.2f} of the {cores} cores. ")
    if idle < 0.5 * wall:
        text += (f"So it is CPU-bound: the {n} projects' pages are parsed, compared and "
                 "turned into rows and events in one Python thread (and written by one "
                 f"store connection at a time), so {n} first syncs cost about {n} times "
                 "one's CPU there, "
                 "and the ratio follows that CPU and the share of the 2 cores the machine's "
                 "other work left it, not the API. ")
    else:
        text += ("The event loop was blocked most of the time: the rest is waiting "
                 "(latency, the store thread). ")
    return text + (
        f"The loop's CPU came to {per_k * 1000:.0f} ms per 1,000 recordings here (all "
        f"{n} minus one alone, over the other {n - 1} projects' recordings); at "
        f"{case.rpm} pages of 100 a minute per project (a longer backfill at the default "
        f"budget), {n} projects would need {window_cpu:.0f} s of it per 60 s window "
        f"({window_cpu / WINDOW_S:.0%} of the window, on this machine at this load): by "
        f"its CPU alone one event loop keeps about {keeps} projects at their full budget "
        "here (the store's CPU comes beside it).")


def _where(file: str) -> tuple[str, str]:
    """(short name, group) of a profiled function's file, without this machine's paths."""
    if file == "~":
        return "", "C built-ins (time inside them, not their callers')"
    if file.startswith("<"):
        return file, "import machinery"
    if "site-packages/" in file:
        rest = file.split("site-packages/", 1)[1]
        return rest, rest.split("/", 1)[0]
    if "/botasync/" in file:
        rest = "botasync/" + file.rsplit("/botasync/", 1)[1]
        return rest, rest.rsplit("/", 1)[0] if rest.count("/") > 1 else rest
    if "/lib/python3" in file:
        rest = file.split("/lib/python3", 1)[1].split("/", 1)[-1]
        return rest, "stdlib " + rest.split("/", 1)[0]
    return Path(file).name, Path(file).name


def profile_summary(path: Path, wall_s: float, top: int = 15) -> dict[str, Any]:
    st = pstats.Stats(str(path))
    total = st.total_tt  # type: ignore[attr-defined]
    rows, groups = [], {}  # type: ignore[var-annotated]
    for (file, line, name), (_cc, nc, tt, ct, _) in st.stats.items():  # type: ignore[attr-defined]
        short, group = _where(file)
        rows.append({"func": f"{short}:{line}({name})" if short else name, "tottime": tt,
                     "cumtime": ct, "calls": nc})
        groups[group] = groups.get(group, 0.0) + tt
    rows.sort(key=lambda r: -r["tottime"])
    for r in rows:
        r["share"] = r["tottime"] / total if total else 0.0
    mods = sorted(({"module": k, "tottime": v, "share": v / total if total else 0.0}
                   for k, v in groups.items()), key=lambda r: -r["tottime"])
    return {"total_s": total, "wall_s": wall_s, "top": rows[:top], "modules": mods[:12]}


def command_line(argv: list[str]) -> str:
    """This run's command, without the scratch path or a database URL's secrets."""
    out, skip = ["python bench/projects.py"], None
    for a in argv:
        if skip:
            out.append(skip)
            skip = None
            continue
        name = a.split("=", 1)[0]
        if name in ("--work", "--database-url"):
            hidden = "DIR" if name == "--work" else "URL"
            out.append(f"{name}={hidden}" if "=" in a else name)
            skip = None if "=" in a else hidden
            continue
        out.append(a)
    return " ".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--projects", type=int, default=20)
    p.add_argument("--recordings", type=int, default=5000, help="per project")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--latency-ms", type=int, default=60)
    p.add_argument("--rpm", type=int, default=20,
                   help="the budget-bound case's requests_per_minute (default 20)")
    p.add_argument("--database-url", metavar="URL",
                   help="put the mirror at this [database] url instead of a SQLite file "
                   "('{run}' in it becomes the run's name, so each run can have a fresh "
                   "database; the mirrors are then not compared)")
    p.add_argument("--postgres", action="store_true",
                   help="start a throwaway PostgreSQL (pg_virtualenv, as the tests do, but "
                   "with fsync on) and give each run a fresh database on it; the mirrors are "
                   "compared; --write fills the `projects-postgres` section")
    p.add_argument("--cases", nargs="+", default=["budget-bound", "defaults"],
                   choices=["budget-bound", "defaults"])
    p.add_argument("--profile", action="store_true",
                   help="run the all-N defaults sync again under cProfile and report it")
    p.add_argument("--timeout", type=float, default=1800.0, help="per botasync run (s)")
    p.add_argument("--work", type=Path, help="scratch directory, kept with results.json "
                   "(default: a temporary one)")
    p.add_argument("--write", action="store_true", help="write the tables into RESULTS.md")
    args = p.parse_args()
    started = time.monotonic()
    args.pg = None
    if args.postgres:
        args.pg, why = start_postgres(gucs=())
        if args.pg is None:
            raise SystemExit(f"--postgres: {why}")
        with args.pg.connect() as conn:
            args.pg_version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
    try:
        return _main(args, started)
    finally:
        if args.pg is not None:
            args.pg.stop()


def _main(args: argparse.Namespace, started: float) -> int:
    cases = {
        "budget-bound": Case("budget-bound", args.rpm, math.ceil(args.rpm / 0.9),
                             "requests_per_minute lowered: the sync needs several windows"),
        "defaults": Case("defaults", 90, 100, "the default budget: one window holds the sync"),
    }
    results: dict[str, Any] = {"machine": machine(), "command": command_line(sys.argv[1:]),
                               "cases": []}
    tmp = None
    if args.work:
        work = args.work.resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="botasync-projects-")
        work = Path(tmp.name)
    say(f"simulator: {args.projects} projects x {args.recordings:,} recordings, latency "
        f"{args.latency_ms} ms ...")
    sim = Sim(args, work / "simulator.log")
    results["world_build_s"] = sim.world_build_s
    say(f"  built in {sim.world_build_s:.1f} s; simulator RSS {sim.rss_mb():.0f} MB")
    everyone = list(range(args.projects))
    try:
        for name in args.cases:
            case = cases[name]
            say(f"{name}: budget {case.rpm}/min, server {case.server_limit}/min per key")
            one = measure(sim, case, "one", [0], args, work)
            say(f"  one alone: {one.wall_s:.2f} s, {one.requests} requests, "
                f"{one.peak_rss_mb:.1f} MB, exact {_yes(one.exact)}")
            all_ = measure(sim, case, "all", everyone, args, work)
            ratio = all_.wall_s / one.wall_s
            say(f"  all {args.projects}: {all_.wall_s:.2f} s (x{ratio:.3f}), {all_.requests} "
                f"requests, {all_.peak_rss_mb:.1f} MB, CPU {all_.cpu_s:.1f} s (simulator "
                f"{all_.sim_cpu_s:.1f} s), exact {_yes(all_.exact)}, over budget "
                f"{over_budget(all_, case) or 'none'}")
            for r in (one, all_):
                if r.exit_code != 0:
                    say(f"  {r.which}: exit {r.exit_code}: {r.stderr_tail}")
            results["cases"].append({"case": vars(case), "one": vars(one), "all": vars(all_),
                                     "ratio": ratio,
                                     "bound": explain(case, one, all_, args.projects,
                                                      args.recordings)})
        if args.profile:
            say("profiling the all-N defaults sync (cProfile) ...")
            prof = work / "all.prof"
            r = measure(sim, cases["defaults"], "all", everyone, args, work, profile=prof)
            results["profile"] = profile_summary(prof, r.wall_s)
    finally:
        sim.stop()
        if tmp is not None:
            tmp.cleanup()
    results["load_end"] = load_average()
    results["bench_s"] = time.monotonic() - started
    results["missed"] = holds(results)
    if tmp is None:  # every figure, for a later look
        (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = render(results, args)
    print(text)
    if args.write:
        section = "projects-postgres" if args.postgres else "projects"
        replace_section(BENCH / "RESULTS.md", section, text)
    return 1 if results["missed"] else 0


if __name__ == "__main__":
    sys.exit(main())
