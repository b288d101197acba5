"""A hostile or broken server's history cannot freeze the client or break a buffer.

The real full-screen client against tests/fakechatd.py, which answers a join with what
the test gives it. Work is counted on the client's thread (steps in model.py and
buffer.py), never timed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fakechatd import FakeChatd, message
from steps import StepCounter
from tuirunner import END, HOME, PGUP, TUI

from chat_client import buffer, model
from chat_client.buffer import DEFAULT_SCROLLBACK
from chat_client.clock import Clock

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC).timestamp()
CLOCK = Clock(now=lambda: NOW, zone=UTC)
PAGE = 20_000


def test_a_page_of_20000_in_descending_id_order_is_cheap_and_whole() -> None:
    # It froze the client for 12 s of CPU: each message walked the buffer from its end.
    server = FakeChatd(lambda room: [message(i) for i in range(PAGE, 0, -1)])
    steps = StepCounter(model.__file__, buffer.__file__)
    client = TUI(server.host, server.port, "alice", ["#a"], clock=CLOCK, trace=steps)
    try:
        buf = client.wait(lambda: (b := client.core.model.get("#a")) is not None
                          and b.last_id == PAGE and b, "the page", timeout=40)
        per_message = steps.count / PAGE
        assert per_message < 200, per_message  # was about 7,500 at this scrollback
        kept = client.call(lambda: [ln.id for ln in buf.lines if ln.id is not None])
        # The newest, as many as the scrollback holds besides the "you joined" notice.
        assert kept == list(range(PAGE - DEFAULT_SCROLLBACK + 2, PAGE + 1))
        client.wait(lambda: any(r.endswith("bob │ m20000") for r in client.pane()),
                    "the newest message on screen")
        client.type(HOME)
        client.wait(lambda: any(r.endswith(f"bob │ m{kept[0]}")
                                for r in client.pane()[:3]), "Home: the oldest kept")
    finally:
        client.close()
        server.close()


HOSTILE_TS = {"far future": 1e20, "far past": -1e20, "not a number": float("nan"),
              "infinity": float("inf"), "int64 max": 2**63 - 1, "int64 min": -2**63,
              "negative": -1}


def test_absurd_timestamps_show_their_lines_and_break_nothing() -> None:
    # One message with ts = 1e20 replaced a room's view with "render error" on every
    # redraw. Every line stays visible, and so does everything around it.
    hostile = [message(i + 2, f"{name}", ts=ts)
               for i, (name, ts) in enumerate(HOSTILE_TS.items())]
    server = FakeChatd(lambda room: [message(1, "before"), *hostile,
                                     message(len(hostile) + 2, "after")])
    client = TUI(server.host, server.port, "alice", ["#a"], clock=CLOCK)
    try:
        client.wait(lambda: client.core.model.cur.key == "#a"
                    and client.core.model.cur.message_count() == len(hostile) + 2, "joined")
        bad = {"type": "message", "id": 99, "ts": "soon", "room": "#a", "from": "bob",
               "text": "ts is a string", "action": False}
        server.send(bad, message(100, "still here"))
        client.wait(lambda: any(r.endswith("bob │ still here") for r in client.pane()),
                    "a message after the bad frames")
        client.type(PGUP + HOME + END + "x")  # keys over those lines, then a typed x
        client.wait(lambda: client.ui.input.text == "x", "the keys handled")  # type: ignore[union-attr]
        screen = "\n".join(client.pane())
        assert "render error" not in screen and "cannot be shown" not in screen
        for text in ("before", *HOSTILE_TS, "after", "still here"):
            assert f"bob │ {text}" in screen, (text, screen)
        errors = [ln.text for ln in client.core.model.buffers["*server*"].lines
                  if ln.kind == "error"]
        assert any("ignored a bad 'message' frame" in e for e in errors)
    finally:
        client.close()
        server.close()
