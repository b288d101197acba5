"""Ctrl+R: searching the current buffer as you type.

While a search lasts, the input line holds the search text and the typed line waits aside;
each change of the text looks upward for the nearest match (localcmds.find_back) and
scrolls to it. Enter keeps the view where the search took it; Ctrl+G or Esc goes back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prompt_toolkit.buffer import Buffer as InputBuffer
from prompt_toolkit.document import Document

from .localcmds import find_back
from .model import Model


@dataclass
class SearchMode:
    """Ctrl+R: the input line holds the search text while this lasts."""

    key: str  # the buffer searched
    draft: str  # the input line before, given back at the end
    anchor: int | None  # the view before, for Esc
    start: int  # matches are looked for above this absolute index
    missed: bool = False


class BufferSearch:
    """The search over `model`'s current buffer, typed into `input`."""

    def __init__(self, model: Model, input: InputBuffer) -> None:
        self.model = model
        self.input = input
        self.mode: SearchMode | None = None  # None: not searching
        input.on_text_changed += self.typed

    def prompt(self) -> str:
        miss = ": no match" if self.mode is not None and self.mode.missed else ""
        return f"(search{miss}; Ctrl+R older, Enter stay, Ctrl+G back) "

    def start_or_older(self) -> None:
        """Ctrl+R: start a search; during one, the next older match."""
        if self.mode is None:
            self.start()
        else:
            self.older()

    def start(self) -> None:
        buf = self.model.cur
        self.mode = SearchMode(buf.key, self.input.text, buf.anchor, buf.bottom() + 1)
        self.input.reset()

    def older(self) -> None:
        buf = self.model.cur
        if self.mode is not None and buf.found is not None:
            with contextlib.suppress(ValueError):
                self.mode.start = buf.index_of(buf.found) + buf.trimmed
        self.typed(None)

    def typed(self, _: object) -> None:
        mode, buf = self.mode, self.model.cur
        if mode is None:
            return
        if mode.key != buf.key:  # the buffer changed under the search
            self.end(keep=True)
            return
        text = self.input.text
        hit = find_back(buf, text, mode.start) if text else None
        mode.missed = bool(text) and hit is None
        if hit is not None:
            buf.found = buf.lines[hit - buf.trimmed]
            buf.scroll_to(hit)
        elif not text:
            buf.found = None
            buf.scroll_to(mode.anchor)

    def end(self, keep: bool) -> None:
        """Enter keeps the view where the search took it; Ctrl+G goes back."""
        mode, self.mode = self.mode, None
        if mode is None:
            return
        buf = self.model.get(mode.key)
        if buf is not None and not keep:
            buf.found = None
            buf.scroll_to(mode.anchor)
        self.model.search_text = None
        self.input.document = Document(mode.draft, len(mode.draft))
