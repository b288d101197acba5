"""The config file (validated with clear errors, the command line wins) and buffer logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chat_client import cli
from chat_client.buffer import SERVER, Line
from chat_client.chatlog import ChatLog
from chat_client.clock import Clock
from chat_client.config import Config, ConfigError, default_path, load
from chat_client.model import Model
from chat_client.stream import TLSOpener

GOOD = """
nick = "alice"
rooms = ["#general", "Rust"]
highlight = ["deploy", "on-call"]
scrollback = 2000
hyperlinks = false
server = "work"

[servers.home]
address = "chat.example.org:7777"

[servers.work]
address = "[::1]:7000"
nick = "alice_w"
rooms = ["#ops"]
highlight = ["pager"]

[colours]
mention = "bg:ansimagenta fg:ansiwhite bold"
readmarker = "fg:#ff8800"

[keys]
next_active = "alt-a"
search = ["c-r", "f3"]

[log]
enabled = true
directory = "~/chatlogs"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_a_full_config_is_read(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, GOOD))
    assert (cfg.nick, cfg.rooms, cfg.highlight) == ("alice", ["#general", "#rust"],
                                                    ["deploy", "on-call"])
    assert (cfg.scrollback, cfg.hyperlinks, cfg.server) == (2000, False, "work")
    assert cfg.servers["work"].address == "[::1]:7000" and cfg.servers["work"].rooms == ["#ops"]
    assert cfg.colours["readmarker"] == "fg:#ff8800"
    assert cfg.keys == {"next_active": ["escape a"], "search": ["c-r", "f3"]}
    assert cfg.log and cfg.log_dir == Path.home() / "chatlogs"
    assert cfg.pick(None)[0] == "work" and cfg.pick("home")[0] == "home"  # type: ignore[index]
    assert cfg.pick("chat.example.org") is None  # not a name: an address


