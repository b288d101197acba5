"""The client's state on disk, so a client that was closed and started again is where it was:
the same rooms and direct-message buffers, the same current buffer, and a catch-up point
for every room and direct-message conversation (catchup.py)."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chatd.protocol import NICK_RE, ROOM_RE, nick_key

log = logging.getLogger(__name__)
VERSION = 2


def state_dir() -> Path:
    """Per-user state dir: $CHAT_CLIENT_STATE_DIR, else $XDG_STATE_HOME/chat-client,
    else ~/.local/state/chat-client."""
    override = os.environ.get("CHAT_CLIENT_STATE_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "chat-client"


@dataclass
class ClientState:
    """What a restart restores. Buffers are named `#room` or `@nick`."""

    buffers: list[str] = field(default_factory=list)  # open buffers in Alt+N order
    current: str | None = None  # the current buffer; None: the server buffer
    rooms: dict[str, int] = field(default_factory=dict)  # room -> catch-up point
    # my nick key -> peer's nick key -> (peer's nick, catch-up point)
    dms: dict[str, dict[str, tuple[str, int]]] = field(default_factory=dict)
    # The last session and its resume secret, to take it over after a restart (protocol.md
    # §2): the secret is why the file is readable by its owner only.
    session: str | None = None
    resume: str | None = None
    # my identity (an account's "@" + key, or a guest nick's key) -> `history direct` point
    direct: dict[str, int] = field(default_factory=dict)


class StateStore:
    """One JSON file per server and starting nick. Problems (a damaged file, a failed
    write) are never fatal; the first of each kind waits in `problem` for the client to
    show (a full-screen client cannot print to stderr)."""

    def __init__(self, server: str, nick: str, directory: Path | None = None) -> None:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{server}-{nick.lower()}")
        self.path = (directory or state_dir()) / f"{safe}.json"
        self.problem: str | None = None
        self._told: set[str] = set()

    def _trouble(self, kind: str, text: str) -> None:
        log.info("%s", text)
        if kind not in self._told:
            self._told.add(kind)
            self.problem = self.problem or text

    def take_problem(self) -> str | None:
        problem, self.problem = self.problem, None
        return problem

    def load(self) -> ClientState:
        """The saved state; an empty one when there is none. A damaged file (or a damaged
        entry) is skipped, never fatal: the client then only starts afresh."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return ClientState()
        except (OSError, ValueError) as exc:
            self._trouble("load", f"ignored the unreadable state file {self.path}: {exc}")
            return ClientState()
        return parse(data) if isinstance(data, dict) else ClientState()

    def save(self, state: ClientState) -> None:
        """Write atomically (a crash leaves the old file or the new one); a failed write is
        a `problem`, not fatal."""
        data = {"version": VERSION, "buffers": state.buffers, "current": state.current,
                "rooms": state.rooms,
                "dms": {me: {peer: {"nick": nick, "seen": seen}
                             for peer, (nick, seen) in peers.items()}
                        for me, peers in state.dms.items()},
                "direct": state.direct}
        if state.session and state.resume:
            data["session"], data["resume"] = state.session, state.resume
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            # Owner only from the start (the resume secret): not chmod after the write.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(data, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:
            self._trouble("save", f"cannot save the client state to {self.path}: {exc}")


def parse(data: dict[str, Any]) -> ClientState:
    """A ClientState from the file's JSON, keeping only well-formed entries. Version 1
    files held only the room points."""
    state = ClientState()
    rooms = data.get("rooms")
    if isinstance(rooms, dict):
        # (0: a room that had no messages when it was joined; catchup.Point.known)
        state.rooms = {r: n for r, n in rooms.items() if _room(r) and _id(n, 0)}
    buffers = data.get("buffers")
    if isinstance(buffers, list):
        state.buffers = list(dict.fromkeys(b for b in buffers if _buffer(b)))
    current = data.get("current")
    if _buffer(current):
        state.current = current
    dms = data.get("dms")
    for me, peers in (dms.items() if isinstance(dms, dict) else ()):
        if not isinstance(peers, dict):
            continue
        good = {peer: (p["nick"], p["seen"]) for peer, p in peers.items()
                if isinstance(p, dict) and _nick(p.get("nick")) and _id(p.get("seen"))
                and nick_key(p["nick"]) == peer}
        if good and isinstance(me, str):
            state.dms[me] = good
    direct = data.get("direct")
    if isinstance(direct, dict):
        state.direct = {me: seen for me, seen in direct.items() if _identity(me) and _id(seen)}
    session, resume = data.get("session"), data.get("resume")
    if _token(session) and _token(resume):
        state.session, state.resume = session, resume
    return state


def _identity(value: Any) -> bool:
    """An account's identity ("@" and its name's key) or a guest nick's key."""
    return isinstance(value, str) and _nick(value.removeprefix("@")) and \
        nick_key(value.removeprefix("@")) == value.removeprefix("@")


def _token(value: Any) -> bool:
    """A session id or resume secret as the client would send it back (inbound.session_id)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and value.isascii() and \
        value.isprintable()


def _id(value: Any, least: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and least <= value < 2**63


def _room(value: Any) -> bool:
    return isinstance(value, str) and ROOM_RE.match(value) is not None


def _nick(value: Any) -> bool:
    return isinstance(value, str) and NICK_RE.match(value) is not None


def _buffer(value: Any) -> bool:
    return isinstance(value, str) and (_room(value) or value[:1] == "@" and _nick(value[1:]))
