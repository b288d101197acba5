"""The IRC line codec (sans-I/O): bytes to lines, lines to messages, and back.

A line is `[@tags ][:source ]COMMAND[ params...][ :trailing]` ended by CR LF (RFC 1459
§2.3, with IRCv3 message-tags). Bounds, from the same specifications: the part after the
tags is at most 512 bytes with its CR LF, the tag section at most 8191 bytes with its `@`
and its space. `LineReader` never holds more than the longest valid line plus one read:
what runs past it without a line end is dropped up to the next line end, and reported once.

Exceptions are split as h11 splits them: `IrcError` is the peer's fault (a line too long,
not UTF-8, not a command) and carries what the reply needs; `ValueError` from `serialise`
is ours (a parameter that cannot be put on a line).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass, field

MAX_LINE = 512  # bytes after the tags, CR LF included
MAX_TAGS = 8191  # bytes of the tag section, '@' and the space after it included
MAX_INPUT = MAX_TAGS + MAX_LINE  # the longest valid line, with its line end
_END = re.compile(rb"[\r\n]")  # CR, LF or CR LF ends a line; the empty lines between are ignored
_COMMAND = re.compile(r"[A-Za-z]+|[0-9]{3}\Z")
_ESCAPE = {";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"}
_UNESCAPE = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_UNESCAPE_RE = re.compile(r"\\(.?)", re.S)
_ESCAPE_RE = re.compile(r"[; \\\r\n]")
_UNSENDABLE = re.compile("[\r\n\0]")
_TAG_KEY = re.compile(r"\+?[^\s;=\\\0]+")


class IrcError(Exception):
    """The client sent a line that cannot be used. `code`: "too_long", "invalid_utf8" or
    "malformed"; `command`: the line's command as far as it could be read, else "*";
    `tags`: the line's tags when they could be read (a label labels the error)."""

    def __init__(self, code: str, message: str, command: str = "*",
                 tags: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.command = command
        self.tags = tags or {}


@dataclass(slots=True)
class Line:
    """One IRC message. `command` is upper case; `params` hold the trailing one last.
    `colon`: write the last parameter as a trailing one (`:text`) even when it need not
    be, as servers do for text, so that clients that look for " :" find it."""

    command: str
    params: list[str] = field(default_factory=list)
    source: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    colon: bool = field(default=True, compare=False)

    def param(self, i: int, default: str = "") -> str:
        return self.params[i] if i < len(self.params) else default


# ---- reading ----

class LineReader:
    """Splits the client's byte stream into raw lines (bytes, without the line end).

    `lines()` yields each complete line, and an `IrcError("too_long")` in place of a line
    that ran past MAX_INPUT bytes: its bytes are dropped as they come, so a client that
    never sends a line end costs at most MAX_INPUT bytes plus one read.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._skipping = False  # inside a line already reported as too long

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def lines(self) -> Generator[bytes | IrcError, None, None]:
        buf = self._buf
        pos = 0
        try:
            while True:
                end = _END.search(buf, pos)
                if end is None:
                    if len(buf) - pos > MAX_INPUT and not self._skipping:
                        self._skipping = True
                        yield _too_long()
                    if self._skipping:
                        pos = len(buf)  # drop it: the line is lost anyway
                    return
                line = bytes(buf[pos : end.start()])
                pos = end.end()
                if self._skipping:  # the end of a line already reported
                    self._skipping = False
                    continue
                if line:
                    yield line
        finally:
            del buf[:pos]


def _too_long() -> IrcError:
    return IrcError("too_long", "Input line was too long")


def _command_of(raw: bytes) -> str:
    """The command of a line that cannot be parsed, for the error reply (ASCII only)."""
    words = raw.split()
    while words and words[0][:1] in (b"@", b":"):
        words.pop(0)
    word = words[0].decode("ascii", "replace") if words else ""
    return word.upper() if _COMMAND.fullmatch(word) else "*"


def parse(raw: bytes) -> Line:
    """One line (without its line end) as a Line; raises IrcError for a bad one."""
    rest = raw
    tag_part = b""
    if rest.startswith(b"@"):
        space = rest.find(b" ")
        tag_part, rest = (rest, b"") if space < 0 else (rest[:space], rest[space + 1 :])
        if len(tag_part) + 1 > MAX_TAGS:
            raise IrcError("too_long", "Input line was too long (tags)", _command_of(rest))
    try:
        tags_text = tag_part[1:].decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(rest) from None
    tags = parse_tags(tags_text) if tags_text and "\0" not in tags_text else {}
    if len(rest) + 2 > MAX_LINE:
        raise IrcError("too_long", "Input line was too long", _command_of(rest), tags)
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError:
        raise _not_utf8(rest, tags) from None
    if "\0" in text or "\0" in tags_text:
        raise IrcError("malformed", "a line may not contain NUL", _command_of(rest), tags)
    try:
        line = _parse_text(text)
    except IrcError as exc:
        exc.tags = tags
        raise
    line.tags = tags
    return line


def _not_utf8(rest: bytes, tags: dict[str, str] | None = None) -> IrcError:
    return IrcError("invalid_utf8", "Message rejected, your IRC software MUST use UTF-8",
                    _command_of(rest), tags)


def _parse_text(text: str) -> Line:
    source = None
    text = text.lstrip(" ")
    if text.startswith(":"):
        source, _, text = text[1:].partition(" ")
        text = text.lstrip(" ")
    head, sep, trailing = text.partition(" :")
    words = head.split(" ")
    words = [w for w in words if w]
    if not words:
        raise IrcError("malformed", "no command")
    command = words[0]
    if not _COMMAND.fullmatch(command):
        raise IrcError("malformed", "the command must be letters or three digits")
    params = words[1:]
    if sep:
        params.append(trailing)
    return Line(command.upper(), params, source or None)


def parse_tags(text: str) -> dict[str, str]:
    """`key[=value];...` with the message-tags escapes undone; the last of a key wins."""
    tags: dict[str, str] = {}
    for item in text.split(";"):
        key, _, value = item.partition("=")
        if key:
            tags[key] = unescape(value)
    return tags


def unescape(value: str) -> str:
    # An unknown escape is the character itself; a lone trailing backslash is dropped.
    return _UNESCAPE_RE.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), value)


def escape(value: str) -> str:
    return _ESCAPE_RE.sub(lambda m: _ESCAPE[m.group()], value)


# ---- writing ----

def serialise(line: Line) -> bytes:
    """The line on the wire, with CR LF. Raises ValueError for what no line can carry (a
    caller's bug): CR, LF or NUL outside tags, NUL in a tag, a tag key that is not a
    name, or a middle parameter that is empty, has a space or starts with ':'."""
    parts: list[str] = []
    if line.tags:
        parts.append(_tag_section(line.tags))
    if line.source:
        parts.append(":" + line.source)
    parts.append(line.command)
    params = line.params
    for i, param in enumerate(params):
        last = i == len(params) - 1
        if last and (line.colon or not param or " " in param or param.startswith(":")):
            param = ":" + param
        elif not param or " " in param or param.startswith(":"):
            raise ValueError(f"middle parameter {param!r} cannot be sent")
        parts.append(param)
    if any(_UNSENDABLE.search(p) for p in (line.command, line.source or "", *params)):
        raise ValueError("CR, LF and NUL cannot be sent outside tags")
    if any("\0" in k or "\0" in v or not _TAG_KEY.fullmatch(k) for k, v in line.tags.items()):
        raise ValueError("a tag key must be a name and no tag can carry NUL")
    return " ".join(parts).encode("utf-8") + b"\r\n"


def plain_line(command: str, source: str, middle: str, trailing: str,
               tags: dict[str, str]) -> bytes | None:
    """serialise(Line(command, [middle, trailing], source, tags)) by a shorter road, for
    the per-delivery path; None where serialise would refuse the line or `source` is empty.
    `tags` must be keyed by tag names (the caller's own constants)."""
    if not source or not middle or " " in middle or middle[0] == ":":
        return None
    text = f":{source} {command} {middle} :{trailing}"
    if tags:
        text = f"{_tag_section(tags)} {text}"
    if "\0" in text or "\r" in text or "\n" in text:  # (escaped tags hold no CR or LF)
        return None
    return text.encode("utf-8") + b"\r\n"


def _tag_section(tags: dict[str, str]) -> str:
    values = "".join(tags.values())  # one look at them all: escapes are rare
    if ";" in values or " " in values or "\\" in values or "\r" in values or "\n" in values:
        tags = {k: escape(v) for k, v in tags.items()}
    return "@" + ";".join([f"{k}={v}" if v else k for k, v in tags.items()])


def body_size(line: Line) -> int:
    """Bytes the line takes on the wire without its tags (what MAX_LINE bounds)."""
    return len(serialise(Line(line.command, line.params, line.source, colon=line.colon)))


def split_utf8(text: str, budget: int) -> list[str]:
    """Cut `text` into pieces of at most `budget` UTF-8 bytes, never inside a character;
    a cut goes after a space when one is in the second half of the piece (the space stays
    at the end of the line, as IRCv3 multiline recommends)."""
    if budget < 4:
        raise ValueError("budget too small for a UTF-8 character")
    data = text.encode("utf-8")
    pieces: list[str] = []
    while len(data) > budget:
        cut = budget
        while data[cut] & 0xC0 == 0x80:  # a continuation byte: back to the character start
            cut -= 1
        space = data.rfind(b" ", 0, cut)
        if space >= cut // 2:
            cut = space + 1
        pieces.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    pieces.append(data.decode("utf-8"))
    return pieces
