"""A standalone simulator of the Bota API (recordings, their files, transcriptions and
summaries), for tests, the demo and benchmarks.

It imports nothing from the rest of botasync: the client and the simulator share only
the OpenAPI contract (`botasync/openapi.yaml`), so a bug in one cannot hide the same
bug in the other.

    world = World(seed=1, recordings=500)  # dialect="deployed" for the API as deployed
    async with serve(world, rate_limit=None) as sim:
        ...  # point a client at sim.url; change sim.world; queue sim.faults

Several Bota projects, each its own key, world and limits:

    async with serve(World(seed=1, recordings=500), projects=3) as sim:
        ...  # keys sk_test_project_0..2; sim.project(1).world, sim.project(1).faults
    async with serve({"sk_a": World(seed=1), "sk_b": World(seed=1)}) as sim:
        ...  # two projects with the same ids
"""

from botasync.simulator.app import DEFAULT_API_KEYS, RequestRecord, Simulator, run_forever, serve
from botasync.simulator.clock import Clock, ManualClock, SystemClock
from botasync.simulator.faults import KINDS as FAULT_KINDS
from botasync.simulator.faults import Faults
from botasync.simulator.files import file_bytes, recording_bytes, recording_sha256
from botasync.simulator.projects import Project, project_key, project_seed, project_worlds
from botasync.simulator.world import DIALECTS, Dialect, World

__all__ = [
    "DEFAULT_API_KEYS",
    "DIALECTS",
    "FAULT_KINDS",
    "Clock",
    "Dialect",
    "Faults",
    "ManualClock",
    "Project",
    "RequestRecord",
    "Simulator",
    "SystemClock",
    "World",
    "file_bytes",
    "project_key",
    "project_seed",
    "project_worlds",
    "recording_bytes",
    "recording_sha256",
    "run_forever",
    "serve",
]
