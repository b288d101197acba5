"""The auth helper's logic (sans-I/O): one request map in, one reply map out.

The requests come from the parent, which forwards what sessions ask and adds what only
it knows (the client's address, `ip`). Every request has an `id` (an int the parent
chooses) that its reply carries back; `op` says what to do:

| op                  | fields                                 | ok reply            |
|---------------------|----------------------------------------|---------------------|
| `register`          | account, password, ip                  | account (as stored) |
| `register_verifier` | account, salt, iterations, stored_key, | account             |
|                     | server_key, ip (SCRAM keys the client  |                     |
|                     | derived: no password on the wire)      |                     |
| `plain`             | data (a PLAIN message), ip             | account             |
| `scram_start`       | ex, data (client-first), ip            | data (server-first) |
| `scram_finish`      | ex, data (client-final)                | account, data       |
| `scram_abort`       | ex                                     | (nothing)           |
| `owner`             | nick                                   | account, or nil     |
| `stats`             |                                        | counts              |

A reply is `{"id": ID, "ok": true, ...}` or `{"id": ID, "ok": false, "code": C,
"message": M}`, with `retry_after` (seconds) for `rate_limited` and `data` (SCRAM's
`e=...`) for a failed `scram_finish`. The codes meant for the client are those of
protocol.md §12; `bad_request` is between the parent and the helper alone.
`ex` names a SCRAM exchange in progress: chosen by the parent, unique while it lasts.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from chatd.accounts import (
    DEFAULT_ITERATIONS,
    Account,
    AccountError,
    AccountStore,
    Verifier,
    check_account_name,
    check_new_password,
    check_password,
    check_verifier,
    from_record,
    record,
)
from chatd.authlimit import FailureLimiter, LimitSettings
from chatd.sasl import FAILED, AuthFailed, ScramExchange, parse_plain

log = logging.getLogger("chatd.auth")
_STR, _BIN, _INT = (str,), (bytes,), (int,)
OPS: dict[str, dict[str, tuple[type, ...]]] = {
    "register": {"account": _STR, "password": _STR, "ip": _STR},
    "register_verifier": {"account": _STR, "salt": _BIN, "iterations": _INT,
                          "stored_key": _BIN, "server_key": _BIN, "ip": _STR},
    "plain": {"data": _BIN, "ip": _STR},
    "scram_start": {"ex": _INT, "data": _BIN, "ip": _STR},
    "scram_finish": {"ex": _INT, "data": _BIN},
    "scram_abort": {"ex": _INT},
    "owner": {"nick": _STR},
    "put_account": {"record": _STR},
    "drop_account": {"record": _STR},
    "get_record": {"account": _STR},
    "stats": {},
}


@dataclass(frozen=True)
class AuthSettings:
    iterations: int = DEFAULT_ITERATIONS
    limits: LimitSettings = field(default_factory=LimitSettings)
    max_exchanges: int = 1024  # SCRAM exchanges open at once (each is a few hundred bytes)
    exchange_timeout: float = 60.0  # seconds from client-first to client-final


class BadRequest(Exception):
    """The parent sent something this helper does not understand (a bug, not a client)."""


@dataclass
class _Open:
    exchange: ScramExchange
    ip: str
    deadline: float


def error(rid: Any, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "ok": False, "code": code, "message": message, **extra}


class AuthService:
    def __init__(self, store: AccountStore, settings: AuthSettings | None = None) -> None:
        self.store = store
        self.settings = settings or AuthSettings()
        self.limiter = FailureLimiter(self.settings.limits)
        self.exchanges: dict[int, _Open] = {}

    def handle(self, request: Any, now: float, now_ms: int) -> dict[str, Any]:
        """Carry out one request at monotonic time `now` (wall clock `now_ms`)."""
        rid = request.get("id") if isinstance(request, dict) else None
        try:
            op = _check(request)
            return {"id": rid, "ok": True, **getattr(self, "_" + op)(request, now, now_ms)}
        except BadRequest as exc:
            log.error("bad request from the parent: %s", exc)
            return error(rid, "bad_request", str(exc))
        except AuthFailed as exc:
            extra = {"data": exc.data} if exc.data else {}
            return error(rid, exc.code, exc.message, **extra)
        except AccountError as exc:
            return error(rid, exc.code, exc.message)
        except _Limited as exc:
            return error(rid, "rate_limited", "too many attempts, try again later",
                         retry_after=round(exc.wait, 3), limit=exc.limit)
        except sqlite3.Error as exc:
            log.error("accounts database: %s", exc)
            return error(rid, "storage_unavailable", "the accounts database failed")
        except Exception:  # a bug: this request fails, the helper and its exchanges live on
            log.exception("auth request %r failed", request.get("op"))
            return error(rid, "auth_unavailable", "the auth service failed on this request")

    # ---- operations: each returns the fields of its ok reply ----

    # register: the name and the password's form first (free to check), then the limit
    # (a token per attempt, so existence cannot be probed fast), then the database.

    def _register(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        check_account_name(req["account"])
        check_new_password(req["password"])
        self._registering(req["ip"], now)
        account = self.store.register(req["account"], req["password"], now_ms)
        log.info("account %s registered", account.name)
        return _registered(account, req)

    def _register_verifier(self, req: dict[str, Any], now: float, now_ms: int
                           ) -> dict[str, Any]:
        verifier = Verifier(req["salt"], req["iterations"], req["stored_key"],
                            req["server_key"])
        check_account_name(req["account"])
        check_verifier(verifier, self.store.iterations)
        self._registering(req["ip"], now)
        account = self.store.register_verifier(req["account"], verifier, now_ms)
        log.info("account %s registered (verifier from the client)", account.name)
        return _registered(account, req)

    def _registering(self, ip: str, now: float) -> None:
        _limit(self.limiter.register_wait(ip, now), "register")
        self.limiter.registered(ip, now)

    def _plain(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        name, password = parse_plain(req["data"])
        _limit(self.limiter.login_wait(name, req["ip"], now), "login")
        # The same work for an unknown account: a decoy verifier, hashed all the same.
        verifier, account = self.store.verifier(name)
        if check_password(verifier, password) and account is not None:
            return {"account": account.name}
        self.limiter.login_failed(name, req["ip"], now)
        raise AuthFailed("auth_failed", FAILED)

    def _scram_start(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        ex = req["ex"]
        self._expire(now)
        if ex in self.exchanges:
            raise BadRequest(f"exchange {ex} is already open")
        if len(self.exchanges) >= self.settings.max_exchanges:
            raise AuthFailed("auth_unavailable", "too many logins in progress, try again")
        exchange = ScramExchange(self._lookup)
        server_first = exchange.start(req["data"])
        assert exchange.account is not None
        _limit(self.limiter.login_wait(exchange.account, req["ip"], now), "login")
        deadline = now + self.settings.exchange_timeout
        self.exchanges[ex] = _Open(exchange, req["ip"], deadline)
        return {"data": server_first}

    def _scram_finish(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        self._expire(now)
        entry = self.exchanges.pop(req["ex"], None)
        if entry is None:
            raise AuthFailed("no_exchange", "no SCRAM exchange in progress (it timed out "
                             "or the auth service restarted): start again")
        name = entry.exchange.account or ""
        try:
            name, server_final = entry.exchange.finish(req["data"])
        except AuthFailed:
            self.limiter.login_failed(name, entry.ip, now)
            raise
        account = self.store.get(name)
        if account is None:  # deleted while the exchange ran
            raise AuthFailed("auth_failed", FAILED, b"e=unknown-user")
        return {"account": account.name, "data": server_final}

    def _scram_abort(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        self.exchanges.pop(req["ex"], None)
        return {}

    def _put_account(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        account = from_record(req["record"])
        if self.store.put(account):
            log.info("account %s: stored as the cluster has it", account.name)
        return {"account": account.name}

    def _drop_account(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        account = from_record(req["record"])
        if self.store.drop(account):
            log.info("account %s: registration withdrawn (the cluster refused it)",
                     account.name)
        return {"account": account.name}

    def _get_record(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        account = self.store.get(req["account"])
        if account is None:
            raise AccountError("no_such_account", f"no account {req['account']!r}")
        return {"account": account.name, "record": record(account)}

    def _owner(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        return {"account": self.store.owner(req["nick"])}

    def _stats(self, req: dict[str, Any], now: float, now_ms: int) -> dict[str, Any]:
        lim = self.limiter
        return {"accounts": self.store.count(), "exchanges": len(self.exchanges),
                "limits": {"accounts": len(lim.accounts), "addresses": len(lim.addresses),
                           "registrations": len(lim.registrations),
                           "evicted_live": lim.accounts.evicted_live
                           + lim.addresses.evicted_live}}

    # ---- helpers ----

    def _lookup(self, name: str) -> tuple[Any, bool]:
        verifier, account = self.store.verifier(name)
        return verifier, account is not None

    def _expire(self, now: float) -> None:
        for ex in [ex for ex, entry in self.exchanges.items() if entry.deadline <= now]:
            del self.exchanges[ex]

    def next_deadline(self) -> float | None:
        """When the oldest open exchange times out (None: none open)."""
        return min((e.deadline for e in self.exchanges.values()), default=None)

    def expire(self, now: float) -> None:
        self._expire(now)


def _registered(account: Account, req: dict[str, Any]) -> dict[str, Any]:
    """A registration's reply; with `share` (a cluster host) its record, for Redis."""
    return {"account": account.name, **({"record": record(account)} if req.get("share")
                                        else {})}


class _Limited(Exception):
    def __init__(self, wait: float, limit: str) -> None:
        self.wait, self.limit = wait, limit


def _limit(wait: float, limit: str) -> None:
    if wait > 0.0:
        raise _Limited(wait, limit)


def _check(request: Any) -> str:
    if not isinstance(request, dict):
        raise BadRequest("a request is a map")
    if not isinstance(request.get("id"), int) or isinstance(request.get("id"), bool):
        raise BadRequest("a request needs an int 'id'")
    op = request.get("op")
    fields = OPS.get(op) if isinstance(op, str) else None
    if fields is None:
        raise BadRequest(f"unknown op {op!r}"[:80])
    for name, types in fields.items():
        if not isinstance(request.get(name), types) or isinstance(request.get(name), bool):
            raise BadRequest(f"{op}: field {name!r} must be {types[0].__name__}")
    assert isinstance(op, str)
    return op
