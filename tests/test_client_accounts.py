"""chat-client with accounts against the real server, in plain mode: /register,
--account with each password source, two devices of one account, and the direct
messages missed while away fetched exactly once, across restarts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from accountwire import SETTINGS, register
from serverproc import FAST, ServerProcess
from test_client_plain import CLIENT, ROOT, LineReader, client_env, run_client, start_server
from wire import Client, connect

PASSWORD = "plain mode password"


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = start_server(tmp_path, {**FAST, **SETTINGS})
    yield srv
    srv.stop()


def with_password(state: Path, password: str = PASSWORD) -> dict[str, str]:
    return dict(client_env(state), CHAT_CLIENT_PASSWORD=password)


def run(server: ServerProcess, args: list[str], stdin: str,
        state: Path) -> subprocess.CompletedProcess[str]:
    """One plain-mode run with the password in the environment."""
    return subprocess.run([*CLIENT, f"{server.host}:{server.port}", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT,
                          env=with_password(state), timeout=60)


def account_of(server: ServerProcess, name: str, clients: list[Client]) -> None:
    owner = connect(server, name)
    clients.append(owner)
    assert register(owner, name, PASSWORD)["type"] == "registered"
    owner.close()


def test_register_then_log_in_with_a_password_file(server: ServerProcess, tmp_path: Path,
                                                   clients: list[Client]) -> None:
    done = subprocess.run([*CLIENT, f"{server.host}:{server.port}", "--nick", "carol"],
                          input="/register\n", capture_output=True, text=True, cwd=ROOT,
                          env=with_password(tmp_path / "a"), timeout=60)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "registered and logged in as carol" in done.stdout
    guest = Client(server.host, server.port)
    clients.append(guest)
    assert guest.call({"type": "hello", "version": 1, "nick": "carol"})["code"] == "nick_owned"
    bob = connect(server, "bob")
    clients.append(bob)
    secret = tmp_path / "password"
    secret.write_text(PASSWORD + "\n")
    done = run_client(server, ["--account", "carol", "--password-file", str(secret)],
                      "/msg bob signed in\n", tmp_path / "b")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "logged in as carol" in done.stdout
    got = bob.wait_type("message", to="bob")
    assert (got["from"], got["text"]) == ("carol", "signed in")


def test_a_wrong_password_stops_the_client(server: ServerProcess, tmp_path: Path,
                                           clients: list[Client]) -> None:
    account_of(server, "dan", clients)
    done = subprocess.run([*CLIENT, f"{server.host}:{server.port}", "--account", "dan"],
                          input="hello\n", capture_output=True, text=True, cwd=ROOT,
                          env=with_password(tmp_path / "s", "not the password"), timeout=60)
    assert done.returncode != 0
    assert "auth_failed" in done.stdout + done.stderr


def test_two_devices_and_a_dm_missed_while_away_fetched_once(
        server: ServerProcess, tmp_path: Path, clients: list[Client]) -> None:
    account_of(server, "erin", clients)
    phone_state, laptop_state = tmp_path / "phone", tmp_path / "laptop"
    devices = []
    try:
        for state in (phone_state, laptop_state):
            proc = subprocess.Popen([*CLIENT, f"{server.host}:{server.port}", "--account",
                                     "erin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                    env=with_password(state))
            devices.append((proc, LineReader(proc.stdout)))
        for _proc, out in devices:
            out.wait_for("you joined #general", timeout=30)
        bob = connect(server, "bob")
        clients.append(bob)
        bob.call({"type": "msg", "to": "erin", "text": "to both devices"})
        for _proc, out in devices:
            out.wait_for("@bob <bob> to both devices")
        phone, phone_out = devices[0]
        assert phone.stdin is not None
        phone.stdin.write("/msg bob from the phone\n")
        phone.stdin.flush()
        devices[1][1].wait_for("@bob <erin> from the phone")  # the laptop sees it too
        for proc, _out in devices:
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(30) == 0
    finally:
        for proc, _out in devices:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # Away: a peer never talked to before writes.
    stranger = connect(server, "stranger")
    clients.append(stranger)
    stranger.call({"type": "msg", "to": "erin", "text": "we never met"})
    first = run(server, ["--account", "erin"], "", phone_state)
    assert first.returncode == 0, first.stderr
    shown = [line for line in first.stdout.splitlines() if "we never met" in line]
    assert len(shown) == 1 and "<stranger>" in shown[0], first.stdout
    assert "to both devices" not in first.stdout  # seen before: not again
    again = run(server, ["--account", "erin"], "", phone_state)
    assert "we never met" not in again.stdout  # once, across restarts
    laptop = run(server, ["--account", "erin"], "", laptop_state)
    assert [line for line in laptop.stdout.splitlines() if "we never met" in line]
