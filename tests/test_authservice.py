"""The auth helper's logic (sans-I/O) and its brute-force limits, with an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import scramp

from chatd import accounts
from chatd.accounts import AccountStore
from chatd.authlimit import BucketTable, FailureLimiter, LimitSettings, address_key
from chatd.authservice import AuthService, AuthSettings

FAST = 4096
PASSWORD = "correct horse battery"
LIMITS = LimitSettings(account_burst=3, account_rate=0.1, address_burst=5, address_rate=0.5,
                       register_burst=2, register_rate=0.01, table_size=100)


class Helper:
    """An AuthService with a clock the test moves, and a counter of password hashes."""

    def __init__(self, service: AuthService) -> None:
        self.service = service
        self.now = 1000.0
        self.ids = 0

    def __call__(self, op: str, **fields: Any) -> dict[str, Any]:
        self.ids += 1
        reply = self.service.handle({"id": self.ids, "op": op, **fields}, self.now, 5)
        assert reply["id"] == self.ids
        return reply

    def plain(self, name: str, password: str, ip: str = "192.0.2.1") -> dict[str, Any]:
        return self("plain", data=f"\0{name}\0{password}".encode(), ip=ip)

    def scram(self, name: str, password: str, ex: int, ip: str = "192.0.2.1"
              ) -> dict[str, Any]:
        client = scramp.ScramClient(["SCRAM-SHA-256"], name, password)
        first = self("scram_start", ex=ex, data=client.get_client_first().encode(), ip=ip)
        if not first["ok"]:
            return first
        client.set_server_first(first["data"].decode())
        final = self("scram_finish", ex=ex, data=client.get_client_final().encode())
        if final["ok"]:
            client.set_server_final(final["data"].decode())
        return final


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the PBKDF2 derivations (each is one make_verifier call)."""
    calls: list[int] = []
    real = accounts.make_verifier

    def counted(*args: Any, **kwargs: Any) -> accounts.Verifier:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(accounts, "make_verifier", counted)
    return calls


@pytest.fixture
def helper(tmp_path: Path) -> Iterator[Helper]:
    store = AccountStore(tmp_path / "accounts.sqlite3", FAST)
    h = Helper(AuthService(store, AuthSettings(iterations=FAST, limits=LIMITS,
                                               max_exchanges=4, exchange_timeout=30.0)))
    assert h("register", account="alice", password=PASSWORD, ip="198.51.100.7")["ok"]
    yield h
    store.close()


def test_logins_by_both_mechanisms(helper: Helper) -> None:
    assert helper.plain("ALICE", PASSWORD) == {"id": helper.ids, "ok": True,
                                               "account": "alice"}
    reply = helper.scram("alice", PASSWORD, ex=1)
    assert reply["ok"] and reply["account"] == "alice"
    assert helper("owner", nick="A1ICE")["account"] == "alice"
    assert helper("owner", nick="bob")["account"] is None
    assert helper("stats")["accounts"] == 1


def test_failures_do_not_say_whether_the_account_exists(helper: Helper,
                                                        hashes: list[int]) -> None:
    wrong = helper.plain("alice", "not it")
    unknown = helper.plain("nobody", "not it")
    assert len(hashes) == 2  # the unknown account was hashed too, against a decoy
    for reply in (wrong, unknown):
        del reply["id"]
    assert wrong == unknown == {"ok": False, "code": "auth_failed",
                                "message": "invalid credentials or no such account"}
    wrong = helper.scram("alice", "not it", ex=1)
    unknown = helper.scram("nobody", "not it", ex=2)
    for reply in (wrong, unknown):
        del reply["id"]
    assert wrong == unknown
    assert wrong["code"] == "auth_failed"


