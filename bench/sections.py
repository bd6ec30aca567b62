"""Marked sections of RESULTS.md: each script owns the text between its two markers.

`bench/run.py` rewrites the file and keeps the sections the other scripts wrote
(`torture.py`, `media_backlog.py`, `retention.py`); each of those replaces only its own.
"""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of section `name`."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, body: str) -> None:
    """Put `body` between the markers of `name` (appended if absent); touch nothing else."""
    start, end = markers(name)
    block = f"{start}\n{body.strip()}\n{end}"
    old = path.read_text() if path.exists() else ""
    a, b = old.find(start), old.find(end)
    if a != -1 and b > a:
        text = old[:a] + block + old[b + len(end):]
    else:
        text = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    tmp = path.with_name(path.name + f".{name}-tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic: a reader never sees half a file
