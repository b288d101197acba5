"""Room policy: operators, modes, bans, mutes and invitations (sans-I/O; protocol.md §14).

One `RoomPolicy` per room. It is fed who asks (`Who`, built by the broker from the
member) and the time in ms; it reads no clock and touches no store. What must outlive
the server (modes, bans, mutes, account operators and account invitations) round-trips
through `to_json()` / `from_json()`; a guest's operator status or invitation belongs to
its session (a principal `s:TOKEN`) and is never stored, because a guest's nick is free
for anyone to take once the session ends.

The broker and a parent-side caller (the admin socket) use the same methods: a server
operator is simply a `Who` with `server_op` set.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from chatd.protocol import MAX_REASON, NICK_CHARS, NICK_RE, ProtocolError, check_line, nick_key

log = logging.getLogger("chatd.moderation")
MAX_ENTRIES = 100  # bans, mutes, operators and invitations: each, per room
MAX_MASK = 64  # characters of a nick pattern
MAX_KEY = 32  # characters of a room key
MAX_DURATION = 366 * 86400  # seconds a ban or mute may last (longer: give none)
INVITE_MS = 86_400_000  # an invitation not used within a day lapses
MASK_RE = re.compile(rf"[{NICK_CHARS}*?]{{1,{MAX_MASK}}}\Z")
KEY_RE = re.compile(rf"[\x21-\x2b\x2d-\x7e]{{1,{MAX_KEY}}}\Z")  # printable ASCII, no comma
KINDS = ("nick", "account")  # what an entry matches: a nick pattern, or an account


@dataclass(frozen=True, slots=True)
class Who:
    """Whoever acts or is acted on: a session's nick and identity."""

    nick: str
    token: str  # the session's token: a guest's identity
    account: str | None = None
    server_op: bool = False

    @property
    def principal(self) -> str:
        """Who holds a right: an account (stored), or a guest's session (never stored)."""
        return f"a:{nick_key(self.account)}" if self.account else f"s:{self.token}"


def check_mask(kind: str, value: str) -> str:
    """A ban or mute target: a nick pattern (`*` any run, `?` one character) or an
    account name. Raises invalid_value."""
    if kind == "account":
        if not NICK_RE.match(value):
            raise ProtocolError("invalid_value", "account must be a valid nick (§3)")
        return value
    if not MASK_RE.match(value):
        raise ProtocolError("invalid_value", f"nick pattern must be 1-{MAX_MASK} characters "
                            "of the nick alphabet, * and ?")
    return value


def check_key(key: str) -> str:
    """A room key ("" clears it)."""
    if key and not KEY_RE.match(key):
        raise ProtocolError("invalid_value", f"key must be 1-{MAX_KEY} printable ASCII "
                            "characters without space or comma")
    return key


def check_duration(duration: int | None) -> int | None:
    if duration is not None and not 1 <= duration <= MAX_DURATION:
        raise ProtocolError("invalid_value", f"duration must be 1 to {MAX_DURATION} seconds")
    return duration


