"""Targets and RESULTS.md, computed from the measured results only (no figure typed in)."""

from __future__ import annotations

from typing import Any

Row = dict[str, Any]
LABELS = {"ceiling": "ceiling (bare aiohttp walk)", "botasync": "botasync", "naive":
          "naive poller", "dlt": "dlt rest_api + sqlalchemy"}


def find(results: dict[str, Any], name: str, run: str, n: int) -> Row | None:
    for r in results.get("mirror", []):
        if r["contender"] == name and r["run"] == run and r["n"] == n:
            return r  # type: ignore[no-any-return]
    return None


def _sizes(results: dict[str, Any]) -> list[int]:
    return sorted({r["n"] for r in results.get("mirror", [])})


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def _target(name: str, goal: str, value: Any, met: bool | None, note: str = "") -> Row:
    return {"target": name, "goal": goal, "measured": value, "met": met, "note": note}


def _mirror_targets(results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for n in _sizes(results):
        ceil, bota = find(results, "ceiling", "first", n), find(results, "botasync", "first", n)
        dlt, dlt_re = find(results, "dlt", "first", n), find(results, "dlt", "rerun", n)
        bota_re = find(results, "botasync", "rerun", n)
        first_tick = find(results, "botasync", "quick", n)
        quick = find(results, "botasync", "quick-again", n) or first_tick
        if ceil and bota:
            r = _ratio(ceil["wall_s"], bota["wall_s"])
            out.append(_target(f"mirror N={n:,}: botasync throughput / ceiling", ">= 1.0", r,
                               r is not None and r >= 1.0))
        if dlt and bota:
            r = _ratio(dlt["wall_s"], bota["wall_s"])
            out.append(_target(f"mirror N={n:,}: botasync throughput / dlt", ">= 2.0", r,
                               r is not None and r >= 2.0))
        if dlt_re and bota_re:
            r = _ratio(dlt_re["wall_s"], bota_re["wall_s"])
            out.append(_target(f"unchanged re-run N={n:,}: dlt re-run time / botasync re-run",
                               ">= 3.0", r, r is not None and r >= 3.0))
        walk = dlt_re or dlt
        if walk and quick:
            r = _ratio(walk["requests"], quick["requests"])
            note = "" if dlt_re else "dlt's first run (its re-run makes the same walk). "
            if first_tick and first_tick is not quick and first_tick["requests"] != quick[
                    "requests"]:
                note += (f"The second of two ticks; the first after the mirror made "
                         f"{first_tick['requests']}. ")
            if r is not None and r < 50:
                note += (f"The tick cost {quick['requests']} requests and dlt's walk "
                         f"{walk['requests']}: 50x needs a walk of {50 * quick['requests']:,} "
                         f"pages, N >= {50 * quick['requests'] * 100:,}")
            out.append(_target(f"unchanged sync --quick N={n:,}: dlt re-run requests / botasync",
                               ">= 50", r, r is not None and r >= 50, note.strip()))
    return out


def _scale_targets(results: dict[str, Any]) -> list[Row]:
    pts = [r for r in results.get("mirror", []) if r["contender"] == "botasync"
           and r["run"] == "first" and r["ok"]]
    if len(pts) < 2:
        return []
    lo, hi = min(pts, key=lambda r: r["n"]), max(pts, key=lambda r: r["n"])
    grow = round(hi["peak_rss_mb"] - lo["peak_rss_mb"], 1)
    per_lo, per_hi = (lo["wall_s"] / lo["n"] * 1000), (hi["wall_s"] / hi["n"] * 1000)
    lin = _ratio(per_hi, per_lo)
    return [
        _target(f"scale: peak RSS growth {lo['n']:,} -> {hi['n']:,}", "<= +20 MB", grow,
                grow <= 20),
        _target(f"scale: s per 1,000 at {hi['n']:,} / at {lo['n']:,}", "<= 1.25 (linear)", lin,
                lin is not None and lin <= 1.25,
                f"{per_lo:.3f} s vs {per_hi:.3f} s per 1,000"),
    ]


def _steady_targets(results: dict[str, Any]) -> list[Row]:
    st = results.get("steady")
    if not st:
        return []
    out: list[Row] = []
    dlt = find(results, "dlt", "rerun", st["n"]) or find(results, "dlt", "first", st["n"])
    per = st.get("requests_per_cycle_mean")
    if dlt and per:
        r = _ratio(dlt["requests"], per)
        out.append(_target(f"steady N={st['n']:,}: dlt requests per cycle / botasync",
                           ">= 50", r, r is not None and r >= 50))
    lat, goal = st.get("latency_max_s"), st["latency_target_s"]
    all_seen = st["tick_changes_seen"] == st["tick_changes"]
    out.append(_target("steady: change-to-event latency (max)", f"<= {goal:g} s", lat,
                       lat is not None and lat <= goal and all_seen,
                       f"{st['tick_changes_seen']}/{st['tick_changes']} tick-visible changes "
                       "seen"))
    return out


def targets(results: dict[str, Any]) -> list[Row]:
    """Every target of the issue that this run has the figures for."""
    out = _mirror_targets(results) + _scale_targets(results) + _steady_targets(results)
    rd = results.get("readers")
    if rd and rd.get("ready"):
        out.append(_target(f"readers during the N={rd['n']:,} mirror: 'database is locked'",
                           "0", rd["locked"], rd["locked"] == 0,
                           f"p99 {rd['p99_ms']} ms over {rd['queries']:,} queries"))
    for d in results.get("dispatch", []):
        out.append(_target(f"dispatch to a {d['type']} handler: order intact", "yes",
                           d["order_intact"], d["order_intact"] and d["delivered"] == d["backlog"],
                           f"{d['events_per_s']:,} events/s"))
    return out
