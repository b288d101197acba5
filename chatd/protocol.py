"""Wire protocol: framing, message schema and error codes (no I/O).

Shared by the server and the client. A frame is a 4-byte big-endian unsigned
length followed by that many bytes of one msgpack map. See protocol.md.
"""

from __future__ import annotations

import re
import struct
import unicodedata
from collections.abc import Iterator
from typing import Any

import msgpack

VERSION = 1
SUPPORTED_VERSIONS = (1,)
HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 65536
# The limits a server states in welcome.limits, with their defaults (protocol.md §7). The
# server's configuration starts from these; a client falls back on them for any key a
# server leaves out.
DEFAULT_LIMITS: dict[str, int | float] = {
    "max_frame": DEFAULT_MAX_FRAME, "max_text": 4000, "max_rooms": 50, "history_page": 200,
    "history_on_join": 50, "ping_interval": 60.0, "ping_timeout": 30.0,
    "msg_rate": 5.0, "msg_burst": 20, "history_rate": 20.0, "history_burst": 100,
    "cmd_rate": 5.0, "cmd_burst": 30,
}

# The nick alphabet (regex character classes): any position, and the first (no digit, no
# '-'). Clients build on these too (mention matching, making a login name a nick).
NICK_CHARS = r"A-Za-z0-9_\-\[\]\\^{}|`"
NICK_FIRST = r"A-Za-z_\[\]\\^{}|`"
MAX_NICK = 30
NICK_RE = re.compile(rf"[{NICK_FIRST}][{NICK_CHARS}]{{0,{MAX_NICK - 1}}}\Z")
ROOM_RE = re.compile(r"#[a-z0-9_.\-]{1,49}\Z")
# Unicode's White_Space property: a message of only these is empty (protocol.md §3).
WHITE_SPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
                        "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
_WHITE = "".join(sorted(WHITE_SPACE))

# code -> (fatal, meaning). Fatal errors are followed by the server closing.
ERRORS: dict[str, tuple[bool, str]] = {
    "frame_too_large": (True, "declared frame length is over max_frame"),
    "malformed": (False, "the payload is not exactly one valid msgpack value"),
    "invalid_utf8": (False, "a string in the payload is not valid UTF-8"),
    "not_a_map": (False, "the payload is not a map with a string 'type'"),
    "unknown_type": (False, "no request has this 'type'"),
    "missing_field": (False, "a required field is absent"),
    "wrong_type": (False, "a field has the wrong msgpack type"),
    "invalid_value": (False, "a field has the right type but a bad value"),
    "text_empty": (False, "message text is empty or only white space"),
    "text_too_long": (False, "message text is over max_text bytes"),
    "not_registered": (False, "only hello, ping, pong and quit before welcome"),
    "already_registered": (False, "hello after welcome"),
    "unsupported_version": (False, "the hello version is not supported"),
    "invalid_nick": (False, "the nick breaks the nick rules"),
    "nick_taken": (False, "another session uses this nick"),
    "invalid_room": (False, "the room name breaks the room rules"),
    "no_such_room": (False, "the room does not exist (nobody is in it)"),
    "not_in_room": (False, "the request needs you to be a member"),
    "no_such_nick": (False, "nobody online uses this nick"),
    "too_many_rooms": (False, "joining would exceed max_rooms"),
    "rate_limited": (False, "request dropped: over a rate limit"),
    "storage_unavailable": (False, "the server could not store or read it (disk full, "
                            "database read-only or damaged); nothing was stored"),
    "server_full": (True, "max_sessions reached"),
    "too_many_connections": (True, "max_sessions_per_ip reached, or conn_rate_per_ip "
                             "exceeded ('limit' says which)"),
    "server_busy": (True, "session_rate reached: too many new sessions at once"),
    "handshake_timeout": (True, "no successful hello within handshake_timeout"),
    "ping_timeout": (True, "no frame within ping_timeout after a ping"),
    "slow_consumer": (True, "the client did not read; a send queue overflowed"),
    "flood": (True, "rate limits exceeded for too long"),
    "shutting_down": (True, "the server is stopping"),
    "server_gone": (True, "the server's broker vanished and did not return"),
    "not_operator": (False, "the request needs a room operator (protocol.md §14)"),
    "banned": (False, "you are banned from the room"),
    "invite_only": (False, "the room is invite-only and you were not invited"),
    "bad_key": (False, "the room has a key and the join gave another"),
    "muted": (False, "you are muted in the room"),
    "list_full": (False, "the room's list of bans, mutes, operators or invitations is full"),
    "killed": (True, "a server operator ended the session"),
    "resource_limit": (True, "the session process hit a resource limit ('limit' names it)"),
    "kicked": (True, "a server administrator ended the session ('message' says why)"),
    "server_banned": (True, "a server ban matches the address, nick or account ('message' says "
                     "why and until when)"),
    "taken_over": (True, "a new connection proved it is this session's client and took it "
                   "over (hello.resume)"),
    "internal": (True, "a server bug; the session ends"),
    # Accounts (protocol.md §12); all non-fatal.
    "invalid_account": (False, "the account name breaks the nick rules"),
    "invalid_password": (False, "the password (or verifier) is too short, too long or "
                         "malformed"),
    "account_exists": (False, "an account with that name exists"),
    "invalid_mechanism": (False, "the SASL mechanism is unknown or not offered here"),
    "tls_required": (False, "PLAIN, or a register with a password, needs TLS"),
    "invalid_auth": (False, "a malformed SASL message"),
    "auth_failed": (False, "invalid credentials or no such account"),
    "no_exchange": (False, "no login exchange in progress"),
    "already_logged_in": (False, "the session is logged in already"),
    "auth_unavailable": (False, "the auth service is busy or restarting: try again"),
    "nick_owned": (False, "an account owns this nick: log in to use it"),
    "nick_locked": (False, "a logged-in session's nick is its account's name"),
}


