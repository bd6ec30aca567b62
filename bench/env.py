"""What every part of the bench shares: paths, the run's plan, botasync configs, the dlt venv."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
import venv
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# the bench's own virtualenv (dlt, matplotlib); the variable lets a check run without it
DLT_VENV = Path(os.environ.get("BOTASYNC_BENCH_VENV", BENCH / ".venv-dlt"))
DLT_REQUIREMENTS = BENCH / "requirements-dlt.txt"
PY = sys.executable


@dataclass
class Plan:
    """Sizes and durations of one bench run (`--smoke`, `--quick` or the full run)."""

    mode: str
    sizes: list[int]            # part 1: every contender at each size ...
    light_sizes: list[int]      # ... and a lighter set (no naive poller, no dlt re-run) here
    big: int                    # parts 2, 4, 5 run on this world
    latency_ms: int = 60
    seed: int = 7
    interval_s: float = 10.0    # part 2: the daemon's tick
    steady_s: float = 120.0     # part 2: how long the world moves
    changes_per_min: float = 10.0
    rate_limit: int = 100       # part 2: requests a minute, as the real API
    command_events: int = 2000  # part 5: events replayed to the command handler
    naive_timeout_s: float = 900.0
    timeout_s: float = 900.0    # any other single contender
    work: Path = field(default_factory=lambda: BENCH / "work")
    out: Path = BENCH
    with_dlt: bool = True
    install_dlt: bool = True


PLANS: dict[str, dict[str, Any]] = {
    "smoke": dict(sizes=[500], light_sizes=[], big=500, latency_ms=5, interval_s=1.0,
                  steady_s=2.0, changes_per_min=120.0, rate_limit=600,
                  command_events=100, naive_timeout_s=60, timeout_s=60, install_dlt=False),
    "quick": dict(sizes=[10_000], light_sizes=[100_000], big=100_000, steady_s=120.0,
                  command_events=2000),
    "full": dict(sizes=[10_000, 100_000], light_sizes=[], big=100_000, steady_s=300.0,
                 command_events=10_000, naive_timeout_s=2400),
}


def make_plan(mode: str, work: Path | None, out: Path | None) -> Plan:
    plan = Plan(mode=mode, **PLANS[mode])
    plan.work = (work or BENCH / "work" / mode).resolve()
    plan.out = (out or (BENCH if mode != "smoke" else plan.work)).resolve()
    return plan


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, Python, date and the botasync commit."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal:")), 0)
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_kb / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release(),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(),
            "sqlite": sqlite3.sqlite_version, "load_start": load_average()}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews timings."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def git_commit() -> str:
    """HEAD's short hash, marked when the work tree differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "botasync"], cwd=ROOT,
                               text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (+ uncommitted changes in botasync/)" if dirty else head


def botasync_env(url: str, key: str, db: Path, config: Path, **extra: str) -> dict[str, str]:
    """The environment a botasync process gets: URL, key, database and config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BOTA_", "BOTASYNC_"))}
    env.update(BOTA_API_URL=url, BOTA_API_KEY=key, BOTASYNC_DB=str(db),
               BOTASYNC_CONFIG=str(config), **extra)
    return env


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def mirror_config(path: Path) -> Path:
    """botasync for the initial mirror: the client-side budget out of the way (no rate limit)."""
    return write_config(path, (
        "# part 1: the server has no rate limit, so the client's budget must not pace it either\n"
        "[api]\nrequests_per_minute = 1000000\n\n[logging]\nlevel = \"warning\"\n"
        "format = \"json\"\n"))


def dlt_python() -> Path:
    return DLT_VENV / "bin" / "python"


def dlt_ready() -> bool:
    """Whether the bench's dlt virtualenv exists with dlt importable."""
    py = dlt_python()
    if not py.exists():
        return False
    probe = subprocess.run([str(py), "-c", "import dlt, dlt.sources.rest_api"],
                           capture_output=True, timeout=120)
    return probe.returncode == 0


def ensure_dlt(log_path: Path) -> tuple[bool, str]:
    """Create `bench/.venv-dlt` and pip install the bench's requirements into it."""
    if dlt_ready():
        return True, "present"
    venv.EnvBuilder(with_pip=True, clear=True).create(DLT_VENV)
    with open(log_path, "wb") as log:
        rc = subprocess.run([str(dlt_python()), "-m", "pip", "install", "-q", "-r",
                             str(DLT_REQUIREMENTS)], stdout=log, stderr=log,
                            timeout=1800).returncode
    ok = rc == 0 and dlt_ready()
    return ok, "installed" if ok else f"pip failed (exit {rc}); see {log_path}"


def dlt_version() -> str:
    out = subprocess.run([str(dlt_python()), "-c", "import dlt; print(dlt.__version__)"],
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip() or "unknown"
