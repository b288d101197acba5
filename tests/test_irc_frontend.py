"""The IRC front end alone: IRC lines in, native requests out; native frames in, IRC
lines out. The native side is played by hand here (test_irc_e2e.py has the real one)."""

from __future__ import annotations

from typing import Any

import pytest
from cores import decode_all
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.config import Config, parse_settings
from chatd.irc import IrcFrontEnd, Line, parse, render
from chatd.irc.frontend import MAX_REPLIES, MAX_UNREAD
from chatd.irc.lines import MAX_LINE, body_size
from chatd.protocol import DEFAULT_LIMITS, pack

TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make(**settings: Any) -> IrcFrontEnd:
    return IrcFrontEnd(Config().with_values(parse_settings(settings)), 0.0)


def send(fe: IrcFrontEnd, *lines: str, now: float = 0.0) -> None:
    fe.receive_data("".join(f"{line}\r\n" for line in lines).encode(), now)


def sent(fe: IrcFrontEnd) -> list[dict[str, Any]]:
    frames = decode_all(b"".join(fe.to_session))
    fe.to_session.clear()
    return frames


def out(fe: IrcFrontEnd) -> list[str]:
    data = b"".join(fe.to_client)
    fe.to_client.clear()
    return [raw.decode() for raw in data.split(b"\r\n")[:-1]]


def answer(fe: IrcFrontEnd, *frames: dict[str, Any]) -> None:
    fe.receive_frames(b"".join(pack(f) for f in frames), 0.0)


def welcome_frame(label: int, nick: str = "alice", **limits: Any) -> dict[str, Any]:
    return {"type": "welcome", "version": 1, "server": "chatd", "session": "s", "nick": nick,
            "motd": "hi\nthere", "time": TS, "limits": {**DEFAULT_LIMITS, **limits},
            "label": label}


def registered(caps: str = "", nick: str = "alice") -> IrcFrontEnd:
    fe = make()
    if caps:
        send(fe, "CAP LS 302", f"CAP REQ :{caps}", f"NICK {nick}", "USER u 0 * :r", "CAP END")
    else:
        send(fe, f"NICK {nick}", "USER u 0 * :r")
    (hello,) = sent(fe)
    answer(fe, welcome_frame(hello["label"], nick))
    out(fe)
    return fe


def joined(fe: IrcFrontEnd, room: str = "#a", members: tuple[str, ...] = ("alice", "bob")
           ) -> None:
    send(fe, f"JOIN {room}")
    (join,) = sent(fe)
    answer(fe, {"type": "joined", "room": room, "topic": "", "members": list(members),
                "more": False, "label": join["label"]},
           {"type": "history", "room": room, "messages": [], "more": False,
            "label": join["label"]})
    out(fe)


def message(msg_id: int, text: str, sender: str = "bob", **where: Any) -> dict[str, Any]:
    return {"type": "message", "id": msg_id, "ts": TS, **(where or {"room": "#a"}),
            "from": sender, "text": text, "action": False}


# ---- registration ----

def test_registration_waits_for_cap_end_and_says_hello() -> None:
    fe = make()
    send(fe, "CAP LS 302", "NICK alice", "USER u 0 * :Real Name")
    assert sent(fe) == []
    assert out(fe)[0].startswith(":chatd CAP * LS :batch draft/chathistory draft/multiline=")
    send(fe, "CAP END")
    assert sent(fe) == [{"type": "hello", "version": 1, "nick": "alice", "client": "irc",
                         "label": 1}]


def test_isupport_is_built_from_the_welcome_limits() -> None:
    fe = make()
    send(fe, "NICK alice", "USER u 0 * :r")
    (hello,) = sent(fe)
    answer(fe, welcome_frame(hello["label"], max_rooms=7, history_page=33, max_text=900))
    lines = out(fe)
    assert [parse(x.encode()).command for x in lines][:5] == ["001", "002", "003", "004", "005"]
    tokens = " ".join(x for x in lines if " 005 " in x).split()
    for token in ("CHANLIMIT=#:7", "CHATHISTORY=33", "CASEMAPPING=ascii", "NICKLEN=30",
                  "CHANNELLEN=50", "TOPICLEN=300", "MAXTARGETS=4", "MSGREFTYPES=msgid",
                  "UTF8ONLY", "CHANTYPES=#", "LINELEN=512", "PREFIX=(o)@",
                      "CHANMODES=bq,k,,int"):
        assert token in tokens
    assert lines[-4:] == [":chatd 375 alice :- chatd Message of the day - ",
                          ":chatd 372 alice :- hi", ":chatd 372 alice :- there",
                          ":chatd 376 alice :End of /MOTD command"]
    send(fe, "CAP LS 302")
    assert "max-bytes=900," in out(fe)[0]  # and the multiline limit follows max_text


