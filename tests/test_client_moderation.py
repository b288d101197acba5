"""Moderation in chat-client (protocol §14): the commands, and the events shown in the
full-screen client and in plain mode, against the real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from serverproc import ServerProcess
from test_client_plain import run_client
from tuirunner import ENTER, TUI
from wire import Client, connect

from chat_client import commands as cmd
from chat_client.moderation import Moderate


@pytest.mark.parametrize(("line", "action"), [
    ("/op bob", Moderate("op", None, (("nick", "bob"),))),
    ("/deop #r bob", Moderate("deop", "#r", (("nick", "bob"),))),
    ("/kick bob go away", Moderate("kick", None, (("nick", "bob"), ("reason", "go away")))),
    ("/ban b*b 10m flood", Moderate("ban", None, (("nick", "b*b"), ("duration", 600),
                                                  ("reason", "flood")))),
    ("/ban #r account:eve spam", Moderate("ban", "#r", (("account", "eve"),
                                                        ("reason", "spam")))),
    ("/mute bob 2h", Moderate("mute", None, (("nick", "bob"), ("duration", 7200)))),
    ("/unban account:eve", Moderate("unban", None, (("account", "eve"),))),
    ("/mode", Moderate("mode", None, ())),
    ("/mode #r +i -t +k sesame", Moderate("mode", "#r", (("invite_only", True),
                                                         ("topic_lock", False),
                                                         ("key", "sesame")))),
    ("/mode -k", Moderate("mode", None, (("key", ""),))),
    ("/bans", Moderate("bans", None, ())),
    ("/invite carol", Moderate("invite", None, (("nick", "carol"),))),
    ("/kill mallory spam", Moderate("kill", None, (("nick", "mallory"), ("reason", "spam")))),
    ("/join #r sesame", cmd.Join("#r", "sesame")),
])
def test_the_commands_build_the_requests(line: str, action: cmd.Action) -> None:
    assert cmd.parse(line) == action


@pytest.mark.parametrize("line", ["/op", "/op a b", "/kick", "/ban", "/mode +x", "/mode +k",
                                  "/bans extra", "/kill", "/unmute a b", "/join #a b c"])
def test_bad_usage_sends_nothing(line: str) -> None:
    with pytest.raises(cmd.UsageError, match="usage"):
        cmd.parse(line)


def test_the_full_screen_client_operates_and_shows_events(app: TUI, bob: Client) -> None:
    # alice's client joined #general first: it created the room and operates it
    app.type("/ban b?b 10m flood" + ENTER)
    event = bob.wait_type("moderation", kind="ban")
    assert (event["nick"], event["reason"]) == ("b?b", "flood")
    app.wait(lambda: "alice banned b?b for 10m (flood)" in app.screen(), "the ban shown")
    app.type("/kick bob out" + ENTER)
    assert bob.wait_type("moderation", kind="kick")["nick"] == "bob"
    app.wait(lambda: "alice kicked bob (out)" in app.screen(), "the kick shown")
    assert "bob" not in app.core.model.cur.members.values()
    assert bob.error({"type": "join", "room": "#general"})["code"] == "banned"
    app.type("/mode" + ENTER)
    app.wait(lambda: "you are an operator" in app.screen(), "the modes shown")


def test_the_full_screen_client_is_kicked(server: ServerProcess, tmp_path: Path) -> None:
    with connect(server, "op") as op:
        op.join("#general")  # created by op: it operates it
        app = TUI(server.host, server.port, "alice", state_dir=tmp_path / "state")
        try:
            app.ready()
            op.wait_type("join", nick="alice")
            op.call({"type": "kick", "room": "#general", "nick": "alice", "reason": "bye"})
            app.wait(lambda: "you were kicked from #general by op (bye)" in app.screen(),
                     "told")
            assert not app.core.model.get("#general").joined  # type: ignore[union-attr]
            app.type("/kick op" + ENTER)
            app.wait(lambda: "not_in_room" in app.screen(), "refused: no longer in it")
        finally:
            app.close()


def test_plain_mode_operates_and_prints_events(server: ServerProcess, bob: Client,
                                               tmp_path: Path) -> None:
    done = run_client(server, ["--nick", "bot", "--room", "#mod"],
                      "/mode +t +k sesame\n/mode\n/bans\n", tmp_path / "state")
    assert done.returncode == 0, done.stderr
    assert "bot set #mod: a key, topic locked" in done.stdout
    assert "#mod: open to all, key sesame, topic locked, you are an operator" in done.stdout
    assert "#mod: 0 ban(s) and mute(s)" in done.stdout
    # bot (a guest) has gone, and its operator status with it: the room keeps its
    # modes, and goes to whoever creates it next (protocol §14.1)
    bob.join("#mod")
    mode = bob.call({"type": "mode", "room": "#mod"})
    assert (mode["keyed"], mode["topic_lock"], mode["operator"]) == (True, True, True)
