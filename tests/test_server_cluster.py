"""Several `chatd serve` hosts sharing rooms through a real `redis-server` (issue 13).

Each test starts its own Redis on a free loopback port (its own directory, append-only
persistence) and two or three hosts; nothing is mocked. Skipped only where redis-server
is not installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from accountwire import SETTINGS as ACCOUNTS
from accountwire import direct_after, logged_in, login, register
from redisproc import REDIS, RedisServer, free_port
from serverproc import FAST, ServerProcess, kill_quietly, wait_until
from storefaults import fill, tmpfs
from wire import Client, Frame, connect

pytestmark = [pytest.mark.skipif(REDIS is None, reason="redis-server is not installed"),
              pytest.mark.timeout(120)]


class Cluster:
    def __init__(self, base: Path, redis: RedisServer) -> None:
        self.base = base
        self.redis = redis
        self.hosts: list[ServerProcess] = []
        self.clients: list[Client] = []

    def host(self, name: str, server: dict[str, Any] | None = None, data: Path | None = None,
             **cluster: Any) -> ServerProcess:
        data = data or self.base / name
        data.mkdir(exist_ok=True)
        settings = {**FAST, **ACCOUNTS, "server": server or {},
                    "cluster": {"redis_url": self.redis.url, "node": name, **cluster}}
        server = ServerProcess(data, settings).start()
        server.wait_for_log(f"in the cluster as node {name}")
        self.hosts.append(server)
        return server

    def connect(self, server: ServerProcess, nick: str) -> Client:
        client = connect(server, nick)
        self.clients.append(client)
        return client


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    redis = RedisServer(tmp_path / "redis", free_port()).start()
    made = Cluster(tmp_path, redis)
    try:
        yield made
    finally:
        for client in made.clients:
            client.close()
        for server in made.hosts:
            if server.proc is not None and server.proc.poll() is None:
                server.stop()
        made.redis.stop()


def ids(frames: list[Frame]) -> list[int]:
    return [f["id"] for f in frames]


def sees(client: Client, room: str, members: list[str]) -> None:
    """Wait until `client`'s host lists `members` in `room`: membership reaches the other
    hosts through the stream, a moment later (eventually consistent, README)."""
    wait_until(lambda: client.call({"type": "who", "room": room}).get("members") == members,
               message=f"{client.nick} to see {members} in {room}")


def test_cluster_rooms_are_shared_with_one_id_space(cluster: Cluster) -> None:
    a, b, c = (cluster.host(name) for name in "abc")
    alice, bob, carol = (cluster.connect(h, n) for h, n in ((a, "alice"), (b, "bob"),
                                                             (c, "carol")))
    alice.join("#x")
    bob.join("#x")
    alice.wait_type("join", nick="bob")
    carol.join("#x")
    bob.wait_type("join", nick="carol")
    acks = [alice.say("#x", "from a"), bob.say("#x", "from b"), carol.say("#x", "from c")]
    assert [x["id"] for x in acks] == sorted(x["id"] for x in acks)
    for client in (alice, bob, carol):  # the same messages, ids and order on every host
        got = client.messages("#x", 3)
        assert ids(got) == [x["id"] for x in acks]
        assert [m["text"] for m in got] == ["from a", "from b", "from c"]
        assert [m["from"] for m in got] == ["alice", "bob", "carol"]
    sees(carol, "#x", ["alice", "bob", "carol"])
    rooms = alice.call({"type": "rooms"})
    assert rooms["rooms"] == [{"room": "#x", "members": 3, "topic": ""}]
    topic = bob.call({"type": "topic", "room": "#x", "topic": "shared"})
    assert topic["topic"] == "shared" and topic["by"] == "bob"
    for client in (alice, carol):
        assert client.wait_type("topic", room="#x")["topic"] == "shared"
    carol.call({"type": "part", "room": "#x"})
    assert alice.wait_type("part", nick="carol")["room"] == "#x"
    sees(bob, "#x", ["alice", "bob"])


def test_cluster_nicks_are_unique_and_dms_reach_any_host(cluster: Cluster) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    alice = cluster.connect(a, "alice")
    bob = cluster.connect(b, "bob")
    other = Client(b.host, b.port)
    cluster.clients.append(other)
    taken = other.call({"type": "hello", "version": 1, "nick": "ALICE"})
    assert taken["type"] == "error" and taken["code"] == "nick_taken"
    alice.join("#n")
    bob.join("#n")
    alice.wait_type("join", nick="bob")
    renamed = bob.call({"type": "nick", "nick": "robert"})
    assert renamed == {**renamed, "type": "nick", "old": "bob", "new": "robert"}
    seen = alice.wait_type("nick", room="#n")
    assert (seen["old"], seen["new"]) == ("bob", "robert")
    sees(alice, "#n", ["alice", "robert"])
    # the old nick is free again, on any host
    assert other.hello("bob")["nick"] == "bob"
    ack = alice.call({"type": "msg", "to": "Robert", "text": "psst"})
    assert ack["type"] == "ack" and ack["to"] == "robert"
    got = bob.wait_type("message", to="robert")
    assert got["id"] == ack["id"] and got["from"] == "alice" and got["text"] == "psst"
    assert alice.wait_type("message", to="robert")["id"] == ack["id"]  # the sender's copy
    nobody = alice.call({"type": "msg", "to": "nobody", "text": "?"})
    assert nobody["code"] == "no_such_nick"
    # the DM is history on both hosts
    page = bob.call({"type": "history", "with": "alice"})
    assert ids(page["messages"]) == [ack["id"]]


def test_cluster_catch_up_after_reconnecting_to_another_host(cluster: Cluster) -> None:
    a, b, c = (cluster.host(name) for name in "abc")
    talker = cluster.connect(a, "talker")
    talker.join("#c")
    reader = cluster.connect(b, "reader")
    reader.join("#c")
    for i in range(5):
        talker.say("#c", f"before {i}")
    seen = ids(reader.messages("#c", 5))
    reader.close()
    missed = [talker.say("#c", f"missed {i}")["id"] for i in range(20)]
    back = cluster.connect(c, "reader")
    joined, page = back.join("#c", after=seen[-1])
    got = ids(page["messages"])
    while page["more"]:
        page = back.call({"type": "history", "room": "#c", "after": got[-1]})
        got += ids(page["messages"])
    later = talker.say("#c", "after")["id"]
    got += ids(back.messages("#c", 1))
    assert got == [*missed, later]


def counted(client: Client, room: str) -> Callable[[], list[int]]:
    """The ids of `room` that have reached `client` so far (reading what is waiting)."""
    def read() -> list[int]:
        client._read_more(time.monotonic() + 0.05)
        return [f["id"] for f in client.received
                if f.get("type") == "message" and f.get("room") == room]
    return read


def test_cluster_survives_a_redis_restart_and_a_host_crash(cluster: Cluster) -> None:
    a, b = cluster.host("a", lease=2.0), cluster.host("b", lease=2.0)
    c = cluster.host("c", lease=2.0)
    alice, bob = cluster.connect(a, "alice"), cluster.connect(b, "bob")
    carol = cluster.connect(c, "carol")
    for client in (alice, bob, carol):
        client.join("#r")
    sees(alice, "#r", ["alice", "bob", "carol"])
    acked: list[int] = []
    texts = itertools.count()

    def send(client: Client) -> Frame:
        reply = client.call({"type": "msg", "room": "#r", "text": f"m{next(texts)}"})
        if reply["type"] == "ack":
            acked.append(reply["id"])
        return reply

    for _ in range(10):
        send(alice)
        send(bob)
    cluster.redis.stop()  # a crash: kill -9
    for client in (alice, bob, carol):
        assert client.wait_type("status", cluster="down")["message"]
    refused = send(alice)
    assert refused["type"] == "error" and refused["code"] == "storage_unavailable"
    cluster.redis.start()  # the same directory: its append-only file
    for client in (alice, bob, carol):
        client.wait_type("status", cluster="up", timeout=15)
    for _ in range(10):
        assert send(bob)["type"] == "ack"
        assert send(alice)["type"] == "ack"
    # a host dies (its parent, kill -9): the others carry on, and its nick is free again
    kill_quietly(c.pid, signal.SIGKILL)
    c.wait_exit()
    assert alice.wait_type("quit", nick="carol", timeout=15)["room"] == "#r"
    for _ in range(10):
        assert send(alice)["type"] == "ack"
        assert send(bob)["type"] == "ack"
    assert cluster.connect(a, "carol").nick == "carol"
    for client in (alice, bob):  # every acknowledged message once, in id order
        wait_until(lambda client=client: set(acked) <= set(counted(client, "#r")()),
                   timeout=15, message="every acknowledged message")
        got = counted(client, "#r")()
        assert got == sorted(got) and len(got) == len(set(got))
        assert set(got) == set(acked)


def test_cluster_tells_clients_when_redis_lost_its_data(cluster: Cluster, tmp_path: Path
                                                        ) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    alice, bob = cluster.connect(a, "alice"), cluster.connect(b, "bob")
    alice.join("#e")
    bob.join("#e")
    alice.wait_type("join", nick="bob")
    first = alice.say("#e", "before")["id"]
    port = cluster.redis.port
    cluster.redis.stop()
    cluster.redis = RedisServer(tmp_path / "redis-empty", port, persist=False).start()
    for client in (alice, bob):
        gap = client.wait_type("status", cluster="gap", timeout=15)
        assert "lost" in gap["message"]
    after = wait_until(lambda: (r := alice.call({"type": "msg", "room": "#e", "text": "x"}))
                       ["type"] == "ack" and r, timeout=15)
    assert after["id"] > first  # ids never go back, though Redis forgot its sequence
    assert bob.messages("#e", 2)[-1]["id"] == after["id"]
    sees(bob, "#e", ["alice", "bob"])


def test_cluster_accounts_log_in_on_any_host_and_own_their_nick_everywhere(
        cluster: Cluster) -> None:
    a, b = (cluster.host(name, server={"operators": ["alice"]}) for name in "ab")
    alice = cluster.connect(a, "alice")
    assert register(alice, "alice", "correct horse")["type"] == "registered"
    # the name is the cluster's: another host refuses it (its helper has it, or Redis says)
    dave = cluster.connect(b, "dave")
    again = register(dave, "alice", "another password")
    assert again["type"] == "error" and again["code"] in ("account_exists", "nick_taken")
    # an account's session on another host: the same account, the same nick
    phone = cluster.connect(b, None)
    welcome = logged_in(phone, "alice", "correct horse")
    assert welcome["nick"] == "alice" and welcome["account"] == "alice"
    wrong = login(cluster.connect(b, None), "alice", "wrong password")
    assert wrong["type"] == "error" and wrong["code"] == "auth_failed"
    # a direct message to the account reaches its sessions on both hosts, and the
    # sender's copy comes back to the sender
    ack = dave.call({"type": "msg", "to": "alice", "text": "to both"})
    assert ack["type"] == "ack" and ack["to"] == "alice"
    for session in (alice, phone, dave):
        assert session.wait_type("message", to="alice")["id"] == ack["id"]
    # rooms show the account once, wherever its sessions are
    alice.join("#acc")
    phone.join("#acc")
    dave.join("#acc")
    sees(alice, "#acc", ["alice", "dave"])
    sees(dave, "#acc", ["alice", "dave"])
    # the account opened the room: its operator on every host, not the guest
    assert phone.call({"type": "mode", "room": "#acc"})["operator"] is True
    assert dave.call({"type": "mode", "room": "#acc"})["operator"] is False
    # with no session online the nick stays the account's on every host, and a message
    # to it waits in the account's history, fetched on any host
    alice.close()
    phone.close()
    guest = Client(a.host, a.port)
    cluster.clients.append(guest)
    wait_until(lambda: guest.call({"type": "hello", "version": 1, "nick": "Alice"}
                                  )["code"] == "nick_owned",
               message="the guest to be refused the account's nick")
    later = dave.call({"type": "msg", "to": "alice", "text": "while away"})
    assert later["type"] == "ack" and later["to"] == "alice"
    back = cluster.connect(a, None)
    logged_in(back, "alice", "correct horse")
    got = direct_after(back, ack["id"])
    assert [(m["id"], m["text"]) for m in got] == [(later["id"], "while away")]
    # a server operator ends a session of another host
    assert back.call({"type": "kill", "nick": "dave", "reason": "test"})["type"] == "killed"
    assert dave.wait_type("error", code="killed")["message"] == "killed by alice: test"
    # a host that joins later learns the accounts from Redis
    c = cluster.host("c")
    late = cluster.connect(c, None)
    wait_until(lambda: login(late, "alice", "correct horse")["type"] == "logged_in",
               message="a login on the new host (its helper starting)")


def moderated(client: Client, req: dict[str, Any]) -> Frame:
    """An operator's change: its ack, then its event, with the same id."""
    ack = client.call(req)
    assert ack["type"] == "ack", ack
    event = client.wait_type("moderation", kind=req["type"])
    assert event["id"] == ack["id"]
    return event


