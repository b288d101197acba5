"""`chatd admin` against the real server: each subcommand as text and as --json, the
socket's permissions, kicks and bans as a client sees them, and hostile admin requests."""

from __future__ import annotations

import json
import os
import pwd
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from serverproc import FAST, ServerProcess, wait_until, with_harness_limits, write_config
from wire import Client, connect, recv_by

import chatd
from chatd.admin import DEADLINE, MAX_CONNECTIONS, MAX_REQUEST, SOCKET_NAME

CONFIG = {**FAST, "irc": {"port": -1}}


def admin(server: ServerProcess, *args: str) -> tuple[int, str, str]:
    """`chatd admin --data-dir ...` as a user runs it: (exit status, stdout, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "chatd", "admin", "--data-dir",
                           str(server.data_dir), *args], capture_output=True, text=True,
                          timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def admin_json(server: ServerProcess, *args: str, status: int = 0) -> dict[str, Any]:
    code, out, err = admin(server, "--json", *args)
    assert code == status, (code, out, err)
    answer = json.loads(out)
    assert isinstance(answer, dict)
    return answer


def raw(path: Path, data: bytes, timeout: float = 10.0) -> bytes:
    """Send `data` to the admin socket as it is; what comes back before the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(data)
        out = b""
        deadline = time.monotonic() + timeout
        while (chunk := recv_by(sock, deadline)) is not None and chunk:
            out += chunk
        return out


@pytest.fixture
def server(start: Callable[..., ServerProcess]) -> ServerProcess:
    return start(CONFIG)


def test_server_admin_socket_is_the_owners_alone(server: ServerProcess) -> None:
    path = server.data_dir / SOCKET_NAME
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    server.stop()
    assert not path.exists()  # removed at a clean stop


def as_user(user: str, action: Callable[[], str]) -> str:
    """`action` run in a forked child that has become `user`; what it returned."""
    entry = pwd.getpwnam(user)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os calls and sockets, then _exit
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            result = action()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            result = f"{type(exc).__name__}: {exc}"
        os.write(w, result.encode()[:4096])
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_server_admin_refuses_other_users() -> None:
    from chatd.admincli import Unreachable, ask

    # A data dir others can reach, so that only the socket itself keeps them out.
    data = Path(tempfile.mkdtemp(prefix="chatd-admin-"))
    try:
        data.chmod(0o755)
        server = ServerProcess(data, CONFIG).start()
        try:
            path = data / SOCKET_NAME

            def cli() -> str:
                try:
                    return json.dumps(ask(data, {"cmd": "status"}, 5.0))
                except Unreachable as exc:
                    return f"{exc.code}: {exc}"

            assert as_user("nobody", cli).startswith("permission_denied: permission denied")
            # Were the socket opened up by mistake, the server still checks who it is.
            path.chmod(0o666)
            answer = json.loads(as_user("nobody", cli))
            assert answer["ok"] is False and answer["error"] == "permission_denied"
            assert "may not administer" in answer["message"]
            server.wait_for_log(r"admin socket: refused uid \d+")
            assert admin_json(server, "status")["ok"]  # its owner still may
        finally:
            server.stop()
    finally:
        for child in data.iterdir():
            child.unlink()
        data.rmdir()


def test_server_admin_status(server: ServerProcess, clients: list[Client]) -> None:
    alice, bob = connect(server, "alice"), connect(server, "bob")
    clients += [alice, bob]
    alice.join("#general")
    bob.join("#general")
    bob.join("#rust")
    for i in range(30):
        alice.say("#general", f"line {i}")
    bob.messages("#general", 30)
    answer = admin_json(server, "status")
    assert answer["ok"] is True
    assert answer["version"] == chatd.__version__ and answer["pid"] == server.pid
    assert answer["state"] == "running" and answer["uptime"] > 0
    assert answer["sessions"]["total"] == 2 and answer["sessions"]["registered"] == 2
    assert answer["rooms"] == 2
    assert answer["messages"]["last_id"] == 30
    assert answer["messages"]["per_second_10s"] > 0
    assert sorted(answer["processes"]["sessions"]) == sorted(server.children())
    memory = answer["memory"]
    assert memory["parent_pss_kb"] > 0 and memory["sessions_counted"] == 2
    assert memory["sessions_pss_kb"] > 0
    storage = answer["storage"]
    assert storage["path"].endswith("history.sqlite3") and storage["bytes"] > 0
    assert storage["failing"] == [] and storage["last_error"] is None
    code, out, err = admin(server, "status")
    assert code == 0, err
    assert re.search(r"^sessions\s+2 of max \d+ \(2 with a nick\)", out, re.M), out
    assert re.search(r"^memory\s+parent [\d.]+ MiB, 2 sessions", out, re.M), out
    assert re.search(rf"^version\s+chatd {re.escape(chatd.__version__)}", out, re.M), out
    assert re.search(r"^storage\s+\S+history.sqlite3: ", out, re.M), out


