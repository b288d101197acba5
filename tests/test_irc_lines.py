"""The IRC line codec: parsing, serialising, tag escapes, bounds, UTF-8 splitting."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chatd.irc.lines import (
    MAX_INPUT,
    MAX_LINE,
    MAX_TAGS,
    IrcError,
    Line,
    LineReader,
    escape,
    parse,
    serialise,
    split_utf8,
    unescape,
)


def test_a_full_line() -> None:
    line = parse(b"@label=a\\sb;msgid=7;+draft/reply :nick!u@h PRIVMSG #room :hello  world ")
    assert line == Line("PRIVMSG", ["#room", "hello  world "], "nick!u@h",
                        {"label": "a b", "msgid": "7", "+draft/reply": ""})


@pytest.mark.parametrize(("raw", "params"), [
    (b"join #a", ["#a"]),  # commands are case-insensitive
    (b"JOIN  #a   key ", ["#a", "key"]),  # runs of spaces separate parameters
    (b"PRIVMSG #a ::-)", ["#a", ":-)"]),
    (b"PRIVMSG #a :", ["#a", ""]),  # an empty trailing parameter is one
    (b"PING", []),
    (b"  PING x", ["x"]),
])
def test_parameters(raw: bytes, params: list[str]) -> None:
    assert parse(raw).params == params


@pytest.mark.parametrize(("value", "escaped"), [
    ("a;b c\\d\r\ne", "a\\:b\\sc\\\\d\\r\\ne"), ("", ""), ("plain", "plain"),
])
def test_tag_escapes(value: str, escaped: str) -> None:
    assert escape(value) == escaped and unescape(escaped) == value


def test_unknown_escapes_are_the_character_and_a_lone_backslash_is_dropped() -> None:
    assert unescape("\\b\\") == "b"
    assert parse(b"@a=1;a=2;=x;b FOO").tags == {"a": "2", "b": ""}  # last wins, no empty key


@pytest.mark.parametrize(("raw", "code", "command"), [
    (b"PRIVMSG #a :" + b"x" * (MAX_LINE - 13), "too_long", "PRIVMSG"),
    (b"@" + b"t" * MAX_TAGS + b" PING", "too_long", "PING"),
    (b"PRIVMSG #a :\xff\xfe", "invalid_utf8", "PRIVMSG"),
    (b"@label=\xc3 PING x", "invalid_utf8", "PING"),
    (b"PRIVMSG #a :a\x00b", "malformed", "PRIVMSG"),
    (b":source", "malformed", "*"),
    (b"@tags-only", "malformed", "*"),
    (b"\xc3\xa9t\xc3\xa9 x", "malformed", "*"),
    (b"12 x", "malformed", "*"),
])
def test_bad_lines(raw: bytes, code: str, command: str) -> None:
    with pytest.raises(IrcError) as err:
        parse(raw)
    assert (err.value.code, err.value.command) == (code, command)


def test_the_longest_lines_are_accepted() -> None:
    body = b"PRIVMSG #a :" + b"x" * (MAX_LINE - 14)  # 510 bytes and CR LF
    assert len(body) + 2 == MAX_LINE and parse(body).params[1] == "x" * (MAX_LINE - 14)
    tags = b"@" + b"t" * (MAX_TAGS - 2)  # with its space: 8191 bytes
    assert parse(tags + b" " + body).tags == {"t" * (MAX_TAGS - 2): ""}


def test_serialise_puts_a_colon_where_it_must() -> None:
    assert serialise(Line("PRIVMSG", ["#a", "hi there"], "n!u@h")) == \
        b":n!u@h PRIVMSG #a :hi there\r\n"
    assert serialise(Line("PRIVMSG", ["#a", "hi"])) == b"PRIVMSG #a :hi\r\n"
    assert serialise(Line("JOIN", ["#a"], colon=False)) == b"JOIN #a\r\n"
    assert serialise(Line("X", [":)"])) == b"X ::)\r\n"
    assert serialise(Line("PING", [""])) == b"PING :\r\n"
    assert serialise(Line("ACK", [], "s", {"label": "a b;c", "x": ""})) == \
        b"@label=a\\sb\\:c;x :s ACK\r\n"


@pytest.mark.parametrize("line", [
    Line("PRIVMSG", ["has space", "x"]), Line("PRIVMSG", ["", "x"]),
    Line("PRIVMSG", [":x", "y"]), Line("PRIVMSG", ["#a", "a\r\nQUIT"]),
    Line("PRIVMSG", ["#a", "x"], "evil\n"), Line("TAGMSG", ["#a"], None, {"a": "\0"}),
    Line("TAGMSG", ["#a"], None, {"a b": "1"}),
])
def test_serialise_refuses_what_no_line_can_carry(line: Line) -> None:
    with pytest.raises(ValueError):
        serialise(line)


def test_reader_splits_on_any_line_end_and_keeps_partial_lines() -> None:
    reader = LineReader()
    reader.receive_data(b"A\r\nB\nC\rD\r\n\r\nE")
    assert list(reader.lines()) == [b"A", b"B", b"C", b"D"]
    reader.receive_data(b"F\r")
    assert list(reader.lines()) == [b"EF"] and reader.buffered == 0


def test_reader_drops_a_line_that_never_ends_and_reports_it_once() -> None:
    reader = LineReader()
    for _ in range(10):
        reader.receive_data(b"x" * 4096)
        out = list(reader.lines())
        assert reader.buffered <= MAX_INPUT + 4096
        if out:
            assert [e.code for e in out if isinstance(e, IrcError)] == ["too_long"]
    reader.receive_data(b"still the same line\r\nPING ok\r\n")
    assert list(reader.lines()) == [b"PING ok"]  # the rest of the long line is dropped


def test_split_utf8_cuts_between_characters_and_prefers_spaces() -> None:
    assert split_utf8("é" * 5, 4) == ["éé", "éé", "é"]
    assert split_utf8("hello world again", 12) == ["hello world ", "again"]
    assert split_utf8("", 10) == [""]


# ---- untrusted input: never anything but the codec's own error ----
# (No hypothesis deadlines: a timing, and a busy machine is no failure.)

@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=MAX_INPUT + 100))
@example(b"@=;=;;\\ :\x00")
@example(b"@a=\\ :x y :z")
def test_parse_never_raises_anything_else(raw: bytes) -> None:
    try:
        line = parse(raw)
    except IrcError as exc:
        assert exc.code in ("too_long", "invalid_utf8", "malformed")
        return
    assert line.command.isupper() or line.command.isdigit()


_word = st.text(st.characters(blacklist_characters=" \r\n\0:", blacklist_categories=("Cs",)),
                min_size=1, max_size=20)
_trailing = st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",)),
                    max_size=50)
_tags = st.dictionaries(st.from_regex(r"\+?[a-z][a-z0-9/.-]{0,10}", fullmatch=True),
                        st.text(st.characters(blacklist_characters="\0",
                                              blacklist_categories=("Cs",)), max_size=20),
                        max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[A-Z]{1,8}|[0-9]{3}", fullmatch=True), st.lists(_word, max_size=5),
       _trailing, st.one_of(st.none(), _word.filter(lambda w: not w.startswith("@"))), _tags)
def test_what_is_serialised_parses_back_the_same(command: str, words: list[str], last: str,
                                                 source: str | None,
                                                 tags: dict[str, str]) -> None:
    line = Line(command, [*words, last], source, tags)
    assert parse(serialise(line)[:-2]) == line


@settings(deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=20), st.data())
def test_chunking_does_not_change_the_lines(pieces: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(pieces)
    whole = LineReader()
    whole.receive_data(stream)
    expected = list(whole.lines())
    reader = LineReader()
    got: list[bytes | IrcError] = []
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=5)))
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        reader.receive_data(stream[start:end])
        got += reader.lines()
    got += reader.lines()
    assert got == expected


@settings(deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300), st.integers(4, 60))
def test_split_utf8_pieces_fit_and_join_back(text: str, budget: int) -> None:
    pieces = split_utf8(text, budget)
    assert "".join(pieces) == text
    assert all(len(piece.encode()) <= budget for piece in pieces)
