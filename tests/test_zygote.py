"""The zygote's children behave as `python -m botasync` started fresh (tests/zygote.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests import zygote
from tests.torture.harness import clean_env


async def _fresh(*args: str, env: dict[str, str], cwd: Path) -> Any:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "botasync", *args, env=env, cwd=cwd,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def _forked(*args: str, env: dict[str, str], cwd: Path) -> Any:
    proc = await zygote.create(list(args), env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert proc is not None, "the zygote took no child"
    return proc


@pytest.mark.parametrize(("args", "code"), [
    (["--version"], 0),
    (["sync", "--config", "missing.toml"], 2),  # relative to the working directory
    (["status"], 1),  # BOTASYNC_DB from the environment: no such database
])
async def test_a_child_answers_as_a_fresh_process(
    args: list[str], code: int, tmp_path: Path,
) -> None:
    """Same exit code, same stdout, same stderr: the environment and the working
    directory are the child's own, not the zygote's."""
    env = clean_env(BOTASYNC_DB=str(tmp_path / "none" / "botasync.db"), COLUMNS="100")
    answers = []
    for start in (_fresh, _forked):
        proc = await start(*args, env=env, cwd=tmp_path)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        answers.append((proc.returncode, out.decode(), err.decode()))
    assert answers[1] == answers[0]
    assert answers[0][0] == code


async def test_a_signal_ends_a_child_as_it_ends_a_fresh_process(tmp_path: Path) -> None:
    """`botasync simulate` stopped by SIGTERM and by SIGINT: the same exit codes."""
    codes: dict[str, list[int]] = {"fresh": [], "forked": []}
    for name, start in (("fresh", _fresh), ("forked", _forked)):
        for sig in (signal.SIGTERM, signal.SIGINT):
            proc = await start("simulate", "--port", "0", env=clean_env(), cwd=tmp_path)
            assert proc.stderr is not None
            while b"simulator serving" not in await asyncio.wait_for(
                    proc.stderr.readline(), 60):
                pass
            os.kill(proc.pid, sig)
            await asyncio.wait_for(proc.communicate(), 60)
            codes[name].append(proc.returncode)
    assert codes["forked"] == codes["fresh"]
