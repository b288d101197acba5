"""The message pane: the current buffer drawn bottom-up at the real window size, and its
scrolling by page, row, mouse wheel and to either end."""

from __future__ import annotations

from prompt_toolkit.data_structures import Point
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.layout.controls import UIContent, UIControl
from prompt_toolkit.mouse_events import MouseEvent, MouseEventType

from .model import Model
from .render import WHEEL_ROWS, Fragments, page_rows, scroll_by, top_bottom, visible_rows


class MessagesControl(UIControl):
    """Renders the current buffer bottom-up at the real window size."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.width, self.height = 80, 24
        self.rows: list[Fragments] = []  # as last drawn, top to bottom (for the links)

    def create_content(self, width: int, height: int) -> UIContent:
        self.width, self.height = width, height
        try:
            rows = visible_rows(self.model.cur, width, height, self.model.nick, self.model.clock)
        except Exception as exc:  # a rendering bug must not kill the session
            rows = [[("class:error", f"render error: {type(exc).__name__}: {exc}")]]
        rows = [[] for _ in range(height - len(rows))] + rows  # stick to the bottom
        self.rows = rows

        def get_line(i: int) -> StyleAndTextTuples:
            return list(rows[i]) if 0 <= i < len(rows) else []

        return UIContent(get_line=get_line, line_count=len(rows),
                         cursor_position=Point(0, max(0, len(rows) - 1)), show_cursor=False)

    def is_focusable(self) -> bool:
        return False

    # Scrolling: each of these visits O(screen) lines (see render.py), at any buffer size.
    def scroll(self, pages: int) -> None:
        self.scroll_rows(pages * page_rows(self.height))

    def scroll_rows(self, rows: int) -> None:
        m = self.model
        m.cur.scroll_to(scroll_by(m.cur, self.width, self.height, m.nick, rows, m.clock))

    def scroll_top(self) -> None:
        m = self.model
        m.cur.scroll_to(top_bottom(m.cur, self.width, self.height, m.nick, m.clock))

    def scroll_bottom(self) -> None:
        self.model.cur.scroll_to(None)

    def mouse_handler(self, mouse_event: MouseEvent) -> object:
        """The mouse wheel over the messages scrolls them (NotImplemented: not handled)."""
        if mouse_event.event_type == MouseEventType.SCROLL_UP:
            self.scroll_rows(-WHEEL_ROWS)
        elif mouse_event.event_type == MouseEventType.SCROLL_DOWN:
            self.scroll_rows(WHEEL_ROWS)
        else:
            return NotImplemented
        return None
