"""Retention: old history and the topics of unused rooms are deleted, a batch at a time.

Driven by the parent's loop (fed the time; the Store does the I/O). Every
`retention.interval` seconds a run starts; it does one small batch per loop
iteration (one transaction, a few milliseconds) until nothing is left to do, so
routing never waits behind a big DELETE.
"""

from __future__ import annotations

import logging
from collections.abc import Container

from chatd.config import Config
from chatd.stores import HistoryStore

log = logging.getLogger("chatd.retention")
# Rows per step. A step is ~0.5 ms; a larger one dirties more index pages (the oldest
# messages are spread over every room), so the WAL checkpoints it triggers grow too.
MESSAGE_BATCH = 100
TOPIC_BATCH = 100  # each also looks up the room's newest message
DAY_MS = 86_400_000


def enabled(config: Config) -> bool:
    return bool(config.max_age_days or config.max_messages or config.room_idle_days
                or config.max_topics)


class Retention:
    def __init__(self) -> None:
        self.next_run = 0.0  # monotonic seconds; the first run comes with the first loop
        self.running = False
        self.deleted = [0, 0]  # messages, topics deleted in this run
        self.steps = 0

    def timeout(self, config: Config, now: float) -> float | None:
        """Seconds until the next step is due (None: retention is off)."""
        if not enabled(config):
            return None
        return 0.0 if self.running else max(0.0, self.next_run - now)

    def step(self, config: Config, store: HistoryStore, now: float, wall_ms: int,
             live: Container[str]) -> None:
        """One batch, when one is due. `live`: rooms that have members now."""
        if not enabled(config) or (not self.running and now < self.next_run):
            return
        before = wall_ms - int(config.max_age_days * DAY_MS) if config.max_age_days else None
        idle = wall_ms - int(config.room_idle_days * DAY_MS) if config.room_idle_days else None
        messages = store.prune_messages(before, config.max_messages, MESSAGE_BATCH)
        dropped, redated = store.prune_topics(idle, config.max_topics, live, wall_ms,
                                              TOPIC_BATCH)
        self.deleted[0] += messages
        self.deleted[1] += dropped
        self.steps += 1
        self.running = bool(messages or dropped or redated)
        if self.running:
            return
        if self.deleted != [0, 0]:
            log.info("retention: deleted %d messages and %d topics in %d steps",
                     self.deleted[0], self.deleted[1], self.steps)
        self.deleted = [0, 0]
        self.steps = 0
        self.next_run = now + config.retention_interval
