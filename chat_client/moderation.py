"""Room moderation in the client (protocol §14): the slash commands that send it, and how
its events and replies are shown (the same notice lines in full-screen and plain mode).

The server decides who may do what; the client only builds requests and tells the user
what happened, in the room's buffer and in its place among the messages (an event has an
id, so catch-up and history put it where it belongs)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd.protocol import MAX_REASON, nick_key

from .buffer import Line

if TYPE_CHECKING:
    from .core import Core
    from .requests import Frame, Req

_DURATION = re.compile(r"([0-9]{1,6})([smhd])\Z")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MODE_FLAGS = {"i": "invite_only", "t": "topic_lock"}


@dataclass(frozen=True)
class Moderate:
    """A moderation request for ROOM (None: the current room); `fields` go with it."""

    kind: str
    room: str | None
    fields: tuple[tuple[str, Any], ...] = ()


class Usage(Exception):
    """Bad usage (the commands module turns it into its UsageError)."""


def duration(word: str) -> int | None:
    """`30s`, `10m`, `2h`, `7d` as seconds; None when `word` is not a duration."""
    match = _DURATION.fullmatch(word)
    return int(match.group(1)) * _SECONDS[match.group(2)] if match else None


def mask_fields(word: str) -> tuple[tuple[str, Any], ...]:
    """`account:NAME` bans an account; anything else is a nick pattern (* and ?)."""
    if word.lower().startswith("account:"):
        return (("account", word[8:]),)
    return (("nick", word),)


def parse(kind: str, room: str | None, words: list[str], rest: str) -> Moderate:
    """The request of /KIND [ROOM] ...: `words` are the arguments after the room, `rest`
    the text after the first of them (a reason)."""
    if kind in ("op", "deop", "invite"):
        if len(words) != 1:
            raise Usage("usage")
        return Moderate(kind, room, (("nick", words[0]),))
    if kind == "kick":
        if not words:
            raise Usage("usage")
        return Moderate(kind, room, (("nick", words[0]), ("reason", rest[:MAX_REASON])))
    if kind in ("unban", "unmute"):
        if len(words) != 1:
            raise Usage("usage")
        return Moderate(kind, room, mask_fields(words[0]))
    if kind in ("ban", "mute"):
        if not words:
            raise Usage("usage")
        fields = list(mask_fields(words[0]))
        reason = rest
        if len(words) > 1 and (seconds := duration(words[1])) is not None:
            fields.append(("duration", seconds))
            reason = rest.split(None, 1)[1] if len(rest.split(None, 1)) > 1 else ""
        if reason:
            fields.append(("reason", reason[:MAX_REASON]))
        return Moderate(kind, room, tuple(fields))
    if kind == "mode":
        return Moderate(kind, room, mode_fields(words))
    if kind == "bans":
        if words:
            raise Usage("usage")
        return Moderate(kind, room)
    raise Usage("usage")


def mode_fields(words: list[str]) -> tuple[tuple[str, Any], ...]:
    """`+i -t +k KEY -k`: the `mode` request's fields (none: a query)."""
    fields: dict[str, Any] = {}
    it = iter(words)
    for word in it:
        if len(word) != 2 or word[0] not in "+-" or word[1] not in "itk":
            raise Usage("usage")
        on, flag = word[0] == "+", word[1]
        if flag == "k":
            key = next(it, None) if on else ""
            if key is None:
                raise Usage("usage")
            fields["key"] = key
        else:
            fields[MODE_FLAGS[flag]] = on
    return tuple(fields.items())


def execute(core: Core, action: Moderate) -> None:
    frame: Frame = {"type": action.kind, **dict(action.fields)}
    if action.kind == "kill":
        core.request(frame, "kill")
        return
    room = action.room or core.current_room()
    if room:
        frame["room"] = room
        core.request(frame, action.kind, room)


# ---- what the server sends ----