def test_cluster_moderation_holds_on_every_host(cluster: Cluster) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    alice, bob = cluster.connect(a, "alice"), cluster.connect(b, "bob")
    carol = cluster.connect(b, "carol")
    alice.join("#m")  # she opened it: its operator
    sees(bob, "#m", ["alice"])
    for client in (bob, carol):
        client.join("#m")
    sees(alice, "#m", ["alice", "bob", "carol"])
    assert bob.error({"type": "kick", "room": "#m", "nick": "carol"})["code"] == \
        "not_operator"
    # a change has a message id from the one sequence: before and after, messages too
    said = alice.say("#m", "rules")["id"]
    ban = moderated(alice, {"type": "ban", "room": "#m", "nick": "car*"})
    assert ban["id"] > said
    assert carol.wait_type("moderation", kind="ban")["id"] == ban["id"]
    assert carol.error({"type": "msg", "room": "#m", "text": "x"})["code"] == "banned"
    # an operator made on one host acts on another
    moderated(alice, {"type": "op", "room": "#m", "nick": "bob"})
    assert bob.wait_type("moderation", kind="op")["nick"] == "bob"
    assert bob.call({"type": "mode", "room": "#m"})["operator"] is True
    kick = moderated(bob, {"type": "kick", "room": "#m", "nick": "carol", "reason": "out"})
    got = carol.wait_type("moderation", kind="kick")
    assert (got["id"], got["by"], got["reason"]) == (kick["id"], "bob", "out")
    assert alice.wait_type("moderation", kind="kick")["nick"] == "carol"
    sees(alice, "#m", ["alice", "bob"])
    assert carol.error({"type": "join", "room": "#m"})["code"] == "banned"
    # modes set on one host keep people out on another
    moderated(alice, {"type": "unban", "room": "#m", "nick": "car*"})
    moderated(alice, {"type": "mode", "room": "#m", "invite_only": True})
    bob.wait_type("moderation", kind="mode")
    assert carol.error({"type": "join", "room": "#m"})["code"] == "invite_only"
    moderated(bob, {"type": "invite", "room": "#m", "nick": "carol"})
    assert carol.wait_type("invited", room="#m")["by"] == "bob"
    carol.join("#m")
    sees(alice, "#m", ["alice", "bob", "carol"])
    # the same history on both hosts, the changes in their places
    after = alice.call({"type": "history", "room": "#m", "after": said - 1})
    there = carol.call({"type": "history", "room": "#m", "after": said - 1})
    assert ids(after["messages"]) == ids(there["messages"])
    assert [m.get("kind") for m in after["messages"]] == [
        None, "ban", "op", "kick", "unban", "mode", "invite"]