def test_failed_logins_are_limited_per_account(helper: Helper, hashes: list[int]) -> None:
    for i in range(LIMITS.account_burst):  # from many addresses: still one account
        assert helper.plain("alice", "guess", ip=f"203.0.113.{i}")["code"] == "auth_failed"
    hashed = len(hashes)
    refused = helper.plain("alice", PASSWORD, ip="203.0.113.99")
    assert refused["code"] == "rate_limited" and refused["limit"] == "login"
    assert refused["retry_after"] == pytest.approx(1 / LIMITS.account_rate)
    assert len(hashes) == hashed  # refused before any password work
    assert helper.scram("alice", PASSWORD, ex=1)["code"] == "rate_limited"
    # An unknown account is limited exactly alike (the limit tells nothing either).
    for i in range(LIMITS.account_burst):
        assert helper.plain("nobody", "guess", ip=f"203.0.113.{i}")["code"] == "auth_failed"
    assert helper.plain("nobody", "guess", ip="203.0.113.99")["code"] == "rate_limited"
    # Another account is not affected, and the bucket refills.
    assert helper("register", account="bob", password=PASSWORD, ip="198.51.100.8")["ok"]
    assert helper.plain("bob", PASSWORD, ip="203.0.113.99")["ok"]
    helper.now += refused["retry_after"]
    assert helper.plain("alice", PASSWORD, ip="203.0.113.99")["ok"]


def test_failed_logins_are_limited_per_address(helper: Helper) -> None:
    ip = "2001:db8:1:2::1"
    for i in range(LIMITS.address_burst):  # each a different account, one /64
        reply = helper.plain(f"user{i}", "guess", ip=f"2001:db8:1:2::{i + 1:x}")
        assert reply["code"] == "auth_failed"
    assert helper.plain("alice", PASSWORD, ip=ip)["code"] == "rate_limited"
    assert helper.plain("alice", PASSWORD, ip="2001:db8:1:3::1")["ok"]  # another /64
    helper.now += 1 / LIMITS.address_rate
    assert helper.plain("alice", PASSWORD, ip=ip)["ok"]


def test_a_failed_scram_exchange_counts(helper: Helper) -> None:
    for ex in range(LIMITS.account_burst):
        assert helper.scram("alice", "guess", ex=ex)["code"] == "auth_failed"
    assert helper.plain("alice", PASSWORD)["code"] == "rate_limited"


def test_registrations_are_limited_per_address(helper: Helper, hashes: list[int]) -> None:
    ip = "192.0.2.50"
    assert helper("register", account="bob", password=PASSWORD, ip=ip)["ok"]
    taken = helper("register", account="B0B", password=PASSWORD, ip=ip)
    assert taken["code"] == "account_exists"
    refused = helper("register", account="carol", password=PASSWORD, ip=ip)
    assert refused["code"] == "rate_limited" and refused["limit"] == "register"
    assert len(hashes) == 1  # bob's only
    assert helper("owner", nick="carol")["account"] is None


@pytest.mark.parametrize(("fields", "code"), [
    ({"account": "9lives", "password": PASSWORD}, "invalid_account"),
    ({"account": "carol", "password": "short"}, "invalid_password"),
])
def test_register_errors(helper: Helper, fields: dict[str, str], code: str) -> None:
    assert helper("register", ip="192.0.2.9", **fields)["code"] == code


def test_exchanges_are_bounded_and_time_out(helper: Helper) -> None:
    clients = []
    for ex in range(4):
        client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
        assert helper("scram_start", ex=ex, data=client.get_client_first().encode(),
                      ip="192.0.2.1")["ok"]
        clients.append(client)
    extra = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    full = helper("scram_start", ex=9, data=extra.get_client_first().encode(), ip="192.0.2.1")
    assert full["code"] == "auth_unavailable"
    assert helper("scram_abort", ex=0)["ok"]
    assert helper.service.next_deadline() == pytest.approx(helper.now + 30.0)
    helper.now += 30.0
    helper.service.expire(helper.now)
    assert helper("stats")["exchanges"] == 0
    assert helper("scram_finish", ex=1, data=b"c=biws,r=x,p=AAAA")["code"] == "no_exchange"
    # a reused id while open is the parent's bug, not the client's
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    first = client.get_client_first().encode()
    assert helper("scram_start", ex=5, data=first, ip="192.0.2.1")["ok"]
    assert helper("scram_start", ex=5, data=first, ip="192.0.2.1")["code"] == "bad_request"


