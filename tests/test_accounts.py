"""Accounts (issue 10 §1): stored verifiers, names, SCRAM-SHA-256 and PLAIN (sans-I/O)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import scramp

from chatd import accounts as acc
from chatd.accounts import AccountError, AccountStore
from chatd.sasl import AuthFailed, ScramExchange, parse_plain

FAST = 4096  # the least iteration count SCRAM allows: these tests are about logic, not cost
PASSWORD = "correct horse battery"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AccountStore]:
    db = AccountStore(tmp_path / "accounts.sqlite3", FAST)
    yield db
    db.close()


def scram_login(store: AccountStore, name: str, password: str
                ) -> tuple[str, scramp.ScramClient]:
    """A whole SCRAM exchange between scramp's client and our server side."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], name, password)
    exchange = ScramExchange(lambda n: (store.verifier(n)[0], store.get(n) is not None))
    client.set_server_first(exchange.start(client.get_client_first().encode()).decode())
    account, server_final = exchange.finish(client.get_client_final().encode())
    client.set_server_final(server_final.decode())  # the client checks the server too
    return account, client


def scram_failure(store: AccountStore, name: str, password: str) -> tuple[AuthFailed, str]:
    client = scramp.ScramClient(["SCRAM-SHA-256"], name, password)
    exchange = ScramExchange(lambda n: (store.verifier(n)[0], store.get(n) is not None))
    server_first = exchange.start(client.get_client_first().encode()).decode()
    client.set_server_first(server_first)
    with pytest.raises(AuthFailed) as info:
        exchange.finish(client.get_client_final().encode())
    return info.value, server_first


def test_register_then_log_in_by_either_mechanism(store: AccountStore) -> None:
    account = store.register("Alice", PASSWORD, 1234)
    assert (account.name, account.created) == ("Alice", 1234)
    assert acc.check_password(store.get("alice").verifier, PASSWORD)  # type: ignore[union-attr]
    assert scram_login(store, "Alice", PASSWORD)[0] == "Alice"


def test_look_alike_names_are_one_account(store: AccountStore) -> None:
    store.register("alice", PASSWORD, 0)
    for twin in ("ALICE", "a1ice", "a|ice", "aIice"):
        with pytest.raises(AccountError) as info:
            store.register(twin, "another password", 0)
        assert info.value.code == "account_exists"
        assert store.owner(twin) == "alice"
    assert store.owner("bob") is None
    assert store.count() == 1


@pytest.mark.parametrize("name", ["", "1abc", "-abc", "has space", "x" * 31, "é"])
def test_an_account_name_is_a_nick(store: AccountStore, name: str) -> None:
    with pytest.raises(AccountError) as info:
        store.register(name, PASSWORD, 0)
    assert info.value.code == "invalid_account"


@pytest.mark.parametrize("password", ["short", "", "x" * (acc.MAX_PASSWORD + 1), "bell\x07bell1"])
def test_bad_passwords_are_refused(store: AccountStore, password: str) -> None:
    with pytest.raises(AccountError) as info:
        store.register("alice", password, 0)
    assert info.value.code == "invalid_password"
    assert store.count() == 0


def test_passwords_are_saslprepped_alike_by_both_mechanisms(store: AccountStore) -> None:
    # U+00A0 (no-break space) maps to a space and U+00AD (soft hyphen) to nothing
    store.register("alice", "pass\u00a0word\u00ad123", 0)
    assert acc.check_password(store.get("alice").verifier, "pass word123")  # type: ignore[union-attr]
    assert scram_login(store, "alice", "pass word123")[0] == "alice"


