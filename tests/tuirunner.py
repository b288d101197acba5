"""The full-screen client (run_tui) on its own thread, typed into through a pipe.

Used against tests/fakechatd.py. Like test_client_app's runner, but without a state file,
with a pinned Clock and a trace hook for counting the client's work on its thread.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.output import DummyOutput

from chat_client.clock import Clock
from chat_client.core import Core
from chat_client.tui import ChatUI, run_tui

HOME, END, CTRL_HOME, CTRL_END = "\x1b[H", "\x1b[F", "\x1b[1;5H", "\x1b[1;5F"
PGUP, PGDN, ENTER = "\x1b[5~", "\x1b[6~", "\r"


def wheel(up: bool, x: int = 10, y: int = 5) -> str:
    """An xterm SGR mouse-wheel event at column x, row y (1-based)."""
    return f"\x1b[<{64 if up else 65};{x};{y}M"


class TUI:
    def __init__(self, host: str, port: int, nick: str, rooms: list[str], clock: Clock,
                 trace: Any = None, **conn_opts: Any) -> None:
        self.core = Core(nick, rooms, clock=clock)
        self.ui: ChatUI | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self._cm = create_pipe_input()
        self.pipe: PipeInput = self._cm.__enter__()
        ready = threading.Event()

        def found(ui: ChatUI) -> None:
            self.ui = ui
            ready.set()

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await run_tui(self.core, host, port, None, input=self.pipe,
                          output=DummyOutput(), ui_ready=found, **conn_opts)

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
        if threading.current_thread() is self.thread:
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
                raise AssertionError(f"timed out waiting for {what}; screen:\n"
                                     + "\n".join(self.pane()))
            time.sleep(0.02)

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

    def close(self) -> None:
        if self.thread.is_alive():
            self.type("\x03\x03")  # Ctrl-C (twice: with a typed line, the first asks)
            self.thread.join(20)
        self._cm.__exit__(None, None, None)
        assert not self.thread.is_alive(), "client did not exit"
        if self.error is not None:
            raise self.error
