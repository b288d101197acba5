"""Server bans (chatd/bans.py) and the admin socket's request parser and rate, sans I/O:
times are passed in, nothing reads the clock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chatd import bans
from chatd.admincli import duration
from chatd.adminops import AdminRequestError, MessageRate, parse_request

T0 = 1_000_000.0  # an arbitrary wall-clock time: nothing here depends on the date


def test_address_bans_match_their_network_and_nothing_else() -> None:
    b = bans.Bans()
    net, _ = b.add("address", "198.51.100.7/24", "", None, T0, "uid 0")
    one, _ = b.add("address", "2001:db8::1", "", None, T0, "uid 0")
    six, _ = b.add("address", "2001:db8:1::/48", "", None, T0, "uid 0")
    assert net.target == "198.51.100.0/24" and one.target == "2001:db8::1/128"
    assert b.address("198.51.100.200", T0) is net
    assert b.address("::ffff:198.51.100.9", T0) is net  # a dual-stack listener's form
    assert b.address("198.51.101.1", T0) is None
    assert b.address("2001:db8::1", T0) is one
    assert b.address("2001:db8::2", T0) is None
    assert b.address("2001:db8:1:ffff::5", T0) is six
    assert b.address("fe80::1%eth0", T0) is None
    assert b.address("not an address", T0) is None
    assert net.hits == 2


def test_nick_bans_match_by_key_with_wildcards() -> None:
    b = bans.Bans()
    exact, _ = b.add("nick", "Mallory", "", None, T0, "uid 0")
    glob, _ = b.add("nick", "troll*", "spam", None, T0, "uid 0")
    one, _ = b.add("nick", "b?b", "", None, T0, "uid 0")
    acct, _ = b.add("account", "eve", "", None, T0, "uid 0")
    assert b.identity("mallory", None, T0) is exact
    assert b.identity("MAL1ORY", None, T0) is exact  # a look-alike is the same nick
    assert b.identity("TrollFace", None, T0) is glob
    assert b.identity("tro11", None, T0) is glob
    assert b.identity("atroll", None, T0) is None
    assert b.identity("bob", None, T0) is one and b.identity("boob", None, T0) is None
    assert b.identity("guest", "Eve", T0) is acct
    assert b.identity("eve", None, T0) is None  # a nick is not an account
    assert b.identity(None, None, T0) is None


def test_a_ban_expires_and_the_same_target_is_updated_not_doubled() -> None:
    b = bans.Bans()
    ban, new = b.add("nick", "troll*", "", T0 + 60, T0, "uid 0")
    again, new_again = b.add("nick", "TROLL*", "still", None, T0 + 1, "uid 0")
    assert new and not new_again and again.id == ban.id and len(b) == 1
    assert again.until is None and again.reason == "still"
    short, _ = b.add("address", "192.0.2.1", "", T0 + 10, T0, "uid 0")
    assert b.address("192.0.2.1", T0 + 9.9) is short
    assert b.address("192.0.2.1", T0 + 10) is None
    assert [x.id for x in b] == [ban.id]


@pytest.mark.parametrize(("kind", "target"), [
    ("nick", ""), ("nick", "*"), ("nick", "**?"), ("nick", "a b"), ("nick", "x" * 31),
    ("nick", "é*"), ("account", "a;b"), ("address", "300.1.1.1"), ("address", "example.org"),
    ("address", "10.0.0.0/33"), ("room", "#x")])
def test_bad_targets_are_refused(kind: str, target: str) -> None:
    with pytest.raises(bans.BanError):
        bans.Bans().add(kind, target, "", None, T0, "uid 0")


def test_a_bad_reason_is_refused_and_the_number_of_bans_is_bounded() -> None:
    b = bans.Bans()
    with pytest.raises(bans.BanError, match="control"):
        b.add("nick", "x", "bell\x07", None, T0, "uid 0")
    for i in range(bans.MAX_BANS):
        b.add("address", f"10.{i // 256}.{i % 256}.1", "", None, T0, "uid 0")
    with pytest.raises(bans.BanError, match="lift some"):
        b.add("nick", "one_more", "", None, T0, "uid 0")


def test_bans_survive_the_file_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / bans.FILE
    assert len(bans.load(path)) == 0  # no file: no bans
    b = bans.Bans()
    b.add("nick", "troll*", "spam", T0 + 3600, T0, "uid 0")
    gone, _ = b.add("address", "192.0.2.0/24", "", None, T0, "uid 0")
    b.remove(gone.id)
    b.add("address", "192.0.2.0/24", "", T0 + 5, T0, "uid 0")  # expired when saved
    b.save(path, T0 + 10)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = bans.load(path)
    assert [(x.kind, x.target, x.reason, x.until) for x in loaded] == [
        ("nick", "troll*", "spam", T0 + 3600)]
    nxt, _ = loaded.add("nick", "other", "", None, T0, "uid 0")
    assert nxt.id == 4  # numbers are never reused
    for bad in ("{", "[]", '{"version": 2, "bans": [], "next_id": 1}',
                '{"version": 1, "next_id": 1, "bans": [{"id": 1}]}',
                json.dumps({"version": 1, "next_id": 2, "bans": [
                    {"id": 1, "kind": "address", "target": "nope", "reason": "",
                     "created": T0, "until": None, "by": ""}]})):
        path.write_text(bad)
        with pytest.raises(bans.BanError, match="damaged"):
            bans.load(path)
    path.write_bytes(b"\xff")
    with pytest.raises(bans.BanError):
        bans.load(path)


@pytest.mark.parametrize("data", [
    b"", b"\xff", b"not json", b"[]", b'"status"', b'{"cmd": 1}', b'{"cmd": "nope"}',
    b'{"cmd": "status", "cmd": "status"}', b'{"cmd": "status", "x": 1}',
    b'{"cmd": "kick"}', b'{"cmd": "kick", "nick": 5}', b'{"cmd": "unban", "id": true}',
    b'{"cmd": "unban", "id": 1.5}', b'{"cmd": "ban", "kind": "nick", "target": "x", '
    b'"duration": NaN}', b'{"cmd": "ban", "kind": "nick", "target": "x", "duration": 1e999}',
    b'{"cmd": "kick", "nick": "' + b"a" * 301 + b'"}', b"[" * 3000 + b"]" * 3000])
def test_admin_requests_are_parsed_strictly(data: bytes) -> None:
    with pytest.raises(AdminRequestError) as info:
        parse_request(data)
    assert info.value.code in ("bad_request", "unknown_command")


def test_a_good_admin_request_parses() -> None:
    assert parse_request(b'{"cmd": "ban", "kind": "nick", "target": "x", "duration": 60}') \
        == {"cmd": "ban", "kind": "nick", "target": "x", "duration": 60}


def test_message_rate_counts_ids_over_the_window() -> None:
    rate = MessageRate(100.0, 50)
    assert rate.per_second(100.0, 10.0) == 0.0
    rate.sample(101.0, 60)  # 10 messages in the first second
    rate.sample(101.05, 70)  # merged with the sample before (closer than the resolution)
    assert rate.per_second(102.0, 10.0) == pytest.approx(20 / 2)  # only 2 s of uptime
    for t in range(102, 200):  # 1 message a second for a long while
        rate.sample(float(t), 70 + t - 101)
    assert rate.per_second(199.5, 10.0) == pytest.approx(1.0, abs=0.15)
    assert rate.per_second(199.5, 60.0) == pytest.approx(1.0, abs=0.05)
    assert len(rate.samples) <= 62  # bounded: old samples are dropped
    assert rate.per_second(500.0, 10.0) == 0.0  # idle since


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800),
                                               ("2h", 7200), ("1h30m", 5400), ("7d", 604800),
                                               ("1w", 604800), ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "1h 30m", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(Exception, match="not a duration"):
        duration(text)
