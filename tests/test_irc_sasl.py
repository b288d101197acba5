"""SASL (chatd/irc/sasl.py) in the IRC front end alone: AUTHENTICATE lines in, native
`login`/`auth` out; the native side (protocol.md §12) is played by hand here."""

from __future__ import annotations

import base64

from test_irc_frontend import answer, out, send, sent, welcome_frame

from chatd.config import Config, parse_settings
from chatd.irc import IrcFrontEnd
from chatd.irc.sasl import PIECE


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def negotiating(tls: bool = False) -> IrcFrontEnd:
    config = Config().with_values(parse_settings({"rate": {"cmd_burst": 100}}))
    fe = IrcFrontEnd(config, 0.0, tls=tls)
    send(fe, "CAP LS 302")
    ls = out(fe)[0]
    assert ("sasl=PLAIN,SCRAM-SHA-256" if tls else "sasl=SCRAM-SHA-256") in ls, ls
    send(fe, "CAP REQ :sasl", "NICK alice", "USER u 0 * :r")
    assert out(fe) == [":chatd CAP * ACK :sasl"]
    return fe


def test_plain_over_tls_logs_in_before_registration() -> None:
    fe = negotiating(tls=True)
    send(fe, "AUTHENTICATE PLAIN")
    assert out(fe) == [":chatd AUTHENTICATE +"]
    response = b64(b"\0alice\0secret password")
    send(fe, f"AUTHENTICATE {response}")
    (login,) = sent(fe)
    assert (login["type"], login["mechanism"], login["data"]) == (
        "login", "PLAIN", b"\0alice\0secret password")
    answer(fe, {"type": "logged_in", "account": "Alice", "nick": "Alice",
                "label": login["label"]})
    assert out(fe) == [":chatd 900 * Alice!~u@chatd Alice :You are now logged in as Alice",
                       ":chatd 903 * :SASL authentication successful"]
    send(fe, "AUTHENTICATE PLAIN")
    assert out(fe)[0].split()[1] == "907"
    send(fe, "CAP END")  # then the hello: the welcome names the account's nick
    (hello,) = sent(fe)
    answer(fe, welcome_frame(hello["label"], "Alice"))
    assert out(fe)[0].startswith(":chatd 001 Alice ")


def test_scram_takes_two_round_trips_and_the_final_acknowledgement() -> None:
    fe = negotiating()
    send(fe, "AUTHENTICATE SCRAM-SHA-256")
    assert out(fe) == [":chatd AUTHENTICATE +"]
    send(fe, f"AUTHENTICATE {b64(b'n,,n=alice,r=abc')}")
    (login,) = sent(fe)
    assert (login["mechanism"], login["data"]) == ("SCRAM-SHA-256", b"n,,n=alice,r=abc")
    challenge = b"r=abcdef,s=c2FsdA==,i=300000"
    answer(fe, {"type": "auth", "data": challenge, "label": login["label"]})
    assert out(fe) == [f":chatd AUTHENTICATE {b64(challenge)}"]
    proof = b"c=biws,r=abcdef,p=" + b"x" * 500  # long: several 400-character pieces
    encoded = b64(proof)
    pieces = [encoded[i:i + PIECE] for i in range(0, len(encoded), PIECE)]
    for piece in pieces:
        send(fe, f"AUTHENTICATE {piece}")
    (auth,) = sent(fe)
    assert (auth["type"], auth["data"]) == ("auth", proof)
    answer(fe, {"type": "logged_in", "account": "alice", "nick": "alice", "data": b"v=sig",
                "label": auth["label"]})
    assert out(fe) == [f":chatd AUTHENTICATE {b64(b'v=sig')}"]
    send(fe, "AUTHENTICATE +")
    assert [x.split()[1] for x in out(fe)] == ["900", "903"]


def test_failures_abort_and_unknown_mechanisms() -> None:
    fe = negotiating()
    send(fe, "AUTHENTICATE PLAIN")  # not without TLS
    assert [x.split()[1] for x in out(fe)] == ["908", "904"]
    send(fe, "AUTHENTICATE SCRAM-SHA-256", "AUTHENTICATE *")
    assert [x.split()[1] for x in out(fe)[1:]] == ["906"]
    send(fe, "AUTHENTICATE SCRAM-SHA-256", f"AUTHENTICATE {b64(b'n,,n=bob,r=x')}")
    (login,) = sent(fe)
    answer(fe, {"type": "error", "code": "auth_failed", "message": "invalid credentials",
                "fatal": False, "label": login["label"]})
    assert out(fe)[-1] == ":chatd 904 * :SASL authentication failed: invalid credentials"
    send(fe, "AUTHENTICATE SCRAM-SHA-256", "AUTHENTICATE !!!notbase64")
    assert out(fe)[-1].split()[1] == "904" and sent(fe) == []
    send(fe, "AUTHENTICATE SCRAM-SHA-256", *[f"AUTHENTICATE {'A' * PIECE}"] * 14)
    assert out(fe)[-1].split()[1] == "905" and sent(fe) == []


def test_a_login_after_registration_renames_the_client() -> None:
    fe = negotiating()
    send(fe, "CAP END")
    (hello,) = sent(fe)
    answer(fe, welcome_frame(hello["label"], "alice"))
    out(fe)
    send(fe, "AUTHENTICATE SCRAM-SHA-256", f"AUTHENTICATE {b64(b'n,,n=Sasha,r=x')}")
    (login,) = sent(fe)
    out(fe)
    answer(fe, {"type": "auth", "data": b"r=xy,s=c2FsdA==,i=4096", "label": login["label"]})
    out(fe)
    send(fe, f"AUTHENTICATE {b64(b'c=biws,r=xy,p=proof')}")
    (auth,) = sent(fe)
    # §12.6: a guest that logs in after the welcome gets its nick event first.
    answer(fe, {"type": "nick", "old": "alice", "new": "Sasha", "ts": 1},
           {"type": "logged_in", "account": "Sasha", "nick": "Sasha", "data": b"v=sig",
            "label": auth["label"]})
    assert out(fe)[0] == ":alice!~u@chatd NICK :Sasha" and fe.nick == "Sasha"
    send(fe, "AUTHENTICATE +")
    assert [x.split()[1] for x in out(fe)] == ["900", "903"]
