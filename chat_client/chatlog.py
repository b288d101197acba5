"""Optional logging of each buffer to a text file (config: `[log] enabled = true`).

`DIR/SERVER/BUFFER.log`, one line per message, action or notice as it arrives:

    2026-11-21 15:00:01 <bob> hello
    2026-11-21 15:00:05 * bob waves
    2026-11-21 15:00:09 -- carol joined #general

in local time; a message's further lines follow indented by four spaces. Server text is
made inert first (safetext.clean), so reading a log with `cat` cannot drive the terminal.
Each message is logged once: the highest id logged per buffer is kept in `DIR/SERVER/
last-ids.json`, so the history a restarted client shows again is not logged again, while
what it missed meanwhile is. Our own messages are logged once acknowledged. A file that
cannot be written stops the logging with one error line, never the client.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections import OrderedDict
from pathlib import Path
from typing import TextIO

from .buffer import SERVER, Buffer, Line
from .jsonfile import write_json
from .model import Model
from .safetext import clean, clean_line

log = logging.getLogger(__name__)
MAX_OPEN = 16  # log files kept open at once (the least recently used is closed)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.#@-]", "_", text).lstrip(".") or "_"


class ChatLog:
    def __init__(self, directory: Path, server: str, model: Model) -> None:
        self.dir = directory / safe_name(server)
        self.model = model
        self.files: OrderedDict[str, TextIO] = OrderedDict()
        self.ids_path = self.dir / "last-ids.json"
        self.last_ids: dict[str, int] = self._load_ids()
        self.saved_ids = dict(self.last_ids)
        self.failed = False
        model.listeners.append(self.line)

    def _load_ids(self) -> dict[str, int]:
        try:
            data = json.loads(self.ids_path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int)}

    def line(self, buf: Buffer, line: Line) -> None:
        """A model listener: called when a line is added or changes state."""
        if self.failed or line.kind not in ("message", "action", "notice"):
            return
        if line.state != "ok":
            return  # ours, logged once acknowledged
        name = safe_name(buf.saved_key)
        if line.id is not None:
            if line.id <= self.last_ids.get(name, 0):
                return  # logged before (history shown again after a restart)
            self.last_ids[name] = line.id
        try:
            self._file(name).write(format_line(line, self.model) + "\n")
        except OSError as exc:
            self._fail(exc)

    def _file(self, name: str) -> TextIO:
        f = self.files.get(name)
        if f is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = open(self.dir / f"{name}.log", "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self.files[name] = f
            while len(self.files) > MAX_OPEN:
                self.files.popitem(last=False)[1].close()
        self.files.move_to_end(name)
        return f

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        log.warning("buffer logging stopped: %s", exc)
        self.model.note(self.model.buffers[SERVER], f"logging stopped: cannot write to "
                        f"{self.dir}: {exc}", "error")
        self.close()

    def save(self) -> None:
        """Write the highest ids logged, when they changed (atomically)."""
        if self.last_ids == self.saved_ids:
            return
        try:
            write_json(self.ids_path, self.last_ids)
            self.saved_ids = dict(self.last_ids)
        except OSError as exc:
            log.info("cannot save %s: %s", self.ids_path, exc)

    def close(self) -> None:
        for f in self.files.values():
            with contextlib.suppress(OSError):
                f.close()
        self.files.clear()


def format_line(line: Line, model: Model) -> str:
    stamp = model.clock.local(line.ts).strftime("%Y-%m-%d %H:%M:%S")
    text = clean(line.text).replace("\n", "\n    ")
    nick = clean_line(line.nick)
    if line.kind == "message":
        return f"{stamp} <{nick}> {text}"
    if line.kind == "action":
        return f"{stamp} * {nick} {text}"
    return f"{stamp} -- {text}"
