"""Away status in the client (sans-I/O, like events.py, which calls these).

`/away MESSAGE` sends the server's `away` request, `/away` or `/back` clears it
(protocol.md §4). The model keeps your own away message (`Model.my_away`, shown in the
status bar) and the away messages of others as the server tells them (`Model.away`, by
nick key: from member lists, join events, `away` events and a direct message's `ack`),
for /whois. Your status belongs to the session, so after a reconnect it is set again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatd.protocol import nick_key

from .model import Model
from .requests import Frame, Req

if TYPE_CHECKING:
    from .core import Core


def request(core: Core, message: str) -> None:
    """Set (a message) or clear ("") your away status."""
    core.away = message
    if core.registered:
        core.request({"type": "away", "message": message} if message else {"type": "away"},
                     "away")


def on_welcome(core: Core) -> None:
    core.model.away.clear()
    if core.away:  # a new session: the server forgot it
        core.request({"type": "away", "message": core.away}, "away", quiet=True)


def on_away(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    message = str(f.get("message") or "")
    if req is not None and req.kind == "away":  # the answer to ours
        m.my_away = message
        if not req.extra.get("quiet"):
            m.note(None, f"you are marked as away: {message}" if message else
                   "you are no longer marked as away", activity=False)
        return
    note(m, str(f["nick"]), message)


def note(m: Model, nick: str, message: Any) -> None:
    if isinstance(message, str) and message:
        m.away[nick_key(nick)] = message
    else:
        m.away.pop(nick_key(nick), None)


def listed(m: Model, nicks: list[str], f: Frame) -> None:
    """A page of a member list: its nicks are away as its `away` map says, or here."""
    away = f.get("away") or {}
    for nick in nicks:
        note(m, nick, away.get(nick))


def renamed(m: Model, old: str, new: str) -> None:
    message = m.away.pop(nick_key(old), None)
    if message is not None:
        m.away[nick_key(new)] = message


def acked(core: Core, f: Frame, req: Req) -> None:
    """A direct message's `ack` says when its recipient is away: shown in that buffer."""
    if "to" in f and f.get("away"):
        note(core.model, str(f["to"]), f["away"])
        buf = core.model.get(req.buffer)
        core.model.note(buf, f"{f['to']} is away: {f['away']}", "notice", activity=False)
