"""The full-screen client (run_tui) on its own thread, typed into through a pipe.

The one harness for the prompt_toolkit application, against the real server or
tests/fakechatd.py: the application runs on its own event loop in a thread, with pipe
input and a DummyOutput that counts bells (or the test's own output); the test types
keys into the pipe and reads the client's state on the client's loop. Optional: a state
dir (as chat-client keeps last-seen ids, read markers and ignores), a config and UI
options, a pinned Clock, and a trace hook for counting the client's work on its thread.
Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput, Output

from chat_client.cli import setup
from chat_client.clock import SYSTEM, Clock
from chat_client.config import Config
from chat_client.core import Core
from chat_client.store import StateStore
from chat_client.tui import ChatUI, UIOptions, run_tui

HOME, END, CTRL_HOME, CTRL_END = "\x1b[H", "\x1b[F", "\x1b[1;5H", "\x1b[1;5F"
PGUP, PGDN, ENTER, TAB = "\x1b[5~", "\x1b[6~", "\r", "\t"


def wheel(up: bool, x: int = 10, y: int = 5) -> str:
    """An xterm SGR mouse-wheel event at column x, row y (1-based)."""
    return f"\x1b[<{64 if up else 65};{x};{y}M"


class CountingOutput(DummyOutput):
    """DummyOutput that counts terminal bells."""

    bells = 0

    def bell(self) -> None:
        self.bells += 1


class TUI:
    """One chat-client TUI on a private event loop thread, driven through a pipe."""

    def __init__(self, host: str, port: int, nick: str, rooms: Sequence[str] = ("#general",),
                 *, state_dir: Path | None = None, clock: Clock | None = None,
                 trace: Any = None, output: Output | None = None, config: Config | None = None,
                 options: UIOptions | None = None, **conn_opts: Any) -> None:
        self.store = None if state_dir is None else \
            StateStore(f"{host}:{port}", nick, state_dir)
        saved = None if self.store is None else self.store.load()
        self.core = Core(nick, list(rooms), saved, clock=clock or SYSTEM)
        # As chat-client starts: read markers and ignores from the state dir.
        savers = [] if self.store is None else \
            setup(self.core, config or Config(), None, self.store, f"{host}:{port}")
        self.ui: ChatUI | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.output = output or CountingOutput()
        self._cm = create_pipe_input()
        self.pipe: PipeInput = self._cm.__enter__()
        ready = threading.Event()

        def found(ui: ChatUI) -> None:
            self.ui = ui
            ready.set()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.result = await run_tui(self.core, host, port, self.store, input=self.pipe,
                                        output=self.output, ui_ready=found, options=options,
                                        savers=savers, **conn_opts)

        def thread() -> None:
            if trace is not None:
                sys.settrace(trace)
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by close()
                self.error = exc
            finally:
                sys.settrace(None)
                ready.set()

        self.thread = threading.Thread(target=thread, daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def type(self, text: str) -> None:
        self.pipe.send_text(text)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the client's loop (the model is only touched there)."""
        assert self.loop is not None
        if threading.current_thread() is self.thread or not self.thread.is_alive():
            return fn()

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(20)

    def wait(self, pred: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = self.call(pred)
            if value:
                return value
            if time.monotonic() > deadline:
                ui = self.ui
                raise AssertionError(f"timed out waiting for {what}; input line "
                                     f"{ui.input.text if ui else None!r}; screen:\n"
                                     + self.screen())
            time.sleep(0.02)

    def screen(self) -> str:
        assert self.ui is not None
        ui = self.ui
        return str(self.call(lambda: ui.screen_text(100, 30)))

    def status(self) -> str:
        assert self.ui is not None
        ui = self.ui
        return str(self.call(lambda: "".join(t for _, t in ui.status())))

    def pane(self) -> list[str]:
        """The message pane as the terminal gets it (MessagesControl, not a shortcut),
        at the size of the application's last redraw."""
        ui = self.ui
        assert ui is not None

        def grab() -> list[str]:
            content = ui.messages.create_content(ui.messages.width, ui.messages.height)
            return ["".join(t for _, t in content.get_line(i)).rstrip()
                    for i in range(content.line_count)]

        rows: list[str] = self.call(grab)
        return rows

    def ready(self) -> None:
        self.wait(lambda: self.core.ready and self.core.model.cur.joined, "joined")

    def close(self) -> Any:
        if self.thread.is_alive():
            self.type("\x03\x03")  # Ctrl-C (twice: with a typed line, the first asks)
            self.thread.join(20)
        self._cm.__exit__(None, None, None)
        assert not self.thread.is_alive(), "client did not exit"
        if self.error is not None:
            raise self.error
        return self.result
