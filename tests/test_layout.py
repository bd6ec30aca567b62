"""The package's layout is its architecture: imports run one way only.

Each subpackage sits on a layer; a module may import its own subpackage, the core
(the top-level modules: errors, config, logging, ...) and the layers below its own, never a
layer above nor a sibling on its own layer. The same table is in the README's Development
section; this test fails when an import runs against it. Imports inside functions count
too: a late import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "botasync"
CORE = "core"

# layer -> the subpackages on it, lowest first (the README's table)
LAYERS: list[tuple[str, ...]] = [
    (CORE,),
    ("api", "simulator"),
    ("store",),
    ("events", "sync", "media", "transcripts"),
    ("service",),
    ("cli",),
]
# a few lower layers must not see the simulator at all: it is a test double of the API,
# used by the demo (service) and the `simulate` command (cli) alone
SIMULATOR_USERS = frozenset({"simulator", "service", "cli"})


def _unit(module: str, package: Path) -> str:
    """`botasync.api.client` -> `api`; a top-level module (`botasync.config`) -> core."""
    parts = module.split(".")
    if module == "botasync.__main__":  # `python -m botasync` is the command line
        return "cli"
    if len(parts) >= 2 and (package / parts[1]).is_dir():
        return parts[1]
    return CORE


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"botasync/{unit}/ is on no layer: add it to LAYERS and the README")


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported botasync module) for every import in the file, nested ones too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("botasync")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "botasync":  # `from botasync import config, queries`
                found += [(node.lineno, f"botasync.{a.name}") for a in node.names]
            elif node.module.startswith("botasync."):
                found.append((node.lineno, node.module))
    return found


def violations(path: Path, package: Path = PACKAGE) -> list[str]:
    """Each import in `path` that runs against the layers, as `file:line: a -> b (why)`."""
    rel = path.relative_to(package.parent)
    here = _unit(".".join(rel.with_suffix("").parts), package)
    wrong = []
    for line, target in _imports(path):
        there = _unit(target, package)
        if there in (here, CORE):
            continue
        why = ""
        if there == "simulator" and here not in SIMULATOR_USERS:
            why = "only the service and the cli may use the simulator"
        elif _layer(there) > _layer(here):
            why = f"{there} is above {here}"
        elif _layer(there) == _layer(here) and there != here:
            why = f"{there} and {here} are siblings"
        if why:
            wrong.append(f"{rel}:{line}: {here} -> {target} ({why})")
    return wrong


def test_every_subpackage_is_on_a_layer() -> None:
    units = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    for unit in units:
        _layer(unit)


def test_imports_run_down_the_layers_only() -> None:
    wrong = [v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(path)]
    assert wrong == [], "imports against the layout:\n" + "\n".join(wrong)


@pytest.mark.parametrize(("source", "module", "expected"), [
    ("from botasync.cli.main import main\n", "api/x.py", "cli is above api"),
    ("from botasync.media import files\n", "sync/x.py", "media and sync are siblings"),
    ("def f():\n    from botasync.service.app import App\n", "store/x.py", "service is above store"),
    ("from botasync.simulator import World\n", "sync/x.py", "only the service and the cli may use the simulator"),
    ("from botasync.store import queries\n", "x.py", "store is above core"),
])
def test_the_check_catches_an_import_against_the_layers(
    tmp_path: Path, source: str, module: str, expected: str,
) -> None:
    """The checker itself fails on each kind of wrong import (a test that cannot fail is
    not one): a fake package tree with one offending module."""
    fake = tmp_path / "botasync"
    for unit in ("api", "cli", "media", "sync", "store", "service", "simulator"):
        (fake / unit).mkdir(parents=True)
        (fake / unit / "__init__.py").write_text("")
    path = fake / module
    path.write_text(source)
    found = violations(path, fake)
    assert len(found) == 1 and expected in found[0], found