@pytest.mark.parametrize("request_", [
    None, [], {"op": "stats"}, {"id": True, "op": "stats"}, {"id": 1},
    {"id": 1, "op": "frobnicate"}, {"id": 1, "op": "plain", "data": "text", "ip": "x"},
    {"id": 1, "op": "scram_abort", "ex": False},
])
def test_bad_requests_from_the_parent(helper: Helper, request_: Any) -> None:
    reply = helper.service.handle(request_, helper.now, 0)
    assert reply["code"] == "bad_request"


def test_a_failing_database_is_storage_unavailable(helper: Helper) -> None:
    helper.service.store.db.close()
    assert helper.plain("alice", PASSWORD)["code"] == "storage_unavailable"
    assert helper("owner", nick="alice")["code"] == "storage_unavailable"


def test_address_keys() -> None:
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8::1") == address_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an address") == "not an address"


def test_bucket_tables_are_bounded() -> None:
    table = BucketTable(rate=1.0, burst=2, size=3)
    for key in "abc":
        table.charge(key, 0.0)
    table.charge("d", 0.0)  # nothing has refilled: the oldest goes, and that is counted
    assert list(table.buckets) == ["b", "c", "d"] and table.evicted_live == 1
    table.charge("c", 0.5)
    table.charge("e", 1.0)  # b and d refilled by now and are dropped first, for free
    assert list(table.buckets) == ["c", "e"] and table.evicted_live == 1
    assert len(table) == 2


def test_a_long_name_cannot_make_a_large_key() -> None:
    limiter = FailureLimiter(LIMITS)
    limiter.login_failed("x" * 2000, "192.0.2.1", 0.0)
    assert max(map(len, limiter.accounts.buckets)) <= 64


def test_register_verifier_through_the_service(helper: Helper, hashes: list[int]) -> None:
    salt, stored, server, count = scramp.ScramMechanism("SCRAM-SHA-256").make_auth_info(
        PASSWORD, iteration_count=FAST, salt=b"0123456789abcdef")
    hashes.clear()
    fields = {"salt": salt, "iterations": count, "stored_key": stored, "server_key": server,
              "ip": "192.0.2.60"}
    assert helper("register_verifier", account="bob", **fields) == {
        "id": helper.ids, "ok": True, "account": "bob"}
    assert hashes == []  # nothing to hash: the client did it
    assert helper.scram("bob", PASSWORD, ex=1)["account"] == "bob"
    # A malformed verifier is refused before the limit (it costs no token) ...
    assert helper("register_verifier", account="bob2", **{**fields, "iterations": 10}
                  )["code"] == "invalid_password"
    assert helper("register_verifier", account="bob3", **fields)["ok"]
    # ... and the limit comes before the database: existence is not probed past it.
    assert helper("register_verifier", account="bob", **fields)["code"] == "rate_limited"


def test_a_bug_fails_one_request_not_the_helper(helper: Helper,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    assert helper("scram_start", ex=1, data=client.get_client_first().encode(),
                  ip="192.0.2.1")["ok"]

    def broken(self: object, req: object, now: float, now_ms: int) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(AuthService, "_owner", broken)
    assert helper("owner", nick="alice")["code"] == "auth_unavailable"
    assert helper("stats")["exchanges"] == 1  # the exchange in progress lives on


def test_a_cluster_hosts_helper_shares_records_and_stores_the_clusters(helper: Helper
                                                                        ) -> None:
    """register with `share` returns the record; get_record gives it again; put_account
    stores another host's account (which then logs in); drop_account withdraws a
    registration only while it is still the same."""
    made = helper("register", account="carol", password="carol's password",
                  ip="198.51.100.8", share=True)
    assert made["ok"] and made["record"].startswith("carol ")
    assert helper("get_record", account="CAROL")["record"] == made["record"]
    assert helper("get_record", account="nobody")["code"] == "no_such_account"
    other = accounts.record(accounts.Account(
        "dave", "dave", 5, accounts.make_verifier("dave's password", FAST)))
    assert helper("put_account", record=other)["ok"]
    assert helper.plain("dave", "dave's password")["account"] == "dave"
    assert helper("put_account", record="dave 5 x")["code"] == "invalid_account"
    assert helper("drop_account", record=made["record"])["ok"]
    assert helper("get_record", account="carol")["code"] == "no_such_account"
