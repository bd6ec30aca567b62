"""The outbox relayed to NATS JetStream: a 100,000-event backlog, an outage, kill -9.

1. Relay: a database holding a backlog of N events (default 100,000, about 1.2 KB each,
   over 500 recordings and four types) and a `botasync run` with one `nats` handler
   (`create_stream = true`) against a real `nats-server -js` on loopback. Events per
   second are the stream's own: from the first message's store time to the last's (no
   process start-up in it); wall time is spawn to caught up. CPU of both processes.
   Then the stream is read back: it must hold exactly N messages, each event once, every
   subject in outbox order.
2. Outage: the relay under way, the server stopped for 30 s while more events are
   written, then started again (same port, same store): deliveries retry and resume,
   nothing lost, nothing doubled.
3. kill -9: `botasync run` relaying a 40,000-event backlog, SIGKILLed at 20 moments and
   started again: the stream holds each event exactly once.

    python bench/nats_relay.py [--events 100000] [--outage-s 30] [--kills 20] [--write]

Exits 1 when a must-hold is missed (10,000 events/s or more; exact streams).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from env import load_average, machine  # noqa: E402
from sections import replace_section  # noqa: E402

from botasync.logging import configure  # noqa: E402
from botasync.store.sqlite import Store  # noqa: E402
from tests.natsrelay import (  # noqa: E402
    NatsServer,
    add_events,
    check_stream,
    connect,
    cursor_of,
    outbox_ids,
    read_stream,
    relay_config,
    run_kill9_relay,
    run_outage,
    stream_count,
)
from tests.torture.harness import API_KEYS, spawn, stop, until  # noqa: E402

TARGET_PER_S = 10_000
EVENT_BYTES = 1200


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def relay(work: Path, n: int) -> dict[str, Any]:
    """Part 1: the backlog through `botasync run`, then the stream read back."""
    from botasync.simulator import World, serve

    db = work / "relay.db"
    async with await Store.open(db) as store:
        await add_events(store, n, backfill=True, recordings=500, size=EVENT_BYTES)
    server = NatsServer(work / "nats-relay")
    await server.start()
    try:
        async with serve(World(seed=7, recordings=0), api_keys=API_KEYS,
                         rate_limit=None) as sim:
            cfg = relay_config(work, sim.url, db, server.url)
            assert server.proc is not None
            server_cpu = cpu_s(server.proc.pid)
            started = time.monotonic()
            proc = await spawn("run", "--config", str(cfg), log_to=work / "relay.log")
            last = outbox_ids(db)[-1][0]
            try:
                done = await until(lambda: cursor_of(db, "relay") == last, 600, interval=0.05)
                wall = time.monotonic() - started
                relay_cpu = cpu_s(proc.pid)
            finally:
                exit_code = await stop(proc, signal.SIGTERM)
            server_cpu = cpu_s(server.proc.pid) - server_cpu
        nc = await connect(server.url)
        try:
            count = await stream_count(nc, "BOTASYNC")
            stored = await read_stream(nc, "BOTASYNC")
            js = nc.jetstream()
            first = (await js.get_msg("BOTASYNC", stored[0].seq)).headers if stored else None
            stamps = await _stamps(nc, stored[0].seq, stored[-1].seq) if stored else (0, 0)
        finally:
            await nc.close()
    finally:
        await server.aclose()
    check = check_stream(stored, outbox_ids(db))
    span = max(stamps[1] - stamps[0], 1e-9)
    return {"events": n, "event_bytes": round(sum(len(m.data) for m in stored) / max(1, len(
        stored))), "caught_up": bool(done), "messages": count, "problems": check.problems(),
        "per_s": round(len(stored) / span), "stream_span_s": round(span, 2),
        "wall_s": round(wall, 2), "relay_cpu_s": round(relay_cpu, 2),
        "server_cpu_s": round(server_cpu, 2), "exit_code": exit_code,
        "headers_seen": sorted(first or {})}


async def _stamps(nc: Any, first: int, last: int) -> tuple[float, float]:
    """The store times (Unix seconds) of two messages: the stream's own clock."""
    js = nc.jetstream()
    a, b = await js.get_msg("BOTASYNC", first), await js.get_msg("BOTASYNC", last)
    return _ts(a), _ts(b)


def _ts(msg: Any) -> float:
    from datetime import datetime

    raw = msg.time if hasattr(msg, "time") else None
    if isinstance(raw, datetime):
        return raw.timestamp()
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp()


async def outage(work: Path, outage_s: float) -> dict[str, Any]:
    """Part 2: the server away for `outage_s` in the middle of a relay."""
    server = NatsServer(work / "nats-outage")
    await server.start()
    try:
        async with await Store.open(work / "outage.db") as store:
            r = await run_outage(store, server, outage_s=outage_s, before=20_000,
                                 during=5_000)
    finally:
        await server.aclose()
    return {"outage_s": outage_s, "events": r.check.events, "messages": r.check.messages,
            "stored_before": r.stored_before, "retried": r.failures,
            "resumed_after_s": r.resumed_after_s, "problems": r.check.problems()}


