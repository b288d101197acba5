"""What the server sends, checked once on arrival (sans-I/O).

Every frame passes `check()` before a handler sees it. Each field a handler uses is checked
for its type and range, names must follow the protocol's rules (protocol.md §3), and every
string is made inert by the rule the server enforces (`safe_text`, `clean_line`), so nothing
later (screen, status bar, plain output, stderr) can be driven by a hostile or broken
server, and no handler meets a value it did not expect. What a frame cannot do without
(a message without a valid sender) drops the frame; anything else falls back to a safe
value. Either way `report` is told, so the user sees it. Fields not listed here are
dropped: handlers only ever see checked values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chatd.config import SETTINGS
from chatd.protocol import (
    DEFAULT_LIMITS,
    MAX_AWAY,
    MAX_LABEL,
    MAX_REASON,
    MAX_TOPIC,
    ProtocolError,
    check_nick,
    check_room,
    safe_text,
)

from .clock import TS_MAX, TS_MIN
from .safetext import clean_line

Frame = dict[str, Any]
Check = Callable[[Any], Any]
Report = Callable[[str, str], None]  # (what, text): `what` names the field, for deduplication
MAX_INT = 2**63 - 1
TS_MAX_MS = int(TS_MAX * 1000)


class Bad(Exception):
    """The value cannot be used."""


class Fixed(Exception):
    """The value was made usable: `value` replaces it, `why` says what was wrong."""

    def __init__(self, value: Any, why: str) -> None:
        super().__init__(why)
        self.value, self.why = value, why


_MISSING = object()


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False
    default: Any = _MISSING  # used when absent or unusable (a fresh copy of a list/dict)
    nullable: bool = False  # nil means absent (protocol: topic `by`/`ts` of a never-set topic)


# ---- value checks ----

def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise Bad(f"{type(value).__name__} where a string belongs")
    return value


def nick(value: Any) -> str:
    try:
        return check_nick(_str(value))
    except ProtocolError:
        raise Bad("not a valid nick") from None


def room(value: Any) -> str:
    try:
        return check_room(_str(value))
    except ProtocolError:
        raise Bad("not a valid room name") from None


def text(value: Any) -> str:
    """Message text (several lines allowed, tabs kept for the screen to lay out), shown by
    the rule the server enforces."""
    return safe_text(_str(value), multiline=True)


def line(limit: int) -> Check:
    """A one-line field (topic, reason, error message): inert, and at most `limit`
    characters (a longer one is cut, with a note)."""
    def check(value: Any) -> str:
        shown = clean_line(_str(value))
        if len(shown) > limit:
            raise Fixed(shown[:limit - 1] + "…", f"longer than {limit} characters")
        return shown
    return check


def integer(low: int, high: int = MAX_INT) -> Check:
    def check(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Bad(f"{type(value).__name__} where an integer belongs")
        if not low <= value <= high:
            raise Bad(f"{value} is out of range")
        return value
    return check


def number(low: float, high: float) -> Check:
    def check(value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise Bad(f"{type(value).__name__} where a number belongs")
        if not (math.isfinite(value) and low <= value <= high):
            raise Bad(f"{value} is out of range")
        return float(value)
    return check


def flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Bad(f"{type(value).__name__} where true/false belongs")
    return value


def timestamp(value: Any) -> int:
    """Milliseconds since the epoch, an integer. Any other number (1e20, NaN, 1.5) is made
    one a clock can show, clamped to the range of day lines (with a note): the message is
    still worth showing."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Bad(f"{type(value).__name__} where an integer belongs")
    if isinstance(value, int) and TS_MIN * 1000 <= value <= TS_MAX_MS:
        return value
    low = int(TS_MIN * 1000)
    if value != value:
        raise Fixed(low, "not a number")
    if not low <= value <= TS_MAX_MS:
        raise Fixed(int(min(max(value, low), TS_MAX_MS)), "out of range")
    raise Fixed(int(value), "not an integer")


def session_id(value: Any) -> str:
    """Sent back in the next hello: printable ASCII of a sane length only."""
    text = _str(value)
    if not (0 < len(text) <= MAX_LABEL and text.isascii() and text.isprintable()):
        raise Bad("not a usable session id")
    return text