def test_a_taken_nick_gets_433_and_the_next_nick_another_hello() -> None:
    fe = make()
    send(fe, "NICK alice", "USER u 0 * :r")
    (hello,) = sent(fe)
    answer(fe, {"type": "error", "code": "nick_taken", "message": "nick 'alice' is in use",
                "fatal": False, "label": hello["label"]})
    assert out(fe) == [":chatd 433 * alice :nick 'alice' is in use"]
    send(fe, "NICK al1ce")  # a look-alike: the native side decides (still taken)
    assert sent(fe)[0]["nick"] == "al1ce"


def test_commands_before_registration_get_451_and_unknown_ones_421() -> None:
    fe = make()
    send(fe, "JOIN #a", "FROB x")
    assert out(fe) == [":chatd 451 * :You have not registered"] * 2 and sent(fe) == []
    fe = registered()
    send(fe, "FROB x")
    assert out(fe) == [":chatd 421 alice FROB :Unknown command"]


def test_commands_right_behind_nick_and_user_wait_for_the_welcome() -> None:
    fe = make()
    send(fe, "NICK alice", "USER u 0 * :r", "JOIN #a", "FROB x")  # a bot's first write
    (hello,) = sent(fe)  # the JOIN waits for the welcome, and FROB behind it
    answer(fe, welcome_frame(hello["label"]))
    (join,) = sent(fe)
    assert join["type"] == "join" and out(fe)[-1] == ":chatd 376 alice :End of /MOTD command"
    answer(fe, {"type": "joined", "room": "#a", "topic": "", "members": ["alice"],
                "more": False, "label": join["label"]},
           {"type": "history", "room": "#a", "messages": [], "more": False,
            "label": join["label"]})
    assert out(fe)[-2:] == [":chatd 366 alice #a :End of /NAMES list",
                            ":chatd 421 alice FROB :Unknown command"]  # in order
    fe = make()
    send(fe, "NICK alice", "USER u 0 * :r", "JOIN #a")
    (hello,) = sent(fe)
    answer(fe, {"type": "error", "code": "nick_taken", "message": "taken", "fatal": False,
                "label": hello["label"]})  # no welcome: what waited is not registered
    assert out(fe) == [":chatd 433 * alice :taken", ":chatd 451 * :You have not registered"]


def test_cap_req_is_all_or_nothing() -> None:
    fe = make()
    send(fe, "CAP REQ :server-time chghost", "CAP REQ :server-time -batch", "CAP LIST")
    assert out(fe) == [":chatd CAP * NAK :server-time chghost",
                       ":chatd CAP * ACK :server-time -batch", ":chatd CAP * LIST :server-time"]


# ---- limits ----

def test_overlong_and_invalid_lines_get_the_standard_errors() -> None:
    fe = registered()
    fe.receive_data(b"PRIVMSG #a :" + b"x" * 600 + b"\r\nPRIVMSG #a :\xff\r\n", 0.0)
    assert out(fe) == [":chatd 417 alice :Input line was too long",
                       ":chatd FAIL PRIVMSG INVALID_UTF8 :Message rejected, your IRC "
                       "software MUST use UTF-8"]
    assert sent(fe) == []
    fe = registered("labeled-response batch")  # a label that could be read labels it
    fe.receive_data(b"@label=a PRIVMSG #a :" + b"x" * 600 + b"\r\n@label=b PRIVMSG #a :\xff"
                    b"\r\n@label=c \x00\r\n", 0.0)
    assert out(fe) == ["@label=a :chatd 417 alice :Input line was too long",
                       "@label=b :chatd FAIL PRIVMSG INVALID_UTF8 :Message rejected, your "
                       "IRC software MUST use UTF-8",
                       "@label=c :chatd FAIL * MALFORMED :a line may not contain NUL"]


def test_local_answers_are_rate_limited_like_native_requests() -> None:
    fe = registered()
    send(fe, *["MODE alice"] * int(DEFAULT_LIMITS["cmd_burst"]))
    lines = out(fe)
    assert lines[-1].startswith(":chatd 263 alice MODE :over cmd_rate; retry in")
    # USER took a token at registration: PASS, USER, CAP, MODE... share the bucket
    assert lines[:-1] == [":chatd 221 alice :+"] * (int(DEFAULT_LIMITS["cmd_burst"]) - 1)