def test_cluster_host_whose_disk_fills_reads_again_and_misses_nothing(cluster: Cluster
                                                                       ) -> None:
    """A host's own SQLite copy fails (a full disk): its sessions are told and refused,
    the other hosts carry on, and once it can store again it has every message, and its
    sessions got each one once, in order."""
    with tmpfs("4m") as fs:
        a = cluster.host("a", data=fs / "a")
        b = cluster.host("b")
        alice, bob = cluster.connect(a, "alice"), cluster.connect(b, "bob")
        alice.join("#d")
        bob.join("#d")
        sees(alice, "#d", ["alice", "bob"])
        before = [bob.say("#d", f"before {i}")["id"] for i in range(3)]
        assert ids(alice.messages("#d", 3)) == before
        fill(fs / "filler")
        during = [bob.say("#d", f"during {i}")["id"] for i in range(5)]  # b stores them
        assert "cannot store" in alice.wait_type("status", cluster="down")["message"]
        refused = alice.call({"type": "msg", "room": "#d", "text": "lost"})
        assert refused["code"] == "storage_unavailable"
        os.remove(fs / "filler")  # space returns: the host reads again what it missed
        alice.wait_type("status", cluster="up", timeout=15)
        after = alice.say("#d", "after")["id"]
        got = counted(alice, "#d")
        wait_until(lambda: after in got(), message="alice to get her own message")
        assert got() == [*before, *during, after]  # each once, in order
        page = alice.call({"type": "history", "room": "#d", "after": before[-1]})
        assert ids(page["messages"]) == [*during, after]
        a.stop()


