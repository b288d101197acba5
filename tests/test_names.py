"""Look-alike nicks are one nick (issue 8, section 5; protocol.md §3).

Unit and property tests of chatd.protocol.nick_key, and of its users: the broker (nick
uniqueness, direct messages, direct-message history), the store (history kept under the
key, older databases re-keyed) and the client (mentions).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cores import answer_reads
from hypothesis import given, settings
from hypothesis import strategies as st

from chat_client.model import Model
from chatd import protocol as p
from chatd.broker import Broker
from chatd.config import Config
from chatd.protocol import nick_key
from chatd.store import Store

PROPS = settings(max_examples=300, deadline=None)
# Each class: characters a reader can take for one another (TR39), closed under case.
LOOK_ALIKE = ("0oO", "1iIlL|")

nicks = st.from_regex(p.NICK_RE, fullmatch=True)


def vary(draw: st.DrawFn, nick: str) -> str:
    """A spelling of `nick` a reader could take for it: any case, any look-alike."""
    out = []
    for ch in nick:
        cls = next((c for c in LOOK_ALIKE if ch in c), ch.lower() + ch.upper())
        out.append(draw(st.sampled_from(cls)))
    return "".join(out)


# ---- the nick key ----

@pytest.mark.parametrize("twin", ["aIice", "a1ice", "a|ice", "ALICE", "AL1CE", "aiice",
                                  "Alice"])
def test_look_alikes_of_alice_have_her_key(twin: str) -> None:
    assert nick_key(twin) == nick_key("alice")


@pytest.mark.parametrize(("one", "two"), [("bob", "b0b"), ("BOB", "B0b"), ("mary", "rnary"),
                                          ("MARY", "RNary"), ("jim", "jirn"), ("c0de", "CODE")])
def test_other_look_alikes_share_a_key(one: str, two: str) -> None:
    assert nick_key(one) == nick_key(two)


@pytest.mark.parametrize(("one", "two"), [("alice", "alise"), ("bob", "bab"),
                                          ("clare", "dare"), ("vvill", "will"), ("a_b", "a-b"),
                                          ("a[b]", "a{b}"), ("n", "m")])
def test_different_nicks_keep_different_keys(one: str, two: str) -> None:
    # Only TR39's confusables are folded: cl/d, vv/w, _/- and brackets stay apart.
    assert nick_key(one) != nick_key(two)


@st.composite
def nick_and_twin(draw: st.DrawFn) -> tuple[str, str]:
    nick = draw(nicks)
    return nick, vary(draw, nick)


@PROPS
@given(nick_and_twin())
def test_any_case_or_look_alike_spelling_has_the_same_key(pair: tuple[str, str]) -> None:
    nick, twin = pair
    assert nick_key(twin) == nick_key(nick)


@PROPS
@given(nicks)
def test_the_key_is_a_fixed_point_without_confusable_characters(nick: str) -> None:
    key = nick_key(nick)
    assert nick_key(key) == key
    assert not set(key) & set("ABCDEFGHIJKLMNOPQRSTUVWXYZ01i|m")


@PROPS
@given(nicks, nicks)
def test_keys_differ_unless_the_letters_are_look_alikes(a: str, b: str) -> None:
    """Equal keys only come from case, the look-alike classes and rn/m."""
    def canon(nick: str) -> str:
        out = nick.lower().replace("m", "rn")
        for cls in LOOK_ALIKE:
            for ch in cls:
                out = out.replace(ch.lower(), cls[-1].lower())
        return out
    assert (nick_key(a) == nick_key(b)) == (canon(a) == canon(b))


# ---- the broker decides by the key ----

class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.store = Store(tmp_path / "h.sqlite3")
        self.broker = Broker(self.store, Config())
        self.reader = Store(tmp_path / "h.sqlite3", readonly=True)
        self.now = 1000

    def send(self, sid: int, **req: Any) -> list[dict[str, Any]]:
        self.broker.receive(sid, p.pack(req)[4:], self.now)
        answer_reads(self.broker, self.reader)  # (and commits)
        return self.take(sid)

    def take(self, sid: int) -> list[dict[str, Any]]:
        items = self.broker.outbox.pop(sid, [])
        return [p.decode_payload(i[4:]) for i in items if isinstance(i, bytes)]

    def connect(self, sid: int, nick: str) -> dict[str, Any]:
        self.broker.attach(sid, f"sess{sid}")
        return self.send(sid, type="hello", version=1, nick=nick)[0]


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_look_alike_of_a_connected_nick_is_taken(h: Harness) -> None:
    assert h.connect(1, "alice")["type"] == "welcome"
    assert h.connect(2, "bob")["type"] == "welcome"
    for sid, twin in enumerate(("aIice", "a1ice", "a|ice", "ALICE", "b0b", "B0B"), start=3):
        err = h.connect(sid, twin)
        assert (err["type"], err["code"]) == ("error", "nick_taken"), (twin, err)
    err = h.send(2, type="nick", nick="a1ice")[0]  # renaming onto a look-alike: taken too
    assert err["code"] == "nick_taken", err


def test_a_look_alike_of_your_own_nick_is_a_rename(h: Harness) -> None:
    h.connect(1, "bob")
    h.connect(2, "carol")
    assert h.send(1, type="nick", nick="b0b")[0] == {"type": "nick", "old": "bob",
                                                      "new": "b0b", "ts": h.now}
    assert h.connect(3, "BOB")["code"] == "nick_taken"  # still one nick, now spelt b0b


def test_a_direct_message_to_a_look_alike_reaches_the_one_holder(h: Harness) -> None:
    h.connect(1, "alice")
    h.connect(2, "bob")
    ack = h.send(2, type="msg", to="a1ice", text="hi")[0]
    assert (ack["type"], ack["to"]) == ("ack", "alice")
    got = h.take(1)
    assert [(m["to"], m["from"], m["text"]) for m in got] == [("alice", "bob", "hi")]
    # ... and its history is the same conversation, whatever the spelling asked for.
    for spelling in ("alice", "aIice", "A1ICE"):
        hist = h.send(2, type="history", **{"with": spelling})[0]
        assert [m["id"] for m in hist["messages"]] == [ack["id"]], spelling
        assert hist["with"] == spelling
    hist = h.send(1, type="history", **{"with": "b0b"})[0]
    assert [m["id"] for m in hist["messages"]] == [ack["id"]]


def test_direct_messages_stored_under_the_old_key_are_rekeyed(tmp_path: Path) -> None:
    """A database written before look-alikes were one nick (dm = plain lower case) keeps
    its direct-message history: the store re-keys it once, at open."""
    path = tmp_path / "old.sqlite3"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 0")
    db.executemany("INSERT INTO messages (ts, dm, sender, target, text) VALUES (?, ?, ?, ?, ?)",
                   [(1, "alice mike", "Mike", "Alice", "one"),
                    (2, "alice mike", "alice", "mike", "two")])
    db.commit()
    db.close()
    store = Store(path)
    broker = Broker(store, Config())
    broker.attach(1, "s1")
    broker.receive(1, p.pack({"type": "hello", "version": 1, "nick": "a1ice"})[4:], 5)
    broker.receive(1, p.pack({"type": "history", "with": "rnike"})[4:], 5)
    answer_reads(broker, Store(path, readonly=True))
    frames = [p.decode_payload(i[4:]) for i in broker.outbox[1] if isinstance(i, bytes)]
    assert [m["text"] for m in frames[-1]["messages"]] == ["one", "two"]
    store.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] >= 1


# ---- the client ----

@pytest.mark.parametrize(("text", "mentioned"), [
    ("hi alice", True), ("a1ice: look", True), ("AIICE!", True), ("hey @aIice", True),
    ("malice", False), ("alice_", False), ("al ice", False)])
def test_a_look_alike_of_my_nick_is_a_mention(text: str, mentioned: bool) -> None:
    assert Model("alice").mentions_me(text) is mentioned
