"""The benchmarks cannot rot: `python bench/run.py --smoke` runs end to end in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE_N = 500


def test_bench_smoke_measures_every_contender(tmp_path: Path) -> None:
    """A smoke run measures each contender on N = 500 and writes RESULTS.md and results.json."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--work",
         str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    runs = {(r["contender"], r["run"]): r for r in res["mirror"]}
    for key in [("ceiling", "first"), ("botasync", "first"), ("botasync", "rerun"),
                ("botasync", "quick"), ("naive", "first")]:
        assert runs[key]["ok"], runs[key]
        assert runs[key]["rows"] == SMOKE_N
    assert runs[("botasync", "first")]["detail_requests"] == 0
    assert runs[("naive", "first")]["detail_requests"] == SMOKE_N
    assert runs[("botasync", "quick")]["requests"] < runs[("botasync", "rerun")]["requests"] + 1
    if res["dlt"]["status"].startswith("skipped"):
        assert ("dlt", "first") not in runs  # smoke mode never installs dlt
        assert "skipped" in (out / "RESULTS.md").read_text()
    else:
        assert runs[("dlt", "first")]["rows"] == SMOKE_N
    assert res["readers"]["ready"] and res["readers"]["locked"] == 0
    assert all(d["order_intact"] and d["delivered"] == d["backlog"] for d in res["dispatch"])
    assert res["steady"]["cycles"] > 0 and res["steady"]["events_delivered"] > 0
    assert "## 1. Initial mirror" in (out / "RESULTS.md").read_text()


def test_retention_bench_runs(tmp_path: Path) -> None:
    """`bench/retention.py` prunes the same half with and without the step-3 indexes."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "retention.py"), "--events", "400"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads(done.stdout)
    assert res["pruned"] == 200 and res["bytes_vacuumed"] < res["bytes_after"]


def test_sections_replace_only_their_own(tmp_path: Path) -> None:
    """A script rewriting its RESULTS.md section leaves the rest of the file as it was."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from sections import replace_section  # type: ignore[import-not-found]  # path set above
    finally:
        sys.path.remove(str(ROOT / "bench"))
    path = tmp_path / "RESULTS.md"
    path.write_text("# head\n")
    replace_section(path, "a", "first A")
    replace_section(path, "b", "B")
    replace_section(path, "a", "second A")
    assert path.read_text() == ("# head\n\n<!-- a:start -->\nsecond A\n<!-- a:end -->\n\n"
                                "<!-- b:start -->\nB\n<!-- b:end -->\n")