def test_nothing_stored_holds_the_password(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite3"
    db = AccountStore(path, FAST)
    db.register("alice", PASSWORD, 0)
    db.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for name in os.listdir(tmp_path):
        blob = (tmp_path / name).read_bytes()
        assert PASSWORD.encode() not in blob
        assert PASSWORD.encode("utf-16-le") not in blob


def test_each_verifier_keeps_its_iteration_count(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite3"
    old = AccountStore(path, FAST)
    old.register("alice", PASSWORD, 0)
    old.close()
    new = AccountStore(path, FAST * 2)
    assert new.get("alice").verifier.iterations == FAST  # type: ignore[union-attr]
    assert scram_login(new, "alice", PASSWORD)[0] == "alice"
    new.set_password("alice", "a new password")
    assert new.get("alice").verifier.iterations == FAST * 2  # type: ignore[union-attr]
    assert scram_login(new, "alice", "a new password")[0] == "alice"
    with pytest.raises(AccountError):
        new.set_password("nobody", "a new password")
    new.close()


def test_wrong_password_and_unknown_account_look_the_same(store: AccountStore) -> None:
    store.register("alice", PASSWORD, 0)
    wrong, first_a = scram_failure(store, "alice", "not the password")
    unknown, first_u = scram_failure(store, "nobody", "not the password")
    assert (wrong.code, wrong.message, wrong.data) == (unknown.code, unknown.message,
                                                       unknown.data)
    assert wrong.code == "auth_failed" and wrong.data == b"e=invalid-proof"

    def salt_and_count(first: str) -> list[str]:
        return [part for part in first.split(",") if part[:2] in ("s=", "i=")]

    # An unknown name gets the same shape, and the same salt every time (a fresh one
    # each time would give it away), but not another name's.
    assert salt_and_count(scram_failure(store, "nobody", "x")[1]) == salt_and_count(first_u)
    assert salt_and_count(scram_failure(store, "nobody2", "x")[1]) != salt_and_count(first_u)
    assert salt_and_count(first_a)[1] == salt_and_count(first_u)[1] == f"i={FAST}"
    assert not acc.check_password(store.verifier("nobody")[0], "not the password")


def test_the_decoy_salt_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "accounts.sqlite3"
    one = AccountStore(path, FAST)
    salt = one.decoy("nobody").salt
    one.close()
    two = AccountStore(path, FAST)
    assert two.decoy("nobody").salt == salt == two.decoy("N0B0DY").salt
    two.close()


def test_a_decoy_never_logs_in_even_with_its_own_keys(store: AccountStore) -> None:
    """Belt and braces: the exchange refuses a non-account even if a proof matched."""
    decoy = acc.make_verifier("anything at all", FAST)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "ghost", "anything at all")
    exchange = ScramExchange(lambda n: (decoy, False))
    client.set_server_first(exchange.start(client.get_client_first().encode()).decode())
    with pytest.raises(AuthFailed) as info:
        exchange.finish(client.get_client_final().encode())
    assert info.value.code == "auth_failed"


@pytest.mark.parametrize("first", [b"", b"garbage", b"n,,n=alice", b"\xff\xfe",
                                   b"n,a=bob,n=alice,r=abc", b"n,,n=alice,r=" + b"a" * 3000])
def test_malformed_client_first_is_invalid_auth(store: AccountStore, first: bytes) -> None:
    exchange = ScramExchange(lambda n: (store.verifier(n)[0], False))
    with pytest.raises(AuthFailed) as info:
        exchange.start(first)
    assert info.value.code == "invalid_auth"
    with pytest.raises(AuthFailed):
        exchange.finish(b"c=biws,r=x,p=AAAA")


def test_a_malformed_client_final_fails_the_login(store: AccountStore) -> None:
    store.register("alice", PASSWORD, 0)
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    exchange = ScramExchange(lambda n: (store.verifier(n)[0], True))
    exchange.start(client.get_client_first().encode())
    with pytest.raises(AuthFailed) as info:
        exchange.finish(b"nonsense")
    assert info.value.code == "auth_failed"
    with pytest.raises(AuthFailed) as again:  # one exchange, one try
        exchange.finish(b"nonsense")
    assert again.value.code == "invalid_auth"


@pytest.mark.parametrize(("data", "expect"), [
    (b"\0alice\0pw", ("alice", "pw")),
    (b"alice\0alice\0pw", ("alice", "pw")),
    (b"\0alice\0p\xc3\xa9", ("alice", "p\u00e9")),
])
def test_plain_messages(data: bytes, expect: tuple[str, str]) -> None:
    assert parse_plain(data) == expect


@pytest.mark.parametrize("data", [b"", b"alice\0pw", b"\0\0pw", b"bob\0alice\0pw",
                                  b"\0alice\0pw\0more", b"\0alice\0\xff", b"\0a\0" + b"x" * 3000])
def test_bad_plain_messages_are_invalid_auth(data: bytes) -> None:
    with pytest.raises(AuthFailed) as info:
        parse_plain(data)
    assert info.value.code == "invalid_auth"


def test_register_with_a_verifier_the_client_made(store: AccountStore) -> None:
    """The password never crosses the wire: the client derives the SCRAM keys."""
    salt, stored, server, count = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        PASSWORD, iteration_count=FAST, salt=os.urandom(16))
    store.register_verifier("alice", acc.Verifier(salt, count, stored, server), 0)
    assert scram_login(store, "alice", PASSWORD)[0] == "alice"
    assert acc.check_password(store.get("alice").verifier, PASSWORD)  # type: ignore[union-attr]
    with pytest.raises(AccountError) as info:
        store.register_verifier("ALICE", acc.Verifier(salt, count, stored, server), 0)
    assert info.value.code == "account_exists"


@pytest.mark.parametrize(("salt", "count", "key"), [
    (b"s" * 16, FAST - 1, b"k" * 32),  # cheaper than the server's count
    (b"s" * 16, acc.MAX_ITERATIONS + 1, b"k" * 32),
    (b"s" * 15, FAST, b"k" * 32),
    (b"s" * 65, FAST, b"k" * 32),
    (b"s" * 16, FAST, b"k" * 20),
])
def test_a_verifier_of_the_wrong_shape_is_refused(store: AccountStore, salt: bytes,
                                                   count: int, key: bytes) -> None:
    with pytest.raises(AccountError) as info:
        store.register_verifier("alice", acc.Verifier(salt, count, key, key), 0)
    assert info.value.code == "invalid_password"
    assert store.count() == 0


def test_an_account_travels_as_a_record_to_another_hosts_store(tmp_path: Path) -> None:
    """A cluster: one host registers, another stores the record and logs the account in;
    a registration the cluster refused is withdrawn only while it is still the same."""
    here = AccountStore(tmp_path / "here.sqlite3", FAST)
    there = AccountStore(tmp_path / "there.sqlite3", FAST)
    made = here.register("Alice", PASSWORD, 1234)
    text = acc.record(made)
    assert PASSWORD not in text and acc.from_record(text) == made
    assert there.put(acc.from_record(text)) and not there.put(acc.from_record(text))
    assert scram_login(there, "Alice", PASSWORD)[0] == "Alice"
    mine = acc.from_record(acc.record(there.register("bob", "a password of bob", 1)))
    assert not there.drop(made.__class__(mine.name, mine.key, 1, made.verifier))
    assert there.drop(mine) and there.get("bob") is None
    for bad in ("", "alice 1 4096 zz 00 00", "9lives 1 4096 " + " ".join(["00" * 32] * 3),
                text.replace(" 4096 ", " 10 ")):
        with pytest.raises(AccountError):
            acc.from_record(bad)
    here.close()
    there.close()
