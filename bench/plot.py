"""The plot: wall time and peak RSS against N for every contender (one PNG).

Drawn with matplotlib from the bench's virtualenv (`bench/.venv-dlt`), in its own
process so botasync's environment never needs matplotlib. Without that venv (a smoke
run on a fresh clone) the plot is skipped and the results say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from env import dlt_python

STYLE = {"ceiling": ("black", "o"), "botasync": ("tab:blue", "s"), "naive": ("tab:red", "^"),
         "dlt": ("tab:orange", "D")}


def plot(results: dict[str, Any], png: Path, work: Path) -> str:
    """Write the PNG; returns its file name, or why it was skipped."""
    py = dlt_python()
    if not py.exists():
        return "skipped: no bench/.venv-dlt (matplotlib lives there)"
    data = work / "plot-input.json"
    data.write_text(json.dumps(results.get("mirror", [])))
    done = subprocess.run([str(py), __file__, str(data), str(png)], capture_output=True,
                          text=True, timeout=300)
    if done.returncode != 0:
        return f"skipped: matplotlib failed ({done.stderr.strip().splitlines()[-1:]})"
    return png.name


def series(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by contender and run (quick syncs left out: they walk nothing)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if not r["run"].startswith("quick") and r["wall_s"] > 0:
            out.setdefault(f"{r['contender']}|{r['run']}", []).append(r)
    return {k: sorted(v, key=lambda r: r["n"]) for k, v in out.items()}


def draw(data: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(data.read_text())
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    for key, pts in series(rows).items():
        name, run = key.split("|")
        color, marker = STYLE.get(name, ("gray", "x"))
        ls = "-" if run == "first" else "--"
        label = f"{name} ({'first mirror' if run == 'first' else 'unchanged re-run'})"
        xs = [p["n"] for p in pts]
        ax_t.plot(xs, [p["wall_s"] for p in pts], ls, color=color, marker=marker, label=label)
        ax_m.plot(xs, [p["peak_rss_mb"] for p in pts], ls, color=color, marker=marker,
                  label=label)
    ax_t.set(xscale="log", yscale="log", xlabel="recordings (N)", ylabel="wall time (s)",
             title="Wall time, rate limit off, 60 ms answers")
    ax_m.set(xscale="log", xlabel="recordings (N)", ylabel="peak RSS of the process tree (MB)",
             title="Peak RSS")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    draw(Path(sys.argv[1]), Path(sys.argv[2]))
