"""Full collections leave the scrollback alone, and still reclaim every cycle in time."""

from __future__ import annotations

import gc
import weakref

from chat_client.gcpolicy import Collector


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_after_a_full_collection_the_survivors_are_out_of_reach() -> None:
    lines = [Node() for _ in range(50_000)]  # stands in for a big scrollback
    with Collector():
        gc.collect()
        assert gc.get_freeze_count() >= len(lines)
        # What a later full collection walks no longer includes them.
        assert len(gc.get_objects()) < gc.get_freeze_count() - len(lines) // 2
        newer = [Node() for _ in range(10)]
        assert any(obj is newer[0] for obj in gc.get_objects())
    assert gc.get_freeze_count() == 0  # leaving puts everything back
    assert len(gc.get_objects()) > len(lines)


def test_a_cycle_that_dies_frozen_goes_at_the_next_refresh() -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    with Collector() as collector:
        gc.collect()  # a and b are alive: frozen
        del a, b
        gc.collect()
        assert gone() is not None  # a frozen cycle is not collected...
        collector.refresh()
        assert gone() is None  # ...until everything is collected once


def test_refresh_waits_for_a_quiet_moment_but_not_for_ever() -> None:
    now = [1000.0]
    collector = Collector(every=600.0, quiet=10.0, clock=lambda: now[0])
    assert not collector.due(last_input=0.0)
    now[0] += 600.0
    assert collector.due(last_input=now[0] - 10.0)
    assert not collector.due(last_input=now[0] - 1.0)  # typing: later
    now[0] += 1200.0
    assert collector.due(last_input=now[0])  # three periods: now, typing or not
    collector.refresh()
    assert not collector.due(last_input=0.0)


def test_what_is_new_is_swept_in_a_pause_between_keys() -> None:
    # After a big load the first full collection walks all of it: it should happen
    # while nobody waits on a key.
    now = [1000.0]
    gc.disable()  # only the collections the test makes
    try:
        with Collector(clock=lambda: now[0]) as collector:
            gc.collect()
            frozen = gc.get_freeze_count()
            load = [Node() for _ in range(20_000)]
            now[0] += 10.0
            collector.tick(last_input=now[0] - 0.2)  # typing: not now
            assert gc.get_freeze_count() == frozen
            collector.tick(last_input=now[0] - 2.0)  # a pause: swept, and frozen
            assert gc.get_freeze_count() >= frozen + len(load)
            swept = collector.swept
            now[0] += 1.0
            collector.tick(last_input=0.0)  # not again so soon
            assert collector.swept == swept
    finally:
        gc.enable()
