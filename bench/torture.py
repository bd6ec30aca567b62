"""The torture suite at its full counts, with its figures written into bench/RESULTS.md.

    python bench/torture.py                     # both dialects: 100 kills each, the fault
                                                # mix at a real 60 s window (~12 min)
    python bench/torture.py --dialect deployed  # the deployed dialect only (~6 min)
    python bench/torture.py --quick             # 10 kills, the window scaled to 0.4 s (~2 min)

It runs the scenarios of `tests/torture/` (the same code the tests run), against the
documented dialect of the API (offset pages) and the deployed one (cursor pages, signed
URLs, seven statuses, plain-string errors, 429s without headers): `botasync run` killed
with SIGKILL at 100 random moments, in the deployed dialect largely inside walks holding
a cursor checkpoint; syncs through the fault mix while recordings come and go, at the
real `requests_per_minute` against the server's 60 s window; the bad-input table (its
deployed cases with `--dialect deployed`); secrets and surface, and ids that would be
paths. Only the `## Torture` section of RESULTS.md, between its markers, is written; the
rest of the file is left as it is. Exit code 1 when a figure that must hold does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from env import load_average, machine  # noqa: E402
from sections import markers, replace_section  # noqa: E402

from botasync.logging import configure  # noqa: E402
from botasync.simulator import Dialect  # noqa: E402
from tests.torture.badinput import CASES, Outcome, run_table  # noqa: E402
from tests.torture.faultmix import FAULT_MIX, FaultMixResult, run_fault_mix  # noqa: E402
from tests.torture.harness import KEY  # noqa: E402
from tests.torture.kill9 import Kill9Result, leaked, run_kill9  # noqa: E402
from tests.torture.surface import (  # noqa: E402
    HOSTILE_IDS,
    PathsResult,
    SurfaceResult,
    run_hostile_ids,
    run_surface,
)

START, END = markers("torture")
MIN_CASES = 25
DIALECTS: tuple[Dialect, ...] = ("documented", "deployed")


@dataclass
class Figures:
    """Everything one torture run measured."""

    kill9: dict[str, Kill9Result]  # per dialect
    faults: dict[str, FaultMixResult]  # per dialect
    table: list[Outcome]
    surface: SurfaceResult
    paths: PathsResult
    leaks: list[str]
    seconds: float
    quick: bool
    machine: dict[str, Any]


# --- running ---------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


async def measure(
    work: Path, kills: int, quick: bool, seed: int, dialects: tuple[Dialect, ...],
) -> Figures:
    started, host = time.monotonic(), machine()
    kill9: dict[str, Kill9Result] = {}
    faults: dict[str, FaultMixResult] = {}
    for d in dialects:
        say(f"kill -9, {d} dialect: {kills} kills")
        k = kill9[d] = await run_kill9(_dir(work, f"kill9-{d}"), kills=kills, seed=seed,
                                       dialect=d)
        say(f"  {k.kills} kills in {k.seconds} s ({k.cursor_kills} inside a cursor walk), "
            f"{len(k.problems())} problems")
    for d in dialects:
        say(f"fault mix, {d} dialect" + (" (window scaled to 0.4 s)" if quick
                                         else " (real 60 s window)"))
        m = faults[d] = await run_fault_mix(_dir(work, f"faultmix-{d}"), dialect=d,
                                            **_fault_settings(quick, seed))
        say(f"  peak {m.peak}/{m.budget} in {m.seconds} s, converged {m.converged}")
    cases = tuple(c for c in CASES if c.dialect in dialects)
    say(f"bad input: {len(cases)} cases")
    table = await run_table(_dir(work, "badinput"), cases)
    say(f"  {sum(not o.problems for o in table)}/{len(table)} as documented")
    say("secrets and surface; ids that would be paths")
    surface = await run_surface(_dir(work, "surface"))
    paths = await run_hostile_ids(_dir(work, "paths"))
    # every file of the run but the configs, which hold the key on purpose
    files = [p for p in work.rglob("*") if p.is_file() and p.suffix != ".toml"]
    leaks = leaked(files) + [f"{o.case.name} output" for o in table
                             if KEY in o.run.out + o.run.err]
    say(f"  {len(files)} files grepped for the key, {len(leaks)} leaks")
    host["load_end"] = load_average()
    return Figures(kill9, faults, table, surface, paths, leaks,
                   round(time.monotonic() - started, 1), quick, host)


def _fault_settings(quick: bool, seed: int) -> dict[str, Any]:
    if quick:
        return {"seed": seed}
    # the client's own budget at its default, 90 a minute, and the server's real window;
    # enough pages that the budget, not the server, sets the pace
    return {"recordings": 400, "page_size": 20, "budget": 90, "window_s": 60.0,
            "timeout_s": 1.0, "changes": 120, "move_every_s": 0.25, "moving_rounds": 2,
            "seed": seed}


def _dir(work: Path, name: str) -> Path:
    path = work / name
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- the verdicts ----------------------------------------------------------------------


Verdict = tuple[str, str, str, bool]


def _kill9_verdicts(d: str, k: Kill9Result, kills: int) -> list[Verdict]:
    out: list[Verdict] = [
        (f"kill -9 ({d}): kills, each followed by a restart", f"{kills}", f"{k.kills}",
         k.kills == kills),
    ]
    if d == "deployed":
        out += [
            ("kill -9 (deployed): kills inside a walk holding a cursor checkpoint",
             f">= {kills // 3}", f"{k.cursor_kills}", k.cursor_kills >= kills // 3),
            ("kill -9 (deployed): restarts that resumed a walk from its saved cursor", ">= 1",
             f"{k.cursor_resumes}", k.cursor_resumes >= 1),
        ]
    return [
        *out,
        (f"kill -9 ({d}): rows wrong after the final full pass", "0", f"{len(k.rows_wrong)}",
         not k.rows_wrong),
        (f"kill -9 ({d}): outbox events that never reached the handler", "0", f"{len(k.lost)}",
         not k.lost),
        (f"kill -9 ({d}): outbox events sharing their id with another", "0",
         f"{k.shared_ids}", not k.shared_ids),
        (f"kill -9 ({d}): `PRAGMA integrity_check`", "ok", k.integrity, k.integrity == "ok"),
        (f"kill -9 ({d}): stored states without their events, impossible events", "0",
         f"{len(k.unexplained) + len(k.invented)}", not (k.unexplained or k.invented)),
    ]


def _fault_verdicts(d: str, m: FaultMixResult) -> list[Verdict]:
    exact = m.converged and not m.rows_wrong
    return [
        (f"fault mix ({d}): exact mirror once the world stops", "yes", "yes" if exact else "no",
         exact),
        (f"fault mix ({d}): peak requests in any {m.window_s:g} s window of the server's log",
         f"<= {m.budget}", f"{m.peak}", m.peak <= m.budget),
    ]


def verdicts(f: Figures, kills: int) -> list[Verdict]:
    """(what must hold, goal, measured, met) for the summary table."""
    t = f.table
    clear = sum(not o.problems for o in t)
    lost = sum(1 for o in t if o.damage)
    out: list[Verdict] = []
    for d, k in f.kill9.items():
        out += _kill9_verdicts(d, k, kills)
    for d, m in f.faults.items():
        out += _fault_verdicts(d, m)
    return [
        *out,
        ("bad input: cases", f">= {MIN_CASES}", f"{len(t)}", len(t) >= MIN_CASES),
        ("bad input: one clear line, the documented exit code", f"{len(t)}/{len(t)}",
         f"{clear}/{len(t)}", clear == len(t)),
        ("bad input: cases that lost or corrupted something", "0", f"{lost}", lost == 0),
        ("secrets: the API key in any output, file or database", "0", f"{len(f.leaks)}",
         not f.leaks and not f.surface.leaks),
        ("surface: database 0600, signatures, no shell", "all",
         "all" if not f.surface.problems() else "; ".join(f.surface.problems()),
         not f.surface.problems()),
        ("surface (deployed): ids that would be paths stored, asked for or written; files "
         "not where they belong or not their sha256", "0",
         f"{len(f.paths.problems())}", not f.paths.problems()),
    ]


# --- RESULTS.md ----------------------------------------------------------------------------


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _commit() -> str:
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "botasync"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (+ uncommitted changes in botasync/)" if dirty else "")


def _command(f: Figures) -> str:
    args = " --quick" if f.quick else ""
    if len(f.kill9) == 1:
        args += f" --dialect {next(iter(f.kill9))}"
    return f"python bench/torture.py{args}"


def render(f: Figures, kills: int) -> str:
    """The `## Torture` section, markers included."""
    m = f.machine
    lines = [START, "## Torture", ""]
    lines += [f"Written by `{_command(f)}` on {m['date']}; the run took "
              f"{f.seconds / 60:.1f} min. Every figure below was measured in this run, by the "
              "scenarios of `tests/torture/` (the tests run the same code at smaller counts), "
              f"against the {' and the '.join(f.kill9)} dialect{'s' if len(f.kill9) > 1 else ''}"
              " of the API.", ""]
    lines += [f"- machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB; Linux "
              f"{m['kernel']}; Python {m['python']}; SQLite {m['sqlite']}; load average "
              f"{m['load_start']} at the start, {m['load_end']} at the end (the machine may be "
              "shared: durations drift with it, the counts do not)",
              f"- botasync commit: `{_commit()}`", ""]
    lines += ["| must hold | goal | measured |  |", "|---|---|---|---|"]
    lines += [f"| {_cell(w)} | {_cell(g)} | {_cell(m)} | {'met' if ok else '**missed**'} |"
              for w, g, m, ok in verdicts(f, kills)]
    lines += _kill9_md(f.kill9) + _faults_md(f.faults) + _table_md(f.table)
    lines += _surface_md(f.surface, f.paths, f.leaks)
    return "\n".join([*lines, "", END]) + "\n"


def _columns(names: list[str], rows: list[tuple[str, list[Any]]]) -> list[str]:
    """A figure table with one value column per dialect."""
    out = [f"| figure | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    return out + [f"| {what} | {' | '.join(_cell(v) for v in values)} |" for what, values in rows]


def _kill9_md(ks: dict[str, Kill9Result]) -> list[str]:
    k = list(ks.values())
    cursor = ["-" if x.dialect != "deployed" else
              f"{x.cursor_kills} / {x.cursor_resumes} / {x.cursor_pages}" for x in k]
    return ["", "### 1. kill -9 anywhere", "",
            "`botasync run` (ticks every 0.2 s, a reconcile walk every second, pages of 20, a "
            "shell command handler taking every event, backfill delivered) against a world of "
            "150 recordings changing every 50 ms; SIGKILL at a moment of each kind, then a "
            "restart. After the last one: the world frozen, SIGTERM, and full passes; then the "
            "database is compared with the world field by field and the outbox with what the "
            "handler got. The deployed dialect walks by cursor: half its kills wait for a walk "
            "that has checkpointed a cursor (`sync_runs.cursor`), and after each kill the "
            "database shows whether one was open (a restart resumes it from that cursor).", "",
            *_columns(list(ks), [
                ("kills (by moment)", [f"{x.kills} ({_moments(x)})" for x in k]),
                ("kills inside a walk holding a cursor / walks resumed from their cursor / "
                 "pages asked by cursor", cursor),
                ("recordings at the end / requests served",
                 [f"{x.recordings} / {x.requests}" for x in k]),
                ("outbox events / deliveries / repeated deliveries (same id)",
                 [f"{x.events} / {x.deliveries} / {x.duplicates}" for x in k]),
                ("events lost / invented / dead / sharing an id",
                 [f"{len(x.lost)} / {len(x.invented)} / {x.dead} / {x.shared_ids}" for x in k]),
                ("rows wrong / unexplained states",
                 [f"{len(x.rows_wrong)} / {len(x.unexplained)}" for x in k]),
                ("integrity / SIGTERM exit / final syncs",
                 [f"{x.integrity} / {x.final_exit} / {x.final_syncs}" for x in k]),
                ("seconds", [x.seconds for x in k]),
            ])]


def _moments(k: Kill9Result) -> str:
    return ", ".join(f"{name} {n}" for name, n in sorted(k.moments.items()))


def _faults_md(ms: dict[str, FaultMixResult]) -> list[str]:
    mix = ", ".join(f"{int(r * 100)}% {k}" for k, r in FAULT_MIX.items())
    m = list(ms.values())
    first = m[0]
    return ["", "### 2. Fault mix", "",
            f"Full passes and daemon ticks through {mix} (plus one of each kind queued), while "
            "recordings were inserted and deleted; then passes over the frozen world until the "
            f"mirror was exact. Client budget {first.budget} per {first.window_s:g} s, the "
            "server's limit the same. The deployed dialect answers every fault in its own "
            "shape (errors as plain strings, a 429 without `Retry-After`, no `X-RateLimit-*` "
            "header on any answer) and pages by cursor.", "",
            *_columns(list(ms), [
                ("requests (retries included) / pages asked by cursor",
                 [f"{x.requests} / {x.cursor_pages}" for x in m]),
                ("faults injected",
                 [", ".join(f"{k} {n}" for k, n in sorted(x.injected.items())) for x in m]),
                ("recordings inserted / deleted while walking",
                 [f"{x.inserted} / {x.deleted}" for x in m]),
                (f"peak requests in any {first.window_s:g} s window / budget",
                 [f"{x.peak} / {x.budget}" for x in m]),
                ("429s from the server's own limiter", [x.genuine_429 for x in m]),
                ("passes (failed after retries) / frozen passes to exact",
                 [f"{len(x.passes)} ({x.failed_passes}) / {x.frozen_passes}" for x in m]),
                ("rows wrong / integrity", [f"{len(x.rows_wrong)} / {x.integrity}" for x in m]),
                ("recordings at the end / seconds", [f"{x.recordings} / {x.seconds}" for x in m]),
            ])]


def _table_md(table: list[Outcome]) -> list[str]:
    out = ["", "### 3. Bad input", "",
           "Each case is a real `botasync` process (`sync`, or `run` for SIGTERM) on a fresh "
           "directory; *the line* is what it printed about the problem.", "",
           "| case | bad input | exit | the line | kept | retried | dead-lettered |  |",
           "|---|---|---|---|---|---|---|---|"]
    for o in table:
        line = _the_line(o)
        verdict = "ok" if not o.problems else "**" + _cell("; ".join(o.problems))[:200] + "**"
        out.append(f"| {o.case.name} | {_cell(o.case.bad)} | {o.run.code} | `{_cell(line)}` | "
                   f"{_cell(o.case.kept)} | {_cell(o.case.retried)} | {_cell(o.case.dead)} | "
                   f"{verdict} |")
    return out


def _the_line(o: Outcome) -> str:
    """The line that named the problem; a JSON log line shown as `level event: what`."""
    hits = [ln for ln in o.run.err_lines() if o.case.line and re.search(o.case.line, ln)]
    if not hits:
        return "(no error or warning line: delivered)"
    text = re.sub(r"\S*/badinput/[^/\s]+/", "<dir>/", hits[0])
    if text.startswith("{"):
        data = json.loads(text)
        what = "; ".join(f"{k}={data[k]}" for k in ("id", "reason", "error", "signal")
                         if data.get(k) is not None)
        text = f"{data.get('level')} {data.get('event')}: {what}"
    return text if len(text) <= 160 else text[:157] + "..."


def _surface_md(s: SurfaceResult, p: PathsResult, leaks: list[str]) -> list[str]:
    modes = ", ".join(f"{k} {v}" for k, v in sorted(s.modes.items()))
    shown = ", ".join(f"`{i!r}`" for i in HOSTILE_IDS)
    return ["", "### 4. Secrets and surface", "",
            "| figure | value |", "|---|---|",
            f"| outputs and files grepped for the key (whole run) | {s.outputs_checked} + "
            f"every file of the run's directory; leaks {len(s.leaks) + len(leaks)} |",
            f"| file modes | {modes} |",
            f"| webhooks: verified by an independent HMAC / tampered body rejected / stale "
            f"timestamp rejected | {s.signature_ok} / {s.tampered_rejected} / "
            f"{s.stale_rejected} of {s.webhooks} |",
            f"| hostile recording names delivered as data / any of them ran | "
            f"{s.hostile_delivered} / {'no' if s.hostile_inert else 'yes'} |",
            f"| deployed, files mirrored: hostile ids ({shown}) stored / asked for / written "
            f"outside the files directory | {len(p.stored_hostile)} / {len(p.asked_hostile)} / "
            f"{len(p.escaped)} |",
            f"| deployed: files written / expected / not hashing to `content_sha256` | "
            f"{len(p.files)} / {p.files_expected} / {len(p.hash_wrong)} |"]


def write_section(results: Path, section: str) -> None:
    """Replace the torture section of RESULTS.md, or append it; touch nothing else."""
    replace_section(results, "torture", section.replace(START, "").replace(END, ""))


def main() -> int:
    usage = __doc__.split("\n\n")[1]  # the example command lines
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="examples:\n" + usage,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10 kills and a scaled window")
    p.add_argument("--kills", type=int,
                   help="how many SIGKILLs per dialect (default 100, --quick 10)")
    p.add_argument("--dialect", choices=[*DIALECTS, "both"], default="both",
                   help="the API dialect to torture: documented (offset pages), deployed "
                        "(cursor pages, signed URLs, seven statuses, plain errors, 429s "
                        "without headers) or both (default)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    p.add_argument("--work", type=Path, help="scratch directory (default bench/work/torture-*)")
    args = p.parse_args()
    kills = args.kills or (10 if args.quick else 100)
    work = args.work or ROOT / "bench" / "work" / f"torture-{datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    with (work / "in-process.log").open("w") as log:
        configure("info", "json", stream=log)  # the in-process syncs log here, grepped too
        dialects = DIALECTS if args.dialect == "both" else (args.dialect,)
        figures = asyncio.run(measure(work, kills, args.quick, args.seed, dialects))
    write_section(args.results, render(figures, kills))
    missed = [w for w, _, _, ok in verdicts(figures, kills) if not ok]
    say(f"wrote {args.results}; scratch in {work}")
    for what in missed:
        say(f"MISSED: {what}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
