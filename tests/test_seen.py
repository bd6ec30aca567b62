"""SeenIds: a compact set of recording ids."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from botasync.sync.seen import SeenIds

ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789", min_size=1, max_size=16).map(
    lambda s: "rec_" + s)


@given(st.lists(ids, max_size=200), st.lists(ids, max_size=50))
def test_contains_exactly_what_was_added(added: list[str], others: list[str]) -> None:
    """Every added id is in; ids never added are out (collisions aside, 2^-64 each)."""
    seen = SeenIds(added[: len(added) // 2])
    for i in added[len(added) // 2 :]:
        seen.add(i)
    assert all(i in seen for i in added)
    assert all(o not in seen for o in others if o not in added)
    assert len(seen) == len(added)


def test_adding_after_lookups_still_works() -> None:
    """Adds after a lookup are merged before the next one."""
    seen = SeenIds(["rec_a"])
    assert "rec_a" in seen and "rec_b" not in seen
    seen.update(["rec_b"])
    assert "rec_b" in seen and 3 not in seen
