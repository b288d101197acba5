"""chatd/irc/render.py's per-delivery fast path (message_line) writes, byte for byte, what
the general path (message(), then the front end's writer) writes, or stands aside."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from cores import Hub
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.config import Config, parse_settings
from chatd.irc import IrcFrontEnd, render
from chatd.irc.lines import plain_line
from chatd.protocol import pack

TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FastPath = Callable[[IrcFrontEnd, dict[str, Any]], bytes | None]
CAPS = ((), ("server-time",), ("message-tags",), ("account-tag",),
        ("server-time", "message-tags", "account-tag"),
        ("server-time", "message-tags", "account-tag", "draft/multiline", "batch"))
LONG_HOST = "h" * 63


def front(caps: Iterable[str], nick: str | None = "bob", server: str = "chatd") -> IrcFrontEnd:
    fe = IrcFrontEnd(Config().with_values(parse_settings({"server": {"name": server}})), 0.0)
    fe.nick = nick
    fe.caps.update(caps)
    return fe


def general(fe: IrcFrontEnd, frame: dict[str, Any]) -> bytes:
    """What the front end writes for an unsolicited message without the fast path."""
    for line in render.message(fe, frame):
        fe._write(line)
    data = b"".join(fe.to_client)
    fe.to_client.clear()
    return data


def divergences(fast: FastPath, frames: Iterable[dict[str, Any]],
                fronts: Iterable[IrcFrontEnd]) -> tuple[list[Any], int]:
    """The (caps, frame) where `fast` writes other bytes than the general path, and how
    many times it took the frame at all."""
    wrong, taken = [], 0
    for fe in fronts:
        for frame in frames:
            data = fast(fe, frame)
            if data is not None:
                taken += 1
                if data != general(fe, frame):
                    wrong.append((sorted(fe.caps), fe.nick, frame))
    return wrong, taken


def msg(text: Any = "hello there", **fields: Any) -> dict[str, Any]:
    frame = {"type": "message", "id": 7, "room": "#a", "from": "alice", "text": text,
             "ts": TS + 123, "account": "alice", "action": False}  # as the broker writes it
    frame.update(fields)
    return {k: v for k, v in frame.items() if v is not ...}


SIMPLE = [msg(), msg("ünïcødé ✓ 日本語 🏴󠁧󠁢󠁳󠁣󠁴󠁿"), msg(room="#a.b-c_d"), msg(**{"from": "[x]^`|_-"}),
          msg(room=..., to="bob"), msg(room=..., to="BOB"), msg(room=..., **{"from": "bob"},
                                                                 to="carol"),
          msg(":starts with a colon"), msg(" leading and trailing spaces "), msg("a\ttab"),
          msg("hi bob, bob: bob!"), msg(ts=...), msg(id=...), msg(account=...), msg(account=""),
          msg(id="abc;d e\\f"), msg(account="acc;ount x\\y"), msg(ts="yesterday"),
          msg("x" * 400), msg("é" * 200), msg(ts=TS * 3 + 999), msg("a\rb\0c\x03d"),
          msg("\u202eevil"), msg(action=...)]  # controls, bidi: U+FFFD, still one plain line
NOT_SIMPLE = [msg(action=True), msg("a\nb"), msg("a\n\n  b\n"), msg("   "),
              msg(""), msg("x" * 600), msg("é" * 300), msg("x" * 200 + " " + "y" * 400),
              msg("line\u2028sep"), msg(text=...), msg(room="#a b"), msg(room=":a"),
              msg(room=""), msg(**{"from": "a\rb"})]
# Odd frames the fast path may take or not, as long as it writes what the general one does.
ODD = [msg(action=1), msg(action="yes"), msg(text=42), msg(room=5), msg(**{"from": "a b"}),
       msg(**{"from": ...}), msg(room=..., to=...), msg(room=..., **{"from": "bob"}, to=...),
       msg(account="a\0b"), msg(id="a\0b")]
FRAMES = SIMPLE + NOT_SIMPLE + ODD


def fronts() -> list[IrcFrontEnd]:
    return [*(front(caps) for caps in CAPS), front(CAPS[4], nick=None),
            front(CAPS[4], server=LONG_HOST), front((), server=LONG_HOST)]


def test_the_fast_path_writes_what_the_general_path_writes() -> None:
    wrong, taken = divergences(render.message_line, FRAMES, fronts())
    assert wrong == []
    # It takes the simple case, whatever the caps (every text there fits every front end).
    for fe in fronts():
        for frame in SIMPLE:
            assert render.message_line(fe, frame) is not None, (fe.caps, frame)
    assert taken >= len(SIMPLE) * len(CAPS)


def test_the_fast_path_stands_aside_for_what_is_not_one_plain_line() -> None:
    for fe in fronts():
        for frame in NOT_SIMPLE:
            assert render.message_line(fe, frame) is None, frame


def test_a_fitting_text_one_byte_longer_goes_the_general_way() -> None:
    for caps in CAPS:
        fe = front(caps)
        budget = 512 - len(b":alice!~u@chatd PRIVMSG #a :\r\n")
        exact, over = msg("é" * (budget // 2)), msg("é" * (budget // 2) + "xy")
        assert render.message_line(fe, exact) == general(fe, exact)
        assert render.message_line(fe, over) is None and general(fe, over).count(b"\r\n") > 1


def test_messages_as_the_broker_sends_them_take_the_fast_path(tmp_path: Path) -> None:
    hub = Hub(tmp_path)
    dave, carol = hub.native("dave"), hub.native("carol")
    for conn in (dave, carol):
        conn.request(type="join", room="#a")
    carol.request(type="msg", room="#a", text="hello all")
    carol.request(type="msg", to="dave", text="hello dave")
    carol.request(type="msg", room="#a", text="waves", action=True)
    frames = [f for f in dave.frames() if f["type"] == "message"]
    assert [f["text"] for f in frames] == ["hello all", "hello dave", "waves"]
    for caps in CAPS:
        fe = front(caps, nick="dave")
        taken = [render.message_line(fe, f) for f in frames]
        assert taken[:2] == [general(fe, f) for f in frames[:2]] and taken[2] is None


def test_frames_fed_to_the_front_end_come_out_as_the_general_path_writes_them() -> None:
    for caps in CAPS:
        fe, reference = front(caps), front(caps)
        fe.receive_frames(b"".join(pack(f) for f in FRAMES), 0.0)
        assert b"".join(fe.to_client) == b"".join(general(reference, f) for f in FRAMES)


def test_the_comparison_catches_a_fast_path_that_diverges() -> None:
    """The check above can fail: fast paths each wrong in one way are each caught."""

    def no_msgid(fe: IrcFrontEnd, frame: dict[str, Any]) -> bytes | None:
        return render.message_line(fe, {**frame, "id": None})

    def unsafe_text(fe: IrcFrontEnd, frame: dict[str, Any]) -> bytes | None:
        text = frame.get("text")
        if not isinstance(text, str) or "\n" in text or frame.get("action") is True:
            return None
        return plain_line("PRIVMSG", fe.mask(str(frame.get("from"))), str(frame.get("room")),
                          text, {})

    def takes_all(fe: IrcFrontEnd, frame: dict[str, Any]) -> bytes | None:
        return render.message_line(fe, frame) or general(front(()), frame)

    def ignores_the_budget(fe: IrcFrontEnd, frame: dict[str, Any]) -> bytes | None:
        data = render.message_line(fe, {**frame, "text": "x"})
        text = str(frame.get("text", ""))
        return data.replace(b":x\r\n", f":{text}\r\n".encode()) if data else None

    for mutant in (no_msgid, unsafe_text, takes_all, ignores_the_budget):
        wrong, _ = divergences(mutant, FRAMES, fronts())
        assert wrong, mutant.__name__


NICKS = st.sampled_from(["alice", "bob", "BOB", "b0b", "[x]", "a b", ":c", "", "d\r"])
FRAME = st.fixed_dictionaries(
    {"type": st.just("message"), "from": NICKS,
     "text": st.text(st.sampled_from("ab é日🏴\n\r\t\0\x03\u2028\u202e\u200d\ufe0f:;\\"),
                     max_size=40) | st.text(st.sampled_from("xy é "), min_size=400,
                                            max_size=520)},
    optional={"room": st.sampled_from(["#a", "#x.y", "", "#a b", ":r"]) | st.integers(),
              "to": NICKS, "id": st.integers(0, 2**64) | st.text(max_size=5),
              "ts": st.integers(0, 2**45) | st.text(max_size=3),
              "account": st.none() | NICKS,
              "action": st.booleans() | st.integers(0, 1)})


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None)
@given(frame=FRAME, caps=st.sampled_from(CAPS), nick=st.sampled_from(["bob", None]),
       server=st.sampled_from(["chatd", LONG_HOST]))
def test_any_message_frame_is_written_alike_by_both_paths(frame: dict[str, Any],
                                                         caps: tuple[str, ...],
                                                         nick: str | None,
                                                         server: str) -> None:
    fe = front(caps, nick, server)
    data = render.message_line(fe, frame)
    assert data is None or data == general(fe, frame)
