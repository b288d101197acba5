"""Request bookkeeping (sans-I/O): labels, what each outstanding request was for, pings,
and the outbox the connection sends from.

Every request the client sends carries an int label; the server echoes it on the direct
reply (protocol §2), which is how a reply finds what it answers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, TypeGuard

Frame = dict[str, Any]

# Requests whose direct reply comes in two frames with the same label: `joined` first, then
# the `history` that completes it.
_JOINED_THEN_HISTORY = frozenset({"join", "catchup", "older"})


@dataclass
class Req:
    """What an outstanding labelled request was for."""

    kind: str  # hello | join | catchup | older | msg | nick | part | topic | who | rooms
    buffer: str  # buffer to report errors in
    extra: dict[str, Any] = field(default_factory=dict)


class Requests:
    def __init__(self) -> None:
        self.outbox: list[Frame] = []
        self.pending: dict[int, Req] = {}
        self._labels = itertools.count(1)  # request labels and ping tokens alike
        self._pings: dict[int, float] = {}  # token -> when it was sent

    def send(self, frame: Frame, kind: str, buffer: str, **extra: Any) -> int:
        """Queue a labelled request and remember what it is for; returns the label."""
        label = next(self._labels)
        self.pending[label] = Req(kind, buffer, extra)
        self.outbox.append({**frame, "label": label})
        return label

    def send_unlabelled(self, frame: Frame) -> None:
        """Queue a frame nobody waits for a reply to (pong, quit)."""
        self.outbox.append(frame)

    def take(self) -> list[Frame]:
        out, self.outbox = self.outbox, []
        return out

    def reply_to(self, frame: Frame) -> Req | None:
        """The request this frame answers (None for events and unknown labels). A reply
        that completes its request ends the bookkeeping for it."""
        label = frame.get("label")
        if not _is_int(label):
            return None
        req = self.pending.pop(label, None)
        if req is not None and req.kind in _JOINED_THEN_HISTORY and frame.get("type") == "joined":
            self.pending[label] = req  # the history reply with the same label follows
        return req

    def waiting(self, *kinds: str) -> bool:
        """Are requests (of these kinds; of any without) still waiting for a reply?"""
        return any(not kinds or r.kind in kinds for r in self.pending.values())

    def reset(self) -> None:
        """A connection ended or began: nothing outstanding can be answered any more, and
        nothing queued for the old connection may go out on the next one."""
        self.outbox.clear()
        self.pending.clear()
        self._pings.clear()

    # Pings (lag measurement)
    def ping(self, now: float) -> None:
        token = next(self._labels)
        self._pings[token] = now
        self.outbox.append({"type": "ping", "token": token})

    def pong(self, token: Any, now: float) -> float | None:
        """Lag in ms if the token answers one of our pings, else None."""
        sent = self._pings.pop(token, None) if _is_int(token) else None
        if sent is None:
            return None
        self._pings.clear()  # older unanswered pings are moot now
        return max(0.0, (now - sent) * 1000)

    def ping_outstanding(self) -> bool:
        return bool(self._pings)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)  # True is not label 1
