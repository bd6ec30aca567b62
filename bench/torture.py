"""The torture suite at its full counts, with its figures written into bench/RESULTS.md.

    python bench/torture.py              # 100 kills, the fault mix at a real 60 s window (~4 min)
    python bench/torture.py --quick      # 10 kills, the window scaled to 0.4 s (~40 s)

It runs the scenarios of `tests/torture/` (the same code the tests run): `botasync run`
killed with SIGKILL at 100 random moments; syncs through the fault mix while recordings
come and go, at the real `requests_per_minute` against the server's 60 s window; the
bad-input table; secrets and surface. Only the `## Torture` section of RESULTS.md, between
its markers, is written; the rest of the file is left as it is. Exit code 1 when a figure
that must hold does not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sections import markers, replace_section  # noqa: E402

from botasync.logging import configure  # noqa: E402
from tests.torture.badinput import CASES, Outcome, run_table  # noqa: E402
from tests.torture.faultmix import FAULT_MIX, FaultMixResult, run_fault_mix  # noqa: E402
from tests.torture.harness import KEY  # noqa: E402
from tests.torture.kill9 import Kill9Result, leaked, run_kill9  # noqa: E402
from tests.torture.surface import SurfaceResult, run_surface  # noqa: E402

START, END = markers("torture")
MIN_CASES = 25


@dataclass
class Figures:
    """Everything one torture run measured."""

    kill9: Kill9Result
    faults: FaultMixResult
    table: list[Outcome]
    surface: SurfaceResult
    leaks: list[str]
    seconds: float
    quick: bool


# --- running ---------------------------------------------------------------------------


def say(text: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {text}", flush=True)


async def measure(work: Path, kills: int, quick: bool, seed: int) -> Figures:
    started = time.monotonic()
    say(f"kill -9: {kills} kills")
    kill9 = await run_kill9(_dir(work, "kill9"), kills=kills, seed=seed)
    say(f"  {kill9.kills} kills in {kill9.seconds} s, {len(kill9.problems())} problems")
    say("fault mix" + (" (window scaled to 0.4 s)" if quick else " (real 60 s window)"))
    faults = await run_fault_mix(_dir(work, "faultmix"), **_fault_settings(quick, seed))
    say(f"  peak {faults.peak}/{faults.budget} in {faults.seconds} s, converged "
        f"{faults.converged}")
    say(f"bad input: {len(CASES)} cases")
    table = await run_table(_dir(work, "badinput"))
    say(f"  {sum(not o.problems for o in table)}/{len(table)} as documented")
    say("secrets and surface")
    surface = await run_surface(_dir(work, "surface"))
    # every file of the run but the configs, which hold the key on purpose
    files = [p for p in work.rglob("*") if p.is_file() and p.suffix != ".toml"]
    leaks = leaked(files) + [f"{o.case.name} output" for o in table
                             if KEY in o.run.out + o.run.err]
    say(f"  {len(files)} files grepped for the key, {len(leaks)} leaks")
    return Figures(kill9, faults, table, surface, leaks, round(time.monotonic() - started, 1),
                   quick)


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


def verdicts(f: Figures, kills: int) -> list[tuple[str, str, str, bool]]:
    """(what must hold, goal, measured, met) for the summary table."""
    k, m, t = f.kill9, f.faults, f.table
    clear = sum(not o.problems for o in t)
    lost = sum(1 for o in t if o.damage)
    return [
        ("kill -9: kills, each followed by a restart", f"{kills}", f"{k.kills}", k.kills == kills),
        ("kill -9: rows wrong after the final full pass", "0", f"{len(k.rows_wrong)}",
         not k.rows_wrong),
        ("kill -9: outbox events that never reached the handler", "0", f"{len(k.lost)}",
         not k.lost),
        ("kill -9: `PRAGMA integrity_check`", "ok", k.integrity, k.integrity == "ok"),
        ("kill -9: stored states without their events, impossible events", "0",
         f"{len(k.unexplained) + len(k.invented)}", not (k.unexplained or k.invented)),
        ("fault mix: exact mirror once the world stops", "yes",
         "yes" if m.converged and not m.rows_wrong else "no", m.converged and not m.rows_wrong),
        (f"fault mix: peak requests in any {m.window_s:g} s window of the server's log",
         f"<= {m.budget}", f"{m.peak}", m.peak <= m.budget),
        ("bad input: cases", f">= {MIN_CASES}", f"{len(t)}", len(t) >= MIN_CASES),
        ("bad input: one clear line, the documented exit code", f"{len(t)}/{len(t)}",
         f"{clear}/{len(t)}", clear == len(t)),
        ("bad input: cases that lost or corrupted something", "0", f"{lost}", lost == 0),
        ("secrets: the API key in any output, file or database", "0", f"{len(f.leaks)}",
         not f.leaks and not f.surface.leaks),
        ("surface: database 0600, signatures, no shell", "all",
         "all" if not f.surface.problems() else "; ".join(f.surface.problems()),
         not f.surface.problems()),
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


def render(f: Figures, kills: int) -> str:
    """The `## Torture` section, markers included."""
    lines = [START, "## Torture", ""]
    lines += [f"Written by `python bench/torture.py{' --quick' if f.quick else ''}` on "
              f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; the run took {f.seconds / 60:.1f} min. "
              "Every figure below was measured in this run, by the scenarios of "
              "`tests/torture/` (the tests run the same code at smaller counts).", ""]
    lines += [f"- machine: {os.cpu_count()} cores; {platform.system()} {platform.release()}; "
              f"Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}",
              f"- botasync commit: `{_commit()}`", ""]
    lines += ["| must hold | goal | measured |  |", "|---|---|---|---|"]
    lines += [f"| {_cell(w)} | {_cell(g)} | {_cell(m)} | {'met' if ok else '**missed**'} |"
              for w, g, m, ok in verdicts(f, kills)]
    lines += _kill9_md(f.kill9) + _faults_md(f.faults) + _table_md(f.table)
    lines += _surface_md(f.surface, f.leaks)
    return "\n".join([*lines, "", END]) + "\n"


def _kill9_md(k: Kill9Result) -> list[str]:
    moments = ", ".join(f"{name} {n}" for name, n in sorted(k.moments.items()))
    return ["", "### 1. kill -9 anywhere", "",
            "`botasync run` (ticks every 0.2 s, a reconcile walk every second, pages of 20, a "
            "shell command handler taking every event, backfill delivered) against a world of "
            "150 recordings changing every 50 ms; SIGKILL at a moment of each kind, then a "
            "restart. After the last one: the world frozen, SIGTERM, and full passes; then the "
            "database is compared with the world field by field and the outbox with what the "
            "handler got.", "",
            "| figure | value |", "|---|---|",
            f"| kills (by moment) | {k.kills} ({moments}) |",
            f"| recordings at the end / requests served | {k.recordings} / {k.requests} |",
            f"| outbox events / deliveries / repeated deliveries (same id) | {k.events} / "
            f"{k.deliveries} / {k.duplicates} |",
            f"| events lost / invented / dead | {len(k.lost)} / {len(k.invented)} / {k.dead} |",
            f"| rows wrong / unexplained states | {len(k.rows_wrong)} / {len(k.unexplained)} |",
            f"| integrity / SIGTERM exit / final syncs | {k.integrity} / {k.final_exit} / "
            f"{k.final_syncs} |",
            f"| seconds | {k.seconds} |"]


def _faults_md(m: FaultMixResult) -> list[str]:
    mix = ", ".join(f"{int(r * 100)}% {k}" for k, r in FAULT_MIX.items())
    injected = ", ".join(f"{k} {n}" for k, n in sorted(m.injected.items()))
    return ["", "### 2. Fault mix", "",
            f"Full passes and daemon ticks through {mix} (plus one of each kind queued), while "
            f"recordings were inserted ({m.inserted}) and deleted ({m.deleted}); then passes "
            f"over the frozen world until the mirror was exact. Client budget {m.budget} per "
            f"{m.window_s:g} s, the server's limit the same.", "",
            "| figure | value |", "|---|---|",
            f"| requests (retries included) | {m.requests} |",
            f"| faults injected | {injected} |",
            f"| peak requests in any {m.window_s:g} s window / budget | {m.peak} / {m.budget} |",
            f"| 429s from the server's own limiter | {m.genuine_429} |",
            f"| passes (failed after retries) / frozen passes to exact | {len(m.passes)} "
            f"({m.failed_passes}) / {m.frozen_passes} |",
            f"| rows wrong / integrity | {len(m.rows_wrong)} / {m.integrity} |",
            f"| recordings at the end / seconds | {m.recordings} / {m.seconds} |"]


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


def _surface_md(s: SurfaceResult, leaks: list[str]) -> list[str]:
    modes = ", ".join(f"{k} {v}" for k, v in sorted(s.modes.items()))
    return ["", "### 4. Secrets and surface", "",
            "| figure | value |", "|---|---|",
            f"| outputs and files grepped for the key (whole run) | {s.outputs_checked} + "
            f"every file of the run's directory; leaks {len(s.leaks) + len(leaks)} |",
            f"| file modes | {modes} |",
            f"| webhooks: verified by an independent HMAC / tampered body rejected / stale "
            f"timestamp rejected | {s.signature_ok} / {s.tampered_rejected} / "
            f"{s.stale_rejected} of {s.webhooks} |",
            f"| hostile recording names delivered as data / any of them ran | "
            f"{s.hostile_delivered} / {'no' if s.hostile_inert else 'yes'} |"]


def write_section(results: Path, section: str) -> None:
    """Replace the torture section of RESULTS.md, or append it; touch nothing else."""
    replace_section(results, "torture", section.replace(START, "").replace(END, ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="10 kills and a scaled window")
    p.add_argument("--kills", type=int, help="how many SIGKILLs (default 100, --quick 10)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    p.add_argument("--work", type=Path, help="scratch directory (default bench/work/torture-*)")
    args = p.parse_args()
    kills = args.kills or (10 if args.quick else 100)
    work = args.work or ROOT / "bench" / "work" / f"torture-{datetime.now():%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    with (work / "in-process.log").open("w") as log:
        configure("info", "json", stream=log)  # the in-process syncs log here, grepped too
        figures = asyncio.run(measure(work, kills, args.quick, args.seed))
    write_section(args.results, render(figures, kills))
    missed = [w for w, _, _, ok in verdicts(figures, kills) if not ok]
    say(f"wrote {args.results}; scratch in {work}")
    for what in missed:
        say(f"MISSED: {what}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