class ProtocolError(Exception):
    """The peer sent something invalid. Carries the error code for the reply."""

    def __init__(self, code: str, message: str = "", *, limit: str | None = None) -> None:
        assert code in ERRORS, code
        super().__init__(message or ERRORS[code][1])
        self.code = code
        self.message = message or ERRORS[code][1]
        self.limit = limit
        # The refused request's label, when parse_request found a valid one: the error
        # answers that request.
        self.label: Any = None

    @property
    def fatal(self) -> bool:
        return ERRORS[self.code][0]


def pack(obj: dict[str, Any]) -> bytes:
    """Encode one frame: length header plus msgpack payload."""
    payload: bytes = msgpack.packb(obj, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


def error_frame(code: str, message: str = "", *, label: Any = None, **extra: Any) -> bytes:
    frame: dict[str, Any] = {
        "type": "error",
        "code": code,
        "message": message or ERRORS[code][1],
        "fatal": ERRORS[code][0],
    }
    if label is not None:
        frame["label"] = label
    frame.update(extra)
    return pack(frame)


def error_from(exc: ProtocolError, label: Any = None) -> bytes:
    """The error frame for `exc`, with `label` (by default, the one `exc` carries)."""
    if label is None:
        label = exc.label
    extra = {"limit": exc.limit} if exc.limit else {}
    return error_frame(exc.code, exc.message, label=label, **extra)


class FrameDecoder:
    """Splits a byte stream into frame payloads. Only oversize is fatal."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        """Drop what is buffered (the session is ending: free the memory now)."""
        self._buf = bytearray()

    def take(self) -> bytes:
        """Hand over what is buffered (a partial frame), leaving nothing."""
        data, self._buf = bytes(self._buf), bytearray()
        return data

    def payloads(self) -> Iterator[bytes]:
        """Yield complete payloads; raise ProtocolError on an oversize header."""
        buf = self._buf
        pos = 0
        try:
            while len(buf) - pos >= 4:
                (size,) = HEADER.unpack_from(buf, pos)
                if size > self.max_frame:
                    raise ProtocolError(
                        "frame_too_large",
                        f"frame of {size} bytes is over max_frame={self.max_frame}",
                        limit="max_frame",
                    )
                end = pos + 4 + size
                if end > len(buf):
                    break
                yield bytes(buf[pos + 4 : end])
                pos = end
        finally:
            del buf[:pos]


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode one payload into a map with a string 'type'."""
    try:
        obj = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except UnicodeDecodeError as exc:
        raise ProtocolError("invalid_utf8", f"invalid UTF-8: {exc.reason}") from None
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError("malformed", f"undecodable msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError("not_a_map")
    return obj


# Request schemas: field -> (accepted python types, required).
_STR = (str,)
_INT = (int,)
_BIN = (bytes,)
_LABEL = (str, int)
SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "hello": {"version": (_INT, True), "nick": (_STR, True), "client": (_STR, False),
              "session": (_STR, False), "resume": (_STR, False)},
    "ping": {"token": ((str, int, bytes), False)},
    "pong": {"token": ((str, int, bytes), False)},
    "quit": {"reason": (_STR, False)},
    "join": {"room": (_STR, True), "after": (_INT, False), "key": (_STR, False)},
    "part": {"room": (_STR, True), "reason": (_STR, False)},
    "msg": {"room": (_STR, False), "to": (_STR, False), "text": (_STR, True),
            "action": ((bool,), False)},
    "nick": {"nick": (_STR, True)},
    "topic": {"room": (_STR, True), "topic": (_STR, False)},
    "rooms": {"after": (_STR, False)},
    "who": {"room": (_STR, True), "after": (_STR, False)},
    "history": {"room": (_STR, False), "with": (_STR, False), "direct": ((bool,), False),
                "before": (_INT, False), "after": (_INT, False), "limit": (_INT, False)},
    "register": {"account": (_STR, True), "password": (_STR, False),
                 "verifier": ((dict,), False)},
    "login": {"mechanism": (_STR, True), "data": (_BIN, False)},
    "auth": {"data": (_BIN, True)},
    # moderation (protocol.md §14)
    "op": {"room": (_STR, True), "nick": (_STR, True)},
    "deop": {"room": (_STR, True), "nick": (_STR, True)},
    "kick": {"room": (_STR, True), "nick": (_STR, True), "reason": (_STR, False)},
    "invite": {"room": (_STR, True), "nick": (_STR, True)},
    "ban": {"room": (_STR, True), "nick": (_STR, False), "account": (_STR, False),
            "duration": (_INT, False), "reason": (_STR, False)},
    "unban": {"room": (_STR, True), "nick": (_STR, False), "account": (_STR, False)},
    "mute": {"room": (_STR, True), "nick": (_STR, False), "account": (_STR, False),
             "duration": (_INT, False), "reason": (_STR, False)},
    "unmute": {"room": (_STR, True), "nick": (_STR, False), "account": (_STR, False)},
    "mode": {"room": (_STR, True), "invite_only": ((bool,), False), "key": (_STR, False),
             "topic_lock": ((bool,), False)},
    "bans": {"room": (_STR, True), "after": (_INT, False)},
    "kill": {"nick": (_STR, True), "reason": (_STR, False)},
    "away": {"message": (_STR, False)},
}
# Optional fields of which a request must give exactly one.
_ONE_OF = {"msg": (("room", "to"),), "history": (("room", "with", "direct"),),
           "register": (("password", "verifier"),),
           **{t: (("nick", "account"),) for t in ("ban", "unban", "mute", "unmute")}}
# Requests a session may send before it has been welcomed (protocol.md §2, §12.3).
PRE_WELCOME = frozenset({"hello", "ping", "pong", "quit", "register", "login", "auth"})
MAX_LABEL = 64
MAX_REASON = 200
MAX_TOPIC = 300
MAX_AWAY = 200  # characters of an away message


def label_of(obj: dict[str, Any]) -> Any:
    """The request's label if it is a valid one, else None."""
    label = obj.get("label")
    if isinstance(label, bool):
        return None
    if isinstance(label, int) and -(2**63) <= label < 2**64:
        return label
    if isinstance(label, str) and len(label) <= MAX_LABEL:
        return label
    return None


def validate_request(obj: dict[str, Any]) -> dict[str, Any]:
    """Check the request's type and field types; returns it unchanged."""
    rtype = obj["type"]
    schema = SCHEMAS.get(rtype)
    if schema is None:
        raise ProtocolError("unknown_type", f"unknown request type {rtype[:32]!r}")
    if "label" in obj and label_of(obj) is None:
        raise ProtocolError("wrong_type", f"label must be a string of at most {MAX_LABEL} "
                            "characters or an integer")
    for field, (types, required) in schema.items():
        if field not in obj:
            if required:
                raise ProtocolError("missing_field", f"{rtype}: missing field {field!r}")
            continue
        value = obj[field]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = "/".join(t.__name__ for t in types)
            raise ProtocolError("wrong_type", f"{rtype}: field {field!r} must be {names}")
        # ids, limits: SQLite's range
        if types is _INT and isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ProtocolError("invalid_value", f"{rtype}: field {field!r} is out of range")
    for group in _ONE_OF.get(rtype, ()):
        given = [f for f in group if f in obj]
        if len(given) != 1:  # none is a missing field, two a bad combination
            names = ", ".join(map(repr, group[:-1])) + f" or {group[-1]!r}"
            raise ProtocolError("missing_field" if not given else "invalid_value",
                                f"{rtype}: give exactly one of {names}")
    if rtype == "history" and "before" in obj and "after" in obj:
        raise ProtocolError("invalid_value", "history: give at most one of 'before', 'after'")
    if rtype == "history" and obj.get("direct") is False:
        raise ProtocolError("invalid_value", "history: 'direct' is true or absent")
    return obj


def parse_request(payload: bytes) -> tuple[dict[str, Any], Any]:
    """One request payload as (request, label): the one parser of client requests, used by
    the session process for its client's frames and by the broker, which trusts no session,
    for what a session sends it. A refusal is a ProtocolError that carries the request's
    label when it had a valid one.

    The request comes back as decoded: every field its schema knows has the right type
    (fields nobody reads are left for the reader to ignore). A `quit` always parses, since
    it ends the session whatever it holds: a field of the wrong type is dropped instead."""
    req = decode_payload(payload)
    label = label_of(req)
    if req["type"] == "quit":
        if not isinstance(req.get("reason"), str):
            req.pop("reason", None)
        return req, label
    try:
        validate_request(req)
    except ProtocolError as exc:
        exc.label = label
        raise
    return req, label


def check_registration(rtype: str, registered: bool | None) -> None:
    """The one rule for what may come when (protocol.md §4): before welcome only
    PRE_WELCOME requests, after it no second hello. `registered` None: not known yet (a
    hello is on its way to the broker), so the broker, which knows, decides."""
    if registered is None:
        return
    if registered:
        if rtype == "hello":
            raise ProtocolError("already_registered")
    elif rtype not in PRE_WELCOME:
        raise ProtocolError("not_registered")


def check_nick(nick: str) -> str:
    if not NICK_RE.match(nick):
        raise ProtocolError(
            "invalid_nick",
            "nick must be 1-30 characters: letters, digits, _-[]\\^{}|` "
            "and not start with a digit or '-'",
        )
    return nick


# Look-alike nicks are one nick (protocol.md §3). Unicode TR39's confusables.txt maps these
# characters of the nick alphabet to a prototype: 0 -> O, 1 I | -> l, m -> rn (no other
# character of the alphabet has an entry). Nicks are also case-insensitive, and a key must
# be one equivalence: I is both i (by case) and l (by look), so i and L join that class,
# and o joins 0/O. The key lower-cases first, then folds each class to one member.
_SKELETON = str.maketrans({"0": "o", "1": "l", "i": "l", "|": "l", "m": "rn"})


def nick_key(nick: str) -> str:
    """The identity of a nick: nicks with the same key are the same nick for uniqueness,
    lookup and direct-message history; only the spelling shown differs."""
    return nick.lower().translate(_SKELETON)


def check_room(room: str) -> str:
    """Return the canonical (lower-case) room name or raise invalid_room."""
    canon = room.lower()
    if not ROOM_RE.match(canon):
        raise ProtocolError(
            "invalid_room", "room must be '#' then 1-49 of a-z 0-9 _ . - (case-insensitive)"
        )
    return canon


def check_text(text: str, max_text: int) -> str:
    """Message text as the server stores and sends it (line separators become newlines)."""
    if not text.strip(_WHITE):
        raise ProtocolError("text_empty")
    if len(text.encode("utf-8", "surrogatepass")) > max_text:
        raise ProtocolError("text_too_long", f"text is over max_text={max_text} bytes",
                            limit="max_text")
    text = as_newlines(text)
    refuse_unsafe(text, "text", multiline=True)
    return text


def check_line(value: str, field: str, limit: int) -> str:
    """A one-line free-text field such as a topic or reason."""
    if len(value) > limit:
        raise ProtocolError("invalid_value", f"{field} is longer than {limit} characters")
    refuse_unsafe(value, field, multiline=False)
    return value


# ---- Text that cannot fool a reader (protocol.md §3) ----
# One rule for message text, topics and reasons. The server refuses what breaks it
# (refuse_unsafe); a client shows it as U+FFFD (safe_text), so a server it does not trust
# cannot rewrite, reorder or hide anything on its screen either.
_C0_C1 = "\x00-\x1f\x7f-\x9f"  # control characters: they drive the reader's terminal
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # Bidi_Control: they reorder text
# Invisible, with no job in text that a reader could see: soft hyphen, Hangul fillers,
# word joiner and invisible operators, deprecated format controls, BOM, interlinear
# annotation, shorthand and musical format controls, tags (except in the flags below).
_INVISIBLE = ("\u00ad\u115f\u1160\u2060-\u2065\u206a-\u206f\u3164\ufeff\uffa0"
              "\ufff9-\ufffb\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e007f")
# Zero-width characters that scripts and emoji need between two letters or symbols (ZWNJ
# in Persian, ZWJ in Indic scripts and emoji sequences, ZWSP between Thai words, CGJ, the
# Mongolian vowel separator): allowed only between two visible non-ASCII characters.
_JOINERS = "\u034f\u180e\u200b-\u200d"
# Variation selectors pick a glyph for the character before them (emoji, CJK): allowed
# only right after a visible character, so a run of them cannot carry hidden data.
_SELECTORS = "\u180b-\u180d\u180f\ufe00-\ufe0f\U000e0100-\U000e01ef"
_SEPARATORS = "\u2028\u2029"  # a line or paragraph separator is a newline
_HIDDEN = _BIDI + _INVISIBLE + _JOINERS + _SELECTORS + _SEPARATORS
# The three flags Unicode recommends (RGI) that are spelt with tag characters: U+1F3F4,
# then the tags of a subdivision code, then CANCEL TAG.
_FLAG = "\U0001f3f4"
_FLAG_TAILS = "|".join("".join(chr(0xE0000 + ord(c)) for c in code) + "\U000e007f"
                       for code in ("gbeng", "gbsct", "gbwls"))


def _unsafe_re(controls: str) -> re.Pattern[str]:
    """Matches each character that breaks the rule, and each tag flag whole (group "flag",
    not a fault). Every match starts with one character class, so re skips the plain text
    between them at C speed (this runs on the parent's routing loop for every message)."""
    refused = f"{controls}{_BIDI}{_INVISIBLE}{_SEPARATORS}"
    before_joiner = rf"[^\x00-\x9f\s{_BIDI}{_INVISIBLE}{_JOINERS}{_SEPARATORS}]"
    after_joiner = rf"[^\x00-\x9f\s{_HIDDEN}]"
    before_selector = rf"[^{_C0_C1}\s{_HIDDEN}]"
    return re.compile(
        f"[{refused}{_JOINERS}{_SELECTORS}{_FLAG}](?:"
        f"(?<={_FLAG})(?P<flag>{_FLAG_TAILS})"  # a flag: its tags are not faults
        f"|(?<=[{refused}])"
        f"|(?<=[{_JOINERS}])(?:(?<!{before_joiner}[{_JOINERS}])|(?!{after_joiner}))"
        f"|(?<!{before_selector}[{_SELECTORS}])(?<=[{_SELECTORS}]))")


# Tab and newline are layout in message text (several lines, indentation); a one-line
# field (topic, reason; nick and room names on a client's screen) takes neither.
_UNSAFE_TEXT = _unsafe_re(r"\x00-\x08\x0b-\x1f\x7f-\x9f")
_UNSAFE_LINE = _unsafe_re(_C0_C1)
# ASCII text (most chat) can only break the rule with a control character: a plain
# character class finds those several times faster.
_ASCII_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ASCII_LINE = re.compile(r"[\x00-\x1f\x7f]")


def _unsafe(text: str, multiline: bool) -> re.Pattern[str]:
    if text.isascii():
        return _ASCII_TEXT if multiline else _ASCII_LINE
    return _UNSAFE_TEXT if multiline else _UNSAFE_LINE


_KINDS = ((re.compile(f"[{_C0_C1}]"), "control characters"),
          (re.compile(f"[{_BIDI}]"), "bidirectional controls (they reorder what readers see)"),
          (re.compile(f"[{_SEPARATORS}]"), "line separators"),
          (re.compile(f"[{_INVISIBLE}]"), "invisible characters"),
          (re.compile(f"[{_JOINERS}]"), "zero-width characters other than between two "
                                        "visible non-ASCII characters"),
          (re.compile(f"[{_SELECTORS}]"), "variation selectors other than right after a "
                                          "visible character"))


def as_newlines(text: str) -> str:
    """Line and paragraph separators as the newline they mean."""
    return text.replace("\u2028", "\n").replace("\u2029", "\n")


def refuse_unsafe(text: str, field: str, *, multiline: bool) -> None:
    """Raise invalid_value naming the first character that could fool a reader."""
    for fault in _unsafe(text, multiline).finditer(text):
        if fault.lastgroup == "flag":
            continue
        char = fault.group()
        kind = next(kind for match, kind in _KINDS if match.match(char))
        if kind == "control characters":
            kind += (" other than tab and newline" if multiline else
                     f", tab and newline included (a {field} is one line)")
        elif kind == "line separators":
            kind += f" (a {field} is one line)"
        name = unicodedata.name(char, "")
        raise ProtocolError("invalid_value", f"{field} may not contain {kind}: U+"
                            f"{ord(char):04X}{' ' + name if name else ''} at character "
                            f"{fault.start() + 1}")


def safe_text(text: str, *, multiline: bool) -> str:
    """What a reader may be shown of untrusted text, by the rule refuse_unsafe enforces:
    separators as newlines (in multi-line text), every other fault as U+FFFD."""
    if text.isascii():  # no separator, no flag: each control character is a fault
        if text.isprintable():  # (ASCII's unprintable: the controls, tab and newline too)
            return text
        return (_ASCII_TEXT if multiline else _ASCII_LINE).sub("\ufffd", text)
    if multiline:
        text = as_newlines(text)
    return _unsafe(text, multiline).sub(
        lambda m: m.group() if m.lastgroup == "flag" else "\ufffd", text)
