"""The botasync benchmarks: `python bench/run.py [--quick | --smoke]`.

Starts the built-in simulator in its own process and measures, on the same seeded
world, one contender after another: the initial mirror (botasync, a bare aiohttp
ceiling, a naive poller, dlt), then on the big world a reader during a mirror, the
dispatch of a backlog and the daemon's steady state. Writes RESULTS.md, results.json
and results.png (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script from anywhere

from backlog import dispatch, readers_during_sync
from contend import lineup, measure
from env import (
    BENCH,
    PY,
    Plan,
    dlt_ready,
    dlt_version,
    ensure_dlt,
    load_average,
    machine,
    make_plan,
)
from plot import plot
from procs import SimProcess
from report import targets
from results_md import render
from sections import markers
from steady import steady

# written by the scripts named alike
KEPT_SECTIONS = ("torture", "media", "retention", "dialects", "search", "nats", "transcripts",
                 "projects")


def write_results_md(path: Path, text: str) -> None:
    """Write RESULTS.md, keeping the sections other scripts write between their markers."""
    old = path.read_text() if path.exists() else ""
    for name in KEPT_SECTIONS:
        start_mark, end_mark = markers(name)
        start, end = old.find(start_mark), old.find(end_mark)
        if start != -1 and end > start:
            text = text.rstrip("\n") + "\n\n" + old[start : end + len(end_mark)] + "\n"
    path.write_text(text)


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup_dlt(plan: Plan) -> dict[str, Any]:
    """Use bench/.venv-dlt, creating it unless this is a smoke run (which never installs)."""
    if not plan.install_dlt:
        plan.with_dlt = dlt_ready()
        return {"status": "present" if plan.with_dlt else
                "skipped (smoke mode never installs dlt; bench/.venv-dlt does not exist)",
                "version": dlt_version() if plan.with_dlt else None}
    say("preparing bench/.venv-dlt (dlt[sqlalchemy], matplotlib) ...")
    ok, status = ensure_dlt(plan.work / "pip-dlt.log")
    plan.with_dlt = ok
    return {"status": status, "version": dlt_version() if ok else None}


def one_size(plan: Plan, n: int, light: bool, results: dict[str, Any]) -> None:
    """Every contender on a world of n recordings; on the big world, parts 4, 5 and 2 too."""
    work = plan.work / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    say(f"simulator: {n:,} recordings, latency {plan.latency_ms} ms, rate limit off")
    sim = SimProcess(PY, BENCH / "simserver.py", recordings=n, seed=plan.seed,
                     latency_ms=plan.latency_ms, log_path=work / "simulator.log")
    results["simulator"].append({"n": n, "world_build_s": sim.world_build_s})
    try:
        for c in lineup(plan, light):
            r = measure(c, sim, plan, work, n)
            results["mirror"].append(r)
            say(f"  {c.name} {c.run}: {r['wall_s']:.2f} s, {r['requests']:,} requests, "
                f"{r['peak_rss_mb']} MB, rows {r['rows']:,}{'' if r['ok'] else ' (FAILED)'}")
        if n == plan.big:
            big_parts(sim, plan, work, results)
        results["simulator"][-1]["peak_rss_mb_end"] = round(sim.rss() / 2**20, 1)
    finally:
        sim.stop()


def big_parts(sim: SimProcess, plan: Plan, work: Path, results: dict[str, Any]) -> None:
    say("  part 4: a reader querying during a mirror ...")
    results["readers"] = rd = readers_during_sync(sim, plan, work)
    say(f"    {rd.get('queries', 0):,} queries, {rd.get('locked')} locked, p99 "
        f"{rd.get('p99_ms')} ms")
    say("  part 5: dispatch of the backlog ...")
    results["dispatch"] = dispatch(sim, plan, work)
    for d in results["dispatch"]:
        say(f"    {d['type']}: {d['delivered']:,}/{d['backlog']:,} at {d['events_per_s']:,}/s, "
            f"order intact {d['order_intact']}")
    say(f"  part 2: steady state for {plan.steady_s:g} s (tick {plan.interval_s:g} s) ...")
    results["steady"] = st = steady(sim, plan, work, work / "botasync.db")
    say(f"    {st['cycles']} cycles, {st['requests_per_cycle_mean']} requests/cycle, "
        f"latency max {st['latency_max_s']} s")


def profile_misses(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Memory profiles (tracemalloc) at each size when the flat-memory target is missed."""
    missed = [t for t in results["targets"] if t["target"].startswith("scale: peak RSS")
              and t["met"] is False]
    if not missed:
        return []
    sizes = sorted({r["n"] for r in results["mirror"] if r["contender"] == "botasync"})
    out = []
    for n in (sizes[0], sizes[-1]):
        say(f"profiling botasync's memory at N = {n:,} (tracemalloc) ...")
        done = subprocess.run([PY, str(BENCH / "memprofile.py"), "--recordings", str(n)],
                              capture_output=True, text=True, timeout=1800)
        lines = done.stdout.strip().splitlines()
        out.append(json.loads(lines[-1]) if done.returncode == 0 and lines else
                   {"n": n, "error": done.stderr.strip()[-500:]})
    return out


def render_only(path: Path) -> int:
    """Targets and RESULTS.md again from the figures of an earlier run (none re-measured)."""
    results = json.loads(path.read_text())
    results["targets"] = targets(results)
    path.write_text(json.dumps(results, indent=1) + "\n")
    write_results_md(path.parent / "RESULTS.md", render(results))
    say(f"rendered {path.parent / 'RESULTS.md'} from {path}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="N = 10,000 side by side (+ 100,000 for botasync, dlt, ceiling)")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="N = 500, seconds: checks the bench still runs")
    p.add_argument("--work", type=Path, help="scratch directory (default bench/work/MODE)")
    p.add_argument("--out", type=Path, help="where RESULTS.md etc. go (default bench/, "
                   "or the work directory for --smoke)")
    p.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                   help="measure nothing: recompute the targets and RESULTS.md (beside it) "
                   "from a results.json")
    args = p.parse_args()
    if args.render:
        return render_only(args.render)
    plan = make_plan(args.mode or "full", args.work, args.out)
    plan.work.mkdir(parents=True, exist_ok=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results: dict[str, Any] = {"mode": plan.mode, "machine": machine(), "mirror": [],
                               "simulator": [], "plan": {k: v for k, v in vars(plan).items()
                                                         if not isinstance(v, Path)}}
    results["dlt"] = setup_dlt(plan)
    for n in sorted({*plan.sizes, *plan.light_sizes}):
        one_size(plan, n, n not in plan.sizes, results)
    results["targets"] = targets(results)
    results["profile"] = profile_misses(results)
    results["bench_seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["load_end"] = load_average()
    results["plot"] = plot(results, plan.out / "results.png", plan.work)
    (plan.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_results_md(plan.out / "RESULTS.md", render(results))
    say(f"done in {results['bench_seconds']:.0f} s: {plan.out / 'RESULTS.md'}")
    # a naive poller stopped at its time limit is a result (partial, said so), not a failure
    failed = [r for r in results["mirror"] if not r["ok"]
              and not (r["contender"] == "naive" and r["timed_out"])]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