def _span(ms: int, exact: bool = True) -> str:
    """`10m`, `2h`: a span the way /ban takes it (`exact`: only in a unit that divides it;
    else rounded down to the largest unit that fits)."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)):
        if ms >= size and (ms % size == 0 or not exact):
            return f"{ms // size}{unit}"
    return f"{max(1, ms // 1000)}s"


def describe(f: Frame) -> str:
    """One line for a moderation event."""
    by, kind, nick = str(f["by"]), str(f["kind"]), str(f.get("nick", ""))
    target = f"account {f['account']}" if "account" in f else nick
    reason = f" ({f['reason']})" if f.get("reason") else ""
    if kind == "op":
        return f"{by} made {nick} an operator"
    if kind == "deop":
        return f"{by} took operator status from {nick}"
    if kind == "kick":
        return f"{by} kicked {nick}{reason}"
    if kind == "invite":
        return f"{by} invited {nick}"
    if kind in ("ban", "mute"):
        span = f" for {_span(f['expires'] - f['ts'])}" if "expires" in f else ""
        return f"{by} {kind}{'ned' if kind == 'ban' else 'd'} {target}{span}{reason}"
    if kind in ("unban", "unmute"):
        return f"{by} lifted the {kind[2:]} on {target}"
    if kind == "mode":
        said = [("invite-only" if f["invite_only"] else "open to all")
                if "invite_only" in f else "",
                ("a key" if f["keyed"] else "no key") if "keyed" in f else "",
                ("topic locked" if f["topic_lock"] else "topic open")
                if "topic_lock" in f else ""]
        return f"{by} set {f['room']}: {', '.join(s for s in said if s) or 'no change'}"
    return f"{by}: {kind} {target}{reason}".strip()


def event_line(f: Frame) -> Line:
    return Line("notice", f["ts"] / 1000, describe(f), nick=str(f["by"]), id=int(f["id"]))


def on_moderation(core: Core, f: Frame, req: Req | None, now: float) -> None:
    m = core.model
    room = str(f["room"])
    buf = m.get(room)
    if buf is None:
        return
    m.add(buf, event_line(f))
    core.points.room(room).got(f["id"])
    if f["kind"] == "kick":
        nick = str(f.get("nick", ""))
        buf.members.pop(nick_key(nick), None)
        if nick_key(nick) == nick_key(m.nick):
            buf.joined = False
            if room in core.wanted_rooms:
                core.wanted_rooms.remove(room)
            core.points.forget_room(room)
            m.note(None, f"you were kicked from {room} by {f['by']}"
                   + (f" ({f['reason']})" if f.get("reason") else ""), "error")


def on_invited(core: Core, f: Frame, req: Req | None, now: float) -> None:
    core.model.note(None, f"{f['by']} invites you to {f['room']} (/join {f['room']})",
                    "notice")


def on_mode(core: Core, f: Frame, req: Req | None, now: float) -> None:
    said = ["invite-only" if f["invite_only"] else "open to all",
            (f"key {f['key']}" if "key" in f else "a key") if f["keyed"] else "no key",
            "topic locked" if f["topic_lock"] else "topic open",
            "you are an operator" if f["operator"] else "you are not an operator"]
    core.model.note(None, f"{f['room']}: {', '.join(said)}")


def on_bans(core: Core, f: Frame, req: Req | None, now: float) -> None:
    got = (req.extra.get("got", []) if req else []) + list(f["bans"])
    if f["more"] and f["bans"] and req is not None:
        core.request({"type": "bans", "room": f["room"], "after": len(got)}, "bans",
                     req.buffer, got=got)
        return
    m = core.model
    m.note(None, f"{f['room']}: {len(got)} ban(s) and mute(s)")
    for e in got:
        who = f"account {e['account']}" if "account" in e else e.get("nick", "?")
        until = ""
        if "expires" in e:
            left = max(1000, int(e["expires"] - m.clock.now() * 1000))
            until = f" ({_span(left, exact=False)} left)"
        reason = f": {e['reason']}" if e.get("reason") else ""
        m.note(None, f"  {e['list']} {who} by {e['by']}{until}{reason}")


def on_killed(core: Core, f: Frame, req: Req | None, now: float) -> None:
    core.model.note(None, f"ended the session of {f['nick']}", "notice")


HANDLERS = {"moderation": on_moderation, "invited": on_invited, "mode": on_mode,
            "bans": on_bans, "killed": on_killed}
