"""A hostile or broken server cannot harm the client or the terminal (issue 14 §5).

A fake server (tests/fakechatd.py: real TCP, the real framing) puts escape sequences,
bidi controls and line separators in every string field, names that break the rules,
and unusable welcome.limits. The real client, in plain mode (a subprocess: its stdout and
stderr bytes are what a terminal would get) and full screen (a VT100 output captured),
must show all of it inert, say what it ignored, and keep working.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fakechatd import T0 as TS
from fakechatd import FakeChatd, Frame, Peer, honest, welcome
from prompt_toolkit.data_structures import Size
from prompt_toolkit.output.vt100 import Vt100_Output
from tuirunner import TUI

from chat_client import inbound
from chatd.protocol import DEFAULT_LIMITS, safe_text

ROOT = Path(__file__).resolve().parent.parent
CLIENT = [sys.executable, "-m", "chat_client"]
# An xterm title change, a screen clear, a bell, a right-to-left override and every line
# separator str.splitlines() knows.
EVIL = "\x1b]0;pwned\x07\x1b[2J\u202eevil\u2028\u2029\x85\r\v\f\x1c\x1d\x1e\n"


def message(mid: int, text: str = "hi", sender: str = "bob", **where: Any) -> Frame:
    return {"type": "message", "id": mid, "ts": TS + mid, **(where or {"room": "#general"}),
            "from": sender, "text": text, "action": False}


def hostile(peer: Peer, f: Frame) -> None:
    """Every string field of every frame type carries EVIL; some names break the rules."""
    ftype, label, nick = f.get("type"), f.get("label"), f.get("nick")
    if ftype == "hello":
        peer.nick = nick
        peer.send(welcome(f, server=EVIL, motd="motd " + EVIL,
                          previous={"code": EVIL, "message": EVIL}))
    elif ftype == "join":
        room = f["room"]
        peer.send({"type": "joined", "room": room, "topic": EVIL, "label": label,
                   "members": [peer.nick, "bob", EVIL]})
        peer.send({"type": "history", "room": room, "label": label, "more": False,
                   "messages": [message(1, "old " + EVIL), message(2, sender=EVIL),
                                {**message(3, "far future"), "ts": 2**63 - 1}, "junk"]})
        for event in (
                message(4, "live " + EVIL), message(5, sender=EVIL),
                message(6, "dm " + EVIL, to=peer.nick), message(7, to=EVIL),
                {"type": "topic", "room": room, "topic": EVIL, "by": "bob", "ts": TS},
                {"type": "join", "room": room, "nick": "carol", "ts": TS},
                {"type": "part", "room": room, "nick": "carol", "reason": EVIL, "ts": TS},
                {"type": "quit", "room": room, "nick": EVIL, "reason": EVIL, "ts": TS},
                {"type": "nick", "room": room, "old": "bob", "new": EVIL, "ts": TS},
                {"type": "join", "room": "#\x1b[2J", "nick": "x", "ts": TS},
                {"type": "error", "code": EVIL, "message": EVIL, "fatal": False}):
            peer.send(event)
    elif ftype == "who":
        peer.send({"type": "members", "room": f["room"], "members": ["bob", EVIL],
                   "label": label})
    elif ftype == "rooms":
        peer.send({"type": "rooms", "label": label, "rooms": [
            {"room": "#general", "members": 2, "topic": EVIL},
            {"room": EVIL, "members": 1, "topic": ""}]})
    elif ftype == "topic":
        peer.send({"type": "topic", "room": f["room"], "topic": EVIL, "by": EVIL,
                   "ts": None, "label": label})
    else:
        honest(peer, f)


def assert_inert(output: str) -> None:
    """Nothing in the output can drive a terminal, reorder it or start a line."""
    lines = output.split("\n")
    if lines[-1] == "":
        lines.pop()
    assert output.splitlines() == lines
    for line in lines:
        assert safe_text(line, multiline=False) == line, f"unsafe line: {line!r}"


def run_plain(server: FakeChatd, stdin: str, tmp_path: Path,
              *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CHAT_CLIENT_STATE_DIR=str(tmp_path / "state"))
    return subprocess.run([*CLIENT, f"{server.host}:{server.port}", "--nick", "bot", *args],
                          input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)


def test_plain_mode_shows_every_string_from_a_hostile_server_inert(tmp_path: Path) -> None:
    with FakeChatd(handler=hostile) as server:
        done = run_plain(server, "/who\n/rooms\n/topic\nhello\n", tmp_path)
    assert_inert(done.stdout)
    assert_inert(done.stderr)
    # One event, one line: no server string spans two lines, on stdout or stderr.
    assert all(re.match(r"\d\d:\d\d:\d\d \S+ ", line) for line in done.stdout.splitlines())
    assert all(line.startswith("chat-client: ") for line in done.stderr.splitlines())
    out = done.stdout
    # What could be shown is shown, inert; the rest is reported, not silently lost.
    assert "#general <bob> live \ufffd]0;pwned\ufffd\ufffd[2J\ufffdevil\\n\\n" in out
    assert "#general [backlog] <bob> old \ufffd]0;pwned" in out
    assert "@bob <bob> dm \ufffd]0;pwned" in out
    assert "far future" in out and "#general <bot> hello" in out
    assert "#general: 1 member(s): bob" in out and "#general (2) - \ufffd]0;pwned" in out
    assert "topic of #general: \ufffd]0;pwned" in out
    assert "carol left #general (\ufffd]0;pwned" in out
    err = done.stderr
    assert "ignored a bad 'message' frame from the server: 'from': not a valid nick" in err
    assert "'members' was 1 of 3 nicks bad, left out (the first: not a valid nick)" in err
    assert "error \ufffd]0;pwned" in err
    assert done.returncode == 0, err


def test_a_hostile_refusal_of_hello_is_printed_inert(tmp_path: Path) -> None:
    def refuse(peer: Peer, f: Frame) -> None:
        if f.get("type") == "hello":
            peer.send({"type": "error", "code": "invalid_nick", "message": EVIL,
                       "fatal": False, "label": f.get("label")})

    with FakeChatd(handler=refuse) as server:
        done = run_plain(server, "hello\n", tmp_path)
    assert done.returncode == 1
    assert_inert(done.stderr)
    lines = done.stderr.splitlines()
    assert all(line.startswith("chat-client: ") for line in lines)
    assert lines[-1].startswith("chat-client: invalid_nick: \ufffd]0;pwned")


@pytest.mark.parametrize("limits", [
    {"max_text": "x", "msg_rate": "fast"},
    {"msg_rate": -1, "msg_burst": -5},
    {"msg_rate": 1e-300, "msg_burst": 1e300, "max_text": float("inf")},
    {"msg_rate": float("nan"), "history_page": 0.5, "max_text": True},
    "not a map",
])
def test_unusable_limits_fall_back_to_the_defaults_with_a_note(limits: Any,
                                                                tmp_path: Path) -> None:
    def server_says(peer: Peer, f: Frame) -> None:
        if f.get("type") == "hello":
            peer.nick = f["nick"]
            peer.send(welcome(f, limits=limits))
        else:
            honest(peer, f)

    lines = "".join(f"line {i}\n" for i in range(3))
    with FakeChatd(handler=server_says) as server:
        done = run_plain(server, lines + "/history 200\n", tmp_path)
        texts = [f["text"] for f in server.peer().sent("msg")]
        history = server.peer().sent("history")
    assert done.returncode == 0, done.stderr
    assert texts == ["line 0", "line 1", "line 2"]
    assert [f["limit"] for f in history] == [200]  # the default page: /history 200 went out
    assert "'limits' was not usable" in done.stderr or "'limits' was unusable" in done.stderr


def test_full_screen_mode_writes_nothing_from_a_hostile_server_to_the_terminal(
        tmp_path: Path) -> None:
    terminal = io.StringIO()
    output = Vt100_Output(terminal, lambda: Size(rows=30, columns=100), term="xterm")
    with FakeChatd(handler=hostile) as server:
        app = TUI(server.host, server.port, "alice", state_dir=tmp_path / "state",
                        output=output)
        try:
            app.ready()
            app.type("/who\r/rooms\r/topic\r")
            app.wait(lambda: "topic of #general" in app.screen(), "the replies")
            app.wait(lambda: "\ufffd]0;pwned" in terminal.getvalue(), "drawn")
            status = app.status()
            screen = app.screen()
        finally:
            app.close()
    drawn = terminal.getvalue()
    assert "\x1b]0;" not in drawn and "pwned\x07" not in drawn and "\x1b[2Jevil" not in drawn
    assert "\u202e" not in drawn and "\u2028" not in drawn and "\x85" not in drawn
    for text in (status, screen):
        assert_inert(text)
    assert "\ufffd]0;pwned" in status  # the topic, inert


# The checks themselves (chat_client/inbound.py) --------------------------------------

HONEST: list[Frame] = [
    welcome({"nick": "alice", "label": 1}, limits=dict(DEFAULT_LIMITS),
            previous={"code": "slow_consumer", "message": "too slow"}),
    {"type": "error", "code": "rate_limited", "message": "slow down", "fatal": False,
     "label": 2, "limit": "msg_rate", "retry_after": 0.25},
    {"type": "error", "code": "unsupported_version", "message": "no", "fatal": False,
     "supported": [1]},
    {"type": "ack", "label": 3, "id": 7, "ts": TS, "to": "Bob"},
    message(8, "two\nlines\tand ❤️ 👩‍💻"),
    {"type": "joined", "room": "#a", "topic": "", "members": ["alice", "b0b"], "more": False,
     "label": 4},
    {"type": "history", "with": "Bob", "messages": [message(9, to="alice")], "more": True},
    {"type": "parted", "room": "#a", "label": 5},
    {"type": "rooms", "rooms": [{"room": "#a", "members": 3, "topic": "t"}], "more": False},
    {"type": "members", "room": "#a", "members": ["alice"], "label": 6},
    {"type": "topic", "room": "#a", "topic": "", "by": None, "ts": None},
    {"type": "topic", "room": "#a", "topic": "Be nice", "by": "alice", "ts": TS},
    {"type": "join", "room": "#a", "nick": "carol", "ts": TS},
    {"type": "part", "room": "#a", "nick": "carol", "reason": "", "ts": TS},
    {"type": "quit", "room": "#a", "nick": "carol", "reason": "connection lost", "ts": TS},
    {"type": "nick", "old": "alice_", "new": "alice", "ts": TS, "label": 7},
    {"type": "ping", "token": 3},
    {"type": "pong", "token": b"\x00\xff"},
    {"type": "away", "nick": "carol", "message": "lunch", "ts": TS},
    {"type": "away", "nick": "alice", "message": "", "ts": TS, "label": 8},
    {"type": "members", "room": "#a", "members": ["alice", "carol"], "label": 9,
     "away": {"carol": "lunch"}},
    {"type": "join", "room": "#a", "nick": "carol", "ts": TS, "away": "brb"},
    {"type": "ack", "id": 10, "ts": TS, "to": "carol", "away": "on holiday", "label": 10},
]


@pytest.mark.parametrize("frame", HONEST, ids=lambda f: f["type"])
def test_what_an_honest_server_sends_passes_unchanged(frame: Frame) -> None:
    problems: list[str] = []
    checked = inbound.check(frame, lambda what, text: problems.append(text))
    expected = {k: v for k, v in frame.items() if v is not None and k not in ("version",
                                                                              "time")}
    if frame["type"] == "history":  # each message as a message frame, less its type
        expected["messages"] = [{k: v for k, v in m.items() if k != "type"}
                                for m in frame["messages"]]
    if frame["type"] == "welcome":
        expected.pop("label")
        checked.pop("label")  # type: ignore[union-attr]
    assert checked == expected and problems == []


def test_bad_fields_fall_back_and_are_reported() -> None:
    problems: list[tuple[str, str]] = []

    def check(frame: Frame) -> Frame | None:
        return inbound.check(frame, lambda what, text: problems.append((what, text)))

    far = check({**message(1, "far"), "ts": 2**62})
    assert far is not None and far["ts"] == inbound.TS_MAX_MS
    assert problems.pop() == ("message.ts", "the server sent a 'message' frame whose 'ts' "
                              "was out of range")
    topic = check({"type": "topic", "room": "#a", "topic": "t" * 5000, "by": 7})
    assert topic == {"type": "topic", "room": "#a", "topic": "t" * 299 + "…"}
    assert [what for what, _ in problems] == ["topic.topic", "topic.by"]
    assert check({"type": "message", "id": True, "ts": TS, "room": "#a", "from": "b",
                  "text": "x"}) is None
    assert check({**message(2), "to": "bob"}) is None  # both room and to
    assert check({"type": "brand-new", "x": 1}) is None and len(problems) == 4
    got = check(welcome({"nick": "a"}, limits={
        "max_text": 100, "msg_rate": 0.5, "max_frame": 1 << 30, "history_page": 10.0,
        "msg_burst": True, "ping_interval": float("inf"), "future_limit": "x"}))
    assert got is not None
    assert got["limits"] == {**DEFAULT_LIMITS, "max_text": 100, "msg_rate": 0.5,
                             "history_page": 10}
    what, text = problems.pop()
    assert what == "welcome.limits"
    assert text.endswith("not usable: max_frame=1073741824 (using 65536), ping_interval=inf "
                         "(using 60.0), msg_burst=True (using 20)")


def test_an_away_map_keeps_its_good_entries() -> None:
    problems: list[str] = []
    got = inbound.check({"type": "members", "room": "#a", "members": ["bob", "carol"],
                         "away": {"bob": "lunch\x1b[2J", "9bad": "x", "carol": 5,
                                  "dave": "y" * 500}},
                        lambda what, text: problems.append(what))
    assert got is not None
    assert got["away"] == {"bob": "lunch\ufffd[2J", "dave": "y" * 199 + "…"}
    assert problems == ["members.away"]
    assert inbound.check({"type": "away", "nick": "bob", "message": ["x"]},
                         lambda what, text: problems.append(what)) == {
        "type": "away", "nick": "bob", "message": ""}


def test_a_long_history_page_in_any_order_is_checked_whole() -> None:
    page = {"type": "history", "room": "#a", "more": False,
            "messages": [message(n, f"message number {n} " * 5) for n in range(20_000, 0, -1)]}
    checked = inbound.check(page, lambda what, text: None)
    assert checked is not None and len(checked["messages"]) == 20_000
