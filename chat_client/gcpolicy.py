"""Full garbage collections that do not walk the scrollback.

A full collection of CPython's cyclic collector walks every tracked object. With 100,000
lines of scrollback that is some 140,000 objects and 50-180 ms, and while the screen
redraws it comes every few seconds (each redraw's short-lived objects count towards the
next one): a key press that meets one waits on the size of the buffer. So after each full
collection, whatever survived it is frozen (gc.freeze): later collections leave it alone
and walk only what is newer. Frozen objects are still freed by reference counting as
usual (a trimmed line goes at once); only a frozen object that later becomes garbage in a
reference cycle would stay, so once in a while, when no key has been pressed for a
moment (or after three times as long in any case, so that garbage stays bounded),
everything is unfrozen and collected in one go.

The first full collection after a big load (a history page of 20,000 lines) still walks
all of it once. So that it does not wait for a key, a full collection also runs whenever
no key has been pressed for a second (at most every few seconds): it walks only what is
not frozen yet, a millisecond or two in the usual case.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

REFRESH_EVERY = 600.0  # seconds between full collections over everything
QUIET = 10.0  # ... each taken when no key has been pressed for this long
SWEEP_EVERY = 5.0  # seconds between full collections of what is not frozen yet
SWEEP_IDLE = 1.0  # ... each taken when no key has been pressed for this long


class Collector:
    def __init__(self, every: float = REFRESH_EVERY, quiet: float = QUIET,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.quiet, self.clock = every, quiet, clock
        self.refreshed = self.swept = clock()

    def __enter__(self) -> Collector:
        gc.callbacks.append(self._collected)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._collected)
        gc.unfreeze()

    def _collected(self, phase: str, info: dict[str, Any]) -> None:
        # Right after a full collection every tracked object is live (the garbage in
        # cycles has just gone), so freezing now keeps no garbage.
        if phase == "stop" and info.get("generation") == 2:
            gc.freeze()

    def refresh(self) -> None:
        """Collect everything, frozen objects too (then freeze the survivors again)."""
        self.refreshed = self.clock()
        gc.unfreeze()
        gc.collect()

    def sweep(self) -> None:
        """A full collection of what is not frozen (then frozen)."""
        self.swept = self.clock()
        gc.collect()

    def due(self, last_input: float) -> bool:
        since = self.clock() - self.refreshed
        quiet = self.clock() - last_input >= self.quiet
        return since >= self.every and quiet or since >= 3 * self.every

    def sweep_due(self, last_input: float) -> bool:
        now = self.clock()
        return now - self.swept >= SWEEP_EVERY and now - last_input >= SWEEP_IDLE

    def tick(self, last_input: float) -> None:
        if self.due(last_input):
            self.refresh()
        elif self.sweep_due(last_input):
            self.sweep()

    async def run(self, last_input: Callable[[], float]) -> None:
        """tick() twice a second; `last_input` is the clock() time of the last key."""
        while True:
            await asyncio.sleep(SWEEP_IDLE / 2)
            self.tick(last_input())