def token(value: Any) -> str | int | bytes:
    """A ping token is echoed, never shown; only its type and size are checked."""
    if isinstance(value, bool) or not isinstance(value, str | int | bytes):
        raise Bad(f"{type(value).__name__} is not a token")
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise Bad("out of range")
    if isinstance(value, str | bytes) and len(value) > 256:
        raise Bad("longer than 256")
    return value


def list_of(check: Check, what: str) -> Check:
    """A list whose bad entries are left out (with a note); the good ones are kept."""
    def check_list(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise Bad(f"{type(value).__name__} where a list belongs")
        good, bad, fixes = [], [], []
        for item in value:
            try:
                good.append(check(item))
            except Fixed as fixed:
                good.append(fixed.value)
                fixes.append(fixed.why)
            except Bad as exc:
                bad.append(str(exc))
        notes = [f"{len(bad)} of {len(value)} {what} bad, left out (the first: {bad[0]})"
                 ] if bad else []
        notes += [f"{len(fixes)} of {len(value)} {what} fixed (the first: {fixes[0]})"
                  ] if fixes else []
        if notes:
            raise Fixed(good, "; ".join(notes))
        return good
    return check_list


def binary(value: Any) -> bytes:
    """A short bin (a SASL message: protocol.md §12)."""
    if not isinstance(value, bytes) or len(value) > 2048:
        raise Bad("not a bin of at most 2048 bytes")
    return value


def nick_map(check: Check, what: str) -> Check:
    """A map from nicks to values (member lists' `away`): bad entries are left out."""
    def entry(item: tuple[Any, Any]) -> tuple[str, Any]:
        key = nick(item[0])
        try:
            return key, check(item[1])
        except Fixed as fixed:
            raise Fixed((key, fixed.value), fixed.why) from None

    entries = list_of(entry, what)

    def check_map(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise Bad(f"{type(value).__name__} where a map belongs")
        try:
            return dict(entries(list(value.items())))
        except Fixed as fixed:
            raise Fixed(dict(fixed.value), fixed.why) from None
    return check_map


def map_of(schema: dict[str, Field], one_of: tuple[str, ...] | None = None) -> Check:
    """A map checked like a frame: a missing or bad required field makes it Bad."""
    def check_map(value: Any) -> Frame:
        if not isinstance(value, dict):
            raise Bad(f"{type(value).__name__} where a map belongs")
        out, problems = _fields(value, schema, one_of)
        if problems:
            raise Fixed(out, "; ".join(f"{name!r} {why}" for name, why in problems))
        return out
    return check_map


# welcome.limits: each known limit must be a number of its type in the range a chatd
# operator can configure (chatd/config.py); anything else (a string, -1, NaN, 1e300)
# would crash the client or spin its pacing, so it falls back to the protocol's default.
_RANGES = {s.key: (s.low, s.high) for s in SETTINGS if s.key in DEFAULT_LIMITS}


def limits(value: Any) -> dict[str, int | float]:
    if not isinstance(value, dict):
        raise Bad(f"{type(value).__name__} where a map belongs")
    out, bad = dict(DEFAULT_LIMITS), []
    for name, default in DEFAULT_LIMITS.items():
        if name not in value:
            continue  # a server may leave a limit out: the default applies
        got = value[name]
        low, high = _RANGES.get(name, (None, None))
        ok = isinstance(got, int | float) and not isinstance(got, bool) and math.isfinite(got)
        if ok and isinstance(default, int):
            ok = float(got).is_integer()
        if ok and ((low is not None and got < low) or (high is not None and got > high)):
            ok = False
        if ok:
            out[name] = type(default)(got)
        else:
            bad.append(f"{name}={_shown(got)} (using {default})")
    if bad:
        raise Fixed(out, "not usable: " + ", ".join(bad))
    return out


def _shown(value: Any) -> str:
    """A bad value, quoted for a note: inert and short."""
    return clean_line(repr(value)[:40])


# ---- frames ----

_NICKS = list_of(nick, "nicks")
_AWAY = line(MAX_AWAY)
_AWAY_MAP = nick_map(_AWAY, "away messages")
_MESSAGE = {
    "id": Field(integer(1), required=True), "ts": Field(timestamp, required=True),
    "room": Field(room), "to": Field(nick), "from": Field(nick, required=True),
    "text": Field(text, required=True), "action": Field(flag, default=False),
}
# A moderation event (protocol §14): a history entry with an id, like a message.
_MODERATION = {
    "id": Field(integer(1), required=True), "ts": Field(timestamp, required=True),
    "room": Field(room, required=True), "by": Field(nick, required=True),
    "kind": Field(line(32), required=True), "nick": Field(line(64)), "account": Field(nick),
    "reason": Field(line(MAX_REASON), default=""), "expires": Field(timestamp),
    "invite_only": Field(flag), "keyed": Field(flag), "topic_lock": Field(flag),
}
_BAN_ENTRY = {"list": Field(line(8), required=True), "nick": Field(line(64)),
              "account": Field(nick), "by": Field(line(64), default=""),
              "expires": Field(timestamp), "reason": Field(line(MAX_REASON), default="")}


def history_entry(value: Any) -> Frame:
    """An element of a history page: a message, or a moderation event (told by type)."""
    moderation = isinstance(value, dict) and value.get("type") == "moderation"
    check = map_of(_MODERATION) if moderation else map_of(_MESSAGE, ("room", "to"))
    if not moderation:
        return check(value)  # type: ignore[no-any-return]
    try:
        out: Frame = check(value)
    except Fixed as fixed:
        fixed.value["type"] = "moderation"
        raise
    out["type"] = "moderation"  # messages have none, as before: only this is told apart
    return out


_ROOM_ENTRY = {"room": Field(room, required=True), "members": Field(integer(0), default=0),
               "topic": Field(line(MAX_TOPIC), default="")}
_MEMBERSHIP = {"room": Field(room, required=True), "nick": Field(nick, required=True),
               "reason": Field(line(MAX_REASON), default=""), "ts": Field(timestamp)}

_AUTH = {"mechanisms": Field(list_of(line(64), "mechanisms"), default=[]),
         "iterations": Field(integer(4096, 10_000_000), default=300_000)}

SCHEMAS: dict[str, tuple[dict[str, Field], tuple[str, ...] | None]] = {
    "welcome": ({"nick": Field(nick), "session": Field(session_id), "motd": Field(text),
                 "account": Field(nick), "auth": Field(map_of(_AUTH)),
                 "server": Field(line(100)),
                 "limits": Field(limits, default=dict(DEFAULT_LIMITS)),
                 "previous": Field(map_of({"code": Field(line(64), required=True),
                                           "message": Field(line(500), default="")})),
                 "resume": Field(session_id), "resumed": Field(flag)},
                None),
    "error": ({"code": Field(line(64), default="error"),
               "message": Field(line(1000), default=""), "fatal": Field(flag, default=False),
               "limit": Field(line(64)), "retry_after": Field(number(0, 1e9)),
               "supported": Field(list_of(integer(0), "versions"))}, None),
    "ack": ({"id": Field(integer(1), required=True), "ts": Field(timestamp, required=True),
             "room": Field(room), "to": Field(nick), "away": Field(_AWAY)}, ("room", "to")),
    "message": (_MESSAGE, ("room", "to")),
    "joined": ({"room": Field(room, required=True),
                "topic": Field(line(MAX_TOPIC), default=""),
                "members": Field(_NICKS, default=[]), "more": Field(flag),
                "away": Field(_AWAY_MAP)}, None),
    "history": ({"room": Field(room), "with": Field(nick), "direct": Field(flag),
                 "messages": Field(list_of(history_entry, "messages"), default=[]),
                 "more": Field(flag, default=False)}, ("room", "with", "direct")),
    "parted": ({"room": Field(room, required=True)}, None),
    "rooms": ({"rooms": Field(list_of(map_of(_ROOM_ENTRY), "rooms"), default=[]),
               "more": Field(flag)}, None),
    "members": ({"room": Field(room, required=True), "members": Field(_NICKS, default=[]),
                 "more": Field(flag), "away": Field(_AWAY_MAP)}, None),
    "topic": ({"room": Field(room, required=True), "topic": Field(line(MAX_TOPIC), default=""),
               "by": Field(nick, nullable=True), "ts": Field(timestamp, nullable=True)}, None),
    "join": ({"room": Field(room, required=True), "nick": Field(nick, required=True),
              "ts": Field(timestamp), "away": Field(_AWAY)}, None),
    "away": ({"nick": Field(nick, required=True), "message": Field(_AWAY, default=""),
              "ts": Field(timestamp)}, None),
    "part": (_MEMBERSHIP, None),
    "quit": (_MEMBERSHIP, None),
    "nick": ({"room": Field(room), "old": Field(nick, required=True),
              "new": Field(nick, required=True), "ts": Field(timestamp)}, None),
    "ping": ({"token": Field(token)}, None),
    "pong": ({"token": Field(token)}, None),
    "moderation": (_MODERATION, None),
    "invited": ({"room": Field(room, required=True), "by": Field(nick, required=True),
                 "ts": Field(timestamp)}, None),
    "mode": ({"room": Field(room, required=True), "invite_only": Field(flag, default=False),
              "keyed": Field(flag, default=False), "topic_lock": Field(flag, default=False),
              "operator": Field(flag, default=False), "key": Field(line(32))}, None),
    "bans": ({"room": Field(room, required=True),
              "bans": Field(list_of(map_of(_BAN_ENTRY), "bans"), default=[]),
              "more": Field(flag, default=False)}, None),
    "killed": ({"nick": Field(nick, required=True)}, None),
    "auth": ({"data": Field(binary, required=True)}, None),
    "logged_in": ({"account": Field(nick, required=True), "nick": Field(nick),
                   "data": Field(binary)}, None),
    "registered": ({"account": Field(nick, required=True), "nick": Field(nick)}, None),
    "status": ({"cluster": Field(line(16), required=True),
                "message": Field(line(1000), default=""), "ts": Field(timestamp)}, None),
}


def check(frame: Frame, report: Report) -> Frame | None:
    """The frame with every field checked and made inert, or None when it is unusable.
    `report(what, text)` is told of each problem (`what` names the field, so a caller can
    say each kind once). Frame types the client does not know give None silently
    (protocol §1: ignore them)."""
    ftype = frame.get("type")
    spec = SCHEMAS.get(ftype) if isinstance(ftype, str) else None
    if spec is None:
        return None
    schema, one_of = spec
    try:
        out, problems = _fields(frame, schema, one_of)
    except Bad as exc:
        report(str(ftype), f"ignored a bad {ftype!r} frame from the server: {exc}")
        return None
    for name, why in problems:
        report(f"{ftype}.{name}", f"the server sent a {ftype!r} frame whose {name!r} was "
               f"{why}")
    out["type"] = ftype
    if "label" in frame:
        out["label"] = frame["label"]  # ours: matched by Requests, never shown
    return out


def _fields(frame: Frame, schema: dict[str, Field],
            one_of: tuple[str, ...] | None) -> tuple[Frame, list[tuple[str, str]]]:
    """Check the fields of `schema` in `frame`: the checked map and the problems met
    (field, what was wrong). A required field that is missing or bad raises Bad; an
    optional one falls back to its default, or is left out."""
    out: Frame = {}
    problems: list[tuple[str, str]] = []
    for name, field in schema.items():
        value = frame.get(name, _MISSING)
        if value is _MISSING or (value is None and field.nullable):
            if field.required:
                raise Bad(f"no {name!r}")
            _default(out, name, field)
            continue
        try:
            out[name] = field.check(value)
        except Fixed as fixed:
            out[name] = fixed.value
            problems.append((name, fixed.why))
        except Bad as bad:
            if field.required:
                raise Bad(f"{name!r}: {bad}") from None
            _default(out, name, field)
            problems.append((name, f"unusable ({bad}); ignored it"))
    if one_of is not None and sum(name in out for name in one_of) != 1:
        raise Bad(f"needs exactly one of {', '.join(map(repr, one_of))}")
    return out, problems


def _default(out: Frame, name: str, field: Field) -> None:
    if field.default is _MISSING:
        return
    default = field.default
    out[name] = default.copy() if isinstance(default, list | dict) else default
