"""RESULTS.md from results.json: tables of the measured figures and the ratios between them."""

from __future__ import annotations

from typing import Any

from report import LABELS, find

RUNS = {"first": "first mirror", "rerun": "unchanged re-run",
        "quick": "unchanged sync --quick (first tick)",
        "quick-again": "unchanged sync --quick (again)"}


def _f(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]
    return [*out, ""]


def header(res: dict[str, Any]) -> list[str]:
    m, plan = res["machine"], res["plan"]
    cmd = {"full": "python bench/run.py", "quick": "python bench/run.py --quick",
           "smoke": "python bench/run.py --smoke"}[res["mode"]]
    return [
        "# botasync benchmarks: results", "",
        f"Written by `{cmd}` on {m['date']}; the whole run took "
        f"{res['bench_seconds'] / 60:.1f} min. Every figure below was measured in this run "
        "(ratios are computed from them); nothing is typed in.", "",
        f"- machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gib']} GiB; Linux "
        f"{m['kernel']}; Python {m['python']}; SQLite {m['sqlite']}; load average "
        f"{m.get('load_start', '-')} at the start, {m.get('load_end', '-')} at the end (the "
        "machine may be shared: times drift, ratios within one run hold better)",
        f"- botasync commit: `{m['commit']}`",
        f"- dlt: {res['dlt']['version'] or '-'} ({res['dlt']['status']}), in `bench/.venv-dlt`",
        f"- world: seed {plan['seed']}, simulator in its own process, answers delayed "
        f"{plan['latency_ms']} ms; sizes N = "
        + ", ".join(f"{n:,}" for n in sorted({*plan['sizes'], *plan['light_sizes']})), "",
    ]


def targets_section(res: dict[str, Any]) -> list[str]:
    rows = [[t["target"], t["goal"], t["measured"],
             "met" if t["met"] else ("**missed**" if t["met"] is False else "-"), t["note"]]
            for t in res["targets"]]
    return ["## Targets", "", *_table(["target", "goal", "measured", "", "note"], rows)]


def mirror_section(res: dict[str, Any]) -> list[str]:
    out = ["## 1. Initial mirror (rate limit off)", "",
           "Wall time from process start to exit; requests from the simulator's log; peak RSS "
           "is the summed RSS of the contender's process tree (polled from /proc every 20 ms); "
           "CPU is user + system of the tree. *Throughput x ceiling* is the ceiling's time "
           "divided by the contender's (above 1 = faster than a bare sequential walk).", ""]
    for n in sorted({r["n"] for r in res["mirror"]}):
        ceil = find(res, "ceiling", "first", n)
        rows = []
        for r in (x for x in res["mirror"] if x["n"] == n):
            ratio = ceil["wall_s"] / r["wall_s"] if ceil and r["wall_s"] else None
            db = r["db_bytes"] / 2**20 if r["db_bytes"] else None
            state = "ok" if r["ok"] else ("time limit" if r["timed_out"] else "FAILED")
            rows.append([LABELS[r["contender"]], RUNS[r["run"]], r["wall_s"], ratio,
                         r["wall_s"] / ceil["wall_s"] if ceil else None, r["requests"],
                         f"{r['list_requests']:,} / {r['detail_requests']:,}", r["peak_rss_mb"],
                         r["cpu_s"], r["rows"], db, state])
        out += [f"### N = {n:,}", ""]
        out += _table(
            ["contender", "run", "wall s", "throughput x ceiling", "time x ceiling",
             "requests", "list / detail", "peak RSS MB", "CPU s", "rows stored", "DB MB", ""],
            rows)
    return out


def scale_section(res: dict[str, Any]) -> list[str]:
    rows = []
    for r in res["mirror"]:
        if r["run"] == "first" and r["ok"] and r["contender"] != "ceiling":
            per_rec = r["db_bytes"] / r["n"] if r["db_bytes"] else None
            rows.append([LABELS[r["contender"]], r["n"], r["peak_rss_mb"],
                         r["wall_s"] / r["n"] * 1000, per_rec])
    intro = ("First mirrors only. botasync's database holds the recordings, their media, and "
             "the backfill's outbox (one `recording.created` event per recording, with its "
             "JSON envelope).")
    head = ["contender", "N", "peak RSS MB", "s per 1,000", "DB bytes per recording"]
    return ["## 3. Scale", "", intro, "", *_table(head, rows)]


