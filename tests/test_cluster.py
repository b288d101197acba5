"""ClusterBroker without processes: two hosts' brokers joined by a small fake of the
uplink and Redis (the scripts' rules in a few lines of Python). The real thing, a real
redis-server and real hosts, is tests/test_server_cluster.py."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
from cores import answer_reads, decode_all

from chatd.cluster import ClusterBroker
from chatd.config import Config, parse_settings
from chatd.logins import Asked
from chatd.protocol import nick_key
from chatd.store import Store

Frame = dict[str, Any]


class FakeRedis:
    """One sequence, one stream, nick owners; writes are carried out when run() is called
    (as the uplink would, a moment later), replies first, then the entries to every host."""

    def __init__(self) -> None:
        self.seq = 0
        self.events = itertools.count(1)
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.nicks: dict[str, str] = {}  # key -> node
        self.inbox: list[tuple[ClusterBroker, dict[str, Any]]] = []
        self.hosts: list[ClusterBroker] = []
        self.read: dict[str, int] = {}  # node -> entries delivered
        self.now = 5_000

    def join(self, node: str) -> ClusterBroker:
        values = parse_settings({"cluster": {"redis_url": "redis://fake/0", "node": node}})
        broker = ClusterBroker(Store(":memory:"), Config().with_values(values))
        broker.uplink = lambda msg: self.inbox.append((broker, msg))
        self.hosts.append(broker)
        self.read[node] = 0
        broker.uplink_said({"c": "up", "epoch": "e1", "lost": False, "point": "0-0",
                            "hosts": {}, "topics": {}, "accounts": []}, self.now)
        return broker

    def run(self, deliver: bool = True, replies: bool = True) -> None:
        while self.inbox:
            broker, msg = self.inbox.pop(0)
            if msg["c"] != "w":
                continue
            reply = self.write(broker.node, msg)
            if replies:
                broker.uplink_said({"c": "r", "w": msg["w"], "v": reply}, self.now)
        if deliver:
            self.deliver()

    def deliver(self) -> None:
        for broker in self.hosts:
            new = self.log[self.read[broker.node]:]
            self.read[broker.node] = len(self.log)
            if new:
                broker.uplink_said({"c": "x", "x": [list(e) for e in new]}, self.now)

    def entry(self, eid: str, kind: str, node: str, number: int, body: bytes,
              target: str = "") -> None:
        self.now += 1
        self.log.append((eid, {"k": kind.encode(), "n": node.encode(),
                               "r": str(number).encode(), "ts": str(self.now).encode(),
                               "d": body, "t": target.encode()}))

    def write(self, node: str, msg: dict[str, Any]) -> list[Any]:
        args = msg["a"]
        if msg["s"] == "msg":
            target = ""
            if args[0] == "d":
                if args[2] not in self.nicks:
                    return [0, 0, ""]
                target = next(h.nicks[args[2]].nick for h in self.hosts
                              if args[2] in h.nicks and h.nicks[args[2]].sid > 0)
            self.seq += 1
            self.entry(f"{self.seq}-0", args[0], node, msg["w"], args[1], target)
            return [self.seq, self.now, target]
        if msg["s"] == "nick":
            key, _new, oldkey, old = args[0], args[1], args[2], args[3]
            if self.nicks.get(key, node) != node:
                return [0]
            self.nicks[key] = node
            if old:
                if oldkey != key:
                    self.nicks.pop(oldkey, None)
                self.entry(f"{self.seq}-{next(self.events)}", "n", node, msg["w"], args[5])
            return [1]
        kind = args[0]
        if kind == "q":
            self.nicks.pop(args[3], None)
        self.entry(f"{self.seq}-{next(self.events)}", kind, node, msg["w"], args[1])
        return [1]


def frames(broker: ClusterBroker, sid: int) -> list[Frame]:
    out = broker.drain().get(sid, [])
    broker.outbox.clear()
    return decode_all(b"".join(x for x in out if isinstance(x, bytes)))


def hello(redis: FakeRedis, broker: ClusterBroker, sid: int, nick: str) -> Frame:
    broker.attach(sid, f"s{sid}")
    broker.receive(sid, msgpack.packb({"type": "hello", "version": 1, "nick": nick,
                                       "label": 1}), redis.now)
    redis.run()
    return frames(broker, sid)[-1]


def send(broker: ClusterBroker, sid: int, now: int, **req: Any) -> None:
    broker.receive(sid, msgpack.packb(req), now)


def two_hosts() -> tuple[FakeRedis, ClusterBroker, ClusterBroker]:
    redis = FakeRedis()
    a, b = redis.join("a"), redis.join("b")
    assert hello(redis, a, 1, "alice")["type"] == "welcome"
    assert hello(redis, b, 1, "bob")["type"] == "welcome"
    for host in (a, b):
        send(host, 1, redis.now, type="join", room="#x", label=2)
        redis.run()
        answer_reads(host)  # the join's history, as the history reader would
    frames(a, 1)
    frames(b, 1)
    return redis, a, b


def test_a_message_is_acknowledged_and_delivered_only_once_redis_has_it() -> None:
    redis, a, b = two_hosts()
    send(a, 1, redis.now, type="msg", room="#x", text="hi", label=7)
    assert frames(a, 1) == []  # nothing before Redis answers
    redis.run()
    ack, mine = frames(a, 1)
    assert ack["type"] == "ack" and ack["label"] == 7 and ack["id"] == 1
    assert mine == {**mine, "type": "message", "id": 1, "from": "alice", "text": "hi"}
    (theirs,) = frames(b, 1)
    assert theirs == mine
    assert a.store.last_id() == b.store.last_id() == 1  # each host's copy


def test_the_ack_comes_before_the_message_when_the_stream_is_faster() -> None:
    redis, a, b = two_hosts()
    send(a, 1, redis.now, type="msg", room="#x", text="hi", label=7)
    redis.run(replies=False)  # the stream entry arrives before the script's reply
    ack, mine = frames(a, 1)
    assert (ack["type"], ack["id"], mine["type"], mine["id"]) == ("ack", 1, "message", 1)


def test_other_hosts_members_are_in_who_rooms_and_nick_lookups() -> None:
    redis, a, b = two_hosts()
    send(b, 1, redis.now, type="who", room="#x", label=3)
    assert frames(b, 1)[-1]["members"] == ["alice", "bob"]
    assert nick_key("alice") in b.nicks and b.nicks[nick_key("alice")].sid < 0
    assert hello(redis, b, 2, "Alice")["code"] == "nick_taken"
    send(a, 1, redis.now, type="nick", nick="ally", label=4)
    redis.run()
    assert frames(b, 1)[-1] == {"type": "nick", "room": "#x", "old": "alice", "new": "ally",
                                "ts": redis.now}
    send(a, 1, redis.now, type="quit", reason="bye")
    redis.run()
    assert frames(b, 1)[-1]["type"] == "quit"
    send(b, 1, redis.now, type="who", room="#x", label=5)
    assert frames(b, 1)[-1]["members"] == ["bob"]
    assert hello(redis, b, 3, "ally")["type"] == "welcome"


def test_a_direct_message_reaches_another_host() -> None:
    redis, a, b = two_hosts()
    send(a, 1, redis.now, type="msg", to="BOB", text="psst", label=9)
    redis.run()
    assert [f["type"] for f in frames(a, 1)] == ["ack", "message"]
    (got,) = frames(b, 1)
    assert (got["to"], got["from"], got["text"]) == ("bob", "alice", "psst")
    send(a, 1, redis.now, type="msg", to="nobody", text="?", label=10)
    redis.run()
    assert frames(a, 1)[-1]["code"] == "no_such_nick"


def test_without_redis_messages_are_refused_and_sessions_told() -> None:
    redis, a, _b = two_hosts()
    a.uplink_said({"c": "down", "e": "Connection refused"}, redis.now)
    (status,) = frames(a, 1)
    assert status["type"] == "status" and status["cluster"] == "down"
    send(a, 1, redis.now, type="msg", room="#x", text="lost?", label=11)
    refused = frames(a, 1)[-1]
    assert (refused["code"], refused["label"]) == ("storage_unavailable", 11)
    assert not redis.inbox
    a.uplink_said({"c": "up", "epoch": "e1", "lost": False, "point": "0-0",
                   "hosts": {"b": {"bob": "#x"}}, "topics": {}, "accounts": []},
                   redis.now)
    assert frames(a, 1)[-1]["cluster"] == "up"
    assert redis.inbox[-1][1]["c"] == "state"  # this host's sessions, written again


def test_a_bad_entry_costs_that_entry_only_and_a_gap_is_told() -> None:
    redis, a, b = two_hosts()
    redis.log.append(("1-0", {"k": b"m", "n": b"b", "r": b"1", "ts": b"1", "d": b"\xc1"}))
    redis.seq = 1
    send(b, 1, redis.now, type="msg", room="#x", text="fine", label=2)
    redis.run()
    assert [f["text"] for f in frames(a, 1)] == ["fine"]
    redis.seq += 5  # messages Redis no longer has
    send(b, 1, redis.now, type="msg", room="#x", text="after", label=3)
    redis.run()
    status, message = frames(a, 1)
    assert status["cluster"] == "gap" and "3 to 7" in status["message"]
    assert message["id"] == 8


def test_an_upgrade_hands_the_cluster_state_to_the_next_parent() -> None:
    """hand_over() -> take_over() (through msgpack, as the memfd carries it): the stream
    position, a write Redis has not answered (its ack comes to the new parent), the other
    hosts' members, and a registration in flight, which is told to try again."""
    redis, a, b = two_hosts()
    send(b, 1, redis.now, type="msg", room="#x", text="pending", label=8)
    b.share_account(b.members[1], "bob 1 4096 00 00 00", (Asked(1, "register", 9), None),
                    redis.now)
    state = msgpack.unpackb(msgpack.packb(b.hand_over(), use_bin_type=True))
    writes = [msg for _broker, msg in redis.inbox if _broker is b]
    redis.inbox.clear()
    values = parse_settings({"cluster": {"redis_url": "redis://fake/0", "node": "b"}})
    after = ClusterBroker(b.store, Config().with_values(values))  # (the same database)
    after.attach(1, "s1")
    member = after.members[1]
    member.nick, member.rooms = "bob", {"#x"}
    after.nicks[nick_key("bob")] = member
    after._open_room("#x").members[1] = member
    after.take_over(state)
    after.uplink = lambda msg: redis.inbox.append((after, msg))
    redis.hosts[redis.hosts.index(b)] = after
    assert [f["code"] for f in frames(after, 1)] == ["auth_unavailable"]
    send(after, 1, redis.now, type="who", room="#x", label=3)
    assert frames(after, 1)[-1]["members"] == ["alice", "bob"]  # none joined again
    for msg in writes:  # the new uplink sends again what was not answered
        if msg["s"] == "msg":
            redis.inbox.append((after, msg))
    redis.run()
    ack, message = frames(after, 1)
    assert (ack["type"], ack["label"], message["text"]) == ("ack", 8, "pending")
