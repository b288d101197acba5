"""Full-screen prompt_toolkit UI over the model: message pane, status bar, input line."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer as InputBuffer
from prompt_toolkit.data_structures import Point
from prompt_toolkit.document import Document
from prompt_toolkit.filters import Condition
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl, UIContent, UIControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.mouse_events import MouseEvent, MouseEventType
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from . import links, statusbar
from .clock import Clock
from .connection import Connection
from .core import Core
from .gcpolicy import Collector
from .inputline import Completion, InputHistory
from .localcmds import find_back
from .model import Model
from .render import WHEEL_ROWS, Fragments, page_rows, scroll_by, top_bottom, visible_rows
from .safetext import clean_line
from .store import StateStore
from .stream import Opener, TCPOpener

STYLES = {
    "time": "fg:ansibrightblack",
    "sep": "fg:ansibrightblack",
    "notice": "fg:ansibrightblack",
    "info": "",
    "error": "fg:ansired bold",
    "action": "italic",
    "pending": "fg:ansibrightblack italic",
    "mention": "bg:ansiyellow fg:ansiblack bold",
    "day": "fg:ansicyan",
    "marker": "bg:ansiblue fg:ansiwhite bold",
    "status": "bg:ansiblue fg:ansiwhite",
    "status.ok": "bg:ansiblue fg:ansibrightgreen bold",
    "status.bad": "bg:ansiblue fg:ansibrightyellow bold",
    "status.act": "bg:ansiblue fg:ansiwhite bold",
    "status.cur": "bg:ansiwhite fg:ansiblue bold",
    "status.dim": "bg:ansiblue fg:ansigray",
    "status.hot": "bg:ansired fg:ansiwhite bold",
    "status.low": "bg:ansiblue fg:ansiwhite",
    "prompt": "bold",
    "readmarker": "fg:ansibrightred",
    "found": "reverse",
    "url": "underline",
}
STYLE = Style.from_dict(STYLES)

# Key bindings that the config file may change: action -> (default keys, what it does).
# A key is prompt_toolkit's name ("c-r", "pageup", "f5"); "escape a" is Alt+A.
ACTIONS: dict[str, tuple[list[str], str]] = {
    "next_active": (["escape a"], "go to the buffer with the most important activity"),
    "search": (["c-r"], "search the current buffer as you type"),
    "next_buffer": (["c-n"], "next buffer"),
    "prev_buffer": (["c-p"], "previous buffer"),
    "page_up": (["pageup"], "scroll a page up"),
    "page_down": (["pagedown"], "scroll a page down"),
    "top": (["c-home"], "top of the buffer"),
    "bottom": (["c-end"], "bottom of the buffer"),
}
SAVE_EVERY = 2.0  # seconds between saves of the read markers and ignores (when changed)


@dataclass
class UIOptions:
    """What the config file sets for the full-screen client."""

    keys: dict[str, list[str]] = field(default_factory=dict)  # action -> keys (replacing)
    colours: dict[str, str] = field(default_factory=dict)  # style class -> style
    hyperlinks: bool = False  # OSC 8 links (links.py)


@dataclass
class SearchMode:
    """Ctrl+R: the input line holds the search text while this lasts."""

    key: str  # the buffer searched
    draft: str  # the input line before, given back at the end
    anchor: int | None  # the view before, for Esc
    start: int  # matches are looked for above this absolute index
    missed: bool = False


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

        def get_line(i: int) -> Fragments:
            return rows[i] if 0 <= i < len(rows) else []

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

    def mouse_handler(self, mouse_event: MouseEvent) -> Any:
        """The mouse wheel over the messages scrolls them."""
        if mouse_event.event_type == MouseEventType.SCROLL_UP:
            self.scroll_rows(-WHEEL_ROWS)
        elif mouse_event.event_type == MouseEventType.SCROLL_DOWN:
            self.scroll_rows(WHEEL_ROWS)
        else:
            return NotImplemented
        return None


class ChatUI:
    def __init__(self, core: Core, input: Input | None = None, output: Output | None = None,
                 options: UIOptions | None = None) -> None:
        self.core = core
        self.model = core.model
        self.options = options or UIOptions()
        self.conn: Connection | None = None
        self.messages = MessagesControl(self.model)
        self.completion = Completion(self.model)
        self.history = InputHistory()
        self.searching: SearchMode | None = None
        self.presses = 0  # keys pressed so far
        self.asked_at: int | None = None  # the key press that asked "quit?"
        self.input = InputBuffer(multiline=False, accept_handler=self._accept)
        self.input.on_text_changed += self._search_typed
        input_window = Window(
            BufferControl(self.input, input_processors=[BeforeInput(self._prompt)]),
            height=lambda: Dimension(min=1, max=6,
                                     preferred=self.input.document.line_count),
            wrap_lines=True, dont_extend_height=True)
        layout = Layout(HSplit([
            Window(self.messages, wrap_lines=False),
            Window(FormattedTextControl(self.status), height=1, style="class:status"),
            input_window,
        ]), focused_element=input_window)
        style = Style.from_dict({**STYLES, **self.options.colours})
        self.app: Application[int] = Application(
            layout=layout, key_bindings=self._bindings(), style=style, full_screen=True,
            mouse_support=True, refresh_interval=1.0, input=input, output=output)
        self.last_key = self.model.clock.monotonic()
        self.app.key_processor.before_key_press += self._key_pressed
        if self.options.hyperlinks:
            self.app.after_render += self._draw_links

    def _key_pressed(self, _: object) -> None:
        self.last_key = self.model.clock.monotonic()
        self.presses += 1

    async def run(self) -> int:
        """Run the application. Meanwhile full garbage collections leave the scrollback
        alone (see gcpolicy), so a key never waits on the size of the buffers."""
        with Collector(clock=self.model.clock.monotonic) as collector:
            refresher = asyncio.create_task(collector.run(lambda: self.last_key))
            try:
                return await self.app.run_async()
            finally:
                refresher.cancel()

    # Status bar and prompt
    def status(self) -> Fragments:
        note = None
        if self.asked_at is not None and self.asked_at == self.presses:
            note = "Quit and lose the typed line? Ctrl+C again quits; any other key goes on"
        return statusbar.status(self.model, self.app.output.get_size().columns, note)

    def _prompt(self) -> Fragments:
        if self.searching is not None:
            miss = ": no match" if self.searching.missed else ""
            return [("class:prompt", f"(search{miss}; Ctrl+R older, Enter stay, Ctrl+G back) ")]
        return [("class:prompt", f"[{clean_line(self.model.cur.name)}] ")]

    def _draw_links(self, _: object) -> None:
        """OSC 8 hyperlinks over the URLs just drawn (see links.py), written with the
        output's own methods, so each piece gets the style the screen shows."""
        ops = links.overlay(links.links_on_screen(self.messages.rows, get_cwidth), 0, 0)
        if not ops:  # (the message pane is the top left of the screen)
            return
        output, style = self.app.output, self.app.renderer.style
        for kind, value in ops:
            if kind == "style":
                attrs = style.get_attrs_for_style_str(value)
                attrs = self.app.style_transformation.transform_attrs(attrs)
                output.reset_attributes()
                output.set_attributes(attrs, self.app.color_depth)
            elif kind == "text":
                output.write(value)  # checked printable ASCII; write() escapes ESC anyway
            else:
                output.write_raw(value)
        output.flush()

    # Input
    def _accept(self, buf: InputBuffer) -> bool:
        if self.searching is not None:
            self.end_search(keep=True)
            return True  # end_search put the draft back
        text = buf.text
        self.history.add(text)
        if text.strip():
            self.core.execute_line(text)
            if not text.startswith("/") or text.startswith("//"):
                self.model.cur.scroll_to(None)  # sending jumps back to the bottom
            self.changed()
        if self.core.quitting:
            self.app.exit(result=0)
        return False  # False: clear the input line (and keep it in the history)

    # Searching the buffer (Ctrl+R)
    def start_search(self) -> None:
        buf = self.model.cur
        self.searching = SearchMode(buf.key, self.input.text, buf.anchor, buf.bottom() + 1)
        self.input.reset()

    def search_older(self) -> None:
        if self.searching is not None and self.model.cur.found is not None:
            with contextlib.suppress(ValueError):
                buf = self.model.cur
                self.searching.start = buf.index_of(buf.found) + buf.trimmed
        self._search_typed(None)

    def _search_typed(self, _: object) -> None:
        mode, buf = self.searching, self.model.cur
        if mode is None:
            return
        if mode.key != buf.key:  # the buffer changed under the search
            self.end_search(keep=True)
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

    def end_search(self, keep: bool) -> None:
        """Enter keeps the view where the search took it; Ctrl+G goes back."""
        mode, self.searching = self.searching, None
        if mode is None:
            return
        buf = self.model.get(mode.key)
        if buf is not None and not keep:
            buf.found = None
            buf.scroll_to(mode.anchor)
        self.model.search_text = None
        self.input.document = Document(mode.draft, len(mode.draft))

    def _bindings(self) -> KeyBindings:
        kb = KeyBindings()
        m = self.model
        searching = Condition(lambda: self.searching is not None)

        @kb.add("c-c")
        def _(event: KeyPressEvent) -> None:
            # With a typed line, ask first: the line would be lost.
            typed = self.input.text if self.searching is None else self.searching.draft
            if typed and self.asked_at != self.presses - 1:
                self.asked_at = self.presses
                return
            self.quit()

        @kb.add("c-d")
        def _(event: KeyPressEvent) -> None:
            buf = event.current_buffer
            if buf.text:
                buf.delete()
            else:
                self.quit()

        @kb.add("escape", "enter")
        def _(event: KeyPressEvent) -> None:
            event.current_buffer.insert_text("\n")

        @kb.add("up")
        def _(event: KeyPressEvent) -> None:
            buf = event.current_buffer
            if buf.document.cursor_position_row > 0:
                buf.cursor_up()
            elif (text := self.history.up(buf.text)) is not None:
                buf.document = Document(text, len(text))

        @kb.add("down")
        def _(event: KeyPressEvent) -> None:
            buf = event.current_buffer
            if buf.document.cursor_position_row < buf.document.line_count - 1:
                buf.cursor_down()
            elif (text := self.history.down()) is not None:
                buf.document = Document(text, len(text))

        @kb.add("tab")
        def _(event: KeyPressEvent) -> None:
            if self.searching is None:
                self.completion.complete(event.current_buffer)

        @kb.add("c-g", filter=searching)
        @kb.add("escape", filter=searching)
        def _(event: KeyPressEvent) -> None:
            self.end_search(keep=False)

        # Home/End move in the input line while it has text; on an empty line (where they
        # would do nothing) they go to the top/bottom of the buffer, as Ctrl+Home/Ctrl+End
        # always do.
        empty = Condition(lambda: not self.input.text)

        @kb.add("home", filter=empty)
        def _(event: KeyPressEvent) -> None:
            self.messages.scroll_top()

        @kb.add("end", filter=empty)
        def _(event: KeyPressEvent) -> None:
            self.messages.scroll_bottom()

        def search() -> None:
            if self.searching is None:
                self.start_search()
            else:
                self.search_older()

        actions = {
            "next_active": m.jump_active,
            "search": search,
            "next_buffer": lambda: m.cycle(1),
            "prev_buffer": lambda: m.cycle(-1),
            "page_up": lambda: self.messages.scroll(-1),
            "page_down": lambda: self.messages.scroll(1),
            "top": self.messages.scroll_top,
            "bottom": self.messages.scroll_bottom,
        }
        for action, run in actions.items():
            for key in self.options.keys.get(action, ACTIONS[action][0]):
                kb.add(*key.split())(lambda event, run=run: run())

        for digit in "123456789":
            @kb.add("escape", digit)
            def _(event: KeyPressEvent, n: int = int(digit)) -> None:
                m.switch_index(n - 1)

        return kb

    def quit(self) -> None:
        if not self.core.quitting:
            self.core.quit("")
            if self.conn is not None:
                self.conn.flush()
        if not self.app.is_done:
            self.app.exit(result=0)

    def changed(self) -> None:
        """The model changed (a frame arrived): flush requests, ring the bell, redraw."""
        if self.conn is not None:
            self.conn.flush()
        if self.model.alerts:
            self.model.alerts = 0
            with contextlib.suppress(Exception):
                self.app.output.bell()
                self.app.output.flush()
        self.app.invalidate()

    def screen_text(self, width: int = 80, height: int = 24) -> str:
        """The message pane as plain text (for tests and debugging)."""
        rows = visible_rows(self.model.cur, width, height, self.model.nick, self.model.clock)
        return "\n".join("".join(t for _, t in row).rstrip() for row in rows)


