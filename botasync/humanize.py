"""Sizes and durations as people read them: `1.5 MB`, `2 h 05 min`."""

from __future__ import annotations

import math


def human_bytes(n: float) -> str:
    """`512 B`, `1.5 MB`, `2.0 GB` (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    """`42 s`, `11 min`, `2 h 05 min`."""
    if s < 90:
        return f"{math.ceil(s)} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    return f"{int(s // 3600)} h {round((s % 3600) / 60):02d} min"
