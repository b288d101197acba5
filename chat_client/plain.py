"""Plain mode: one input line = one message or /command; one event = one output line.

For scripts and pipes. At the end of input, or at /quit, the client waits for every reply
(so a message is acknowledged, i.e. stored, before exit), quits, and exits 0 unless
something failed.

Every output line is exactly one line for any reader, `str.splitlines()` included: text
from the server is made inert (safetext.clean) and then escaped (`one_line`), so no message
can forge a second line. Messages replayed from history are marked `[backlog]`, so a bot
can tell them from live ones (or leave them out: `--no-backlog`).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from typing import TextIO

from . import commands as cmd
from .buffer import Buffer, Line
from .clock import Clock
from .connection import Connection
from .core import Core
from .lifecycle import ConnectionEnded
from .safetext import clean, clean_line

REPLY_TIMEOUT = 30.0  # at end of input, give up waiting for replies after this long
BACKLOG = "[backlog] "


def one_line(text: str) -> str:
    """Text as one output line. safetext.clean makes it inert: U+2028 and U+2029 become
    newlines (as the server makes them), and every other separator str.splitlines() knows
    (\\r \\v \\f \\x1c-\\x1e \\x85) is a control character, shown as U+FFFD. Then a backslash
    is written `\\\\` and a newline `\\n`: never two lines, and the escaping can be undone."""
    return clean(text).replace("\\", "\\\\").replace("\n", "\\n")


def format_line(buf: Buffer, line: Line, clock: Clock) -> str:
    """`HH:MM:SS TARGET BODY`; TARGET is a room, @nick for direct messages, or '*'; BODY
    starts with `[backlog] ` for a message replayed from history."""
    stamp = clock.hms(line.ts)
    name, nick = clean_line(buf.name), clean_line(line.nick)  # from the server: untrusted
    target = name if buf.kind == "room" else f"@{name}" if buf.kind == "dm" else "*"
    text = one_line(line.text)
    if line.kind == "message":
        body = f"<{nick}> {text}"
    elif line.kind == "action":
        body = f"* {nick} {text}"
    elif line.kind == "error":
        body = f"! {text}"
    else:
        body = f"-- {text}"
    return f"{stamp} {target} {BACKLOG if line.backlog else ''}{body}"


class Pacer:
    """Client-side token bucket so a script does not trip the server's msg_rate.

    It runs a little below the server's figures: our clock and the server's differ by
    the network delay, and a refusal would fail the script.
    """

    def __init__(self, core: Core) -> None:
        self.core = core
        self.clock = core.model.clock
        self.tokens = self.burst
        self.stamp = self.clock.monotonic()

    @property
    def burst(self) -> float:
        return max(1.0, float(self.core.limit("msg_burst")) * 0.5)

    async def wait(self) -> None:
        rate = float(self.core.limit("msg_rate")) * 0.8
        burst = self.burst
        while True:
            now = self.clock.monotonic()
            self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await self.clock.sleep((1 - self.tokens) / rate)


def _stdin_lines(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None],
                 stdin: TextIO) -> None:
    """Reader thread: works for pipes, files and terminals alike."""
    try:
        for line in stdin:
            loop.call_soon_threadsafe(queue.put_nowait, line)
    finally:
        loop.call_soon_threadsafe(queue.put_nowait, None)


async def _wait_for(core: Core, pred: Callable[[], bool], conn_task: asyncio.Task[None],
                    timeout: float) -> bool:
    clock = core.model.clock
    deadline = clock.monotonic() + timeout
    while not pred():
        if conn_task.done() or clock.monotonic() > deadline:
            return False
        await clock.sleep(0.02)
    return True


def _paced(action: cmd.Action) -> bool:
    """Does the action send a message (the server's msg_rate bucket)?"""
    return isinstance(action, cmd.Say) or isinstance(action, cmd.Msg) and action.text is not None


async def run_plain(core: Core, conn: Connection, stdin: TextIO = sys.stdin,
                    stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr,
                    backlog: bool = True) -> int:
    """Run until end of input or /quit; the exit status. `backlog=False` leaves out the
    messages replayed from history."""
    def show(buf: Buffer, line: Line) -> None:
        if line.state == "pending" or (line.backlog and not backlog):
            return
        if line.kind == "error" or line.state == "failed":
            what = "not delivered: " if line.state == "failed" else ""
            print(f"chat-client: {what}{one_line(line.text)}", file=stderr, flush=True)
        else:
            print(format_line(buf, line, core.model.clock), file=stdout, flush=True)

    core.model.listeners.append(show)
    conn_task = asyncio.create_task(conn.run())
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    threading.Thread(target=_stdin_lines, args=(loop, queue, stdin), daemon=True).start()
    pacer: Pacer | None = None
    reason = ""  # of a /quit
    try:
        while True:
            get = asyncio.ensure_future(queue.get())
            await asyncio.wait({get, conn_task}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                break  # the connection gave up
            raw = get.result()
            if raw is None:
                break
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            if not await _wait_for(core, lambda: core.ready, conn_task, 3600):
                break
            action = core.parse_line(text)
            if action is None:  # a usage error, reported
                continue
            if isinstance(action, cmd.Quit):
                reason = action.reason  # then leave as at the end of input
                break
            if _paced(action):
                pacer = pacer or Pacer(core)
                await pacer.wait()
            core.execute(action)
            conn.flush()
        # Every request answered (messages acknowledged) before we leave.
        await _wait_for(core, lambda: core.ready and not core.busy(), conn_task,
                        REPLY_TIMEOUT)
        if not conn_task.done():
            if core.busy():
                core.failures += 1
                print("chat-client: gave up waiting for the server's replies", file=stderr)
            await conn.quit(reason)
    finally:
        if not conn_task.done():
            conn_task.cancel()
        try:
            await conn_task
        except ConnectionEnded as exc:  # never connected, or refused: retrying cannot help
            print(f"chat-client: {one_line(str(exc))}", file=stderr, flush=True)
            return 1
        except asyncio.CancelledError:
            pass
    return 1 if core.failures else 0