def test_server_admin_sessions(server: ServerProcess, clients: list[Client]) -> None:
    alice, bob = connect(server, "alice"), connect(server, "bob")
    lurker = Client(server.host, server.port)  # no hello yet
    clients += [alice, bob, lurker]
    alice.join("#general")
    alice.join("#rust")
    bob.join("#general")
    wait_until(lambda: len(server.children()) == 3, message="three sessions")
    listed = admin_json(server, "sessions")["sessions"]
    by_nick = {s["nick"]: s for s in listed}
    assert set(by_nick) == {"alice", "bob", None}
    assert by_nick["alice"]["rooms"] == ["#general", "#rust"]
    assert by_nick["bob"]["rooms"] == ["#general"]
    for s in listed:
        assert s["address"] == "127.0.0.1" and s["account"] is None
        assert s["age"] >= 0 and s["since"] > 0 and s["queue"] >= 0
        assert s["closing"] is False
    assert sorted(s["pid"] for s in listed) == sorted(server.children())
    code, out, err = admin(server, "sessions")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["NICK", "ACCOUNT", "ADDRESS", "CONNECTED", "ROOMS", "QUEUE",
                                "PID"]
    assert re.search(r"^alice\s+-\s+127\.0\.0\.1\s+\S+\s+#general,#rust\s+0 B\s+\d+$", out,
                     re.M), out
    assert lines[-1] == "3 sessions"


def test_server_admin_kick(server: ServerProcess, clients: list[Client]) -> None:
    alice, bob = connect(server, "alice"), connect(server, "bob")
    clients += [alice, bob]
    alice.join("#general")
    bob.join("#general")
    code, out, err = admin(server, "kick", "Bob", "enough", "now")
    assert code == 0, err
    assert out.startswith("kicked bob (session ")
    frames = bob.wait_closed()
    assert frames[-1] == {"type": "error", "code": "kicked", "fatal": True,
                          "message": "kicked by the server administrator: enough now"}
    quit_ = alice.wait_type("quit", nick="bob")
    assert quit_["reason"] == "kicked: enough now"
    # By --json, and with no reason; an unknown nick is refused.
    carol = connect(server, "carol")
    clients.append(carol)
    answer = admin_json(server, "kick", "carol")
    assert answer["kicked"]["nick"] == "carol"
    assert carol.wait_closed()[-1]["message"] == "kicked by the server administrator"
    answer = admin_json(server, "kick", "nobody", status=1)
    assert answer == {"ok": False, "error": "no_such_nick",
                      "message": "nobody is called 'nobody'"}
    code, out, err = admin(server, "kick", "bob")  # gone already
    assert code == 1 and "nobody is called 'bob' (no_such_nick)" in err
    assert alice.sync()["type"] == "rooms"  # the others chat on


def test_server_admin_kick_over_irc(server: ServerProcess) -> None:
    with socket.create_connection((server.host, server.irc_port), timeout=10) as sock:
        sock.sendall(b"NICK dave\r\nUSER dave 0 * :Dave\r\n")
        got = b""
        deadline = time.monotonic() + 10
        while b" 001 " not in got and (chunk := recv_by(sock, deadline)):
            got += chunk
        assert admin(server, "kick", "dave", "bye")[0] == 0
        while (chunk := recv_by(sock, deadline)) and chunk:
            got += chunk
    assert b"ERROR :Closing link: " in got
    assert b"(kicked by the server administrator: bye)" in got


def test_server_admin_ban_nick_survives_a_restart(tmp_path: Path,
                                                  clients: list[Client]) -> None:
    server = ServerProcess(tmp_path, CONFIG).start()
    try:
        troll, alice = connect(server, "trollx"), connect(server, "alice")
        clients += [troll, alice]
        troll.join("#general")
        alice.join("#general")
        code, out, err = admin(server, "ban", "--nick", "Troll*", "--reason", "spam")
        assert code == 0, err
        assert out.splitlines()[0] == "banned #1 nick Troll* until lifted: spam"
        assert "ended the session of trollx from 127.0.0.1" in out
        assert troll.wait_closed()[-1] == {"type": "error", "code": "server_banned", "fatal": True,
                                           "message": "banned from this server: spam"}
        assert alice.wait_type("quit", nick="trollx")["reason"] == "banned from the server"
        # A new one is refused at registration, and the same on a nick change.
        late = Client(server.host, server.port)
        clients.append(late)
        late.send({"type": "hello", "version": 1, "nick": "TROLL2"})
        assert late.wait_closed()[-1]["code"] == "server_banned"
        renamer = connect(server, "nice")
        clients.append(renamer)
        renamer.send({"type": "nick", "nick": "trollish"})
        assert renamer.wait_closed()[-1]["code"] == "server_banned"
        assert connect(server, "atroll").sync()  # a pattern is anchored
        server.stop()
        server = ServerProcess(tmp_path, CONFIG).start()
        again = Client(server.host, server.port)
        clients.append(again)
        again.send({"type": "hello", "version": 1, "nick": "troll3"})
        assert again.wait_closed()[-1]["message"] == "banned from this server: spam"
        listed = admin_json(server, "bans")["bans"]
        assert [(b["id"], b["kind"], b["target"], b["hits"]) for b in listed] == [
            (1, "nick", "Troll*", 1)]
        code, out, err = admin(server, "bans")
        assert code == 0 and re.search(r"^#1\s+nick\s+Troll\*\s+never\s+1\s+uid \d+\s+spam$",
                                       out, re.M), out
        assert admin_json(server, "unban", "1")["ban"]["target"] == "Troll*"
        assert connect(server, "troll4").sync()
        assert admin(server, "bans")[1].strip() == "no bans"
        assert admin_json(server, "unban", "1", status=1)["error"] == "no_such_ban"
    finally:
        server.stop()