async def _save_now_and_then(savers: Sequence[Callable[[], None]], clock: Clock) -> None:
    """Save read markers, ignores and log positions now and then (each writes only a
    change)."""
    while True:
        await clock.sleep(SAVE_EVERY)
        for save in savers:
            save()


async def run_tui(core: Core, host: str, port: int, store: StateStore | None,
                  input: Input | None = None, output: Output | None = None,
                  ui_ready: Any = None, options: UIOptions | None = None,
                  savers: Sequence[Callable[[], None]] = (), opener: Opener | None = None,
                  **conn_opts: Any) -> int:
    """Run the full-screen client until /quit, Ctrl-C or Ctrl-D (over `opener`, by
    default plain TCP to host:port)."""
    ui = ChatUI(core, input, output, options)
    conn = Connection(opener or TCPOpener(host, port), core, store, on_change=ui.changed,
                      **conn_opts)
    ui.conn = conn
    conn_task = asyncio.create_task(conn.run())
    saver = asyncio.create_task(_save_now_and_then(savers, core.model.clock))
    if ui_ready is not None:
        ui_ready(ui)
    try:
        result = await ui.run()
    finally:
        saver.cancel()
        await conn.quit()
        conn_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await conn_task
        conn.save_state(force=True)
        for save in savers:
            save()
    return result or 0