def test_input_waits_while_too_many_answers_are_due_and_a_flood_is_closed() -> None:
    fe = registered()
    send(fe, "JOIN #a")  # unanswered: everything after it waits behind it
    fe.receive_data(b"PING x\r\n" * (MAX_REPLIES + 10), 0.0)
    assert fe.paused and len(sent(fe)) == MAX_REPLIES
    fe.receive_data(b"PING x\r\n" * (MAX_UNREAD // 8), 0.0)
    assert out(fe)[-1] == "ERROR :Closing link: chatd (Excess Flood)" and fe.ended
    assert sent(fe)[-1] == {"type": "quit", "reason": "excess flood"}


# ---- order and labels ----

def test_pong_comes_after_the_answers_to_everything_sent_before_the_ping() -> None:
    fe = registered()
    send(fe, "JOIN #a", "PING :tok")
    join, ping = sent(fe)
    answer(fe, {"type": "pong", "token": "tok", "label": ping["label"]})  # it overtakes
    assert out(fe) == []
    answer(fe, {"type": "joined", "room": "#a", "topic": "t", "members": ["alice"],
                "more": False, "label": join["label"]},
           {"type": "history", "room": "#a", "messages": [], "more": False,
            "label": join["label"]})
    assert out(fe) == [":alice!~u@chatd JOIN #a", ":chatd 332 alice #a :t",
                       ":chatd 353 alice = #a :alice", ":chatd 366 alice #a :End of /NAMES list",
                       ":chatd PONG chatd :tok"]


def test_events_keep_the_servers_order_around_replies() -> None:
    fe = registered("echo-message")
    joined(fe)
    send(fe, "PRIVMSG #a :mine")
    (msg,) = sent(fe)
    answer(fe, message(4, "yours"))  # the server took bob's first: it comes first
    assert out(fe) == [":bob!~u@chatd PRIVMSG #a :yours"]
    answer(fe, {"type": "ack", "id": 5, "ts": TS, "room": "#a", "label": msg["label"]},
           message(5, "mine", "alice"))
    assert out(fe) == [":alice!~u@chatd PRIVMSG #a :mine"]
    send(fe, "JOIN #b")
    (join,) = sent(fe)
    answer(fe, {"type": "joined", "room": "#b", "topic": "", "members": ["alice"],
                "more": True, "label": join["label"]},
           {"type": "history", "room": "#b", "messages": [], "more": False,
            "label": join["label"]},
           message(6, "welcome", room="#b"))  # before the rest of the member list
    (who,) = sent(fe)
    assert (who["type"], who["after"], out(fe)) == ("who", "alice", [])
    answer(fe, {"type": "members", "room": "#b", "members": ["bob"], "more": False,
                "label": who["label"]})
    assert out(fe) == [":alice!~u@chatd JOIN #b", ":chatd 353 alice = #b :alice bob",
                       ":chatd 366 alice #b :End of /NAMES list",
                       ":bob!~u@chatd PRIVMSG #b :welcome"]


def test_labeled_response_ack_single_line_and_batch() -> None:
    fe = registered("labeled-response batch")
    send(fe, "@label=p1 PONG :x", "@label=m1 MODE alice", "@label=w1 WHOIS alice")
    lines = out(fe)
    assert lines[:2] == ["@label=p1 :chatd ACK", "@label=m1 :chatd 221 alice :+"]
    assert lines[2].startswith("@label=w1 :chatd BATCH +") and "labeled-response" in lines[2]
    ref = lines[2].split("+")[1].split()[0]
    assert all(x.startswith(f"@batch={ref} ") for x in lines[3:-1])
    assert lines[-1] == f":chatd BATCH -{ref}"


# ---- native errors as numerics ----

@pytest.mark.parametrize(("command", "code", "expected"), [
    ("PRIVMSG #a :hi", "not_in_room", ":chatd 404 alice #a :m"),
    ("PRIVMSG #a :hi", "invalid_value", ":chatd 404 alice #a :m"),
    ("PRIVMSG bob :hi", "no_such_nick", ":chatd 401 alice bob :m"),
    ("PRIVMSG b@b :hi", "invalid_nick", ":chatd 401 alice b@b :m"),
    ("PRIVMSG #a :hi", "rate_limited", ":chatd 263 alice PRIVMSG :m"),
    ("PRIVMSG #a :hi", "storage_unavailable", ":chatd FAIL PRIVMSG STORAGE_UNAVAILABLE #a :m"),
    ("JOIN #a!", "invalid_room", ":chatd 403 alice #a! :m"),
    ("JOIN #b", "too_many_rooms", ":chatd 405 alice #b :m"),
    ("PART #b", "not_in_room", ":chatd 442 alice #b :m"),
    ("TOPIC #b", "no_such_room", ":chatd 403 alice #b :m"),
    ("TOPIC #a :x", "invalid_value", ":chatd FAIL TOPIC INVALID_VALUE #a :m"),
    ("NICK b0b", "nick_taken", ":chatd 433 alice b0b :m"),
    ("NICK owner", "nick_owned", ":chatd 433 alice owner :m"),  # §12, once served
    ("NICK other", "nick_locked", ":chatd 902 alice other :m"),
    ("NICK 9x", "invalid_nick", ":chatd 432 alice 9x :m"),
])
def test_native_errors_become_the_numeric_for_the_command(command: str, code: str,
                                                          expected: str) -> None:
    fe = registered()
    send(fe, command)
    (req,) = sent(fe)
    answer(fe, {"type": "error", "code": code, "message": "m", "fatal": False,
                "label": req["label"]})
    assert out(fe) == [expected]


def test_a_fatal_error_closes_the_link() -> None:
    fe = registered()
    send(fe, "MODE alice")
    answer(fe, {"type": "error", "code": "ping_timeout", "fatal": True,
                "message": "no frame within ping_timeout after a ping"})
    assert out(fe) == [":chatd 221 alice :+", "ERROR :Closing link: chatd (no frame within "
                       "ping_timeout after a ping)"]
    assert fe.ended
    send(fe, "PING x")
    assert sent(fe) == [] and out(fe) == []


# ---- messages ----

def test_text_goes_native_without_formatting_and_actions_are_actions() -> None:
    fe = registered()
    send(fe, "PRIVMSG bob :\x01VERSION\x01", "NOTICE bob :\x01VERSION x\x01")
    assert out(fe) == [":chatd NOTICE alice :CTCP VERSION was not sent: chatd carries text "
                       "and ACTION only"]  # and a CTCP reply (a NOTICE) gets no answer
    send(fe, "PRIVMSG a,b,c,d,e :x")
    assert sent(fe) == [] and " 407 " in out(fe)[0]
    send(fe, "PRIVMSG #a,bob :\x02bold\x02 \x0304,12red\x03 x",
         "PRIVMSG #a :\x01ACTION waves\x01")
    assert [(f["text"], f.get("action"), f.get("room", f.get("to"))) for f in sent(fe)] == [
        ("bold red x", None, "#a"), ("bold red x", None, "bob"), ("waves", True, "#a")]


def test_the_echo_is_shown_with_echo_message_only() -> None:
    for caps, shown in (("", False), ("echo-message", True)):
        fe = registered(caps)
        joined(fe)
        send(fe, "PRIVMSG #a :hi")
        (msg,) = sent(fe)
        answer(fe, {"type": "ack", "id": 5, "ts": TS, "room": "#a", "label": msg["label"]},
               message(5, "hi", "alice"))
        assert out(fe) == ([":alice!~u@chatd PRIVMSG #a :hi"] if shown else [])


@pytest.mark.parametrize("caps", ["", "echo-message", "server-time message-tags",
                                  "labeled-response batch echo-message"])
def test_a_message_read_with_the_answer_to_ones_own_takes_the_per_delivery_path(
        caps: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ack and someone else's message in one read: the answered PRIVMSG's lines (if
    any) go out first, then the message, written by the per-delivery path, exactly as
    the general path writes them."""
    def run() -> list[str]:
        fe = registered(caps)
        joined(fe)
        send(fe, "@label=p1 PRIVMSG #a :hi" if "labeled-response" in caps else "PRIVMSG #a :hi")
        (msg,) = sent(fe)
        answer(fe, {"type": "ack", "id": 5, "ts": TS, "room": "#a", "label": msg["label"]},
               message(5, "hi", "alice"), message(6, "hello", "bob"))
        return out(fe)

    taken: list[Any] = []
    original = render.message_line
    monkeypatch.setattr(render, "message_line",
                        lambda fe, frame: taken.append(frame.get("id")) or original(fe, frame))
    fast = run()
    assert 6 in taken and fast[-1].endswith(":bob!~u@chatd PRIVMSG #a :hello")
    monkeypatch.setattr(render, "message_line", lambda fe, frame: None)
    assert run() == fast


def test_a_message_to_yourself_arrives_once_and_unlabelled_without_echo() -> None:
    fe = registered("labeled-response batch")
    send(fe, "@label=x PRIVMSG alice :me")
    (msg,) = sent(fe)
    answer(fe, {"type": "ack", "id": 5, "ts": TS, "to": "alice", "label": msg["label"]},
           message(5, "me", "alice", to="alice"))
    assert out(fe) == ["@label=x :chatd ACK", ":alice!~u@chatd PRIVMSG alice :me"]


def test_native_lines_become_irc_lines_or_one_multiline_batch() -> None:
    text = "one\n\n" + "é" * 300 + "\ttab"
    fe = registered("message-tags")
    joined(fe)
    answer(fe, message(9, text))
    lines = out(fe)
    assert lines[0] == "@msgid=9 :bob!~u@chatd PRIVMSG #a :one"  # the id on the first only
    assert "".join(parse(x.encode()).params[1] for x in lines[1:]) == "é" * 300 + "\ttab"
    assert all(body_size(parse(x.encode())) <= MAX_LINE for x in lines)
    fe = registered("draft/multiline batch")
    joined(fe)
    answer(fe, message(9, text))
    batch = [parse(x.encode()) for x in out(fe)]
    assert batch[0].params[1:] == ["draft/multiline", "#a"] and batch[-1].command == "BATCH"
    assert batch[0].tags == {}  # no message-tags: no msgid
    joined_text = ""
    for i, line in enumerate(batch[1:-1]):
        sep = "" if "draft/multiline-concat" in line.tags or i == 0 else "\n"
        joined_text += sep + line.params[1]
    assert joined_text == text


def test_a_client_multiline_batch_is_one_native_message() -> None:
    fe = registered("draft/multiline batch echo-message labeled-response")
    send(fe, "@label=L BATCH +b1 draft/multiline #a", "@batch=b1 PRIVMSG #a :first",
         "@batch=b1 PRIVMSG #a :sec", "@batch=b1;draft/multiline-concat PRIVMSG #a :ond",
         "@batch=b1 PRIVMSG #a :", "BATCH -b1")
    (msg,) = sent(fe)
    assert (msg["room"], msg["text"]) == ("#a", "first\nsecond\n")
    answer(fe, {"type": "error", "code": "not_in_room", "message": "m", "fatal": False,
                "label": msg["label"]})
    assert out(fe) == ["@label=L :chatd 404 alice #a :m"]
    send(fe, "BATCH +b2 draft/multiline #a", "@batch=b2 PRIVMSG #b :x", "BATCH -b2")
    assert sent(fe) == []
    assert out(fe) == [":chatd FAIL BATCH MULTILINE_INVALID_TARGET #a #b :every line must "
                       "go to the batch's target"]
    send(fe, "BATCH +b3 draft/multiline #a", *["@batch=b3 PRIVMSG #a :x"] * 101, "BATCH -b3")
    assert sent(fe) == [] and "MULTILINE_MAX_LINES 100" in out(fe)[0]
    send(fe, "BATCH +c1 draft/multiline #a", "@batch=c1 PRIVMSG #a :lost",
         "BATCH +c2 draft/multiline #a", "@batch=c1 PRIVMSG #a :lost too",
         "@batch=c2 PRIVMSG #a :kept", "PING :between", "BATCH -c1", "BATCH -c2",
         "@batch=zz PRIVMSG #a :x")
    assert [(f["type"], f.get("text")) for f in sent(fe)] == [("ping", None), ("msg", "kept")]
    assert [x.split()[1:4] for x in out(fe)] == [["FAIL", "BATCH", "MULTILINE_INVALID"]]
    assert fe.multiline is None and fe.dropped_batch is None


# ---- rooms and users ----

def test_join_several_with_keys_sends_each_room_its_key() -> None:
    fe = registered()
    send(fe, "JOIN #a,#b,#c k1,,k3")
    assert [(f["room"], f.get("key")) for f in sent(fe)] == [("#a", "k1"), ("#b", None),
                                                             ("#c", "k3")]


def test_a_quit_and_a_nick_change_come_once_for_all_shared_rooms() -> None:
    fe = registered()
    joined(fe, "#a")
    joined(fe, "#b")
    answer(fe, {"type": "nick", "room": "#a", "old": "bob", "new": "Bob", "ts": TS},
           {"type": "nick", "room": "#b", "old": "bob", "new": "Bob", "ts": TS},
           {"type": "quit", "room": "#a", "nick": "Bob", "reason": "bye", "ts": TS},
           {"type": "quit", "room": "#b", "nick": "Bob", "reason": "bye", "ts": TS})
    assert out(fe) == [":bob!~u@chatd NICK :Bob", ":Bob!~u@chatd QUIT :bye"]


def test_modes_say_what_chatd_has() -> None:
    fe = registered()
    send(fe, "MODE #z +i", "MODE #z x", "MODE alice +i", "MODE bob", "MODE #a e")
    assert [x.split(" ", 3)[1:3] for x in out(fe)] == [
        ["442", "alice"], ["472", "alice"], ["501", "alice"], ["502", "alice"],
        ["442", "alice"]]


def test_mode_kick_and_invite_become_moderation_requests() -> None:
    """protocol.md §13.4: each change is a native request of §14, whose ack announces
    the room's `moderation` event (the same id): that event, as every member gets it, is
    the command's reply, in order."""
    fe = registered()
    joined(fe)
    send(fe, "MODE #a +o-b+ik bob troll!*@* sesame", "MODE #a +q ~a:eve", "MODE #a -k",
         "KICK #a bob,carol :out", "INVITE dave #a")
    frames = sent(fe)
    assert [{k: v for k, v in f.items() if k != "label"} for f in frames] == [
        {"type": "op", "room": "#a", "nick": "bob"},
        {"type": "unban", "room": "#a", "nick": "troll"},
        {"type": "mode", "room": "#a", "invite_only": True, "key": "sesame"},
        {"type": "mute", "room": "#a", "account": "eve"},
        {"type": "mode", "room": "#a", "key": ""},
        {"type": "kick", "room": "#a", "nick": "bob", "reason": "out"},
        {"type": "kick", "room": "#a", "nick": "carol", "reason": "out"},
        {"type": "invite", "room": "#a", "nick": "dave"}]
    labels = [f["label"] for f in frames]
    ev = {"type": "moderation", "ts": TS, "room": "#a", "by": "alice"}
    events = [{"kind": "op", "nick": "bob"}, {"kind": "unban", "nick": "troll"},
              {"kind": "mode", "invite_only": True, "keyed": True},
              {"kind": "mute", "account": "eve"}, {"kind": "mode", "keyed": False}]
    # The INVITE's answers first: its lines still come after those of the commands before.
    answer(fe, {"type": "ack", "id": 9, "ts": TS, "room": "#a", "label": labels[7]},
           {**ev, "id": 9, "kind": "invite", "nick": "dave"},
           *[frame for i, (label, event) in enumerate(zip(labels, events, strict=False))
             for frame in ({"type": "ack", "id": i + 1, "ts": TS, "room": "#a",
                            "label": label}, {**ev, "id": i + 1, **event})],
           {"type": "error", "code": "not_operator", "message": "no", "fatal": False,
            "label": labels[5]},
           {"type": "error", "code": "no_such_nick", "message": "no", "fatal": False,
            "label": labels[6]})
    assert out(fe) == [
        ":alice!~u@chatd MODE #a +o bob", ":alice!~u@chatd MODE #a -b troll!*@*",
        ":alice!~u@chatd MODE #a +i+k *", ":alice!~u@chatd MODE #a +q ~a:eve",
        ":alice!~u@chatd MODE #a -k *", ":chatd 482 alice #a :no",
        ":chatd 441 alice carol #a :They aren't on that channel", ":chatd 341 alice dave :#a",
        ":chatd NOTICE #a :alice invited dave to #a"]


def test_moderation_events_are_irc_lines() -> None:
    fe = registered()
    joined(fe)
    ev = {"type": "moderation", "id": 5, "ts": TS, "room": "#a", "by": "bob"}
    answer(fe, {**ev, "kind": "op", "nick": "carol"},
           {**ev, "kind": "ban", "nick": "tr?ll", "expires": TS + 1},
           {**ev, "kind": "unmute", "account": "eve"},
           {**ev, "kind": "mode", "invite_only": True, "keyed": False, "topic_lock": True},
           {**ev, "kind": "kick", "nick": "alice", "reason": "bye"},
           {"type": "invited", "room": "#b", "by": "bob", "ts": TS})
    assert out(fe) == [
        ":bob!~u@chatd MODE #a +o carol", ":bob!~u@chatd MODE #a +b tr?ll!*@*",
        ":bob!~u@chatd MODE #a -q ~a:eve", ":bob!~u@chatd MODE #a +i-k+t *",
        ":bob!~u@chatd KICK #a alice :bye", ":bob!~u@chatd INVITE alice #b"]
    assert "#a" not in fe.rooms  # kicked: no longer in it


def test_the_ban_list_and_a_refused_join() -> None:
    fe = registered()
    joined(fe)
    send(fe, "MODE #a +b")
    (bans,) = sent(fe)
    answer(fe, {"type": "bans", "room": "#a", "more": False, "label": bans["label"],
                "bans": [{"list": "ban", "nick": "x*", "by": "bob", "ts": 5000},
                         {"list": "mute", "account": "eve", "by": "bob", "ts": 6000}]})
    assert out(fe) == [":chatd 367 alice #a x*!*@* bob :5", ":chatd 368 alice #a "
                       ":End of channel ban list"]
    for code, numeric in (("banned", "474"), ("invite_only", "473"), ("bad_key", "475")):
        send(fe, "JOIN #b")
        (join,) = sent(fe)
        answer(fe, {"type": "error", "code": code, "message": "no", "fatal": False,
                    "label": join["label"]})
        assert out(fe)[0].split(" ")[1:4] == [numeric, "alice", "#b"]


# ---- chathistory ----

@pytest.mark.parametrize(("command", "requests"), [
    ("LATEST #a * 10", [{"limit": 10}]),
    ("LATEST #a msgid=4 10", [{"limit": 10}]),
    ("BEFORE #a msgid=40 500", [{"before": 40, "limit": 200}]),  # capped to history_page
    ("AFTER bob msgid=4 5", [{"after": 4, "limit": 5}]),
    ("AROUND #a msgid=40 5", [{"before": 41, "limit": 3}, {"after": 40, "limit": 2}]),
    ("BETWEEN #a msgid=10 msgid=2 5", [{"before": 10, "limit": 5}]),
])
def test_chathistory_asks_native_history(command: str, requests: list[dict[str, Any]]) -> None:
    fe = registered("batch draft/chathistory")
    send(fe, f"CHATHISTORY {command}")
    where = {"with": "bob"} if " bob " in command else {"room": "#a"}
    assert [{k: v for k, v in f.items() if k != "label"} for f in sent(fe)] == [
        {"type": "history", **where, **r} for r in requests]


def test_chathistory_replies_one_batch_filtered_and_refuses_timestamps() -> None:
    fe = registered("batch draft/chathistory message-tags")
    send(fe, "CHATHISTORY LATEST #a msgid=4 10")
    (req,) = sent(fe)
    answer(fe, {"type": "history", "room": "#a", "more": False, "label": req["label"],
                "messages": [message(i, f"m{i}") for i in (3, 4, 5, 6)]})
    lines = out(fe)
    assert [parse(x.encode()).tags.get("msgid") for x in lines] == [None, "5", "6", None]
    assert lines[0] == ":chatd BATCH +1 chathistory #a" and lines[-1] == ":chatd BATCH -1"
    send(fe, "CHATHISTORY BEFORE #a timestamp=2026-01-01T00:00:00.000Z 10",
         "CHATHISTORY LATEST #a", "CHATHISTORY SOON #a * 1", "CHATHISTORY AFTER #a msgid=x 1")
    assert [x.split()[2:4] for x in out(fe)] == [
        ["CHATHISTORY", "INVALID_MSGREFTYPE"], ["CHATHISTORY", "NEED_MORE_PARAMS"],
        ["CHATHISTORY", "INVALID_PARAMS"], ["CHATHISTORY", "INVALID_PARAMS"]]


def test_chathistory_targets_lists_rooms_with_recent_messages() -> None:
    fe = registered("batch draft/chathistory")
    joined(fe, "#a")
    joined(fe, "#b")
    send(fe, "CHATHISTORY TARGETS timestamp=2025-12-31T00:00:00Z "
             "timestamp=2026-01-02T00:00:00.000Z 10")
    a, b = sent(fe)
    answer(fe, {"type": "history", "room": "#a", "messages": [message(1, "x")], "more": True,
                "label": a["label"]},
           {"type": "history", "room": "#b", "messages": [], "more": False,
            "label": b["label"]})
    assert out(fe) == [":chatd BATCH +1 draft/chathistory-targets",
                       "@batch=1 :chatd CHATHISTORY TARGETS #a timestamp=2026-01-01T00:00:00.000Z",
                       ":chatd BATCH -1"]


# ---- untrusted input ----

@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"NICK a\r\n", b"USER u 0 * :r\r\n", b"CAP LS 302\r\n", b"CAP END\r\n",
                     b"JOIN #a,#b k\r\n", b"PRIVMSG #a :\x01ACTION x\r\n", b"MODE #a b\r\n",
                     b"BATCH +x draft/multiline #a\r\n", b"@batch=x PRIVMSG #a :y\r\n",
                     b"CHATHISTORY AROUND #a msgid=1 3\r\n", b"@label=\\ PING\r\n",
                     b"WHO a\r\n", b"LIST\r\n", b"\r\n"])), max_size=25))