def test_server_admin_ban_address(server: ServerProcess, clients: list[Client]) -> None:
    alice = connect(server, "alice")
    clients.append(alice)
    answer = admin_json(server, "ban", "--address", "127.0.0.0/8", "--for", "1h",
                        "--reason", "go away")
    assert answer["new"] is True and answer["saved"] is True
    assert answer["ban"]["target"] == "127.0.0.0/8"
    assert 3500 < answer["ban"]["remaining"] <= 3600
    assert [s["nick"] for s in answer["ended"]] == ["alice"]
    assert alice.wait_closed()[-1]["code"] == "server_banned"
    # Refused before anything is forked: the error comes without a hello.
    before = set(server.children())
    refused = Client(server.host, server.port)
    clients.append(refused)
    last = refused.wait_closed()[-1]
    assert last["code"] == "server_banned" and last["fatal"] is True
    assert last["message"].startswith("banned from this server: go away (until ")
    assert last["message"].endswith(" UTC)")
    assert not set(server.children()) - before
    with socket.create_connection((server.host, server.irc_port), timeout=10) as sock:
        got = b""
        deadline = time.monotonic() + 10
        while (chunk := recv_by(sock, deadline)) and chunk:
            got += chunk
    assert got.startswith(b"ERROR :Closing link: ") and b"go away" in got
    assert admin_json(server, "unban", str(answer["ban"]["id"]))["saved"] is True
    assert connect(server, "alice2").sync()
    assert admin_json(server, "ban", "--address", "not-an-ip", status=1)["error"] == \
        "invalid_ban"


def test_server_admin_reload(server: ServerProcess) -> None:
    answer = admin_json(server, "reload")
    assert answer == {"ok": True, "result": f"reloaded {server.config_path}: no changes"}
    write_config(server.config_path, with_harness_limits({**CONFIG,
                                                          "limits": {"max_text": 1000}}))
    code, out, err = admin(server, "reload")
    assert code == 0, err
    assert out == f"reloaded {server.config_path}: max_text: 4000 -> 1000\n"
    server.config_path.write_text("[limits]\nmax_text = 'lots'\n")
    code, out, err = admin(server, "reload")
    assert code == 1
    assert "keeping the old configuration" in err and "(reload_failed)" in err


