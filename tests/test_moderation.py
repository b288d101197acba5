"""Room policy, sans I/O: operators, bans and mutes with expiry on the injected clock,
modes, invitations, and what is stored (chatd.moderation, protocol.md §14)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatd.moderation import (
    INVITE_MS,
    MAX_ENTRIES,
    MAX_MASK,
    RoomPolicy,
    Who,
    check_key,
    check_mask,
    make_entry,
    pattern_re,
)
from chatd.protocol import NICK_CHARS, ProtocolError, nick_key

T = 1_767_225_600_000
ALICE = Who("alice", "tokA")
BOB = Who("bob", "tokB")
CAROL = Who("carol", "tokC", account="carol")
ROOT = Who("root", "tokR", account="root", server_op=True)


def code(call: object, *args: object, **kw: object) -> str:
    with pytest.raises(ProtocolError) as info:
        call(*args, **kw)  # type: ignore[operator]
    return info.value.code


def test_the_creator_of_an_empty_room_becomes_its_operator() -> None:
    pol = RoomPolicy()
    assert pol.admit(ALICE, None, T, "#r", creating=True)
    assert pol.is_operator(ALICE) and not pol.is_operator(BOB)
    assert not pol.admit(BOB, None, T, "#r", creating=False)
    assert not pol.is_operator(BOB)


def test_a_guest_operator_goes_with_its_session_and_is_never_stored() -> None:
    pol = RoomPolicy()
    pol.admit(ALICE, None, T, "#r", creating=True)
    assert "s:tokA" in pol.operators and pol.to_stored()["operators"] == []
    pol.left(ALICE)
    assert not pol.is_operator(ALICE)
    # the same nick in another session is somebody else
    assert not pol.is_operator(Who("alice", "tokOther"))


def test_an_account_operator_outlives_its_sessions_and_the_store() -> None:
    pol = RoomPolicy()
    pol.admit(CAROL, None, T, "#r", creating=True)
    pol.left(CAROL)
    again = RoomPolicy.from_json(pol.to_json())
    # recreated by a guest: the account is still the operator, the guest is not
    assert not again.admit(ALICE, None, T, "#r", creating=True)
    assert again.is_operator(Who("Carol", "another", account="CAROL"))
    assert not again.is_operator(ALICE)


def test_an_orphaned_room_goes_to_its_next_creator_past_mode_but_not_ban() -> None:
    pol = RoomPolicy()
    pol.admit(ALICE, None, T, "#r", creating=True)
    pol.set_modes(True, "k", None)
    pol.add("bans", make_entry("nick", "bob", "alice", T, None, ""), T)
    stored = RoomPolicy.from_json(pol.to_json())  # a restart: guest operators are gone
    assert code(stored.admit, BOB, None, T, "#r", creating=True) == "banned"
    assert stored.admit(Who("dave", "tokD"), None, T, "#r", creating=True)
    assert code(stored.admit, Who("erin", "tokE"), "k", T, "#r", creating=False) == \
        "invite_only"


def test_join_checks_come_in_the_documented_order() -> None:
    pol = RoomPolicy(invite_only=True, key="sesame")
    pol.add("bans", make_entry("nick", "b*", "alice", T, None, "spam"), T)
    assert code(pol.admit, BOB, "sesame", T, "#r", creating=False) == "banned"
    assert code(pol.admit, ALICE, "sesame", T, "#r", creating=False) == "invite_only"
    pol.invite_only = False
    assert code(pol.admit, ALICE, None, T, "#r", creating=False) == "bad_key"
    assert code(pol.admit, ALICE, "wrong", T, "#r", creating=False) == "bad_key"
    assert not pol.admit(ALICE, "sesame", T, "#r", creating=False)


def test_operators_and_server_operators_pass_every_check() -> None:
    pol = RoomPolicy(invite_only=True, key="k")
    pol.add("bans", make_entry("nick", "*", "x", T, None, ""), T)
    pol.add("mutes", make_entry("nick", "*", "x", T, None, ""), T)
    assert code(pol.admit, ALICE, None, T, "#r", creating=False) == "banned"
    assert not pol.admit(ROOT, None, T, "#r", creating=False)
    pol.check_speak(ROOT, T, "#r")
    pol.grant(ALICE)
    assert not pol.admit(ALICE, None, T, "#r", creating=False)
    pol.check_speak(ALICE, T, "#r")


def test_a_ban_lasts_until_its_expiry_on_the_injected_clock() -> None:
    pol = RoomPolicy()
    pol.add("bans", make_entry("nick", "bob", "alice", T, 60, ""), T)
    assert code(pol.admit, BOB, None, T + 59_999, "#r", creating=False) == "banned"
    assert not pol.admit(BOB, None, T + 60_000, "#r", creating=False)
    assert pol.entries(T + 60_000) == []


def test_mutes_and_bans_silence_by_their_own_codes() -> None:
    pol = RoomPolicy()
    pol.add("mutes", make_entry("account", "carol", "alice", T, 10, ""), T)
    assert code(pol.check_speak, CAROL, T, "#r") == "muted"
    pol.check_speak(Who("carol", "guest"), T, "#r")  # a guest nick is not the account
    pol.check_speak(CAROL, T + 10_000, "#r")
    pol.add("bans", make_entry("nick", "car?l", "alice", T, None, ""), T)
    assert code(pol.check_speak, Who("CAR0L", "g"), T, "#r") == "banned"


def test_invitations_let_in_once_and_lapse() -> None:
    pol = RoomPolicy(invite_only=True, key="k")
    pol.invite(BOB, T)
    assert not pol.admit(BOB, None, T + 1, "#r", creating=False)  # key too
    assert code(pol.admit, BOB, None, T + 2, "#r", creating=False) == "invite_only"
    pol.invite(BOB, T)
    assert code(pol.admit, BOB, None, T + INVITE_MS, "#r", creating=False) == "invite_only"
    pol.invite(BOB, T)
    pol.add("bans", make_entry("nick", "bob", "a", T, None, ""), T)
    assert code(pol.admit, BOB, None, T, "#r", creating=False) == "banned"


def test_entries_replace_by_key_and_unban_needs_one() -> None:
    pol = RoomPolicy()
    pol.add("bans", make_entry("nick", "Alice*", "x", T, None, "one"), T)
    pol.add("bans", make_entry("nick", "a1ice*", "x", T, None, "two"), T)
    assert [e["reason"] for e in pol.entries(T)] == ["two"]
    assert code(pol.remove, "bans", "nick", "bob", T, "#r") == "invalid_value"
    assert pol.remove("bans", "nick", "ALICE*", T, "#r").reason == "two"


def test_every_list_is_bounded() -> None:
    pol = RoomPolicy()
    for i in range(MAX_ENTRIES):
        pol.add("bans", make_entry("nick", f"n{i}", "x", T, None, ""), T)
        pol.grant(Who(f"u{i}", f"t{i}"))
        pol.invite(Who(f"v{i}", f"w{i}"), T)
    assert code(pol.add, "bans", make_entry("nick", "more", "x", T, None, ""), T) == "list_full"
    assert code(pol.grant, Who("z", "z")) == "list_full"
    assert code(pol.invite, Who("z", "z"), T) == "list_full"
    pol.add("bans", make_entry("nick", "n0", "x", T, None, "again"), T)  # a replacement fits


def test_field_checks() -> None:
    assert code(check_mask, "nick", "") == "invalid_value"
    assert code(check_mask, "nick", "a b") == "invalid_value"
    assert code(check_mask, "nick", "x" * (MAX_MASK + 1)) == "invalid_value"
    assert code(check_mask, "account", "1abc") == "invalid_value"
    assert code(check_key, "a b") == "invalid_value"
    assert code(check_key, "a,b") == "invalid_value"
    assert check_key("") == ""
    assert code(make_entry, "nick", "b", "x", T, 0, "") == "invalid_value"
    assert code(make_entry, "nick", "b", "x", T, None, "bad\nreason") == "invalid_value"


def test_a_damaged_stored_policy_is_an_empty_one() -> None:
    for text in ("{", "[]", '{"bans": [{"kind": "x"}]}', '{"key": "a b"}', '{"bans": 3}'):
        assert RoomPolicy.from_json(text).to_stored() == RoomPolicy().to_stored()


def test_what_is_stored_round_trips() -> None:
    pol = RoomPolicy(topic_lock=True)
    pol.admit(CAROL, None, T, "#r", creating=True)
    pol.set_modes(True, "k", None)
    pol.add("mutes", make_entry("nick", "x?", "carol", T, 5, "r"), T)
    pol.invite(Who("d", "t", account="dave"), T)
    pol.invite(BOB, T)  # a guest's: not stored
    again = RoomPolicy.from_json(pol.to_json())
    assert again.to_stored() == pol.to_stored()
    assert set(again.invites) == {"a:dave"} and again.stored_anything()
    assert not RoomPolicy().stored_anything()


# ---- nick patterns: untrusted input ----

MASK_ALPHABET = st.sampled_from(list("abilmor01|_-[]\\^{}`*?AZ"))
NICKS = st.from_regex(rf"[A-Za-z_][{NICK_CHARS}]{{0,12}}", fullmatch=True)


def reference(pattern: str, text: str) -> bool:
    """A plain recursive glob over keys: the meaning protocol.md §14 gives."""
    if not pattern:
        return not text
    if pattern[0] == "*":
        return any(reference(pattern[1:], text[i:]) for i in range(len(text) + 1))
    return bool(text) and (pattern[0] in ("?", text[0])) and reference(pattern[1:], text[1:])


@settings(max_examples=300, deadline=None)
@given(st.text(MASK_ALPHABET, min_size=1, max_size=10), NICKS)
def test_nick_patterns_match_keys_like_a_plain_glob(pattern: str, nick: str) -> None:
    got = pattern_re(pattern).match(nick_key(nick)) is not None
    assert got == reference(nick_key(pattern), nick_key(nick))


@settings(max_examples=200, deadline=None)
@given(NICKS)
def test_a_pattern_without_wildcards_matches_exactly_the_same_key(nick: str) -> None:
    entry = make_entry("nick", nick, "x", T, None, "")
    assert entry.matches(Who(nick.upper(), "t"))
    assert not entry.matches(Who(nick + "x", "t"))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80), st.text(max_size=40), st.integers(-(2**63), 2**63 - 1))
def test_hostile_fields_are_refused_cleanly_or_accepted(mask: str, key: str,
                                                        duration: int) -> None:
    for kind in ("nick", "account"):
        try:
            entry = make_entry(kind, mask, "x", T, duration, "")
        except ProtocolError as exc:
            assert exc.code == "invalid_value"
        else:
            assert entry.expires is not None and entry.expires > T
            assert re.fullmatch(r"[^\s,]+", entry.mask)
    try:
        check_key(key)
    except ProtocolError as exc:
        assert exc.code == "invalid_value"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_stored_text_gives_a_policy(text: str) -> None:
    RoomPolicy.from_json(text).to_json()