def test_cluster_nick_given_away_while_a_host_was_cut_off_renames_its_session(
        cluster: Cluster) -> None:
    """A host cut off past its lease (its uplink stopped): another host reaps it and gives
    a nick of its sessions away; when it comes back its session is renamed and told."""
    a, b = cluster.host("a", lease=2.0), cluster.host("b", lease=2.0)
    alice, bob = cluster.connect(a, "alice"), cluster.connect(b, "bob")
    alice.join("#k")
    bob.join("#k")
    sees(bob, "#k", ["alice", "bob"])
    match = re.search(r"cluster uplink: pid (\d+) \(node a\)",
                      a.wait_for_log(r"cluster uplink: pid \d+ \(node a\)"))
    assert match is not None
    uplink = int(match.group(1))
    mark = b.mark()
    os.kill(uplink, signal.SIGSTOP)
    try:
        b.wait_for_log("node a stopped renewing its lease: reaped", start=mark, timeout=15)
        other = Client(b.host, b.port)
        cluster.clients.append(other)
        assert other.hello("alice")["nick"] == "alice"
    finally:
        os.kill(uplink, signal.SIGCONT)
    status = alice.wait_type("status", cluster="renamed", timeout=15)
    assert "you are now alice_" in status["message"]
    renamed = alice.wait_type("nick")
    assert (renamed["old"], renamed["new"], "room" in renamed) == ("alice", "alice_", False)
    sees(bob, "#k", ["alice_", "bob"])
    ack = bob.call({"type": "msg", "to": "alice", "text": "which one?"})
    assert other.wait_type("message", to="alice")["id"] == ack["id"]
    assert alice.call({"type": "nick", "nick": "alice"})["code"] == "nick_taken"