def test_no_file_at_the_default_place_is_no_config(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert default_path() == tmp_path / "chat-client" / "config.toml"
    assert load(None) == Config()
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nick = [", "not valid TOML"),
        ("colors = {}", "unknown key colors (did you mean 'colours'?)"),
        ("nik = 'bob'", "unknown key nik (did you mean 'nick'?)"),
        ("nick = '9lives'", "nick: bad nick"),
        ("nick = 7", "nick: must be a string"),
        ("rooms = '#a'", "rooms: must be a list of strings"),
        ("rooms = ['#Bad!']", "rooms: bad room name"),
        ("highlight = ['']", "highlight: '' is not a word"),
        ("scrollback = 5", "scrollback: must be a whole number of lines from 10"),
        ("scrollback = true", "scrollback: must be a whole number"),
        ("hyperlinks = 'yes'", 'hyperlinks: must be "auto", true or false'),
        ("server = 'nope'", "server: 'nope' is not one of the"),
        ("servers = 3", "servers: must be a table"),
        ("[servers.x]\nnick = 'a'", "servers.x.address: required"),
        ("[servers.x]\naddress = 'h'\nport = 1", "unknown key servers.x.port"),
        ("[colours]\nmentions = 'bold'", "unknown key colours.mentions (did you mean 'mention'?)"),
        ("[colours]\nmention = 'fg:nocolour'", "colours.mention: bad style"),
        ("[keys]\nsearch = 'c-xx'", "keys.search: bad key 'c-xx'"),
        ("[keys]\nsearch = 'q'", "a key you type text with cannot be bound"),
        ("[keys]\nsearch = []", "keys.search: must be a key"),
        ("[keys]\nserch = 'c-r'", "unknown key keys.serch (did you mean 'search'?)"),
        ("[servers.x]\naddress = 'h'\ntls = 'yes'", "servers.x.tls: must be true or false"),
        ("[servers.x]\naddress = 'h'\nca = 'a.pem'\ntofu = true",
         "servers.x.ca: give either ca (a CA to trust) or tofu"),
        ("[log]\nenabled = 'yes'", "log.enabled: must be true or false"),
        ("[log]\ndir = 'x'", "unknown key log.dir (did you mean 'directory'?)"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


# The command line over the config ---------------------------------------------------

class Ran:
    core: Any = None
    conn: Any = None
    lines: list[str] = []  # typed while "running"


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[Ran]:
    """Runs cli.main up to the connection: plain mode, nothing connects."""
    monkeypatch.setenv("CHAT_CLIENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nothing"))

    async def run_plain(core: Any, conn: Any, **_: Any) -> int:
        Ran.core, Ran.conn = core, conn
        for line in Ran.lines:
            core.execute_line(line)
        return 0

    monkeypatch.setattr("chat_client.plain.run_plain", run_plain)
    return Ran


def test_the_command_line_wins_over_the_server_table_over_the_top_level(
        ran: type[Ran], tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert cli.main(["--plain", "--config", str(path)]) == 0
    core = ran.core
    assert ran.conn.opener.peer == "::1:7000"  # the default server, "work"
    assert (core.model.nick, core.wanted_rooms) == ("alice_w", ["#ops"])
    assert core.model.scrollback == 2000
    assert core.model.mentions_me("the pager went off") and not core.model.mentions_me("deploy")
    assert cli.main(["home", "--plain", "--config", str(path)]) == 0
    assert ran.conn.opener.peer == "chat.example.org:7777"
    assert (ran.core.model.nick, ran.core.wanted_rooms) == ("alice", ["#general", "#rust"])
    assert ran.core.model.mentions_me("deploy now")
    assert cli.main(["otherhost:9", "--plain", "--config", str(path), "--nick", "zed",
                     "--room", "x", "--scrollback", "50"]) == 0
    assert ran.conn.opener.peer == "otherhost:9"
    assert (ran.core.model.nick, ran.core.wanted_rooms) == ("zed", ["#x"])
    assert ran.core.model.scrollback == 50


def test_a_server_table_may_log_in_and_use_tls(ran: type[Ran], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, """
[servers.pinned]
address = "chat.example.org"
account = "alice"
tofu = true

[servers.plain]
address = "chat.example.org"
""")
    monkeypatch.setenv("CHAT_CLIENT_PASSWORD", "secret")
    assert cli.main(["pinned", "--plain", "--config", str(path)]) == 0
    assert isinstance(ran.conn.opener, TLSOpener)
    assert ran.conn.opener.peer == "chat.example.org:7778"  # the TLS port by default
    assert (ran.core.account, ran.core.model.nick) == ("alice", "alice")
    assert cli.main(["plain", "--plain", "--config", str(path)]) == 0
    assert ran.conn.opener.peer == "chat.example.org:7777"
    assert not isinstance(ran.conn.opener, TLSOpener) and ran.core.account is None
    assert cli.main(["plain", "--plain", "--config", str(path), "--tofu"]) == 0
    assert isinstance(ran.conn.opener, TLSOpener)
    path.write_text('[servers.lab]\naddress = "h"\nca = "missing.pem"\n')
    with pytest.raises(SystemExit):
        cli.main(["--plain", "--config", str(path)])
    assert f"{path}: servers.lab.ca: {tmp_path / 'missing.pem'}: " in capsys.readouterr().err


def test_without_an_address_or_servers_it_says_what_is_missing(
        ran: type[Ran], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--plain"])
    assert exit_.value.code == 2 and "no server: give HOST:PORT" in capsys.readouterr().err
    bad = write(tmp_path, "[servers.x]\naddress = 'host:99999'\n")
    with pytest.raises(SystemExit):
        cli.main(["--plain", "--config", str(bad)])
    assert f"{bad}: servers.x.address: bad address" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["h", "--config", str(tmp_path / "none.toml")])
    assert "none.toml: no such file" in capsys.readouterr().err


def test_ignores_are_kept_in_the_state_dir_across_runs(ran: type[Ran]) -> None:
    ran.lines = ["/ignore Troll"]
    assert cli.main(["h:1", "--plain", "--nick", "me"]) == 0
    ran.lines = []
    assert cli.main(["h:1", "--plain", "--nick", "me"]) == 0
    assert ran.core.model.ignored == {"trol1".translate(str.maketrans("1", "l")): "Troll"}
    assert cli.main(["h:1", "--plain", "--nick", "other"]) == 0  # per server and nick
    assert ran.core.model.ignored == {}


# Buffer logs -------------------------------------------------------------------------

NOW = datetime(2026, 11, 21, 15, 0, tzinfo=UTC).timestamp()
CLOCK = Clock(now=lambda: NOW, zone=UTC)


def test_each_buffer_is_logged_once_per_message(tmp_path: Path) -> None:
    m = Model("alice", clock=CLOCK)
    log = ChatLog(tmp_path, "chat.example.org:7777", m)
    a = m.room("#a")
    m.add(a, Line("message", NOW, "hello\nsecond line", nick="bob", id=1))
    m.add(a, Line("action", NOW + 1, "waves", nick="bob", id=2))
    m.note(a, "carol joined #a", "notice", NOW + 2)
    m.note(a, "a local help line")  # not conversation: not logged
    mine = Line("message", NOW + 3, "mine", nick="alice", label=5, state="pending", own=True)
    m.add(a, mine)
    a.acked(mine, 3, NOW + 3)
    m.updated(a, mine)
    m.add(m.dm("Bob"), Line("message", NOW, "psst \x1b[2J", nick="Bob", id=4))
    log.save()
    folder = tmp_path / "chat.example.org_7777"
    assert (folder / "#a.log").read_text().splitlines() == [
        "2026-11-21 15:00:00 <bob> hello", "    second line",
        "2026-11-21 15:00:01 * bob waves",
        "2026-11-21 15:00:02 -- carol joined #a",
        "2026-11-21 15:00:03 <alice> mine"]
    assert (folder / "@bob.log").read_text() == "2026-11-21 15:00:00 <Bob> psst \ufffd[2J\n"
    # A restart shows the same history again, and a new message: only that is logged.
    again = Model("alice", clock=CLOCK)
    ChatLog(tmp_path, "chat.example.org:7777", again)
    b = again.room("#a")
    for mid in (1, 2, 3, 9):
        again.add(b, Line("message", NOW + mid, f"m{mid}", nick="bob", id=mid), new=False)
    assert (folder / "#a.log").read_text().splitlines()[-1] == "2026-11-21 15:00:09 <bob> m9"
    assert len((folder / "#a.log").read_text().splitlines()) == 6
    assert json.loads((folder / "last-ids.json").read_text()) == {"#a": 3, "@bob": 4}


def test_a_log_that_cannot_be_written_stops_logging_not_the_client(tmp_path: Path) -> None:
    (tmp_path / "chat.example.org_7777").write_text("a file where the folder goes")
    m = Model("alice", clock=CLOCK)
    log = ChatLog(tmp_path, "chat.example.org:7777", m)
    for mid in (1, 2):
        m.add(m.room("#a"), Line("message", NOW, "hi", nick="bob", id=mid))
    log.save()
    errors = [ln.text for ln in m.get(SERVER).lines if ln.kind == "error"]  # type: ignore[union-attr]
    assert len(errors) == 1 and errors[0].startswith("logging stopped")
