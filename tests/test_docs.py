"""The README is the manual: it names every config key, event type and command, and CI runs its test command."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import click
import pytest
from pydantic import BaseModel

from botasync import config
from botasync.cli.main import main
from botasync.envelope import EVENT_TYPES
from botasync.store import migrations

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_config_key_is_documented() -> None:
    """Each key of each section appears in the README's configuration table."""
    for section, field in config.Config.model_fields.items():
        if section in ("handlers", "projects"):
            assert f"[[{section}]]" in README
            continue
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key in model.model_fields:
            assert f"`[{section}] {key}`" in README, f"[{section}] {key}"
    for handler in (config.CommandHandlerConfig, config.WebhookHandlerConfig,
                    config.PythonHandlerConfig):
        for key in handler.model_fields:
            assert f"`{key}`" in README, key


def test_every_event_type_is_documented() -> None:
    """Each event type has a row in the README's event table."""
    for event_type in EVENT_TYPES:
        assert f"| `{event_type}` |" in README, event_type


def test_every_command_is_documented() -> None:
    """Each command of the CLI is named in the README."""
    def walk(group: click.Group, prefix: str) -> list[str]:
        out = []
        for name, cmd in group.commands.items():
            out.append(f"{prefix}{name}")
            if isinstance(cmd, click.Group):
                out += walk(cmd, f"{prefix}{name} ")
        return out

    for command in walk(main, "botasync "):
        top = command.split()[1]
        assert f"botasync {top}" in README, command


def test_every_table_is_documented() -> None:
    """Each table of the schema is named in the README's database section."""
    # `<table>_6`: a table rebuilt by a step, under its own name once the step is done
    tables = {t for t in re.findall(r"CREATE TABLE (\w+)", "".join(migrations.STEPS))
              if not re.search(r"_\d+$", t)}
    for table in tables:
        assert f"`{table}`" in README, table


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run runs exactly the test command the README gives."""
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    test_cmd = next(b.strip() for b in blocks if "pytest" in b)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
    demo_cmd = next(b.strip() for b in blocks if "botasync demo" in b)
    assert demo_cmd.startswith("python3 -m venv .venv") and "pip install -e ." in demo_cmd


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_exposure_is_low() -> None:
    """systemd-analyze rates the unit's exposure 2.0 or less."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(ROOT / "systemd/botasync.service")],
        capture_output=True, text=True, timeout=60,
    ).stdout
    match = re.search(r"Overall exposure level for botasync.service: ([\d.]+)", out)
    assert match, out[-500:]
    assert float(match.group(1)) <= 2.0


def test_example_config_and_env_files_exist() -> None:
    """The example config and the systemd environment example ship with the project."""
    assert (ROOT / "config" / "botasync.example.toml").is_file()
    assert (ROOT / "systemd" / "botasync.env.example").is_file()
    unit = (ROOT / "systemd" / "botasync.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=botasync",
                 "LoadCredential=", "DynamicUser=yes"):
        assert line in unit