def test_cluster_host_upgrade_is_not_seen_by_anyone(cluster: Cluster) -> None:
    """`chatd upgrade` of a host under chat: it goes on as the same host (its incarnation
    handed over), so nobody sees its users leave or the others join again, and every
    message sent meanwhile is acknowledged and delivered once."""
    a, b = cluster.host("a"), cluster.host("b")
    alice, bob = cluster.connect(a, "alice"), cluster.connect(b, "bob")
    alice.join("#u")
    bob.join("#u")
    sees(alice, "#u", ["alice", "bob"])
    sees(bob, "#u", ["alice", "bob"])
    for client in (alice, bob):
        client.sync()
    before = {client.nick: len(client.received) for client in (alice, bob)}
    mark = a.mark()
    labels = [alice.request({"type": "msg", "room": "#u", "text": f"a{i}"})
              for i in range(20)]
    done = subprocess.run([sys.executable, "-m", "chatd", "upgrade", "--data-dir",
                           str(a.data_dir), "--timeout", "60"], capture_output=True,
                          text=True, timeout=70)
    assert done.returncode == 0, done.stderr
    a.wait_for_log(r"took over \d+ sessions", start=mark)
    acked = [alice.reply(label, timeout=30)["id"] for label in labels]
    acked += [alice.say("#u", f"after {i}")["id"] for i in range(5)]
    acked += [bob.say("#u", f"from b {i}")["id"] for i in range(5)]
    for client in (alice, bob):
        got = counted(client, "#u")
        wait_until(lambda got=got: set(acked) <= set(got()), message="every message")
        assert got() == sorted(acked)
    sees(bob, "#u", ["alice", "bob"])
    for client in (alice, bob):
        client.sync()
        assert not [f for f in client.received[before[client.nick]:]
                    if f.get("type") in ("join", "part", "quit", "status")]
    assert not any("left the cluster" in line for line in a.lines[mark:])


