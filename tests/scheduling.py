"""How pytest-xdist hands the tests to its workers (`-n auto --dist loadfile`, pyproject.toml).

As `--dist loadfile`: a file's tests go to one worker, in order, so a module-scoped fixture
is built once and tests that read what earlier ones left (tests/test_contract.py) see it.
Two changes, both only to the order and the grouping of the work, never to what runs:

- SPREAD: files whose tests share nothing (no module-scoped fixture, no order between
  them) and are slow enough to matter are handed out one test at a time;
- FIRST: the longest work is handed out first, so the run does not end with one worker
  still in a long test while the other has nothing left to do.

A file missing from both lists runs whole on one worker, after the FIRST ones.
"""

from __future__ import annotations

from typing import Any

from xdist.scheduler import LoadFileScheduling

SPREAD = frozenset({
    "tests/test_bench.py",
    "tests/test_daemon.py",
    "tests/test_demo.py",
    "tests/test_dialects.py",
    "tests/test_events_e2e.py",
    "tests/test_media.py",
    "tests/test_nats.py",
    "tests/test_progress.py",
    "tests/test_sync.py",
    "tests/test_transcripts.py",
    "tests/test_workers.py",
    "tests/torture/test_kill9.py",
    "tests/torture/test_surface.py",
})

# longest first, as measured on the 2-core machine (a prefix of a node id)
FIRST = (
    "tests/test_workers.py::test_workers_share_projects_survive_a_kill_and_hand_over_at_a_clean_stop",
    "tests/test_bench.py::test_bench_smoke_measures_every_contender",
    "tests/torture/test_badinput.py",  # one table of ~46 `botasync` processes (module fixture)
    "tests/test_demo.py::test_demo_runs_mirrors_and_prints_events",
    "tests/test_nats.py::test_sigkill_while_relaying_stores_each_event_once",
    "tests/test_progress.py::test_ctrl_c_says_where_the_walk_resumes",
    "tests/test_transcripts.py::test_sigkill_while_fetching_loses_and_duplicates_nothing",
    "tests/test_events_e2e.py",
    "tests/test_search.py",
    "tests/torture/test_kill9.py",
    "tests/torture/test_surface.py::test_no_secret_anywhere_and_a_narrow_surface",
    "tests/test_operating.py",
    "tests/test_nats.py",
)


def _path(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def _rank(scope: str) -> int:
    return next((i for i, prefix in enumerate(FIRST) if scope.startswith(prefix)), len(FIRST))


class Scheduling(LoadFileScheduling):  # type: ignore[misc]  # xdist is untyped: Any
    """`--dist loadfile`, with SPREAD files one test at a time and FIRST work handed out first."""

    def __init__(self, config: Any, log: Any = None) -> None:
        super().__init__(config, log)
        self._ordered = False

    def _split_scope(self, nodeid: str) -> str:
        path = _path(nodeid)
        return nodeid if path in SPREAD else path

    def _assign_work_unit(self, node: Any) -> None:
        if not self._ordered:  # the queue is complete by the first assignment: order it once
            self._ordered = True
            units = sorted(self.workqueue.items(), key=lambda unit: _rank(unit[0]))
            self.workqueue.clear()
            self.workqueue.update(units)
        super()._assign_work_unit(node)