def pattern_re(pattern: str) -> re.Pattern[str]:
    """A nick pattern as a regular expression over nick keys (§3: look-alikes are one)."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c)
             for c in nick_key(pattern)]
    return re.compile("".join(parts) + r"\Z", re.S)


@dataclass(slots=True)
class Entry:
    """One ban or mute."""

    kind: str  # "nick" (a pattern) or "account"
    mask: str
    by: str
    ts: int
    expires: int | None = None
    reason: str = ""
    _re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @property
    def ident(self) -> tuple[str, str]:
        return self.kind, nick_key(self.mask)

    def live(self, now: int) -> bool:
        return self.expires is None or now < self.expires

    def matches(self, who: Who) -> bool:
        if self.kind == "account":
            return who.account is not None and nick_key(who.account) == nick_key(self.mask)
        if self._re is None:
            self._re = pattern_re(self.mask)
        return self._re.match(nick_key(who.nick)) is not None

    def wire(self) -> dict[str, Any]:
        """As protocol.md §14 shows an entry (in `bans` and in events)."""
        out: dict[str, Any] = {self.kind: self.mask, "by": self.by, "ts": self.ts}
        if self.expires is not None:
            out["expires"] = self.expires
        if self.reason:
            out["reason"] = self.reason
        return out

    def stored(self) -> dict[str, Any]:
        return {"kind": self.kind, "mask": self.mask, "by": self.by, "ts": self.ts,
                "expires": self.expires, "reason": self.reason}


@dataclass(slots=True)
class RoomPolicy:
    invite_only: bool = False
    key: str = ""
    topic_lock: bool = False
    operators: set[str] = field(default_factory=set)  # principals
    bans: dict[tuple[str, str], Entry] = field(default_factory=dict)
    mutes: dict[tuple[str, str], Entry] = field(default_factory=dict)
    invites: dict[str, int] = field(default_factory=dict)  # principal -> expiry (ms)

    # ---- questions ----

    def is_operator(self, who: Who) -> bool:
        return who.server_op or who.principal in self.operators

    def banned(self, who: Who, now: int) -> Entry | None:
        return _match(self.bans, who, now)

    def check_speak(self, who: Who, now: int, room: str) -> None:
        """Raise banned or muted when `who` may not speak in the room (operators may)."""
        if not (self.bans or self.mutes) or self.is_operator(who):  # most rooms: at once
            return
        for code, table in (("banned", self.bans), ("muted", self.mutes)):
            entry = _match(table, who, now)
            if entry is not None:
                until = _left(entry, now)
                raise ProtocolError(code, f"you are {code} in {room}{until}")

    def require_operator(self, who: Who, room: str) -> None:
        if not self.is_operator(who):
            raise ProtocolError("not_operator", f"you are not an operator of {room}")

    def stored_anything(self) -> bool:
        """Whether there is anything worth keeping in the store."""
        return bool(self.to_stored() != _EMPTY)

    # ---- joining ----

    def admit(self, who: Who, key: str | None, now: int, room: str, creating: bool) -> bool:
        """May `who` join? Raises banned / invite_only / bad_key (in that order). When the
        room is being created (nobody is in it), the operators whose sessions are gone are
        forgotten, and a room left without any goes to its creator, whom invite-only and
        the key do not stop (bans do). Returns whether `who` has just become operator."""
        if creating:
            self.operators = {p for p in self.operators if p.startswith("a:")}
        if self.is_operator(who):
            self.invites.pop(who.principal, None)
            return False
        ban = self.banned(who, now)
        if ban is not None:
            until = _left(ban, now)
            why = f": {ban.reason}" if ban.reason else ""
            raise ProtocolError("banned", f"you are banned from {room}{until}{why}")
        if creating and not self.operators:
            self.operators.add(who.principal)
            self.invites.pop(who.principal, None)
            return True
        expiry = self.invites.pop(who.principal, None)
        invited = expiry is not None and now < expiry
        if self.invite_only and not invited:
            raise ProtocolError("invite_only", f"{room} is invite-only: an operator must "
                                "invite you")
        if self.key and key != self.key and not invited:
            raise ProtocolError("bad_key", f"{room} needs a key: join with the right 'key'")
        return False

    def moved(self, old: Who, new: Who) -> None:
        """`new` took `old`'s session over (chatd/takeover.py): a guest's rights (operator,
        an invitation) go with it. An account's are the account's already."""
        if old.principal in self.operators:
            self.operators.discard(old.principal)
            self.operators.add(new.principal)
        if old.principal in self.invites:
            self.invites[new.principal] = self.invites.pop(old.principal)

    def left(self, who: Who) -> None:
        """`who` left the room: a guest's operator status goes with it."""
        if not who.account:
            self.operators.discard(who.principal)

    # ---- changes (the caller has checked the actor is an operator) ----

    def grant(self, who: Who) -> bool:
        """Make `who` an operator; False if it was one already."""
        if who.principal in self.operators:
            return False
        _room_for(self.operators, "operators")
        self.operators.add(who.principal)
        return True

    def revoke(self, who: Who) -> bool:
        if who.principal not in self.operators:
            return False
        self.operators.discard(who.principal)
        return True

    def invite(self, who: Who, now: int) -> None:
        self._expire(now)
        if who.principal not in self.invites:
            _room_for(self.invites, "invitations")
        self.invites[who.principal] = now + INVITE_MS

    def add(self, which: str, entry: Entry, now: int) -> None:
        """Add (or replace) a ban or mute (`which`: "bans" or "mutes")."""
        table = self._table(which)
        self._expire(now)
        if entry.ident not in table:
            _room_for(table, which)
        table[entry.ident] = entry

    def remove(self, which: str, kind: str, mask: str, now: int, room: str) -> Entry:
        table = self._table(which)
        self._expire(now)
        entry = table.pop((kind, nick_key(mask)), None)
        if entry is None:
            noun = "ban" if which == "bans" else "mute"
            raise ProtocolError("invalid_value", f"{room} has no {noun} on {kind} {mask}")
        return entry

    def set_modes(self, invite_only: bool | None, key: str | None,
                  topic_lock: bool | None) -> dict[str, Any]:
        """Apply the modes given; returns the event fields of what was asked."""
        change: dict[str, Any] = {}
        if invite_only is not None:
            self.invite_only = change["invite_only"] = invite_only
        if key is not None:
            self.key = key
            change["keyed"] = bool(key)
        if topic_lock is not None:
            self.topic_lock = change["topic_lock"] = topic_lock
        return change

    def entries(self, now: int) -> list[dict[str, Any]]:
        """Bans, then mutes, each in the order they were set: what `bans` lists."""
        self._expire(now)
        return ([{"list": "ban", **e.wire()} for e in self.bans.values()]
                + [{"list": "mute", **e.wire()} for e in self.mutes.values()])

    def copy(self) -> RoomPolicy:
        return copy.deepcopy(self)

    def _table(self, which: str) -> dict[tuple[str, str], Entry]:
        return self.bans if which == "bans" else self.mutes

    def _expire(self, now: int) -> None:
        for table in (self.bans, self.mutes):
            for ident in [i for i, e in table.items() if not e.live(now)]:
                del table[ident]
        for principal in [p for p, t in self.invites.items() if t <= now]:
            del self.invites[principal]

    # ---- the store ----

    def to_stored(self) -> dict[str, Any]:
        return {"invite_only": self.invite_only, "key": self.key, "topic_lock": self.topic_lock,
                "operators": sorted(p for p in self.operators if p.startswith("a:")),
                "bans": [e.stored() for e in self.bans.values()],
                "mutes": [e.stored() for e in self.mutes.values()],
                "invites": {p: t for p, t in self.invites.items() if p.startswith("a:")}}

    def to_json(self) -> str:
        return json.dumps(self.to_stored(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None, room: str = "") -> RoomPolicy:
        """The stored policy; one that cannot be read (damaged, or written by a newer
        chatd) becomes an empty policy with a log line, never a parent crash."""
        policy = cls()
        if not text:
            return policy
        try:
            doc = json.loads(text)
            policy.invite_only = bool(doc.get("invite_only", False))
            policy.key = check_key(str(doc.get("key", "")))
            policy.topic_lock = bool(doc.get("topic_lock", False))
            policy.operators = {str(p) for p in doc.get("operators", [])
                                if str(p).startswith("a:")}
            for which in ("bans", "mutes"):
                table = policy._table(which)
                for raw in doc.get(which, []):
                    entry = _entry(raw)
                    table[entry.ident] = entry
            policy.invites = {str(p): int(t) for p, t in doc.get("invites", {}).items()
                              if str(p).startswith("a:")}
        except (ValueError, TypeError, AttributeError, KeyError, ProtocolError) as exc:
            log.error("room %s: stored moderation policy unreadable (%s); starting it empty",
                      room, exc)
            return cls()
        return policy


def make_entry(kind: str, mask: str, by: str, now: int, duration: int | None,
               reason: str) -> Entry:
    """A ban or mute from a request's fields (checked: invalid_value)."""
    check_mask(kind, mask)
    check_duration(duration)
    check_line(reason, "reason", MAX_REASON)
    expires = now + duration * 1000 if duration is not None else None
    return Entry(kind, mask, by, now, expires, reason)


def _entry(raw: dict[str, Any]) -> Entry:
    kind = str(raw["kind"])
    if kind not in KINDS:
        raise ValueError(f"unknown entry kind {kind!r}")
    expires = raw.get("expires")
    return Entry(kind, check_mask(kind, str(raw["mask"])), str(raw["by"]), int(raw["ts"]),
                 None if expires is None else int(expires), str(raw.get("reason", "")))


def _left(entry: Entry, now: int) -> str:
    """How much longer an entry lasts, for an error message."""
    if entry.expires is None:
        return ""
    seconds = max(1, -(-(entry.expires - now) // 1000))
    return f" for {seconds} more second{'s' if seconds != 1 else ''}"


def _match(table: dict[tuple[str, str], Entry], who: Who, now: int) -> Entry | None:
    for entry in table.values():
        if entry.live(now) and entry.matches(who):
            return entry
    return None


def _room_for(table: dict[Any, Any] | set[str], what: str) -> None:
    if len(table) >= MAX_ENTRIES:
        raise ProtocolError("list_full", f"a room has at most {MAX_ENTRIES} {what}",
                            limit="max_entries")


_EMPTY = RoomPolicy().to_stored()
