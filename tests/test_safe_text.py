"""Text that cannot fool a reader (issue 8, sections 2 and 5; protocol.md §3).

Unit and property tests of the one rule for message text, topics and reasons in
chatd.protocol: refused by the server (check_text, check_line), shown as U+FFFD by the
client (safe_text under chat_client's clean and clean_line), a line separator as a
newline, and tab as layout for message text only.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from chat_client.buffer import Line
from chat_client.clock import Clock
from chat_client.model import Model
from chat_client.plain import format_line
from chat_client.safetext import clean, clean_line
from chatd import protocol as p
from chatd.protocol import ProtocolError

PROPS = settings(max_examples=300, deadline=None)


# ---- text that cannot fool a reader ----

ZWJ, ZWNJ = "\u200d", "\u200c"


def flag(code: str) -> str:
    """An emoji tag sequence: black flag, the tags spelling `code`, cancel tag."""
    return "\U0001f3f4" + "".join(chr(0xE0000 + ord(c)) for c in code) + "\U000e007f"


FLAG_ENGLAND = flag("gbeng")
FINE = ["plain", "two\nlines", "tab\there", "👩" + ZWJ + "💻", "🏳\ufe0f" + ZWJ + "🌈",
        "می" + ZWNJ + "خواهم", "क्" + ZWJ + "ष", "ไทย\u200bภาษา", "❤\ufe0f", "1\ufe0f\u20e3",
        FLAG_ENGLAND, "שלום עולם", "漢\U000e0100字", "é", "a\u00a0b"]
UNSAFE = ["\u202eevil", "a\u202db", "\u2066x\u2069", "a\u200eb", "\u061c", "ad\u200bmin",
          "\u200b", "x\u200d", "\u200dx", "a" + ZWJ + "b", "👩" + ZWJ + " ", "\ufeffhi",
          "soft\u00adhyphen", "\u3164", "a\u2060b", "x\U000e0041\U000e0042",
          "\U0001f3f4\U000e0041\U000e007f", "x\ufe0f\ufe0f", " \ufe0f", "\ufe0fx",
          "a\U000e0100\U000e0101", "bell\x07", "esc\x1b[2J", "c1\x9b", "\ufff9a\ufffab\ufffb"]


@pytest.mark.parametrize("text", FINE)
def test_text_that_shows_what_it_says_is_accepted(text: str) -> None:
    assert p.check_text(text, 4000) == text
    assert clean(text) == text.replace("\t", "    ")
    if "\n" not in text and "\t" not in text:
        assert p.check_line(text, "topic", 300) == text
        assert clean_line(text) == text


@pytest.mark.parametrize("text", UNSAFE)
@pytest.mark.parametrize("field", ["text", "topic", "reason"])
def test_text_that_could_fool_a_reader_is_refused(text: str, field: str) -> None:
    with pytest.raises(ProtocolError) as info:
        if field == "text":
            p.check_text(text, 4000)
        else:
            p.check_line(text, field, 300)
    assert info.value.code == "invalid_value"
    assert info.value.message.startswith(f"{field} may not contain"), info.value.message
    assert "U+" in info.value.message  # it names the character
    # The client shows it by the same rule: the offending character becomes U+FFFD.
    assert "\ufffd" in clean(text) and "\ufffd" in clean_line(text)


def test_the_message_names_the_first_offending_character() -> None:
    with pytest.raises(ProtocolError, match=r"bidirectional.*U\+202E RIGHT-TO-LEFT OVERRIDE "
                                            r"at character 5"):
        p.check_text("pay \u202etxt.exe", 4000)


def test_a_line_separator_is_a_newline() -> None:
    assert p.check_text("one\u2028two\u2029three", 4000) == "one\ntwo\nthree"
    assert clean("one\u2028two") == "one\ntwo"
    for field in ("topic", "reason"):
        with pytest.raises(ProtocolError, match="line separator.*one line"):
            p.check_line("one\u2028two", field, 300)
    assert clean_line("one\u2028two") == "one\ufffdtwo"
    with pytest.raises(ProtocolError) as info:
        p.check_text("\u2028\u2029", 4000)
    assert info.value.code == "text_empty"


@pytest.mark.parametrize("field", ["topic", "reason"])
def test_tab_is_layout_for_text_only(field: str) -> None:
    """One rule for tab: like newline, it is allowed in message text (several lines,
    indentation) and refused in one-line fields, as protocol.md §3 says."""
    assert p.check_text("a\tb", 100) == "a\tb"
    for value in ("a\tb", "a\nb", "\t"):
        with pytest.raises(ProtocolError, match="tab and newline included") as info:
            p.check_line(value, field, 300)
        assert info.value.code == "invalid_value"
    assert p.check_line("", field, 300) == ""  # an empty topic clears it


def test_every_format_character_is_decided() -> None:
    """Each Unicode format character (Cf) is refused, allowed only in context, or one of a
    few visible ones: a format character nobody decided about would slip through."""
    visible = {*range(0x600, 0x606), 0x6DD, 0x70F, 0x890, 0x891, 0x8E2, 0x110BD, 0x110CD,
               *range(0x13430, 0x13456)}
    for cp in range(0x110000):
        ch = chr(cp)
        if unicodedata.category(ch) != "Cf" or cp in visible:
            continue
        with pytest.raises(ProtocolError):
            p.check_line(f"x{ch}y", "topic", 300)


def _refused(text: str, multiline: bool) -> bool:
    try:
        p.refuse_unsafe(text, "text", multiline=multiline)
    except ProtocolError:
        return True
    return False


any_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
tricky = st.lists(st.sampled_from(
    ["a", "é", "👩", "💻", " ", "\t", "\n", "\x1b", ZWJ, ZWNJ, "\u200b", "\u202e", "\u2066",
     "\u2069", "\ufeff", "\ufe0f", "\U000e0100", "\u2028", "\u2029", "\U000e0067",
     "\U000e007f", FLAG_ENGLAND, flag("gbsct"), flag("gbzzz"), "\U0001f3f4", "\u3164",
     "\u00ad", "\u034f", "\u180e", "\u0301", "\u00a0"]),
    max_size=12).map("".join)


@PROPS
@given(st.one_of(any_text, tricky), st.booleans())
def test_what_the_client_shows_is_what_the_server_would_accept(text: str,
                                                               multiline: bool) -> None:
    """safe_text (the client's view of untrusted text) never shows a character the rule
    refuses, changes nothing in text the rule accepts, and is stable."""
    shown = p.safe_text(text, multiline=multiline)
    assert not _refused(shown, multiline)
    assert p.safe_text(shown, multiline=multiline) == shown
    if multiline:
        assert len(shown) == len(text)
    if not _refused(p.as_newlines(text) if multiline else text, multiline):
        assert shown == (p.as_newlines(text) if multiline else text)
    for ch in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\ufeff":
        assert ch not in shown


@PROPS
@example("\u00a1\u200b\u00a1")  # ZWSP between two visible non-ASCII: allowed
@given(st.one_of(any_text, tricky))
def test_accepted_text_has_no_reordering_or_separator_left(text: str) -> None:
    try:
        out = p.check_text(text, 4000)
    except ProtocolError as exc:
        assert exc.code in ("text_empty", "invalid_value"), exc.code
        return
    assert not set(out) & set("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067"
                              "\u2068\u2069\u200e\u200f\u061c\ufeff")
    # Zero-width characters survive only between two visible non-ASCII characters (§3).
    for i, ch in enumerate(out):
        if ch in "\u034f\u180e\u200b\u200c\u200d":
            assert 0 < i < len(out) - 1, repr(out)
            assert not out[i - 1].isascii() and not out[i + 1].isascii(), repr(out)
            assert not out[i - 1].isspace() and not out[i + 1].isspace(), repr(out)


def reference_faults(text: str, multiline: bool) -> list[int]:
    """protocol.md §3's rule, character by character, written from the document."""
    def within(ch: str, *ranges: tuple[int, int]) -> bool:
        return any(lo <= ord(ch) <= hi for lo, hi in ranges)

    def control(ch: str) -> bool:
        return within(ch, (0, 0x1F), (0x7F, 0x9F))

    def refused(ch: str) -> bool:  # bidi controls, invisible characters, separators
        return within(ch, (0x61C, 0x61C), (0x200E, 0x200F), (0x202A, 0x202E), (0x2066, 0x2069),
                      (0xAD, 0xAD), (0x115F, 0x1160), (0x2060, 0x2065), (0x206A, 0x206F),
                      (0x3164, 0x3164), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF9, 0xFFFB),
                      (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE007F),
                      (0x2028, 0x2029))

    def joiner(ch: str) -> bool:
        return within(ch, (0x34F, 0x34F), (0x180E, 0x180E), (0x200B, 0x200D))

    def selector(ch: str) -> bool:
        return within(ch, (0x180B, 0x180D), (0x180F, 0x180F), (0xFE00, 0xFE0F),
                      (0xE0100, 0xE01EF))

    def visible(ch: str | None) -> bool:
        return ch is not None and not (ch.isspace() or control(ch) or refused(ch)
                                       or joiner(ch) or selector(ch))

    in_flag: set[int] = set()  # the tags of the three flags spelt with them
    for seq in map(flag, ("gbeng", "gbsct", "gbwls")):
        start = text.find(seq)
        while start >= 0:
            in_flag.update(range(start + 1, start + len(seq)))
            start = text.find(seq, start + len(seq))
    faults = []
    for i, ch in enumerate(text):
        before = text[i - 1] if i else None
        after = text[i + 1] if i + 1 < len(text) else None
        if i in in_flag:
            continue
        if control(ch):
            bad = not (multiline and ch in "\t\n")
        elif refused(ch):
            bad = True
        elif joiner(ch):
            bad = not (before is not None and not before.isascii()
                       and (visible(before) or selector(before))
                       and after is not None and not after.isascii() and visible(after))
        elif selector(ch):
            bad = not visible(before)
        else:
            bad = False
        if bad:
            faults.append(i)
    return faults


