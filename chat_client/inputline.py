"""The input line's helpers: Tab completion and the history of sent lines (no UI)."""

from __future__ import annotations

from prompt_toolkit.buffer import Buffer as InputBuffer
from prompt_toolkit.document import Document

from . import commands
from .model import Model


class Completion:
    """Irssi-style Tab: replace the word before the cursor, cycling on repeated Tab."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.state: tuple[str, int, list[str], int] | None = None  # result text, start, ...

    def candidates(self, text: str, word: str, start: int) -> list[str]:
        m = self.model
        if start == 0 and word.startswith("/"):
            names = commands.command_names()
            return [f"/{n} " for n in names if n.startswith(word[1:].lower())]
        command = text.split(" ", 1)[0].lower() if start > 0 else ""
        if command in ("/switch", "/close"):  # buffer names, in Alt+N order
            return [b.name + " " for b in m.order() if b.name.lower().startswith(word.lower())]
        if command in ("/whois", "/ignore", "/unignore", "/msg", "/query"):
            every = {k: n for b in m.order() if b.kind == "room" for k, n in b.members.items()}
            every.update((b.key, b.name) for b in m.order() if b.kind == "dm")
            every.update(m.ignored)
            nicks = sorted(every.values(), key=str.lower)
            return [n + " " for n in nicks if n.lower().startswith(word.lower())]
        if word.startswith("#"):
            rooms = sorted(set(m.known_rooms) | {b.key for b in m.order() if b.kind == "room"})
            return [r + " " for r in rooms if r.startswith(word.lower())]
        nicks = sorted(m.cur.members.values(), key=str.lower) if m.cur.kind == "room" else \
            [m.cur.name]
        suffix = ": " if start == 0 else " "
        return [n + suffix for n in nicks if n.lower().startswith(word.lower())]

    def complete(self, buf: InputBuffer) -> None:
        doc = buf.document
        if self.state is not None and self.state[0] == doc.text:
            _, start, cands, i = self.state
            i = (i + 1) % len(cands)
        else:
            before = doc.text_before_cursor
            start = len(before) - len(before.split(" ")[-1])
            word = before[start:]
            cands = self.candidates(doc.text, word, start)
            if not cands:
                return
            i = 0
        new = doc.text[:start] + cands[i] + doc.text_after_cursor
        buf.document = Document(new, start + len(cands[i]))
        self.state = (new, start, cands, i)


class InputHistory:
    """Up/Down recall of sent lines. Synchronous, unlike prompt_toolkit's buffer history,
    which reloads in a background task after every Enter, so a quick Up could find it
    empty."""

    def __init__(self, size: int = 1000) -> None:
        self.items: list[str] = []
        self.size = size
        self.pos: int | None = None
        self.draft = ""

    def add(self, text: str) -> None:
        if text and (not self.items or self.items[-1] != text):
            self.items.append(text)
            del self.items[:-self.size]
        self.pos = None

    def up(self, current: str) -> str | None:
        if not self.items or self.pos == 0:
            return None
        if self.pos is None:
            self.draft, self.pos = current, len(self.items)
        self.pos -= 1
        return self.items[self.pos]

    def down(self) -> str | None:
        if self.pos is None:
            return None
        self.pos += 1
        if self.pos >= len(self.items):
            self.pos = None
            return self.draft
        return self.items[self.pos]