def test_any_input_gives_whole_short_lines_and_valid_requests(chunks: list[bytes]) -> None:
    fe = registered("labeled-response batch draft/multiline message-tags")
    for chunk in chunks:
        fe.receive_data(chunk, 0.0)
    for frame in sent(fe):
        assert isinstance(frame["type"], str)
    data = b"".join(fe.to_client)
    assert data == b"" or data.endswith(b"\r\n")
    for raw in data.split(b"\r\n")[:-1]:
        line: Line = parse(raw)
        assert body_size(line) <= MAX_LINE


def test_a_cluster_status_event_is_a_notice_from_the_server() -> None:
    fe = registered()
    answer(fe, {"type": "status", "cluster": "down", "ts": TS,
                "message": "the server cannot reach the cluster's Redis"})
    assert out(fe) == [":chatd NOTICE alice :the server cannot reach the cluster's Redis"]


# ---- accounts: account-tag, account-notify, extended-join ----

def test_accounts_are_shown_where_the_native_frames_name_them() -> None:
    fe = registered("account-tag account-notify extended-join")
    fe.account = "alice"  # (logged in with SASL)
    joined(fe, members=("alice",))
    send(fe, "JOIN #b")
    (join,) = sent(fe)
    answer(fe, {"type": "joined", "room": "#b", "topic": "", "members": ["alice"],
                "more": False, "label": join["label"]},
           {"type": "history", "room": "#b", "messages": [], "more": False,
            "label": join["label"]})
    assert out(fe)[0] == "@account=alice :alice!~u@chatd JOIN #b alice :alice"
    answer(fe, {"type": "join", "room": "#a", "nick": "Bob", "account": "Bob", "ts": TS},
           {"type": "join", "room": "#a", "nick": "cy", "ts": TS},
           {**message(7, "signed", "Bob"), "account": "Bob"}, message(8, "a guest's", "cy"),
           {"type": "account", "nick": "cy", "account": "Cy", "ts": TS})
    assert out(fe) == ["@account=Bob :Bob!~u@chatd JOIN #a Bob :Bob",
                       ":cy!~u@chatd JOIN #a * :cy",
                       "@account=Bob :Bob!~u@chatd PRIVMSG #a :signed",
                       ":cy!~u@chatd PRIVMSG #a :a guest's",
                       ":cy!~u@chatd ACCOUNT Cy"]


