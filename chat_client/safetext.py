"""Server text made safe to print.

The screen must not depend on the server keeping the rules: text from it is shown by the
same rule the server enforces (chatd.protocol.safe_text), so a hostile server cannot drive
the terminal (escape sequences), reorder a line (bidi controls) or hide text.
"""

from __future__ import annotations

from chatd.protocol import safe_text


def clean(text: str) -> str:
    """Message text safe to print: what the rule refuses becomes U+FFFD, a line separator
    a newline, and a tab four spaces."""
    return safe_text(text, multiline=True).replace("\t", "    ")


def clean_line(text: str) -> str:
    """A one-line field (nick, room, topic, reason) safe to print: as clean(), and a tab
    or newline becomes U+FFFD too."""
    return safe_text(text, multiline=False)
