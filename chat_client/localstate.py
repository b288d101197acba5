"""What the user set up in the client itself, kept across restarts: the read marker of each
buffer and the ignored nicks.

One JSON file next to the catch-up state (store.py), per server and starting nick, named
like it with `.local.json` at the end. A damaged or unwritable file is never fatal: the
client then starts without markers or ignores and says so once, in the server buffer.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from chatd.protocol import MAX_NICK, NICK_CHARS, NICK_RE, ROOM_RE, nick_key

from .buffer import SERVER
from .jsonfile import write_json
from .model import Model

log = logging.getLogger(__name__)
VERSION = 1
MAX_IGNORED = 1000  # a bound on what a file can make us hold
# `@` and a nick key (which may be longer than a nick: "m" becomes "rn")
_DM_KEY = re.compile(f"@[{NICK_CHARS}]{{1,{2 * MAX_NICK}}}")


class LocalState:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved: dict[str, Any] | None = None  # what is on disk, as last read or written
        self.reported = False

    @classmethod
    def beside(cls, state_file: Path) -> LocalState:
        """The local state of the server and nick whose catch-up state is `state_file`."""
        return cls(state_file.with_name(state_file.name.removesuffix(".json") + ".local.json"))

    def load(self, model: Model) -> None:
        """Apply the saved markers and ignores to the model."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self._problem(model, f"ignored the unreadable file {self.path}: {exc}")
            return
        if not isinstance(data, dict):
            self._problem(model, f"ignored {self.path}: not a JSON object")
            return
        reads = data.get("read")
        if isinstance(reads, dict):
            model.restore_reads({k: v for k, v in reads.items() if _read_key(k) and _id(v)})
        ignored = data.get("ignore")
        if isinstance(ignored, list):
            nicks = [n for n in ignored if isinstance(n, str) and NICK_RE.match(n)]
            model.ignored = {nick_key(n): n for n in nicks[:MAX_IGNORED]}
        self.saved = snapshot(model)

    def save(self, model: Model) -> None:
        """Write when something changed; atomically (the old file or the new one)."""
        data = snapshot(model)
        if data == self.saved:
            return
        try:
            write_json(self.path, data)
            self.saved = data
        except OSError as exc:
            self._problem(model, f"cannot save read markers and ignores to {self.path}: {exc}")

    def _problem(self, model: Model, text: str) -> None:
        log.info("%s", text)
        if not self.reported:
            self.reported = True
            model.note(model.buffers[SERVER], text, "error")


def snapshot(model: Model) -> dict[str, Any]:
    return {"version": VERSION, "read": model.saved_reads(),
            "ignore": sorted(model.ignored.values(), key=str.lower)}


def _id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _read_key(value: Any) -> bool:
    return isinstance(value, str) and (ROOM_RE.match(value) is not None
                                       or _DM_KEY.fullmatch(value) is not None)