def steady_section(res: dict[str, Any]) -> list[str]:
    st = res.get("steady")
    if not st:
        return []
    dlt = find(res, "dlt", "rerun", st["n"]) or find(res, "dlt", "first", st["n"])
    per = st["requests_per_cycle_mean"]
    rows = [["botasync run (one tick: head + hot)", per, st["requests_per_cycle_median"],
             st["requests_per_cycle_max"], per * 60 / st["interval_s"] if per else None,
             per / st["rate_limit_per_min"] if per else None]]
    if dlt:
        rows.append(["dlt re-run (walks everything; no updated_at)", dlt["requests"], "-", "-",
                     "-", dlt["requests"] / st["rate_limit_per_min"]])
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(st["changes_by_kind"].items()))
    unseen = ", ".join(f"{k} {v}" for k, v in sorted(st["not_seen_by_kind"].items())) or "none"
    out = ["## 2. Steady state", "",
           f"`botasync run` on the N = {st['n']:,} mirror, tick `interval_s = "
            f"{st['interval_s']:g}`, default budget (90/min), the simulator's rate limit at "
            f"{st['rate_limit_per_min']}/min, for {st['duration_s']:g} s of real time (the "
            f"world's clock is the real one) while the bench made {st['changes']} changes "
            f"({st['changes_per_min']:g} a minute: {kinds}). Recordings in flight: "
            f"{st['in_flight_start']} at the start, {st['in_flight_end']} at the end. "
            f"{st['cycles']} ticks, {st['requests']} requests, {st['status_429']} answered 429. "
            "dlt's figure is its walk of the same world measured in part 1 (rate limit off), "
            "converted to minutes of a 100/min budget.", ""]
    out += _table(["", "requests per cycle (mean)", "median", "max", "per minute",
                   "minutes of budget per cycle"], rows)
    return [*out,
        f"Change-to-event latency (the change made -> the command handler ran): p50 "
        f"{_f(st['latency_p50_s'])} s, p95 {_f(st['latency_p95_s'])} s, max "
        f"{_f(st['latency_max_s'])} s (target: interval + 2 s = {st['latency_target_s']:g} s). "
        f"Changes the tick is built to see (creations, status changes, media of recent "
        f"recordings): {st['tick_changes_seen']} of {st['tick_changes']} delivered. Not seen "
        f"within the window: {unseen} (edits and deletions of finished recordings deep in the "
        "archive are the reconcile walk's job, every `reconcile_every_s`).", ""]


def readers_section(res: dict[str, Any]) -> list[str]:
    rd = res.get("readers")
    if not rd:
        return []
    out = ["## 4. Readers during sync", "",
           f"A separate process (`bench/reader.py`, stdlib `sqlite3`, default settings) ran "
            f"two everyday queries in a loop (5 ms apart) while `botasync sync` mirrored "
            f"N = {rd['n']:,} into a fresh database ({_f(rd['sync_wall_s'])} s).", ""]
    return out + _table(
        ["queries", "database is locked", "other errors", "p50 ms", "p99 ms", "max ms"],
        [[rd.get("queries"), rd.get("locked"), rd.get("other_errors"), rd.get("p50_ms"),
          rd.get("p99_ms"), rd.get("max_ms")]])


def dispatch_section(res: dict[str, Any]) -> list[str]:
    ds = res.get("dispatch")
    if not ds:
        return []
    rows = [[d["type"], d["backlog"], d["delivered"], d["wall_s"], d["events_per_s"],
             d["order_intact"], d["peak_rss_mb"]] for d in ds]
    out = ["## 5. Dispatch", "",
            "`botasync events replay --handler NAME --since SEQ` over the backlog of the part-4 "
            "mirror (one `recording.created` per recording). python: an `async def` that "
            "appends the event id to a file; command: `hooks/record_id.sh` (one `sh` process per "
            "event). Events/s over the whole process (start-up included); order checked "
            "against `seq`.", ""]
    return out + _table(
        ["handler", "backlog", "delivered", "wall s", "events/s", "order intact",
         "peak RSS MB"], rows)


def profile_section(res: dict[str, Any]) -> list[str]:
    profs = [p for p in res.get("profile", []) if "top" in p]
    if not profs:
        return []
    out = ["## Profile of a missed target: memory", "",
           "`bench/memprofile.py`: botasync's first mirror under tracemalloc (no latency), a "
           "snapshot when the full walk's end asks for every stored id. Traced memory is "
           "Python's own allocations; RSS includes tracemalloc's bookkeeping.", ""]
    out += _table(["N", "traced at walk end MB", "traced peak MB", "RSS at walk end MB"],
                  [[p["n"], p["traced_at_walk_end_mb"], p["traced_peak_mb"],
                    p["rss_at_walk_end_mb"]] for p in profs])
    big = profs[-1]
    out += [f"Top allocation sites at N = {big['n']:,} (file:line of the allocation, then the "
            "botasync lines that led there):", ""]
    return out + _table(["MB", "blocks", "where"],
                        [[t["mb"], t["blocks"], f"`{t['where']}`"] for t in big["top"]])


def notes(res: dict[str, Any]) -> list[str]:
    plot = res.get("plot", "")
    pic = f"![time and RSS against N]({plot})" if plot.endswith(".png") else f"Plot: {plot}."
    return ["## Plot", "", pic, "", "## How it was measured", "",
            "- One simulator process per world size, rate limit off for part 1; each contender "
            "is its own process, started one after another against it.",
            "- botasync runs with `[api] requests_per_minute = 1000000` in part 1, so its "
            "client-side budget does not pace a server that has no limit (defaults otherwise: "
            "`concurrency = 4`, `page_size = 100`). In part 2 it runs with its defaults.",
            "- ceiling: `bench/ceiling.py`, one request at a time, parse and discard. naive "
            "poller: `bench/naive.py`, every detail (4 at a time), `sqlite3` upsert per page. "
            "dlt: `bench/dlt_pipeline.py`, `rest_api` source, offset paginator "
            "(limit 100, `has_more`), `merge` on `id`, sqlalchemy destination on SQLite.",
            "- See bench/README.md for what each figure means and how to run it.", ""]


def render(res: dict[str, Any]) -> str:
    parts = (header(res) + targets_section(res) + mirror_section(res) + steady_section(res)
             + scale_section(res) + readers_section(res) + dispatch_section(res)
             + profile_section(res) + notes(res))
    return "\n".join(parts)
