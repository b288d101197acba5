"""The client's accounts logic sans I/O (chat_client/accounts.py): SCRAM before hello,
checked against the server side of chatd.sasl; `history direct` catch-up and its saved
point; /register's verifier."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from chat_client.accounts import LoginRefused
from chat_client.core import Core
from chat_client.store import ClientState, parse
from chatd.accounts import make_verifier
from chatd.protocol import nick_key
from chatd.sasl import ScramExchange

PASSWORD = "client side secret"


def scram_server(name: str, password: str, impostor: bool = False) -> ScramExchange:
    """The server side of SCRAM; an `impostor` checks proofs (it has StoredKey) but
    cannot sign (no ServerKey): what a stolen half of a verifier would give."""
    verifier = make_verifier(password, 4096)
    if impostor:
        verifier = replace(verifier, server_key=bytes(32))
    return ScramExchange(lambda _name: (verifier, True))


def log_in(core: Core, server: ScramExchange) -> list[dict[str, Any]]:
    """Answer the client's login as a server would; what it sends after logged_in."""
    core.connected()
    (login,) = core.take_outbox()
    assert login["type"] == "login" and login["mechanism"] == "SCRAM-SHA-256"
    core.receive({"type": "auth", "data": server.start(login["data"]), "label": login["label"]})
    (auth,) = core.take_outbox()
    name, final = server.finish(auth["data"])
    core.receive({"type": "logged_in", "account": name, "nick": name, "data": final,
                  "label": auth["label"]})
    return core.take_outbox()


def welcome(core: Core, hello: dict[str, Any], **extra: Any) -> list[dict[str, Any]]:
    core.receive({"type": "welcome", "version": 1, "nick": hello["nick"], "session": "s",
                  "label": hello["label"], "auth": {"mechanisms": ["SCRAM-SHA-256"],
                                                    "iterations": 4096}, **extra})
    return core.take_outbox()


def test_login_comes_before_hello_and_the_server_must_prove_itself() -> None:
    core = Core("x", [], account="ann", password=PASSWORD)
    (hello,) = log_in(core, scram_server("ann", PASSWORD))
    assert hello["type"] == "hello" and hello["nick"] == "ann"
    out = welcome(core, hello, account="ann")
    assert core.model.account == "ann"
    # A first login of an account fetches its direct messages from the start.
    direct = [f for f in out if f["type"] == "history"]
    assert direct == [{"type": "history", "direct": True, "after": 0,
                       "label": direct[0]["label"]}]
    # A server that cannot sign the exchange is refused: no hello goes to it.
    other = Core("x", [], account="ann", password=PASSWORD)
    assert log_in(other, scram_server("ann", PASSWORD, impostor=True)) == []
    assert isinstance(other.refused, LoginRefused) and not other.refused.retry


def test_a_wrong_password_stops_and_a_busy_service_is_waited_out() -> None:
    for code, retry in (("auth_failed", False), ("rate_limited", True),
                        ("auth_unavailable", True)):
        core = Core("x", [], account="bo", password=PASSWORD)
        core.connected()
        (login,) = core.take_outbox()
        core.receive({"type": "error", "code": code, "message": "no", "fatal": False,
                      "label": login["label"]})
        assert isinstance(core.refused, LoginRefused) and core.refused.retry is retry
        assert core.take_outbox() == []  # no hello as a guest with the account's nick


def test_direct_pages_fill_each_conversation_and_the_point_is_saved() -> None:
    core = Core("x", [], account="cy", password=PASSWORD)
    hello = log_in(core, scram_server("cy", PASSWORD))[0]
    (direct,) = [f for f in welcome(core, hello, account="cy") if f["type"] == "history"]

    def dm(mid: int, sender: str, to: str) -> dict[str, Any]:
        return {"type": "message", "id": mid, "ts": 1000 * mid, "from": sender, "to": to,
                "text": f"m{mid}"}
    core.receive({"type": "history", "direct": True, "more": True, "label": direct["label"],
                  "messages": [dm(3, "dee", "cy"), dm(5, "cy", "eve")]})
    (page,) = core.take_outbox()
    assert (page["after"], page["direct"]) == (5, True)
    core.receive({"type": "history", "direct": True, "more": False, "label": page["label"],
                  "messages": [dm(8, "new_peer", "cy")]})
    for peer, ids in (("dee", [3]), ("eve", [5]), ("new_peer", [8])):
        buf = core.model.get(nick_key(peer))
        assert buf is not None and [line.id for line in buf.lines if line.id] == ids
    core.receive(dm(9, "dee", "cy"))  # live, after the catch-up
    state = core.snapshot()
    assert state.direct == {"@cy": 9}
    # Saved and read back: the next start asks from there.
    again = parse({"direct": state.direct, "rooms": {}, "buffers": []})
    assert again.direct == {"@cy": 9}
    assert parse({"direct": {"@NOT A KEY": 3, "bob": "x"}}).direct == {}
    later = Core("x", [], ClientState(direct=again.direct), account="cy", password=PASSWORD)
    hello = log_in(later, scram_server("cy", PASSWORD))[0]
    (direct,) = [f for f in welcome(later, hello, account="cy") if f["type"] == "history"]
    assert direct["after"] == 9


def test_register_sends_a_verifier_never_the_password() -> None:
    core = Core("dot", [], password=PASSWORD)
    core.connected()
    (hello,) = core.take_outbox()
    welcome(core, hello)
    core.execute_line("/register")
    (frame,) = core.take_outbox()
    assert frame["type"] == "register" and frame["account"] == "dot"
    assert set(frame["verifier"]) == {"salt", "iterations", "stored_key", "server_key"}
    assert PASSWORD.encode() not in repr(frame).encode()
    core.execute_line("/register short")
    assert core.take_outbox() == []  # refused locally: under 8 characters
    assert "not registered" in core.model.cur.lines[-1].text


def test_a_guest_nick_s_point_starts_at_its_newest_dm_before_us() -> None:
    """A guest fetches nothing from before it held its nick (earlier holders' messages),
    but from then on misses nothing, across a reconnect under another nick too."""
    core = Core("dave", [])
    core.connected()
    (hello,) = core.take_outbox()
    (mark,) = [f for f in welcome(core, hello) if f["type"] == "history"]
    assert mark == {"type": "history", "direct": True, "limit": 1, "label": mark["label"]}
    old = {"type": "message", "id": 7, "ts": 7000, "from": "x", "to": "dave", "text": "old"}
    core.receive({"type": "history", "direct": True, "more": True, "label": mark["label"],
                  "messages": [old]})
    assert core.model.get("x") is None  # an earlier holder's: not shown
    assert core.snapshot().direct == {"dave": 7}
    core.disconnected("gone")
    # Reconnected as dave_ (dave still held by the old session), then dave again.
    core.connected()
    (hello,) = core.take_outbox()
    core.receive({"type": "welcome", "version": 1, "nick": "dave_", "session": "s2",
                  "label": hello["label"], "auth": {"iterations": 4096}})
    core.take_outbox()
    core.receive({"type": "nick", "old": "dave_", "new": "dave"})
    asks = [f for f in core.take_outbox() if f["type"] == "history" and f.get("direct")]
    assert [f.get("after") for f in asks] == [7]
