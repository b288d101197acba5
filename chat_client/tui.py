"""Full-screen prompt_toolkit UI over the model: the layout (message pane, status bar,
input line), its style, what Enter and quitting do, and run_tui, which runs it over a
Connection. The pane is messagepane.py, the keys keys.py, Ctrl+R search.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prompt_toolkit.application import Application
from prompt_toolkit.buffer import Buffer as InputBuffer
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.input import Input
from prompt_toolkit.layout import HSplit, Layout, Window
from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl
from prompt_toolkit.layout.dimension import Dimension
from prompt_toolkit.layout.processors import BeforeInput
from prompt_toolkit.output import Output
from prompt_toolkit.styles import Style
from prompt_toolkit.utils import get_cwidth

from . import links, statusbar
from .clock import Clock
from .connection import Connection
from .core import Core
from .gcpolicy import Collector
from .inputline import Completion, InputHistory
from .keys import key_bindings
from .messagepane import MessagesControl
from .render import visible_rows
from .safetext import clean_line
from .search import BufferSearch, SearchMode
from .store import StateStore
from .stream import Opener, TCPOpener

# The style classes the renderer and the status bar use; `[colours]` in the config file may
# restyle each (config.py checks the names against these).
STYLES: dict[str, str] = {
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
SAVE_EVERY = 2.0  # seconds between saves of the read markers and ignores (when changed)


@dataclass
class UIOptions:
    """What the config file sets for the full-screen client."""

    keys: dict[str, list[str]] = field(default_factory=dict)  # action -> keys (replacing)
    colours: dict[str, str] = field(default_factory=dict)  # style class -> style
    hyperlinks: bool = False  # OSC 8 links (links.py)


class ChatUI:
    """The full-screen application over one Core; run_tui gives it its Connection."""

    def __init__(self, core: Core, input: Input | None = None, output: Output | None = None,
                 options: UIOptions | None = None) -> None:
        self.core = core
        self.model = core.model
        self.options = options or UIOptions()
        self.conn: Connection | None = None
        self.messages = MessagesControl(self.model)
        self.completion = Completion(self.model)
        self.history = InputHistory()
        self.presses = 0  # keys pressed so far
        self.asked_at: int | None = None  # the key press that asked "quit?"
        self.input = InputBuffer(multiline=False, accept_handler=self._accept)
        self.search = BufferSearch(self.model, self.input)
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
            layout=layout, key_bindings=key_bindings(self, self.options.keys), style=style,
            full_screen=True, mouse_support=True, refresh_interval=1.0, input=input,
            output=output)
        self.last_key = self.model.clock.monotonic()
        self.app.key_processor.before_key_press += self._key_pressed
        if self.options.hyperlinks:
            self.app.after_render += self._draw_links

    @property
    def searching(self) -> SearchMode | None:
        """The Ctrl+R search going on, if any."""
        return self.search.mode

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
    def status(self) -> StyleAndTextTuples:
        note = None
        if self.asked_at is not None and self.asked_at == self.presses:
            # The key comes first: on a narrow bar (or behind a long lag) the tail is cut.
            note = "Ctrl+C again quits and loses the typed line; any other key goes on"
        return list(statusbar.status(self.model, self.app.output.get_size().columns, note))

    def _prompt(self) -> StyleAndTextTuples:
        if self.search.mode is not None:
            return [("class:prompt", self.search.prompt())]
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
        if self.search.mode is not None:
            self.search.end(keep=True)
            return True  # end() put the draft back
        text = buf.text
        if not text.lower().startswith("/register "):  # a password is never recalled
            self.history.add(text)
        if text.strip():
            self.core.execute_line(text)
            if not text.startswith("/") or text.startswith("//"):
                self.model.cur.scroll_to(None)  # sending jumps back to the bottom
            self.changed()
        if self.core.quitting:
            self.app.exit(result=0)
        return False  # False: clear the input line (and keep it in the history)

    def interrupt(self) -> None:
        """Ctrl+C: quit; with a typed line, ask first (the line would be lost)."""
        typed = self.input.text if self.search.mode is None else self.search.mode.draft
        if typed and self.asked_at != self.presses - 1:
            self.asked_at = self.presses
            return
        self.quit()

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