def test_cluster_account_with_two_sessions_on_a_host_stays_while_one_remains(
        cluster: Cluster) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    erin = cluster.connect(a, "erin")
    first = cluster.connect(b, "alice")
    assert register(first, "alice", "correct horse")["type"] == "registered"
    second = cluster.connect(b, None)
    logged_in(second, "alice", "correct horse")
    for client in (erin, first, second):
        client.join("#two")
    sees(erin, "#two", ["alice", "erin"])
    second.call({"type": "part", "room": "#two"})
    second.close()
    erin.say("#two", "still there?")  # (after anything the part or the close sent)
    assert first.messages("#two", 1)[0]["text"] == "still there?"
    erin.sync()
    assert not erin.pending("part") and not erin.pending("quit")
    sees(erin, "#two", ["alice", "erin"])
    c = cluster.host("c")  # a new host learns the membership from Redis's copy
    sees(cluster.connect(c, "carl"), "#two", ["alice", "erin"])


def test_cluster_accounts_are_offered_again_to_a_redis_that_lost_them(
        cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    alice = cluster.connect(a, "alice")
    assert register(alice, "alice", "correct horse")["type"] == "registered"
    alice.close()
    bob = cluster.connect(b, "bob")
    port = cluster.redis.port
    cluster.redis.stop()
    cluster.redis = RedisServer(tmp_path / "redis-empty", port, persist=False).start()
    bob.wait_type("status", cluster="gap", timeout=15)
    # the hosts offer their accounts back: a message to the account (nobody online)
    # is accepted again, and waits for it
    ack = wait_until(lambda: (r := bob.call({"type": "msg", "to": "alice", "text": "hi"}))
                     ["type"] == "ack" and r, timeout=15, message="the account back in Redis")
    back = cluster.connect(b, None)
    logged_in(back, "alice", "correct horse")
    assert [m["id"] for m in direct_after(back, 0)] == [ack["id"]]


def admin_json(server: ServerProcess, *args: str) -> dict[str, Any]:
    """`chatd admin --json` on one host, as an administrator runs it."""
    done = subprocess.run([sys.executable, "-m", "chatd", "admin", "--data-dir",
                           str(server.data_dir), "--json", *args], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_cluster_server_ban_made_on_one_host_holds_on_every_host(cluster: Cluster) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    troll = cluster.connect(b, "troll")
    made = admin_json(a, "ban", "--nick", "Troll*", "--reason", "spam")
    assert made["cluster"] is True
    assert troll.wait_type("error", code="server_banned")["fatal"] is True
    again = Client(b.host, b.port)
    cluster.clients.append(again)
    again.request({"type": "hello", "version": 1, "nick": "trolly"})
    assert again.wait_type("error", code="server_banned")["fatal"] is True
    (listed,) = admin_json(b, "bans")["bans"]
    assert (listed["target"], listed["reason"]) == ("Troll*", "spam")
    assert "on node a" in listed["by"]
    assert admin_json(a, "unban", str(made["ban"]["id"]))["cluster"] is True
    wait_until(lambda: not admin_json(b, "bans")["bans"], message="the ban lifted on b")
    assert cluster.connect(b, "trolly").nick == "trolly"


def test_cluster_account_events_reach_other_hosts(cluster: Cluster) -> None:
    """protocol.md §12.6 across hosts: a registration after welcome is an `account` event
    to those sharing a room with it, and its joins name its account."""
    a, b = cluster.host("a"), cluster.host("b")
    alice, dave = cluster.connect(a, "alice"), cluster.connect(b, "dave")
    alice.join("#ev")
    dave.join("#ev")
    sees(alice, "#ev", ["alice", "dave"])
    sees(dave, "#ev", ["alice", "dave"])
    assert register(alice, "alice", "correct horse")["type"] == "registered"
    event = dave.wait_type("account", nick="alice")
    assert event["account"] == "alice"
    dave.join("#ev2")
    alice.join("#ev2")
    assert dave.wait_type("join", room="#ev2", nick="alice")["account"] == "alice"
