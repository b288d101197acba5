"""Accounts against the real `chatd serve` (protocol.md §12): registration and SCRAM login
through the auth helper, owned nicks, direct messages that belong to accounts, several
sessions of one account, brute-force limits, and no password anywhere on disk or in logs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from accountwire import SETTINGS, direct_after, leaks, logged_in, login, register
from serverproc import FAST, ServerProcess, wait_until, write_config
from test_server_tls import tls_port, tls_settings, trusting
from wire import Client, connect, tls_connect

from chatd.sasl import plain_message

PASSWORD = "correct horse battery"


@pytest.fixture
def server(start: Any) -> ServerProcess:
    server: ServerProcess = start({**FAST, **SETTINGS})
    return server


def dm(client: Client, to: str, text: str) -> dict[str, Any]:
    ack = client.call({"type": "msg", "to": to, "text": text})
    assert ack["type"] == "ack", ack
    return ack


def test_a_taken_freed_nick_learns_and_receives_nothing_of_its_owner(server, clients) -> None:
    """The attack of issue 10: alice leaves, someone takes `alice` at once."""
    alice = connect(server, "alice")
    clients.append(alice)
    assert register(alice, "alice", PASSWORD)["type"] == "registered"
    bob = connect(server, "bob")
    clients.append(bob)
    ids = [dm(bob, "alice", f"secret {i}")["id"] for i in range(10)]
    alice.collect(lambda f: f.get("type") == "message", 10)
    alice.close()

    def hello_as(nick: str) -> str:
        thief = Client(server.host, server.port)
        clients.append(thief)
        return str(thief.call({"type": "hello", "version": 1, "nick": nick}).get("code"))
    # Once her session is gone (nick_taken until then), every spelling of the owned
    # nick is refused to a guest, up front.
    wait_until(lambda: hello_as("alice") == "nick_owned")
    assert hello_as("ALICE") == hello_as("a1ice") == "nick_owned"
    thief = connect(server, "mallory")
    clients.append(thief)
    assert thief.error({"type": "nick", "nick": "alice"})["code"] == "nick_owned"
    # What bob sends her while she is away is kept for her, and reaches nobody else.
    later = dm(bob, "alice", "are you there?")["id"]
    history = thief.call({"type": "history", "with": "bob"})
    assert history["messages"] == []
    assert thief.sync() and not thief.pending("message")
    # The real alice logs in again and gets all of it, the one sent while away too.
    back = Client(server.host, server.port)
    clients.append(back)
    logged_in(back, "alice", PASSWORD)
    got = direct_after(back, 0)
    assert [m["id"] for m in got] == [*ids, later]
    assert {m["from"] for m in got} == {"bob"} and {m["to"] for m in got} == {"alice"}


def test_two_sessions_of_one_account_both_get_and_catch_up_on_its_dms(server, clients) -> None:
    phone, laptop, bob = (Client(server.host, server.port) for _ in range(3))
    clients += [phone, laptop, bob]
    phone.hello("dave")
    assert register(phone, "dave", PASSWORD)["type"] == "registered"
    logged_in(laptop, "dave", PASSWORD)
    bob.hello("bob")
    sent = dm(bob, "dave", "to both")
    for device in (phone, laptop):
        assert device.wait_type("message", to="dave")["id"] == sent["id"]
    # What one session sends, the other sees too.
    mine = dm(phone, "bob", "from the phone")
    assert laptop.wait_type("message", to="bob")["id"] == mine["id"]
    assert bob.wait_type("message", to="bob")["text"] == "from the phone"
    # In a room the account is one member: one join, one name, a part with the last.
    bob.join("#r")
    phone.join("#r")
    laptop.join("#r")
    members = bob.call({"type": "who", "room": "#r"})["members"]
    assert members == ["bob", "dave"]
    bob.sync()
    assert len(bob.pending("join", nick="dave")) == 1
    # The laptop goes away; the DMs it misses wait for it.
    laptop.close()
    missed = [dm(bob, "dave", f"missed {i}")["id"] for i in range(3)]
    assert [phone.wait_type("message", to="dave")["id"] for _ in range(3)] == missed
    assert not bob.pending("quit", nick="dave")  # the phone is still in #r
    laptop = Client(server.host, server.port)
    clients.append(laptop)
    logged_in(laptop, "dave", PASSWORD)
    caught = direct_after(laptop, mine["id"])
    assert [m["id"] for m in caught] == missed  # each once, none before the point
    live = dm(bob, "dave", "after the catch-up")
    assert laptop.wait_type("message", to="dave")["id"] == live["id"]


def test_a_dm_from_a_new_peer_while_offline_is_fetched(server, clients) -> None:
    """Issue 14: a peer never talked to before writes while you are away."""
    erin = connect(server, "erin")
    clients.append(erin)
    assert register(erin, "erin", PASSWORD)["type"] == "registered"
    seen = dm(erin, "erin", "a note to myself")["id"]
    erin.close()
    stranger = connect(server, "stranger")
    clients.append(stranger)
    new = dm(stranger, "erin", "hello, we never met")["id"]
    back = Client(server.host, server.port)
    clients.append(back)
    logged_in(back, "erin", PASSWORD)
    assert [(m["id"], m["from"]) for m in direct_after(back, seen)] == [(new, "stranger")]


def test_wrong_password_and_unknown_account_look_the_same(server, clients) -> None:
    owner = connect(server, "frank")
    clients.append(owner)
    assert register(owner, "frank", PASSWORD)["type"] == "registered"
    replies = []
    for account in ("frank", "nobody"):
        c = Client(server.host, server.port)
        clients.append(c)
        reply = login(c, account, "wrong password!")
        replies.append({k: v for k, v in reply.items() if k != "label"})
    assert replies[0] == replies[1]
    assert replies[0]["code"] == "auth_failed" and replies[0]["data"] == b"e=invalid-proof"


def test_failed_logins_are_limited_per_account(server, clients) -> None:
    owner = connect(server, "gina")
    clients.append(owner)
    assert register(owner, "gina", PASSWORD)["type"] == "registered"
    c = Client(server.host, server.port)
    clients.append(c)
    codes = [login(c, "gina", f"guess number {i}")["code"] for i in range(6)]
    assert codes == ["auth_failed"] * 5 + ["rate_limited"]
    refused = login(c, "gina", PASSWORD)  # the right one too, until the bucket refills
    assert refused["code"] == "rate_limited" and refused["limit"] == "login"
    assert refused["retry_after"] > 0
    other = Client(server.host, server.port)  # another account is not locked out
    clients.append(other)
    assert login(other, "nobody", "guess")["code"] == "auth_failed"


def test_the_auth_helper_is_restarted_and_logins_work_again(server, clients) -> None:
    owner = connect(server, "hank")
    clients.append(owner)
    assert register(owner, "hank", PASSWORD)["type"] == "registered"
    match = re.search(r"auth helper started \(pid (\d+)\)",
                      server.wait_for_log(r"auth helper started"))
    assert match
    os.kill(int(match.group(1)), signal.SIGKILL)
    server.wait_for_log(rf"auth helper \(pid {match.group(1)}\) ended")
    chat = connect(server, "guest")  # guests never noticed
    clients.append(chat)

    def works() -> bool:
        c = Client(server.host, server.port)
        clients.append(c)
        return login(c, "hank", PASSWORD)["type"] == "logged_in"
    wait_until(works)


def test_no_password_in_the_data_dir_or_the_log(start, clients, tmp_path: Path) -> None:
    """Over TLS, with the password itself on the wire (register, PLAIN): it is hashed in
    the auth helper and kept nowhere."""
    server: ServerProcess = start({**FAST, **SETTINGS, "tls": tls_settings()})
    port = tls_port(server)
    secret = "Zebra-Quartz-9137-password"
    c = tls_connect(server.host, port, trusting(), "ivy")
    clients.append(c)
    assert c.call({"type": "register", "account": "ivy",
                   "password": secret})["type"] == "registered"
    again = tls_connect(server.host, port, trusting())
    clients.append(again)
    reply = again.call({"type": "login", "mechanism": "PLAIN",
                        "data": plain_message("ivy", secret)})
    assert reply["type"] == "logged_in" and reply["account"] == "ivy", reply
    wrong = tls_connect(server.host, port, trusting())
    clients.append(wrong)
    assert wrong.call({"type": "login", "mechanism": "PLAIN", "data": plain_message(
        "ivy", secret + "x")})["code"] == "auth_failed"
    # PLAIN and a password registration need TLS.
    plain = connect(server, "jo")
    clients.append(plain)
    assert plain.error({"type": "login", "mechanism": "PLAIN",
                        "data": plain_message("ivy", secret)})["code"] == "tls_required"
    server.stop()
    for path in server.data_dir.rglob("*"):
        if path.is_file():
            assert not leaks(path.read_bytes(), secret), path
    assert not leaks("\n".join(server.lines).encode(), secret)  # (a debug-level log)
    assert any(" DEBUG " in line for line in server.lines)


def test_a_new_iteration_count_on_sighup_restarts_the_helper(server, clients) -> None:
    owner = connect(server, "kim")
    clients.append(owner)
    assert register(owner, "kim", PASSWORD)["type"] == "registered"
    mark = server.mark()
    write_config(server.config_path, {**server.settings, "accounts": {"iterations": 5000}})
    server.signal(signal.SIGHUP)
    server.wait_for_log("restarting the auth helper", start=mark)
    c = Client(server.host, server.port)
    clients.append(c)
    assert c.call({"type": "hello", "version": 1, "nick": "lee"})["auth"]["iterations"] == 5000

    def logs_in() -> bool:  # the old account's verifier keeps its own count
        again = Client(server.host, server.port)
        clients.append(again)
        return login(again, "kim", PASSWORD)["type"] == "logged_in"
    wait_until(logs_in)


def test_failed_logins_are_limited_per_address(server, clients) -> None:
    """20 failures from one address, whatever the names, then one per 10 s: the address
    is the one the parent accepted the connection from."""
    c = Client(server.host, server.port)
    clients.append(c)
    codes = [login(c, f"name{i}", "guess")["code"] for i in range(21)]
    assert codes == ["auth_failed"] * 20 + ["rate_limited"]


def test_an_upgrade_keeps_an_account_s_sessions_and_logins(server, clients) -> None:
    """`chatd upgrade` in place: both sessions of an account still get its DMs from the
    new parent, and logging in works there (a new auth helper)."""
    phone, laptop = Client(server.host, server.port), Client(server.host, server.port)
    clients += [phone, laptop]
    phone.hello("nia")
    assert register(phone, "nia", PASSWORD)["type"] == "registered"
    logged_in(laptop, "nia", PASSWORD)
    done = subprocess.run([sys.executable, "-m", "chatd", "upgrade", "--data-dir",
                           str(server.data_dir), "--timeout", "60"],
                          capture_output=True, text=True, timeout=70)
    assert done.returncode == 0, done.stdout + done.stderr
    bob = connect(server, "bob")
    clients.append(bob)
    sent = dm(bob, "nia", "after the upgrade")
    for device in (phone, laptop):
        assert device.wait_type("message", to="nia")["id"] == sent["id"]
    third = Client(server.host, server.port)
    clients.append(third)
    logged_in(third, "nia", PASSWORD)
    thief = Client(server.host, server.port)
    clients.append(thief)
    assert thief.call({"type": "hello", "version": 1, "nick": "nia"})["code"] == "nick_taken"
