"""register, login and auth in the broker (sans I/O), answered by the real auth service
(chatd.authservice on a real accounts database) the way the parent relays them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_broker import Harness

from chatd.accounts import AccountStore
from chatd.authservice import AuthService
from chatd.sasl import ClientScram, plain_message, register_verifier

ITERATIONS = 4096
PASSWORD = "open sesame 42"


class AuthHarness(Harness):
    def __init__(self, path: Path, **settings: Any) -> None:
        super().__init__(accounts={"iterations": ITERATIONS}, **settings)
        self.service = AuthService(AccountStore(path, ITERATIONS))
        self.broker.logins.available = True
        self.held: list[Any] = []  # helper requests not answered yet (hold=True)
        self.hold = False
        self.ips: dict[int, str] = {}

    def _collect(self) -> None:
        self.held += self.broker.logins.take()
        if not self.hold:
            self.answer()
        super()._collect()

    def answer(self) -> None:
        """The helper answers what waits, as the parent relays it (address added)."""
        while self.held:
            token, op, fields = self.held.pop(0)
            fields = {**fields, "ip": self.ips.get(token[0], "192.0.2.1")}
            reply = self.service.handle({"id": 1, "op": op, **fields}, 0.0, self.now)
            self.broker.logins.done(token, reply, self.now)
            self.held += self.broker.logins.take()
        super()._collect()

    def register(self, sid: int, name: str) -> dict[str, Any]:
        self.send(sid, type="register", account=name, label="r",
                  verifier=register_verifier(PASSWORD, ITERATIONS))
        return self.take(sid)[-1]

    def login(self, sid: int, name: str, password: str = PASSWORD) -> dict[str, Any]:
        scram = ClientScram(name, password)
        self.send(sid, type="login", mechanism="SCRAM-SHA-256", data=scram.first())
        (challenge,) = self.take(sid)
        if challenge["type"] != "auth":
            return challenge
        self.send(sid, type="auth", data=scram.final(challenge["data"]))
        reply = self.take(sid)[-1]
        if reply["type"] == "logged_in":
            scram.verify(reply["data"])
        return reply


@pytest.fixture
def h(tmp_path: Path) -> AuthHarness:
    return AuthHarness(tmp_path / "accounts.sqlite3")


def test_login_before_hello_makes_the_welcome_the_account_s(h: AuthHarness) -> None:
    h.connect(1, "ann")
    assert h.register(1, "ann") == {"type": "registered", "account": "ann", "nick": "ann",
                                    "label": "r"}
    h.connect(2)
    assert h.login(2, "ann")["type"] == "logged_in"
    h.send(2, type="hello", version=1, nick="whatever")
    (welcome,) = h.take(2)
    assert (welcome["nick"], welcome["account"]) == ("ann", "ann")
    assert welcome["auth"] == {"mechanisms": ["SCRAM-SHA-256"], "iterations": ITERATIONS}
    assert h.broker.members[2].account == "ann"
    # Every login request ends with DONE, so the session releases what it held back.
    assert h.controls[2].count({"c": "done"}) == 2


def test_owned_nicks_are_refused_to_guests_and_locked_for_the_owner(h: AuthHarness) -> None:
    h.connect(1, "Bea")
    h.register(1, "Bea")
    h.connect(2)
    h.send(2, type="hello", version=1, nick="bea")
    assert h.take(2)[0]["code"] == "nick_taken"  # held by the session
    h.send(1, type="quit")
    h.broker.detach(1, "gone", h.now)
    h.send(2, type="hello", version=1, nick="B3a".replace("3", "e"))
    assert h.take(2)[0]["code"] == "nick_owned"
    h.send(2, type="hello", version=1, nick="guest")
    h.take(2)
    h.send(2, type="nick", nick="BEA")
    assert h.take(2)[0]["code"] == "nick_owned"
    assert h.login(2, "Bea")["type"] == "logged_in"
    assert h.broker.members[2].nick == "Bea"
    h.send(2, type="nick", nick="other")
    assert h.take(2)[0]["code"] == "nick_locked"


def test_a_register_holds_its_nick_until_answered(h: AuthHarness) -> None:
    h.hold = True
    h.connect(1, "cy")
    h.send(1, type="register", account="cy2",
           verifier=register_verifier(PASSWORD, ITERATIONS))
    h.connect(2)
    h.send(2, type="hello", version=1, nick="CY2")
    assert h.take(2)[0]["code"] == "nick_taken"
    h.answer()
    nick, registered = h.take(1)[-2:]
    assert registered["type"] == "registered"
    assert (nick["type"], nick["old"], nick["new"]) == ("nick", "cy", "cy2")
    h.broker.detach(1, "gone", h.now)
    h.send(2, type="hello", version=1, nick="CY2")
    assert h.take(2)[0]["code"] == "nick_owned"


def test_plain_needs_tls_and_unknown_mechanisms_list_what_is_offered(h: AuthHarness) -> None:
    h.connect(1)
    h.send(1, type="login", mechanism="PLAIN", data=plain_message("x", PASSWORD))
    assert h.take(1)[0]["code"] == "tls_required"
    h.send(1, type="login", mechanism="CRAM-MD5", data=b"")
    err = h.take(1)[0]
    assert (err["code"], err["mechanisms"]) == ("invalid_mechanism", ["SCRAM-SHA-256"])
    h.send(1, type="register", account="dee", password=PASSWORD)
    assert h.take(1)[0]["code"] == "tls_required"
    h.send(1, type="auth", data=b"c=biws")
    assert h.take(1)[0]["code"] == "no_exchange"


def test_a_lost_helper_fails_what_it_had_and_refuses_until_back(h: AuthHarness) -> None:
    h.hold = True
    h.connect(1, "eve")
    h.send(1, type="register", account="eve", verifier=register_verifier(PASSWORD, ITERATIONS))
    assert h.take(1) == []
    h.held.clear()
    h.broker.logins.available = False
    h.broker.logins.lost()
    h.answer()
    (err,) = h.take(1)
    assert err["code"] == "auth_unavailable"
    assert h.controls[1][-1] == {"c": "done"}
    h.send(1, type="login", mechanism="SCRAM-SHA-256", data=b"n,,n=eve,r=abc")
    assert h.take(1)[0]["code"] == "auth_unavailable"
    # The nick it was registering is free again.
    h.connect(2, "eve2")
    assert h.broker.logins.reserved == {}


@pytest.mark.parametrize("bad", [{"ok": True, "account": "not a nick!"},
                                 {"ok": False, "code": "flood"}, {"ok": "yes"}, "junk",
                                 {"ok": True, "data": "not bin"}, {"ok": True}])
def test_a_broken_helper_reply_fails_only_that_request(h: AuthHarness, bad: Any) -> None:
    h.hold = True
    h.connect(1, "fay")
    h.send(1, type="login", mechanism="SCRAM-SHA-256", data=b"n,,n=fay,r=abc")
    ((token, _op, _fields),) = h.held
    h.held.clear()
    h.broker.logins.done(token, bad, h.now)
    h.answer()
    (err,) = h.take(1)
    assert err["code"] == "auth_unavailable"
    assert h.broker.members[1].account is None and h.controls[1][-1] == {"c": "done"}


def test_direct_messages_are_the_account_s_not_the_nick_s(h: AuthHarness) -> None:
    h.connect(1, "gus")
    h.register(1, "gus")
    h.connect(2, "hal")
    h.send(2, type="msg", to="gus", text="for gus only")
    assert h.take(1)[-1]["text"] == "for gus only"
    h.send(1, type="quit")
    h.broker.detach(1, "gone", h.now)
    h.send(2, type="msg", to="gus", text="while away")
    assert h.take(2)[0]["type"] == "ack"  # accepted, waits in the account's history
    h.connect(3, "mallory")
    h.send(3, type="history", direct=True, after=0)
    assert h.take(3)[0]["messages"] == []
    h.send(3, type="history", **{"with": "hal"})
    assert h.take(3)[0]["messages"] == []
    h.connect(4)
    h.login(4, "gus")
    h.send(4, type="hello", version=1, nick="gus")
    h.take(4)
    h.send(4, type="history", direct=True, after=0)
    page = h.take(4)[0]
    assert [m["text"] for m in page["messages"]] == ["for gus only", "while away"]
    assert page["direct"] is True and page["more"] is False
    h.send(4, type="history", **{"with": "hal"})
    assert len(h.take(4)[0]["messages"]) == 2


def test_a_server_ban_on_an_account_ends_its_login(h: AuthHarness) -> None:
    h.connect(1, "zed")
    h.register(1, "zed")
    h.broker.screen = lambda nick, account: "banned: spam" if account == "zed" else None
    h.connect(2, "guest2")
    scram = ClientScram("zed", PASSWORD)
    h.send(2, type="login", mechanism="SCRAM-SHA-256", data=scram.first())
    (challenge,) = h.take(2)
    h.send(2, type="auth", data=scram.final(challenge["data"]))
    assert h.take(2) == []  # no logged_in: the session is ended instead
    assert h.controls[2][-2:] == [{"c": "close", "code": "server_banned",
                                   "message": "banned: spam"}, {"c": "done"}]
    assert h.broker.members[2].gone


def test_who_is_logged_in_reaches_the_rooms(h: AuthHarness) -> None:
    """protocol.md §12.6: messages and joins name the sender's account, and a login after
    welcome is an `account` event to each session sharing a room, once."""
    h.connect(1, "Ivy")
    h.register(1, "Ivy")
    h.connect(2, "jo")
    for room in ("#a", "#b"):
        h.send(2, type="join", room=room)
        h.send(1, type="join", room=room)
    h.take(1)
    assert [(f["type"], f.get("account")) for f in h.take(2) if f["type"] == "join"] == \
        [("join", "Ivy"), ("join", "Ivy")]
    h.send(1, type="msg", room="#a", text="signed")
    (msg,) = [f for f in h.take(2) if f["type"] == "message"]
    assert msg["account"] == "Ivy"
    h.send(2, type="msg", room="#a", text="a guest's")
    assert "account" not in h.take(1)[-1]
    h.send(1, type="history", room="#a", limit=5)
    assert [m.get("account") for m in h.take(1)[-1]["messages"]] == ["Ivy", None]
    h.connect(3, "kim")
    h.send(3, type="join", room="#a")
    h.register(3, "Kim")  # a guest in a shared room logs in (its nick respelt)
    assert [f["type"] for f in h.take(1)[-2:]] == ["nick", "account"]
    frames = h.take(2)
    assert frames[-1] == {"type": "account", "nick": "Kim", "account": "Kim", "ts": h.now}
    assert [f["type"] for f in frames].count("account") == 1
