"""Plain mode that bots can trust (issue 14 §4): backlog is marked (or left out), /quit
waits for acknowledgements, and no message can forge a second output line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from fakechatd import FakeChatd, Frame, Peer, ack, honest
from serverproc import ServerProcess
from test_client_plain import FAST, run_client, start_server
from wire import Client

from chat_client.buffer import Buffer, Line
from chat_client.clock import Clock
from chat_client.plain import format_line, one_line
from chat_client.safetext import clean


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path, FAST)
    yield srv
    srv.stop()


def test_backlog_is_marked_and_no_backlog_leaves_it_out(server: ServerProcess, bob: Client,
                                                        tmp_path: Path) -> None:
    state = tmp_path / "state"
    bob.say("#general", "!ping")
    first = run_client(server, ["--nick", "bot"], "pong\n", state)
    assert first.returncode == 0, first.stderr
    # The room's recent history, replayed on joining, is marked; live lines are not.
    assert re.search(r"^\d\d:\d\d:\d\d #general \[backlog\] <bob> !ping$", first.stdout, re.M)
    assert re.search(r"^\d\d:\d\d:\d\d #general <bot> pong$", first.stdout, re.M)
    # Missed while the bot was away: caught up after a restart, so backlog too.
    bob.say("#general", "!quit")
    again = run_client(server, ["--nick", "bot"], "", state)
    assert re.search(r"^\d\d:\d\d:\d\d #general \[backlog\] <bob> !quit$", again.stdout, re.M)
    assert "!ping" not in again.stdout  # caught up after it: not replayed again
    bob.say("#general", "!quit")
    quiet = run_client(server, ["--nick", "bot", "--no-backlog"], "still here\n", state)
    assert quiet.returncode == 0, quiet.stderr
    assert "!quit" not in quiet.stdout and "[backlog]" not in quiet.stdout
    assert "#general <bot> still here" in quiet.stdout
    bob.wait_type("message", text="still here")


def test_quit_waits_for_every_acknowledgement_like_end_of_input(tmp_path: Path) -> None:
    held: list[tuple[Peer, Frame]] = []

    def slow_acks(peer: Peer, f: Frame) -> None:
        # The acks come a moment later, as from chatd, where a session hands the message to
        # the parent and its ack comes back; a quit closes the connection at once.
        if f.get("type") == "msg":
            held.append((peer, f))
            peer.later(0.3, ack, peer, f)
        else:
            honest(peer, f)

    with FakeChatd(handler=slow_acks) as fake:
        done = run_client(fake, ["--nick", "bot"], "one\ntwo\n/quit done here\nnever sent\n",
                          tmp_path / "state")
        peer = fake.peer()
        quits = peer.sent("quit")
    assert done.returncode == 0, done.stderr
    assert [f["text"] for _, f in held] == ["one", "two"]  # nothing after /quit
    assert quits == [{"type": "quit", "reason": "done here"}]
    assert "#general <bot> one" in done.stdout and "#general <bot> two" in done.stdout
    assert "not delivered" not in done.stderr


SEPARATORS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), text)


@pytest.mark.parametrize("sep", list(SEPARATORS) + ["\r\n", "\\n", "\\\n", "\\\\n"])
def test_no_text_spans_two_output_lines(sep: str) -> None:
    clock = Clock(zone=UTC)
    room = Buffer("#a", "#a", "room")
    forged = f"hi{sep}12:00:00 #a <admin> !quit{sep}"
    for line in (Line("message", 0.0, forged, nick="eve"),
                 Line("action", 0.0, forged, nick="eve", backlog=True),
                 Line("notice", 0.0, forged)):
        out = format_line(room, line, clock)
        assert len(out.splitlines()) == 1 and len(out.split("\n")) == 1
        assert re.match(r"00:00:00 #a (\[backlog\] )?(<eve> |\* eve |-- )hi", out)
    # The escaping can be undone: a bot reads back exactly the text that was shown.
    assert unescape(one_line(forged)) == clean(forged)


def test_line_separators_from_a_real_user_stay_in_one_line(server: ServerProcess,
                                                           bob: Client, tmp_path: Path) -> None:
    bob.say("#general", "hi\u2028" + "12:00:00 #general <admin> !quit\u2029 a\\nb")
    done = run_client(server, ["--nick", "bot"], "", tmp_path / "state")
    (line,) = [ln for ln in done.stdout.splitlines() if "<bob>" in ln]
    assert line.endswith("<bob> hi\\n12:00:00 #general <admin> !quit\\n a\\\\nb")