async def kill9(work: Path, kills: int, backlog: int) -> dict[str, Any]:
    """Part 3: SIGKILL at `kills` moments of a relay."""
    (work / "kill9").mkdir()
    server = NatsServer(work / "nats-kill9")
    await server.start()
    try:
        r = await run_kill9_relay(work / "kill9", server, kills=kills, backlog=backlog)
    finally:
        await server.aclose()
    return {"kills": r.kills, "during": r.during, "events": r.check.events,
            "messages": r.check.messages, "stored_at_kills": r.stored_at_kills,
            "final_exit": r.final_exit, "seconds": r.seconds, "problems": r.check.problems()}


def verdicts(r: dict[str, Any]) -> dict[str, bool]:
    rel, out, k9 = r["relay"], r["outage"], r["kill9"]
    return {
        "rate": rel["per_s"] >= TARGET_PER_S,
        "relay exact": rel["messages"] == rel["events"] and not rel["problems"],
        "outage": not out["problems"] and out["retried"] > 0,
        "kill9": not k9["problems"] and k9["kills"] > 0,
    }


def write_section(path: Path, r: dict[str, Any]) -> None:
    """The `nats` section of RESULTS.md."""
    rel, out, k9 = r["relay"], r["outage"], r["kill9"]
    ok = {k: "holds" if v else "MISSED" for k, v in verdicts(r).items()}
    replace_section(path, "nats", "\n".join([
        "## NATS JetStream relay",
        "",
        f"Written by `python bench/nats_relay.py --write` on {r['date']}; {r['machine']}; "
        f"nats-server {r['server_version']}, nats-py {r['nats_py']}; load average "
        f"{r['load_end']} at the end.",
        "",
        f"**Relay**: a backlog of {rel['events']:,} events (about {rel['event_bytes']:,} "
        "bytes each, four types over 500 recordings) relayed by `botasync run` with one "
        "`nats` handler to a `nats-server -js` (file store) on loopback: "
        f"**{rel['per_s']:,} events/s** by the stream's own clock ({rel['stream_span_s']} s "
        f"from the first message stored to the last); {rel['wall_s']} s from spawn to the "
        f"cursor at the last event. CPU: botasync {rel['relay_cpu_s']} s, nats-server "
        f"{rel['server_cpu_s']} s (2 cores shared). The stream holds {rel['messages']:,} "
        f"messages: each event once, every subject in outbox order "
        f"({'; '.join(rel['problems']) or 'no problem found'}). Must hold: 10,000 events/s "
        f"or more: **{ok['rate']}**; exactly {rel['events']:,}, order per subject: "
        f"**{ok['relay exact']}**.",
        "",
        f"**Outage**: the server stopped for {out['outage_s']:g} s in the middle of a "
        f"relay ({out['stored_before']:,} of 20,000 events stored), 5,000 more written "
        f"meanwhile, then started again on the same port and store: {out['retried']:,} "
        f"failed attempts (retried with backoff) while it was away; the relay finished "
        f"{out['resumed_after_s']} s after the server was back; the stream holds "
        f"{out['messages']:,} messages for {out['events']:,} events "
        f"({'; '.join(out['problems']) or 'each once, in order per subject'}): **{ok['outage']}**.",
        "",
        f"**kill -9**: `botasync run` relaying a {k9['events']:,}-event backlog, killed with "
        f"SIGKILL at {k9['kills']} moments ({k9['during']} of them with events still to "
        f"relay) and started again, in {k9['seconds']} s: the stream holds "
        f"{k9['messages']:,} messages for {k9['events']:,} events "
        f"({'; '.join(k9['problems']) or 'each exactly once, in order per subject'}): "
        f"**{ok['kill9']}**. Messages stored at the kills: "
        f"{', '.join(f'{s:,}' for s in k9['stored_at_kills'])}.",
    ]))


def versions() -> tuple[str, str]:
    import subprocess
    from importlib.metadata import version

    from tests.natsrelay import nats_server_binary

    out = subprocess.run([nats_server_binary(), "--version"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return out.removeprefix("nats-server: "), version("nats-py")


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    server_version, nats_py = versions()
    result: dict[str, Any] = {"machine": machine(), "date": time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime()), "server_version": server_version,
        "nats_py": nats_py}
    print(f"relay: {args.events:,} events ...", flush=True)
    result["relay"] = await relay(work, args.events)
    print(json.dumps(result["relay"]), flush=True)
    print(f"outage: {args.outage_s:g} s ...", flush=True)
    result["outage"] = await outage(work, args.outage_s)
    print(json.dumps(result["outage"]), flush=True)
    print(f"kill -9: {args.kills} kills ...", flush=True)
    result["kill9"] = await kill9(work, args.kills, args.kill_backlog)
    print(json.dumps(result["kill9"]), flush=True)
    result["load_end"] = load_average()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--outage-s", type=float, default=30.0)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--kill-backlog", type=int, default=40_000)
    ap.add_argument("--write", action="store_true", help="also put the figures in RESULTS.md")
    args = ap.parse_args()
    configure("error", "console")
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args, Path(tmp)))
    result["machine"] = (f"{result['machine']['cores']} cores ({result['machine']['cpu_model']}), "
                         f"Python {result['machine']['python']}, load average "
                         f"{result['machine']['load_start']} at the start")
    print(json.dumps(result, indent=1))
    if args.write:
        write_section(Path(__file__).resolve().parent / "RESULTS.md", result)
    missed = [k for k, v in verdicts(result).items() if not v]
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