def test_without_the_caps_accounts_are_not_shown() -> None:
    fe = registered()
    joined(fe)
    answer(fe, {"type": "join", "room": "#a", "nick": "Bob", "account": "Bob", "ts": TS},
           {**message(7, "signed", "Bob"), "account": "Bob"},
           {"type": "account", "nick": "bob", "account": "Bob", "ts": TS})
    assert out(fe) == [":Bob!~u@chatd JOIN #a", ":Bob!~u@chatd PRIVMSG #a :signed"]
    send(fe, "CAP LS 302")
    assert {"account-tag", "account-notify", "extended-join"} <= set(out(fe)[0].split())


def test_a_command_that_reads_the_rooms_waits_for_a_join_sent_before_it() -> None:
    fe = registered()
    send(fe, "JOIN #a", "MODE #a +k sekrit", "PRIVMSG #a :after")
    (join,) = sent(fe)  # the MODE (and what follows it) waits for the JOIN's answers
    assert join["type"] == "join" and fe.paused  # (the shell stops reading meanwhile)
    answer(fe, {"type": "joined", "room": "#a", "topic": "", "members": ["alice"],
                "more": False, "label": join["label"]},
           {"type": "history", "room": "#a", "messages": [], "more": False,
            "label": join["label"]})
    mode, msg = sent(fe)
    assert (mode["type"], mode["key"], msg["type"]) == ("mode", "sekrit", "msg")
    assert not fe.paused
    assert out(fe)[0] == ":alice!~u@chatd JOIN #a"
    send(fe, "WHOIS bob")  # no JOIN, PART or NICK in flight: taken at once, answered
    answer(fe, {"type": "error", "code": "not_operator", "message": "no", "fatal": False,
                "label": mode["label"]},  # in order, after the MODE and the PRIVMSG
           {"type": "ack", "id": 5, "ts": TS, "room": "#a", "label": msg["label"]},
           message(5, "after", "alice"))
    lines = out(fe)
    assert lines[0] == ":chatd 482 alice #a :no" and " 401 alice bob " in lines[1]


def test_an_event_goes_before_a_reply_still_unanswered_even_behind_a_local_one() -> None:
    """bob's message 7 came before the ack of alice's 8: it is written first, although a
    PONG (answered here, at once) came between alice's PRIVMSG and it."""
    fe = registered("echo-message message-tags")
    joined(fe)
    send(fe, "PRIVMSG #a :mine", "PONG :1")
    msg, pong = sent(fe)
    assert pong == {"type": "pong", "token": 1}
    answer(fe, message(7, "bob's"),
           {"type": "ack", "id": 8, "ts": TS, "room": "#a", "label": msg["label"]},
           message(8, "mine", "alice"))
    assert out(fe) == ["@msgid=7 :bob!~u@chatd PRIVMSG #a :bob's",
                       "@msgid=8 :alice!~u@chatd PRIVMSG #a :mine"]