@settings(max_examples=1000, deadline=None)
@given(st.one_of(any_text, tricky), st.booleans())
def test_the_rule_is_the_documented_one(text: str, multiline: bool) -> None:
    got = [m.start() for m in p._unsafe(text, multiline).finditer(text)
           if m.lastgroup != "flag"]
    assert got == reference_faults(text, multiline)


# ---- the client ----

def test_a_hostile_server_cannot_reorder_or_hide_on_the_client_screen() -> None:
    model = Model("alice")
    buf = model.dm("ev\u202eil")
    clock = Clock(now=lambda: 0.0, zone=UTC)
    line = Line("message", 0.0, "pay \u202etxt.exe\u2028fake line", nick="m\u2066al\x1b[31m")
    out = format_line(buf, line, clock)
    assert not set(out) & set("\u202e\u2066\u2028\x1b")
    assert "pay \ufffdtxt.exe\\nfake line" in out
    assert "<m\ufffdal\ufffd[31m>" in out and "@ev\ufffdil" in out


@pytest.mark.parametrize("multiline", [True, False])
def test_ascii_text_is_shown_by_the_rule_it_is_refused_by(multiline: bool) -> None:
    """safe_text's ASCII shortcut (no separators, no flags there) keeps the one rule of
    protocol.md §3: a character refuse_unsafe refuses is shown as U+FFFD, any other as it
    is; alone, and between printable neighbours."""
    for code in range(128):
        char = chr(code)
        try:
            p.refuse_unsafe(char, "text", multiline=multiline)
            shown = char
        except ProtocolError:
            shown = "\ufffd"
        assert p.safe_text(char, multiline=multiline) == shown, hex(code)
        assert p.safe_text(f"a{char}b{char}", multiline=multiline) == f"a{shown}b{shown}"
