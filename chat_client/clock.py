"""The client's one view of time: wall-clock now and how a timestamp reads locally, plus
the monotonic clock and the sleep that timers (keepalive, back-off, pacing) run on.

Everything that draws a time or a day line goes through a `Clock`, so tests pin both the
moment and the zone, and nothing depends on the date the tests run, the machine's time zone
or its locale (day and month names are the client's own, not strftime's). Timers read
`monotonic()` and wait with `sleep()` from the same object, so a test can run them on a
fake clock without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
          "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Timestamps outside what datetime can show (a hostile or broken server may send 1e20) are
# clamped into this range rather than breaking the buffer that holds them.
TS_MIN, TS_MAX = 0.0, 253402214400.0 - 86400 * 2  # 1970-01-01 .. 9999-12-29


@dataclass(frozen=True)
class Clock:
    """`now()` in seconds since the epoch, and `zone` (None: the system's local zone);
    `monotonic()` and `sleep(seconds)` for timers, which must agree with each other."""

    now: Callable[[], float] = field(default=time.time)
    zone: tzinfo | None = None
    monotonic: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep)

    def local(self, ts: float) -> datetime:
        try:
            ts = min(max(float(ts), TS_MIN), TS_MAX)
        except (TypeError, ValueError):
            ts = TS_MIN
        if ts != ts:  # NaN
            ts = TS_MIN
        if self.zone is None:
            return datetime.fromtimestamp(ts)  # naive local time, DST-aware via localtime()
        return datetime.fromtimestamp(ts, self.zone)

    def day(self, ts: float) -> str:
        """`Sat 21 Nov 2026`: the label of a day line."""
        d = self.local(ts)
        return f"{DAYS[d.weekday()]} {d.day:02d} {MONTHS[d.month - 1]} {d.year}"

    def hm(self, ts: float) -> str:
        return self.local(ts).strftime("%H:%M")

    def hms(self, ts: float) -> str:
        return self.local(ts).strftime("%H:%M:%S")

    def today(self) -> str:
        return self.day(self.now())


SYSTEM = Clock()
