"""Full-screen prompt_toolkit UI over the model: message pane, status bar, input line."""

from __future__ import annotations

import asyncio
import contextlib
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

from . import commands
from .connection import Connection
from .core import Core
from .gcpolicy import Collector
from .lifecycle import ConnState
from .model import Model, clean_line
from .render import WHEEL_ROWS, Fragments, page_rows, scroll_by, top_bottom, visible_rows
from .store import StateStore
from .stream import TCPOpener

STYLE = Style.from_dict({
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
    "prompt": "bold",
})


class MessagesControl(UIControl):
    """Renders the current buffer bottom-up at the real window size."""

    def __init__(self, model: Model) -> None:
        self.model = model
        self.width, self.height = 80, 24

    def create_content(self, width: int, height: int) -> UIContent:
        self.width, self.height = width, height
        try:
            rows = visible_rows(self.model.cur, width, height, self.model.nick, self.model.clock)
        except Exception as exc:  # a rendering bug must not kill the session
            rows = [[("class:error", f"render error: {type(exc).__name__}: {exc}")]]
        rows = [[] for _ in range(height - len(rows))] + rows  # stick to the bottom

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


class ChatUI:
    def __init__(self, core: Core, input: Input | None = None, output: Output | None = None,
                 ) -> None:
        self.core = core
        self.model = core.model
        self.conn: Connection | None = None
        self.messages = MessagesControl(self.model)
        self.completion = Completion(self.model)
        self.history = InputHistory()
        self.input = InputBuffer(multiline=False, accept_handler=self._accept)
        input_window = Window(
            BufferControl(self.input, input_processors=[
                BeforeInput(lambda: [("class:prompt", f"[{clean_line(self.model.cur.name)}] ")])]),
            height=lambda: Dimension(min=1, max=6,
                                     preferred=self.input.document.line_count),
            wrap_lines=True, dont_extend_height=True)
        layout = Layout(HSplit([
            Window(self.messages, wrap_lines=False),
            Window(FormattedTextControl(self.status), height=1, style="class:status"),
            input_window,
        ]), focused_element=input_window)
        self.app: Application[int] = Application(
            layout=layout, key_bindings=self._bindings(), style=STYLE, full_screen=True,
            mouse_support=True, refresh_interval=1.0, input=input, output=output)
        self.last_key = self.model.clock.monotonic()
        self.app.key_processor.before_key_press += self._key_pressed

    def _key_pressed(self, _: object) -> None:
        self.last_key = self.model.clock.monotonic()

    async def run(self) -> int:
        """Run the application. Meanwhile full garbage collections leave the scrollback
        alone (see gcpolicy), so a key never waits on the size of the buffers."""
        with Collector(clock=self.model.clock.monotonic) as collector:
            refresher = asyncio.create_task(collector.run(lambda: self.last_key))
            try:
                return await self.app.run_async()
            finally:
                refresher.cancel()

    # Status bar
    def status(self) -> Fragments:
        m = self.model
        out: Fragments = [("class:status", " ")]
        if m.conn_state is ConnState.CONNECTED:
            lag = f" · lag {m.lag_ms:.0f} ms" if m.lag_ms is not None else ""
            out.append(("class:status.ok", "connected" + lag))
        elif m.conn_state is ConnState.RECONNECTING and m.retry_at is not None:
            secs = max(0, round(m.retry_at - m.clock.monotonic()))
            out.append(("class:status.bad", f"reconnecting in {secs}s"))
        else:  # the handshake is part of connecting, for the user
            word = "connecting" if m.conn_state is ConnState.HANDSHAKE else m.conn_state.value
            out.append(("class:status.bad", word + "…"))
        out.append(("class:status", f" │ {clean_line(m.nick)} │ "))
        # Every buffer with its Alt+N number: the current one bold, others with their
        # unread count; a mention or direct message turns the entry red with a '!'.
        for i, b in enumerate(m.order()):
            if b.kind == "server" and b.key != m.current and not b.unread:
                continue
            if b.key == m.current:
                out.append(("class:status.cur", f"[{i + 1}:{clean_line(b.name)}]"))
            elif b.unread:
                hot = b.mentions > 0
                mark = f"{b.unread}!" if hot else str(b.unread)
                out.append(("class:status.hot" if hot else "class:status.act",
                            f"{i + 1}:{clean_line(b.name)}({mark})"))
            else:
                out.append(("class:status.dim", f"{i + 1}:{clean_line(b.name)}"))
            out.append(("class:status", " "))
        if m.cur.kind == "room" and not m.cur.joined:
            out.append(("class:status", "│ (not joined)"))
        elif m.cur.kind == "room" and m.cur.topic:
            out.append(("class:status", f"│ {clean_line(m.cur.topic)}"))
        return out

    # Input
    def _accept(self, buf: InputBuffer) -> bool:
        text = buf.text
        self.history.add(text)
        if text.strip():
            self.core.execute_line(text)
            self.model.cur.scroll_to(None)  # sending jumps back to the bottom
            self.changed()
        if self.core.quitting:
            self.app.exit(result=0)
        return False  # False: clear the input line (and keep it in the history)

    def _bindings(self) -> KeyBindings:
        kb = KeyBindings()
        m = self.model

        @kb.add("c-c")
        def _(event: KeyPressEvent) -> None:
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
            self.completion.complete(event.current_buffer)

        @kb.add("pageup")
        def _(event: KeyPressEvent) -> None:
            self.messages.scroll(-1)

        @kb.add("pagedown")
        def _(event: KeyPressEvent) -> None:
            self.messages.scroll(1)

        # Home/End move in the input line while it has text; on an empty line (where they
        # would do nothing) they go to the top/bottom of the buffer, as Ctrl+Home/Ctrl+End
        # always do.
        empty = Condition(lambda: not self.input.text)

        @kb.add("c-home")
        @kb.add("home", filter=empty)
        def _(event: KeyPressEvent) -> None:
            self.messages.scroll_top()

        @kb.add("c-end")
        @kb.add("end", filter=empty)
        def _(event: KeyPressEvent) -> None:
            self.messages.scroll_bottom()

        @kb.add("c-n")
        def _(event: KeyPressEvent) -> None:
            m.cycle(1)

        @kb.add("c-p")
        def _(event: KeyPressEvent) -> None:
            m.cycle(-1)

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


async def run_tui(core: Core, host: str, port: int, store: StateStore | None,
                  input: Input | None = None, output: Output | None = None,
                  ui_ready: Any = None, **conn_opts: Any) -> int:
    """Run the full-screen client until /quit, Ctrl-C or Ctrl-D."""
    ui = ChatUI(core, input, output)
    conn = Connection(TCPOpener(host, port), core, store, on_change=ui.changed, **conn_opts)
    ui.conn = conn
    conn_task = asyncio.create_task(conn.run())
    if ui_ready is not None:
        ui_ready(ui)
    try:
        result = await ui.run()
    finally:
        await conn.quit()
        conn_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await conn_task
        conn.save_state(force=True)
    return result or 0
