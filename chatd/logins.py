"""`register`, `login` and `auth` in the broker (sans-I/O; protocol.md §12.3).

The password work is the auth helper's (chatd.authhelper): these requests become helper
requests in `requests` (the parent adds the client's address, which it knows from
accept(), and sends them), and the helper's replies come back through `done()`. Until a
reply comes, the session holds back what its client sent after the request (they are
CATCHUP requests: answered with a DONE control), so a `hello` pipelined behind a `login`
sees how the login ended.

What this module trusts: nothing from the helper but what it checks here (a reply's
fields have the right types and a known code), and nothing from a session: who logs in
is decided by the helper's answer, for the session whose channel the request came on.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd import presence
from chatd import protocol as p
from chatd.accounts import KEY_BYTES, MAX_ITERATIONS
from chatd.channel import DONE
from chatd.protocol import ProtocolError, error_frame, pack
from chatd.sasl import MAX_MESSAGE, MECHANISMS
from chatd.sasl import SCRAM_SHA_256 as SCRAM
from chatd.store import StorageError

if TYPE_CHECKING:
    from chatd.broker import Broker, Member
    from chatd.clusteraccounts import SharedAccounts

log = logging.getLogger("chatd.broker")
Token = tuple[int, int]  # (session number, request serial)


@dataclass(slots=True)
class Asked:
    sid: int
    op: str
    label: Any
    ex: int = 0  # the SCRAM exchange (scram_start, scram_finish)
    nick: str = ""  # the nick key a register reserves
    record: str = ""  # put_account: the account (chatd.accounts.record)


class Logins:
    def __init__(self, broker: Broker) -> None:
        self.b = broker
        self.requests: list[tuple[Token, str, dict[str, Any]]] = []  # for the helper
        self.asked: dict[Token, Asked] = {}
        self.exchanges: dict[int, int] = {}  # sid -> its SCRAM exchange open in the helper
        self.reserved: dict[str, int] = {}  # nick key -> the session registering it
        self.available = False  # an auth helper runs (the parent says so)
        # A cluster host: registrations are shared through Redis, and the accounts other
        # hosts registered are stored in the helper (chatd/clusteraccounts.py).
        self.cluster: SharedAccounts | None = None
        self._serial = itertools.count(1)

    # ---- hooks of the broker ----

    def welcome(self, member: Member, welcome: dict[str, Any]) -> None:
        """welcome.account and welcome.auth (protocol.md §12.6)."""
        if member.account is not None:
            welcome["account"] = member.account
        welcome["auth"] = {"mechanisms": list(MECHANISMS) if member.tls else [SCRAM],
                           "iterations": self.b.config.accounts_iterations}

    def free(self, member: Member, nick: str) -> None:
        """Refuse a guest a nick that another session holds or registers, or that an
        account owns (refused up front: no guest ever holds an owned nick)."""
        key = self._unheld(member, nick)
        owner = self.b.directory.owned.get(key)
        if owner is not None:
            raise ProtocolError("nick_owned", f"the account {owner} owns the nick {nick!r}: "
                                "log in to use it")

    def _unheld(self, member: Member, nick: str) -> str:
        """The nick's key, unless another session holds the nick or is registering it."""
        key = p.nick_key(nick)
        holder = self.b.nicks.get(key)
        if (holder is not None and holder is not member) or \
                self.reserved.get(key, member.sid) != member.sid:
            raise ProtocolError("nick_taken", f"nick {nick!r} is in use")
        return key

    # ---- requests ----

    def register(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> bool:
        self._once(member)
        name = req["account"]
        if not p.NICK_RE.match(name):
            raise ProtocolError("invalid_account", "an account name follows the nick rules "
                                "(protocol.md §3)")
        if "password" in req and not member.tls:
            raise ProtocolError("tls_required", "register with a password only over TLS; "
                                "send a verifier instead (protocol.md §12.3)")
        key = self._unheld(member, name)
        self._up()
        share: dict[str, Any] = {}
        if self.cluster is not None:  # the record comes back, for Redis
            self.b.need_cluster()
            share["share"] = True
        if "password" in req:
            self._ask(member, "register", label, account=name, password=req["password"],
                      nick=key, **share)
        else:
            self._ask(member, "register_verifier", label, account=name, nick=key,
                      **_verifier(req["verifier"]), **share)
        self.reserved[key] = member.sid
        return True

    def login(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> bool:
        self._once(member)
        mechanism = req["mechanism"]
        offered = list(MECHANISMS) if member.tls else [SCRAM]
        if mechanism not in MECHANISMS:
            self.b.outbox[member.sid].append(error_frame(
                "invalid_mechanism", f"mechanisms offered here: {', '.join(offered)}",
                label=label, mechanisms=offered))
            return False
        if mechanism not in offered:
            raise ProtocolError("tls_required", "PLAIN only over TLS; use SCRAM-SHA-256")
        self._abandon(member.sid)
        self._up()
        data = req.get("data")
        if data is None:
            raise ProtocolError("invalid_auth", f"{mechanism}: `data` holds the initial "
                                "response")
        if mechanism == SCRAM:
            ex = next(self._serial)
            self.exchanges[member.sid] = ex
            self._ask(member, "scram_start", label, ex=ex, data=data)
        else:
            self._ask(member, "plain", label, data=data)
        return True

    def auth(self, member: Member, req: dict[str, Any], label: Any, now_ms: int) -> bool:
        self._up()
        ex = self.exchanges.pop(member.sid, None)
        if ex is None:
            raise ProtocolError("no_exchange", "no login exchange in progress: send login")
        self._ask(member, "scram_finish", label, ex=ex, data=req["data"])
        return True

    def _once(self, member: Member) -> None:
        if member.account is not None:
            raise ProtocolError("already_logged_in", f"logged in as {member.account} "
                                "already")

    def _up(self) -> None:
        if not self.available:
            raise ProtocolError("auth_unavailable", "the auth service is restarting: try "
                                "again shortly")

    def started(self) -> None:
        """An auth helper runs (again): what it must do for the cluster goes to it."""
        self.available = True
        if self.cluster is not None:
            self.cluster.started()

    def ask_helper(self, op: str, key: str, **fields: Any) -> None:
        """A request of no session (the cluster's: its reply goes to `cluster.done`)."""
        token = (0, next(self._serial))
        self.asked[token] = Asked(0, op, None, nick=key, record=fields.get("record", ""))
        self.requests.append((token, op, fields))

    def _ask(self, member: Member, op: str, label: Any, **fields: Any) -> None:
        asked = Asked(member.sid, op, label, fields.get("ex", 0), fields.pop("nick", ""))
        token = (member.sid, next(self._serial))
        self.asked[token] = asked
        self.requests.append((token, op, fields))

    def _abandon(self, sid: int) -> None:
        ex = self.exchanges.pop(sid, None)
        if ex is not None:
            self.requests.append(((sid, 0), "scram_abort", {"ex": ex}))

    # ---- the helper's side ----

    def done(self, token: Token, reply: Any, now_ms: int) -> None:
        """A reply of the helper to the request `token` (checked here)."""
        asked = self.asked.pop(token, None)
        if asked is None:
            return
        if asked.sid == 0:
            if self.cluster is not None:
                self.cluster.done(asked.op, asked.nick, asked.record, reply)
            return
        if asked.nick and self.reserved.get(asked.nick) == asked.sid:
            del self.reserved[asked.nick]
        member = self.b.members.get(asked.sid)
        if member is None or member.gone:
            if asked.op == "scram_start" and isinstance(reply, dict) and reply.get("ok"):
                self.requests.append(((asked.sid, 0), "scram_abort", {"ex": asked.ex}))
            return
        out = self.b.outbox[asked.sid]
        try:
            ok, account, data = _check(reply)
            if not ok:
                if asked.op == "scram_start" and self.exchanges.get(asked.sid) == asked.ex:
                    del self.exchanges[asked.sid]
                out.append(_error(reply, asked.label))
            elif asked.op == "scram_start":
                if data is None:
                    raise ProtocolError("invalid_value", "scram_start: no 'data'")
                out.append(pack(_labelled({"type": "auth", "data": data}, asked.label)))
            elif self.cluster is not None and asked.op.startswith("register"):
                text = reply.get("record")
                if not isinstance(text, str) or len(text) > 512:
                    raise ProtocolError("invalid_value", "'record' is a short str")
                if asked.nick:  # still reserved until the cluster has answered
                    self.reserved[asked.nick] = asked.sid
                self.b.share_account(member, text, (asked, data), now_ms)
                return  # the cluster's answer (cluster.py) ends it: registered()
            else:
                self._logged_in(member, account, data, asked, now_ms)
        except ProtocolError as exc:  # the helper broke the rules: this request fails
            log.error("auth helper: bad reply to %s: %s", asked.op, exc.message)
            out.append(error_frame("auth_unavailable", label=asked.label))
        out.append(DONE)

    def registered(self, member: Member, name: str, pending: Any, error: bytes | None,
                   now_ms: int) -> None:
        """The cluster's answer to a registration the helper made (share_account):
        the session is logged in to it, or told `error`."""
        asked, data = pending
        if asked.nick and self.reserved.get(asked.nick) == asked.sid:
            del self.reserved[asked.nick]
        if member.gone or asked.sid not in self.b.members:
            return
        out = self.b.outbox[asked.sid]
        if error is not None:
            out.append(error)
        else:
            try:
                self._logged_in(member, name, data, asked, now_ms)
            except ProtocolError as exc:
                out.append(p.error_from(exc, asked.label))
        out.append(DONE)

    def lost(self) -> None:
        """The helper died: every request in flight fails, every exchange is gone."""
        for asked in self.asked.values():
            if asked.sid in self.b.members:
                self.b.outbox[asked.sid].extend((error_frame(
                    "auth_unavailable", "the auth service restarted: try again",
                    label=asked.label), DONE))
        self.asked.clear()
        self.exchanges.clear()
        self.reserved.clear()
        self.requests.clear()
        if self.cluster is not None:
            self.cluster.lost()

    def forget(self, sid: int) -> None:
        """The session is gone."""
        self._abandon(sid)
        for key in [k for k, s in self.reserved.items() if s == sid]:
            del self.reserved[key]

    def take(self) -> list[tuple[Token, str, dict[str, Any]]]:
        requests, self.requests = self.requests, []
        return requests

    # ---- a session logs in ----

    def _logged_in(self, member: Member, name: str, data: bytes | None, asked: Asked,
                   now_ms: int) -> None:
        b = self.b
        key = p.nick_key(name)
        holder = b.nicks.get(key)
        if holder is not None and holder is not member and holder.account is None:
            # Only if a registration's record was lost: a guest holds the owned nick.
            raise ProtocolError("nick_taken", f"a guest holds {name!r}: try again later")
        registered = asked.op.startswith("register")
        if registered or b.directory.owned.get(key) != name:
            try:  # the owned record follows the helper's; a login heals a lost one
                b.store.own(name)
            except StorageError as exc:
                log.error("cannot record that %s owns its nick: %s", name, exc.message)
        b.directory.logged_in(member, name)
        b.restate.add(member.sid)  # who it is changed (its signed state: chatd/orphan.py)
        if b._banned(member, name, now_ms):  # a server ban on the account (chatd admin)
            return
        log.info("session %s logged in as %s", member.token, name)
        if member.nick is not None:  # after its welcome: its rooms are told
            b.rename(member, name, None, now_ms)
            event = pack({"type": "account", "nick": name, "account": name, "ts": now_ms})
            for sid in presence.sharing(b, member):
                b.outbox[sid].append(event)
        b.history.took_nick(member.sid)  # the account's direct messages come live now
        frame: dict[str, Any] = {"type": "registered" if registered else "logged_in",
                                 "account": name, "nick": name}
        if data:
            frame["data"] = data
        b.outbox[member.sid].append(pack(_labelled(frame, asked.label)))


def _labelled(frame: dict[str, Any], label: Any) -> dict[str, Any]:
    if label is not None:
        frame["label"] = label
    return frame


def _verifier(value: dict[Any, Any]) -> dict[str, Any]:
    """A `register` verifier's fields, of the right types (the helper checks the rest)."""
    out: dict[str, Any] = {k: value.get(k)
                           for k in ("salt", "iterations", "stored_key", "server_key")}
    good = (all(isinstance(out[k], bytes) and len(out[k]) <= 64
                for k in ("salt", "stored_key", "server_key"))
            and isinstance(out["iterations"], int) and not isinstance(out["iterations"], bool)
            and 0 < out["iterations"] <= MAX_ITERATIONS)
    if not good or len(value) != 4:
        raise ProtocolError("invalid_password", f"a verifier is {{salt: bin, iterations: int, "
                            f"stored_key: bin, server_key: bin}} (keys of {KEY_BYTES} bytes)")
    return out


def _check(reply: Any) -> tuple[bool, str, bytes | None]:
    """(ok, account, data) of a helper reply; ProtocolError if it breaks the rules."""
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ProtocolError("invalid_value", "a reply is a map with a bool 'ok'")
    data = reply.get("data")
    if data is not None and not (isinstance(data, bytes) and len(data) <= MAX_MESSAGE):
        raise ProtocolError("invalid_value", "'data' is a short bin")
    if not reply["ok"]:
        code = reply.get("code")
        if not isinstance(code, str) or code not in p.ERRORS or p.ERRORS[code][0]:
            raise ProtocolError("invalid_value", f"unknown code {code!r}"[:60])
        return False, "", data
    account = reply.get("account", "")
    if account and not (isinstance(account, str) and p.NICK_RE.match(account)):
        raise ProtocolError("invalid_value", "'account' is a nick")
    return True, account, data


def _error(reply: dict[str, Any], label: Any) -> bytes:
    extra: dict[str, Any] = {}
    if isinstance(reply.get("data"), bytes):
        extra["data"] = reply["data"]
    if reply["code"] == "rate_limited":
        extra["limit"] = reply.get("limit") if reply.get("limit") in ("login", "register") \
            else "login"
        wait = reply.get("retry_after")
        if isinstance(wait, int | float) and not isinstance(wait, bool):
            extra["retry_after"] = wait
    message = reply.get("message")
    message = message[:200] if isinstance(message, str) else ""
    return error_frame(reply["code"], message or p.ERRORS[reply["code"]][1], label=label,
                       **extra)
