"""Buffer ordering: any arrival order is cheap, and the order rules hold.

Costs are counted (steps in buffer.py), never timed.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from steps import count_steps

from chat_client import buffer
from chat_client.buffer import GAP, Buffer, Line


def texts(buf: Buffer) -> list[str]:
    return [line.text for line in buf.lines]


def ids(buf: Buffer) -> list[int]:
    return [line.id for line in buf.lines if line.id is not None]


def check_invariants(buf: Buffer) -> None:
    got = ids(buf)
    assert got == sorted(set(got))
    assert got == buf.id_order and set(got) == set(buf.ids)
    assert all(buf.by_id[i].id == i for i in got)
    seqs = [line.seq for line in buf.lines]
    assert seqs == sorted(set(seqs))  # strictly increasing: bisection finds every line
    assert all(buf.index_of(line) == pos for pos, line in enumerate(buf.lines))
    assert len(buf.lines) <= buf.scrollback


def insert_steps(count: int) -> float:
    """buffer.py steps per message for a page of `count` messages in descending id order."""
    buf = Buffer("#a", "#a", "room", scrollback=100_000)
    buf.add(Line("notice", 0.0, "you joined #a"))
    page = [Line("message", 1.0 + i, f"m{i}", nick="bob", id=i) for i in range(count, 0, -1)]

    def insert() -> None:
        for line in page:
            buf.add(line)

    steps = count_steps(insert, buffer.__file__)
    assert ids(buf) == list(range(1, count + 1))
    return steps / count


def test_a_descending_history_page_costs_log_n_per_message() -> None:
    # 20,000 messages in descending id order froze the client for 12 s: each one walked
    # the buffer from its end. Per message the work must not grow with the page.
    small, big = insert_steps(250), insert_steps(4000)
    assert big < small * 1.5, (small, big)
    assert big < 200, big


def test_a_page_into_a_full_buffer_keeps_the_newest() -> None:
    buf = Buffer("#a", "#a", "room", scrollback=50)
    for mid in range(400, 0, -1):
        buf.add(Line("message", float(mid), "t", id=mid))
    assert ids(buf) == list(range(351, 401)) and buf.last_id == 400
    check_invariants(buf)


def test_late_messages_go_between_notices_by_time() -> None:
    buf = Buffer("#a", "#a", "room")
    buf.add(Line("message", 10.0, "m1", id=1))
    buf.add(Line("notice", 20.0, "disconnected"))
    buf.add(Line("notice", 40.0, "rejoined"))
    mine = Line("message", 41.0, "mine", label=1, state="pending", own=True)
    buf.add(mine)
    buf.add(Line("notice", 42.0, "carol joined"))
    buf.add(Line("message", 30.0, "missed", id=2))  # sent while we were away
    buf.add(Line("message", 50.0, "new", id=3))
    # Our message waiting for its ack stays at the bottom; once acked, it takes its place.
    assert texts(buf) == ["m1", "disconnected", "missed", "rejoined", "carol joined", "new",
                          "mine"]
    assert buf.lines[-1].state == "pending"
    buf.acked(mine, 4, 45.0)
    buf.add(Line("notice", 46.0, "carol left"))
    assert texts(buf) == ["m1", "disconnected", "missed", "rejoined", "carol joined", "new",
                          "mine", "carol left"]
    check_invariants(buf)


def test_a_hostile_timestamp_misplaces_only_its_own_line() -> None:
    buf = Buffer("#a", "#a", "room")
    buf.add(Line("notice", 5.0, "joined"))
    for mid, ts in ((1, 1.0), (3, math.nan), (4, math.inf), (5, -math.inf), (6, 1e300),
                    (2, "later?")):  # type: ignore[misc]
        buf.add(Line("message", ts, f"m{mid}", id=mid))  # type: ignore[arg-type]
    assert ids(buf) == [1, 2, 3, 4, 5, 6]
    check_invariants(buf)


def test_one_gap_used_up_renumbers_and_keeps_the_order() -> None:
    # Every message lands between the notice and the previous one: the midpoint halves
    # each time until there is no room, then the buffer is spread out again.
    buf = Buffer("#a", "#a", "room", scrollback=1000)
    buf.add(Line("notice", 0.0, "joined"))
    for mid in range(300, 0, -1):
        buf.add(Line("message", 5.0, f"m{mid}", id=mid))
    assert texts(buf) == ["joined"] + [f"m{i}" for i in range(1, 301)]
    assert max(b.seq - a.seq for a, b in zip(buf.lines, buf.lines[1:], strict=False)) <= GAP
    check_invariants(buf)


def test_index_of_refuses_a_line_that_is_not_there() -> None:
    buf = Buffer("#a", "#a", "room")
    buf.add(Line("message", 1.0, "m1", id=1))
    stranger = Line("message", 1.0, "m1", id=1)
    try:
        buf.index_of(stranger)
    except ValueError:
        pass
    else:
        raise AssertionError("found a line the buffer does not hold")


def test_an_ack_of_the_bottom_line_shown_keeps_the_view_on_it() -> None:
    # Found by test_any_mix_of_arrivals_keeps_every_rule: two of ours waiting, scrolled
    # to the top (the first is the bottom line shown), the first acknowledged.
    buf = Buffer("#a", "#a", "room", scrollback=5)
    first = Line("message", 0.0, "mine", label=0, state="pending")
    buf.add(first)
    buf.add(Line("message", 0.0, "mine too", label=1, state="pending"))
    buf.scroll_to(buf.trimmed)
    buf.acked(first, 81, 0.0)
    assert buf.anchor == buf.trimmed + buf.index_of(first) and buf.new_below == 0


OPS = st.lists(st.one_of(
    st.tuples(st.just("msg"), st.integers(1, 80), st.floats(0, 100)),
    st.tuples(st.just("notice"), st.integers(0, 0), st.floats(0, 100)),
    st.tuples(st.just("send"), st.integers(0, 0), st.floats(0, 100)),
    st.tuples(st.just("ack"), st.integers(81, 200), st.floats(0, 100)),
    st.tuples(st.just("scroll"), st.integers(0, 80), st.floats(0, 0)),
), max_size=150)


@settings(max_examples=300, deadline=None)
@given(OPS, st.integers(5, 60))
def test_any_mix_of_arrivals_keeps_every_rule(ops: list[tuple[str, int, float]],
                                              size: int) -> None:
    buf = Buffer("#a", "#a", "room", scrollback=size)
    pending: list[Line] = []
    for op, n, ts in ops:
        if op == "msg":
            buf.add(Line("message", ts, f"m{n}", id=n))
        elif op == "notice":
            buf.add(Line("notice", ts, "n"))
        elif op == "send":
            line = Line("message", ts, "mine", label=len(pending), state="pending")
            buf.add(line)
            pending.append(line)
        elif op == "ack" and pending:
            line = pending.pop(0)
            if line.state == "pending" and any(x is line for x in buf.lines):
                buf.acked(line, n, ts)
        elif op == "scroll":
            buf.scroll_to(buf.trimmed + n)
        check_invariants(buf)
        if buf.anchor is not None:
            assert buf.trimmed <= buf.anchor < buf.end
        # Our messages waiting for an ack stay below everything else.
        first_pending = next((i for i, x in enumerate(buf.lines) if x.state == "pending"),
                             None)
        if first_pending is not None:
            assert all(x.state == "pending" for x in buf.lines[first_pending:])