def test_server_admin_without_a_server(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "chatd", "admin", "--data-dir",
                           str(tmp_path), "status"], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 3
    assert proc.stderr.strip() == (f"chatd admin: no chatd is running on {tmp_path} (there "
                                   f"is no {tmp_path / SOCKET_NAME})")
    # A socket left by a server that died: refused, and a new server replaces it.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / SOCKET_NAME))
    stale.close()
    proc = subprocess.run([sys.executable, "-m", "chatd", "admin", "--data-dir",
                           str(tmp_path), "--json", "sessions"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 3
    assert json.loads(proc.stdout)["error"] == "no_server"
    assert "left over from one that ended" in json.loads(proc.stdout)["message"]
    server = ServerProcess(tmp_path, CONFIG).start()
    try:
        assert admin_json(server, "sessions") == {"ok": True, "sessions": []}
    finally:
        server.stop()


def test_server_admin_survives_hostile_requests(server: ServerProcess,
                                                clients: list[Client]) -> None:
    path = server.data_dir / SOCKET_NAME
    alice = connect(server, "alice")
    clients.append(alice)
    alice.join("#general")
    for data in (b"\n", b"\xff\xfe\n", b"{\n", b"[" * 4000 + b"\n", b'{"cmd": "kick"}\n',
                 b'{"cmd": "status", "cmd": "kick"}\n', b'{"cmd": "unban", "id": 1e400}\n',
                 b'{"cmd": "kick", "nick": "alice", "reason": "\\u001b[2J"}\n',
                 b'{"cmd": "rm -rf"}\n'):
        answer = json.loads(raw(path, data))
        assert answer["ok"] is False, data
        assert answer["error"] in ("bad_request", "unknown_command"), (data, answer)
    answer = json.loads(raw(path, b"x" * (MAX_REQUEST + 10)))
    assert answer["error"] == "request_too_large"
    assert raw(path, b"") == b""  # hung up without a word: nothing
    # One that says nothing is closed at its deadline, and does not stop the others.
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(str(path))
    try:
        started = time.monotonic()
        assert admin_json(server, "status")["ok"]
        assert alice.say("#general", "still here")
        assert recv_by(idle, started + DEADLINE + 5) == b""
        assert time.monotonic() - started >= DEADLINE - 0.5
    finally:
        idle.close()
    # More at once than it serves: the extra ones are told it is busy.
    many = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            for _ in range(MAX_CONNECTIONS + 2)]
    try:
        for sock in many:
            sock.connect(str(path))
        busy = [json.loads(data) for sock in many[MAX_CONNECTIONS:]
                if (data := recv_by(sock, time.monotonic() + 10))]
        assert busy and all(a["error"] == "busy" for a in busy)
    finally:
        for sock in many:
            sock.close()
    server.wait_for_log("closed at its 5s deadline")
    assert admin_json(server, "sessions")["sessions"][0]["nick"] == "alice"
    assert alice.say("#general", "and still here")
    assert server.proc is not None and server.proc.poll() is None


def test_server_admin_ban_account_ends_every_session_of_it(tmp_path: Path,
                                                           clients: list[Client]) -> None:
    """A ban of an account ends the sessions logged in to it now (both devices, and one
    not yet past hello), not only its later logins; a guest is left alone."""
    from accountwire import SETTINGS, logged_in, login, register

    server = ServerProcess(tmp_path, {**CONFIG, **SETTINGS}).start()
    try:
        first = Client(server.host, server.port)
        clients.append(first)
        assert register(first, "mallory", "pw one two")["type"] == "registered"
        phone, laptop = Client(server.host, server.port), Client(server.host, server.port)
        bob = connect(server, "bob")
        clients += [phone, laptop, bob]
        for device in (phone, laptop):
            logged_in(device, "mallory", "pw one two")
            device.join("#r")
        bob.join("#r")
        listed = admin_json(server, "sessions")["sessions"]
        # (registering logged `first` in: a session of the account without a nick yet)
        assert sorted(s["account"] or "-" for s in listed) == ["-"] + ["mallory"] * 3
        answer = admin_json(server, "ban", "--account", "Mallory", "--reason", "abuse")
        assert answer["ban"]["kind"] == "account" and answer["ban"]["target"] == "Mallory"
        assert sorted(s["session"] for s in answer["ended"]) == sorted(
            s["session"] for s in listed if s["account"] == "mallory")
        for device in (first, phone, laptop):
            assert device.wait_closed()[-1] == {
                "type": "error", "code": "server_banned", "fatal": True,
                "message": "banned from this server: abuse"}
        assert bob.wait_type("quit", nick="mallory")["reason"] == "banned from the server"
        wait_until(lambda: [s["nick"] for s in admin_json(server, "sessions")["sessions"]
                            if s["nick"]] == ["bob"], message="only bob left")
        # Its next login is refused too, whatever nick it would take.
        again = Client(server.host, server.port)
        clients.append(again)
        with pytest.raises(ConnectionError):  # its proof is right, and the ban ends it
            login(again, "mallory", "pw one two")
        assert again.wait_closed()[-1]["message"] == "banned from this server: abuse"
        assert bob.say("#r", "still here")
    finally:
        server.stop()


def test_server_admin_kick_ends_every_session_of_an_account(tmp_path: Path,
                                                            clients: list[Client]) -> None:
    from accountwire import SETTINGS, logged_in, register

    server = ServerProcess(tmp_path, {**CONFIG, **SETTINGS}).start()
    try:
        with Client(server.host, server.port) as first:
            assert register(first, "mal", "pw one two")["type"] == "registered"
        phone, laptop = Client(server.host, server.port), Client(server.host, server.port)
        clients += [phone, laptop]
        for device in (phone, laptop):
            logged_in(device, "mal", "pw one two")
        code, out, err = admin(server, "kick", "mal", "later")
        assert code == 0, err
        assert re.fullmatch(r"kicked mal \(session \S+, pid \d+, from 127\.0\.0\.1\) and 1 "
                            r"more session of its account\n", out), out
        for device in (phone, laptop):
            assert device.wait_closed()[-1]["message"] == \
                "kicked by the server administrator: later"
    finally:
        server.stop()
