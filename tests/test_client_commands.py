"""Slash-command parsing: actions for good lines, local UsageErrors for bad ones."""

from __future__ import annotations

import pytest

from chat_client import commands as c


@pytest.mark.parametrize(
    ("line", "action"),
    [
        ("hello", c.Say("hello")),
        ("  spaced  ", c.Say("  spaced  ")),
        ("two\nlines", c.Say("two\nlines")),
        ("//etc/passwd is a path", c.Say("/etc/passwd is a path")),
        ("/me waves", c.Say("waves", action=True)),
        ("/join #Rust", c.Join("#rust")),
        ("/join rust", c.Join("#rust")),
        ("/j #a", c.Join("#a")),
        ("/part", c.Part(None, "")),
        ("/part #a", c.Part("#a", "")),
        ("/part #a see you all", c.Part("#a", "see you all")),
        ("/part bye now", c.Part(None, "bye now")),
        ("/msg bob hi there", c.Msg("bob", "hi there")),
        ("/msg bob", c.Msg("bob", None)),
        ("/query bob", c.Msg("bob", None)),
        ("/nick carol", c.Nick("carol")),
        ("/topic", c.Topic(None, None)),
        ("/topic #a", c.Topic("#a", None)),
        ("/topic #a Be nice", c.Topic("#a", "Be nice")),
        ("/topic Be nice", c.Topic(None, "Be nice")),
        ("/topic -", c.Topic(None, "")),
        ("/who", c.Who(None)),
        ("/who #a", c.Who("#a")),
        ("/rooms", c.Rooms()),
        ("/history", c.History(c.DEFAULT_HISTORY)),
        ("/history 10", c.History(10)),
        ("/quit", c.Quit("")),
        ("/quit gone fishing", c.Quit("gone fishing")),
        ("/exit", c.Quit("")),
        ("/help", c.Help()),
        ("/help /join", c.Help("join")),
        ("/help j", c.Help("join")),
        ("/switch 2", c.Switch("2")),
        ("/switch #a", c.Switch("#a")),
        ("/JOIN #a", c.Join("#a")),
    ],
)
def test_parse(line: str, action: c.Action) -> None:
    assert c.parse(line) == action


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/frobnicate", "unknown command /frobnicate"),
        ("/", "unknown command"),
        ("/join", "usage: /join ROOM [KEY]"),
        ("/join #a k extra", "usage: /join ROOM [KEY]"),
        ("/join #Bad!", "bad room name"),
        ("/join #" + "x" * 50, "bad room name"),
        ("/msg", "usage: /msg NICK"),
        ("/msg 9lives hi", "bad nick"),
        ("/me", "usage: /me ACTION"),
        ("/me   ", "usage: /me ACTION"),
        ("/nick", "usage: /nick NICK"),
        ("/nick a b", "usage: /nick NICK"),
        ("/nick -dash", "bad nick"),
        ("/who #a #b", "usage: /who"),
        ("/rooms extra", "usage: /rooms"),
        ("/history 0", "usage: /history"),
        ("/history lots", "usage: /history"),
        ("/history \u00b2", "usage: /history"),  # a digit to isdigit(), not to int()
        ("/history " + "9" * 5000, "usage: /history"),
        ("/help nope", "no such command"),
        ("/switch", "usage: /switch"),
        ("/topic " + "x" * 301, "longer than 300"),
        ("/join #a\n/join #b", "single line"),
        ("   ", "empty message"),
    ],
)
def test_usage_errors(line: str, message: str) -> None:
    with pytest.raises(c.UsageError, match=message.replace("(", r"\(").replace("[", r"\[")):
        c.parse(line)


def test_help_lists_every_command_with_usage() -> None:
    text = "\n".join(c.help_lines())
    for name, spec in c.COMMANDS.items():
        assert spec.usage in text, name
    for required in ("join", "part", "msg", "me", "nick", "topic", "who", "rooms", "history",
                     "quit", "help"):
        assert f"/{required}" in text
    assert c.help_lines("msg") == [f"{c.COMMANDS['msg'].usage}  -  {c.COMMANDS['msg'].summary}"]


def test_command_names_sorted_and_complete() -> None:
    assert c.command_names() == sorted(c.COMMANDS)
