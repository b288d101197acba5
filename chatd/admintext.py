"""`chatd admin`'s answers as text for people: key/value lines and tables.

Times are shown as durations (connected for, expires in) and as UTC, so that what is
printed does not depend on the reader's time zone; every string from the server goes
through admincli.clean() before it reaches the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from chatd.admincli import clean

ROOMS_WIDTH = 40  # characters of a session's room list in the table


def size(n: object) -> str:
    value = float(n) if isinstance(n, int | float) else 0.0
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def span(seconds: object) -> str:
    """A duration as `2d 3h`, `5h 04m`, `12m 30s` or `7s`."""
    s = round(seconds) if isinstance(seconds, int | float) else 0
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {s:02d}s"
    return f"{s}s"


def utc(stamp: object) -> str:
    if not isinstance(stamp, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(stamp))


def table(header: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render(cmd: str, a: dict[str, Any], now: float) -> str:
    return str(globals()[f"_{cmd}"](a, now))


def _status(a: dict[str, Any], now: float) -> str:
    s, msgs, st = a.get("sessions", {}), a.get("messages", {}), a.get("storage", {})
    mem = a.get("memory", {})
    sessions_kb = mem.get("sessions_pss_kb", 0)
    counted = mem.get("sessions_counted", 0)
    each = f" ({size(sessions_kb * 1024 / counted)} each)" if counted else ""
    memory = (f"parent {size(mem.get('parent_pss_kb', 0) * 1024)}, {counted} sessions "
              f"{size(sessions_kb * 1024)}{each}, helpers "
              f"{size(mem.get('helpers_pss_kb', 0) * 1024)} (PSS)")
    if mem.get("spares_counted"):
        memory += f", {mem['spares_counted']} spares {size(mem['spares_pss_kb'] * 1024)}"
    if mem.get("unreadable"):
        memory += f"; {mem['unreadable']} processes not readable (run as root?)"
    last = st.get("last_error")
    errors = "no errors" if not last else (
        f"last error {utc(last.get('time'))}: {clean(last.get('error'))}")
    if st.get("failing"):
        errors = f"FAILING ({', '.join(map(clean, st['failing']))}); {errors}"
    rows = [
        ("version", f"chatd {clean(a.get('version'))}, pid {a.get('pid')}"),
        ("state", f"{clean(a.get('state'))}, up {span(a.get('uptime'))} "
                  f"(since {utc(a.get('started'))})"),
        ("sessions", f"{s.get('total')} of max {s.get('max')} ({s.get('registered')} with a "
                     f"nick), {s.get('spares')} spare processes"),
        ("rooms", str(a.get("rooms"))),
        ("messages", f"{msgs.get('per_second_10s', 0):.2f}/s over 10 s, "
                     f"{msgs.get('per_second_60s', 0):.2f}/s over 60 s "
                     f"(newest id {msgs.get('last_id')})"),
        ("memory", memory),
        ("storage", f"{clean(st.get('path'))}: {size(st.get('bytes'))} + "
                    f"{size(st.get('wal_bytes'))} WAL; {errors}"),
        ("bans", f"{a.get('bans')} (chatd admin bans)"),
        ("config", clean(a.get("config") or "none (no --config)")),
    ]
    return "\n".join(f"{k:<9} {v}" for k, v in rows)


def _sessions(a: dict[str, Any], now: float) -> str:
    rows = []
    for s in a.get("sessions", []):
        rooms = ",".join(map(clean, s.get("rooms", [])))
        if len(rooms) > ROOMS_WIDTH:
            rooms = rooms[:ROOMS_WIDTH - 1] + "…"
        nick = clean(s.get("nick") or "-") + (" (ending)" if s.get("closing") else "")
        rows.append([nick, clean(s.get("account") or "-"), clean(s.get("address")),
                     span(s.get("age")), rooms or "-",
                     size(s.get("queue", 0) + s.get("channel_queue", 0)), str(s.get("pid"))])
    out = table(["NICK", "ACCOUNT", "ADDRESS", "CONNECTED", "ROOMS", "QUEUE", "PID"], rows)
    return f"{out}\n{len(rows)} session{'s' * (len(rows) != 1)}"


def _ban_line(b: dict[str, Any]) -> str:
    until = "until lifted" if b.get("until") is None else (
        f"for {span(b.get('remaining'))} more (until {utc(b.get('until'))})")
    reason = f": {clean(b['reason'])}" if b.get("reason") else ""
    return f"#{b.get('id')} {clean(b.get('kind'))} {clean(b.get('target'))} {until}{reason}"


def _bans(a: dict[str, Any], now: float) -> str:
    rows = [[f"#{b.get('id')}", clean(b.get("kind")), clean(b.get("target")),
             "never" if b.get("until") is None else span(b.get("remaining")),
             str(b.get("hits")), clean(b.get("by")), clean(b.get("reason") or "-")]
            for b in a.get("bans", [])]
    if not rows:
        return "no bans"
    return table(["ID", "KIND", "TARGET", "EXPIRES IN", "REFUSED", "BY", "REASON"], rows)


def _saved(a: dict[str, Any]) -> str:
    return "" if a.get("saved", True) else f"\nWARNING: {clean(a.get('warning'))}"


def _ban(a: dict[str, Any], now: float) -> str:
    ban = a.get("ban", {})
    lines = [("banned " if a.get("new") else "updated ban ") + _ban_line(ban)]
    for s in a.get("ended", []):
        lines.append(f"ended the session of {clean(s.get('nick') or '-')} from "
                     f"{clean(s.get('address'))}")
    return "\n".join(lines) + _saved(a)


def _unban(a: dict[str, Any], now: float) -> str:
    ban = a.get("ban", {})
    return (f"lifted ban #{ban.get('id')} {clean(ban.get('kind'))} {clean(ban.get('target'))}"
            + _saved(a))


def _kick(a: dict[str, Any], now: float) -> str:
    k = a.get("kicked", {})
    text = (f"kicked {clean(k.get('nick'))} (session {clean(k.get('session'))}, pid "
            f"{k.get('pid')}, from {clean(k.get('address'))})")
    others = a.get("sessions", [])[1:]
    if others:
        text += f" and {len(others)} more session{'s' if len(others) > 1 else ''} of its account"
    return text


def _reload(a: dict[str, Any], now: float) -> str:
    return clean(a.get("result"))
