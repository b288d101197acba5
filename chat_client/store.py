"""Last-seen message ids on disk, so a client that was closed and started again catches up."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path


def state_dir() -> Path:
    """Per-user state dir: $CHAT_CLIENT_STATE_DIR, else $XDG_STATE_HOME/chat-client,
    else ~/.local/state/chat-client."""
    override = os.environ.get("CHAT_CLIENT_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "chat-client"


class StateStore:
    """Last-seen message id per room, per server and starting nick, as JSON."""

    def __init__(self, server: str, nick: str, directory: Path | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{server}-{nick.lower()}")
        self.path = (directory or state_dir()) / f"{safe}.json"

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
            rooms = data.get("rooms", {})
            return {str(k): int(v) for k, v in rooms.items() if isinstance(v, int)}
        except (OSError, ValueError, AttributeError):
            return {}

    def save(self, rooms: dict[str, int]) -> None:
        """Merge (ids only grow) and write atomically; a failed write is not fatal."""
        merged = self.load()
        for room, last in rooms.items():
            merged[room] = max(merged.get(room, 0), last)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps({"version": 1, "rooms": merged}, indent=1))
            os.replace(tmp, self.path)
        except OSError:
            pass
