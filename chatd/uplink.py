"""The cluster uplink: a helper process between the parent and Redis (cluster mode only).

The parent's routing loop never waits on Redis: it hands writes to this process over a
socketpair (the channel's envelopes, chatd/channel.py, each a CTRL map) and gets back
their results, the stream's entries and the link's state. Here, with redis-py's asyncio
client, three tasks share one connection pool:

* writes, in the order they came, many per round trip (a pipeline of Lua scripts,
  chatd/clusterscripts.py). A write whose connection broke is retried, with the same
  number (so Redis carries it out once), until `cluster.write_timeout` after it came;
  then the parent hears it failed.
* the stream, read from the last entry this host has (XREAD BLOCK), so a host that lost
  its link and comes back misses nothing the stream still holds.
* the lease: renewed every third of `cluster.lease`; hosts whose lease ran out are reaped.

Parent -> uplink: {"c": "w", "w": N, "s": SCRIPT, "a": [args]} a write;
{"c": "state", "a": [key, nick, rooms, ...]} this host's sessions, after each "up".
Uplink -> parent: {"c": "r", "w": N, "v": result} or {"c": "r", "w": N, "e": why};
{"c": "up", "epoch", "lost": bool, "point", "hosts", "topics", "accounts"}; {"c": "down", "e": why};
{"c": "x", "x": [[id, fields], ...]} stream entries; {"c": "lost", "nicks": [...]}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from chatd import channel, clusterscripts, helperproc

log = logging.getLogger("chatd.uplink")
NAME = "chatd-uplink"
BATCH = 256  # writes per round trip, and stream entries per read
RETRY = 0.5  # seconds between attempts to reach Redis
MAX_SEQ = (1 << 64) - 1
LEAVE_TIME = 2.0  # seconds a stopping host's last writes may take
SCRIPTS = {"msg": clusterscripts.MESSAGE, "nick": clusterscripts.NICK,
           "event": clusterscripts.EVENT, "account": clusterscripts.ACCOUNT}


class Uplink:
    def __init__(self, chan: socket.socket, url: str, node: str, inc: str, data_dir: Path,
                 lease: float, write_timeout: float, stream_length: int, cursor: str,
                 last_id: int) -> None:
        self.chan = chan
        self.node, self.inc = node, inc
        self.epoch_file = data_dir / "cluster-epoch"
        self.lease_ms = int(lease * 1000)
        self.lease = lease
        self.write_timeout = write_timeout
        self.maxlen = str(stream_length)
        self.cursor = cursor
        self.last_id = last_id
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0,
                                             socket_timeout=max(5.0, lease),
                                             health_check_interval=0)
        self.scripts = {name: self.redis.register_script(src) for name, src in
                        {**SCRIPTS, "sync": clusterscripts.SYNC,
                         "state": clusterscripts.STATE, "renew": clusterscripts.RENEW,
                         "reap": clusterscripts.REAP}.items()}
        self.up = asyncio.Event()
        self.up_since = 0.0
        self.writes: deque[tuple[float, dict[str, Any]]] = deque()
        self.wake = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.why = ""

    # ---- to the parent ----

    def tell(self, msg: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(channel.control(msg))

    def down(self, exc: BaseException) -> None:
        why = str(exc) or type(exc).__name__
        if self.up.is_set() or why != self.why:
            log.warning("lost Redis: %s", why)
            self.tell({"c": "down", "e": why})
        self.why = why
        self.up.clear()

    # ---- the tasks ----

    async def run(self) -> int:
        reader, self.writer = await asyncio.open_unix_connection(sock=self.chan)
        tasks = [asyncio.create_task(t) for t in (self.keep(), self.read_stream(),
                                                  self.write(), self.expire())]
        envelopes = channel.EnvelopeReader()
        try:
            while data := await reader.read(262144):
                for _kind, body in envelopes.feed(data):
                    await self.handle(channel.decode_control(body))
            await self.leave()
        finally:
            for task in tasks:
                task.cancel()
        return 0

    async def leave(self) -> None:
        """The parent is stopping: carry out what it handed over (for a moment), then
        leave the cluster now rather than when the lease runs out."""
        deadline = time.monotonic() + LEAVE_TIME
        while self.writes and self.up.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if not self.up.is_set():
            return
        with contextlib.suppress(RedisError, OSError):
            if await self.scripts["renew"](args=[self.node, self.inc, 1]):
                await asyncio.sleep(0.01)  # PEXPIRE 1 ms: the lease is gone
                await self.scripts["reap"](args=[self.node, self.maxlen])
                log.info("left the cluster")

    async def handle(self, msg: dict[str, Any]) -> None:
        if msg["c"] == "w":
            self.writes.append((time.monotonic() + self.write_timeout, msg))
            self.wake.set()
        elif msg["c"] == "state":
            try:
                lost = await self.scripts["state"](args=[self.node, self.inc, self.maxlen,
                                                         *msg["a"]])
            except (RedisError, OSError) as exc:
                self.down(exc)
                return
            if lost:
                self.tell({"c": "lost", "nicks": [n.decode() for n in lost]})

    async def keep(self) -> None:
        """Connect (and sync) when down; renew the lease and reap dead hosts when up."""
        while True:
            if not self.up.is_set():
                try:
                    # Connections from before are dead (or soon found to be): none is kept.
                    await self.redis.connection_pool.disconnect()
                    await self.sync()
                except (RedisError, OSError) as exc:
                    self.down(exc)
                    await asyncio.sleep(RETRY)
                continue
            deadline = time.monotonic() + self.lease / 3
            while self.up.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if not self.up.is_set():
                continue
            try:
                if not await self.scripts["renew"](args=[self.node, self.inc, self.lease_ms]):
                    log.warning("the lease of node %s ran out; registering again", self.node)
                    self.up.clear()
                    continue
                if time.monotonic() - self.up_since >= self.lease:  # others had time to renew
                    nodes: Any = await self.redis.smembers("chatd:nodes")
                    for other in (n.decode() for n in nodes):
                        if other != self.node and await self.scripts["reap"](
                                args=[other, self.maxlen]):
                            log.warning("node %s stopped renewing its lease: reaped", other)
            except (RedisError, OSError) as exc:
                self.down(exc)

    async def sync(self) -> None:
        known = self.epoch_file.read_text().strip() if self.epoch_file.exists() else ""
        epoch, point, hosts, topics, accounts = await self.scripts["sync"](args=[
            self.node, self.inc, secrets.token_hex(8), self.last_id, self.lease_ms,
            self.maxlen])
        epoch, point = epoch.decode(), point.decode()
        lost = bool(known) and epoch != known
        if epoch != known:
            self.epoch_file.write_text(epoch + "\n")
        if lost:  # a new data set: its stream starts afresh, after the raised sequence
            log.error("Redis lost its data (epoch %s, was %s): messages it had not saved "
                      "are gone", epoch, known)
            self.cursor = "0-0"
        # Everything after the snapshot is read (events after a host's newest message
        # share its id: `ID-N`), and every message after the cursor.
        self.cursor = min(self.cursor, point, key=_entry_id)
        members = {hosts[i].decode(): _pairs(hosts[i + 1]) for i in range(0, len(hosts), 2)}
        self.tell({"c": "up", "epoch": epoch, "lost": lost, "point": point,
                   "hosts": members, "topics": {k: v for k, v in _raw_pairs(topics)},
                   "accounts": [a.decode() for a in accounts]})
        log.info("connected to Redis (epoch %s)", epoch)
        self.why = ""
        self.up_since = time.monotonic()
        self.up.set()
        self.wake.set()

    async def read_stream(self) -> None:
        conn = aioredis.Redis(connection_pool=self.redis.connection_pool)
        while True:
            await self.up.wait()
            try:
                got: Any = await conn.xread({"chatd:log": self.cursor}, count=BATCH,
                                                  block=1000)
            except (RedisError, OSError) as exc:
                self.down(exc)
                continue
            for _stream, entries in got:
                out = []
                for entry_id, fields in entries:
                    out.append([entry_id.decode(), {k.decode(): v for k, v in fields.items()}])
                    self.cursor = entry_id.decode()
                self.tell({"c": "x", "x": out})
                last = int(self.cursor.split("-")[0])
                self.last_id = max(self.last_id, last)

    async def write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.writes and self.up.is_set():
                batch = [self.writes[i][1] for i in range(min(BATCH, len(self.writes)))]
                pipe = self.redis.pipeline(transaction=False)
                for msg in batch:
                    await self.scripts[msg["s"]](args=[self.node, self.inc, msg["w"],
                                                       self.maxlen, *msg["a"]], client=pipe)
                try:
                    results = await pipe.execute(raise_on_error=False)
                except (RedisError, OSError) as exc:  # unknown outcome: retried (once only)
                    self.down(exc)
                    break
                for msg, result in zip(batch, results, strict=True):
                    self.writes.popleft()
                    if isinstance(result, ResponseError) and str(result).startswith("LEASE"):
                        self.up.clear()  # registered again, then retried
                        self.writes.appendleft((time.monotonic() + self.write_timeout, msg))
                        break
                    if isinstance(result, Exception):
                        self.tell({"c": "r", "w": msg["w"], "e": str(result)})
                    else:
                        self.tell({"c": "r", "w": msg["w"], "v": _plain(result)})
                else:
                    continue
                break

    async def expire(self) -> None:
        """Writes Redis could not take within write_timeout fail (the client hears so)."""
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            while self.writes and self.writes[0][0] <= now and not self.up.is_set():
                _deadline, msg = self.writes.popleft()
                self.tell({"c": "r", "w": msg["w"], "e": f"Redis unreachable: {self.why}"})


def _entry_id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _raw_pairs(flat: list[bytes]) -> list[tuple[str, bytes]]:
    return [(flat[i].decode(), flat[i + 1]) for i in range(0, len(flat), 2)]


def _pairs(flat: list[bytes]) -> dict[str, str]:
    return {k: v.decode() for k, v in _raw_pairs(flat)}


def spawn(args: list[str]) -> tuple[int, socket.socket]:
    """Start an uplink (a fresh interpreter: chatd/helperproc.py); (pid, our end)."""
    return helperproc.spawn("chatd.uplink", args)


def main(argv: list[str]) -> int:
    """`python -m chatd.uplink FD URL NODE INC DATA_DIR LEASE TIMEOUT LENGTH CURSOR LAST
    LOG_LEVEL` (started by spawn)."""
    fd, url, node, inc, data_dir = int(argv[0]), argv[1], argv[2], argv[3], Path(argv[4])
    lease, timeout, length = float(argv[5]), float(argv[6]), int(argv[7])
    cursor, last_id, level = argv[8], int(argv[9]), argv[10]
    helperproc.begin(NAME, "uplink", level)
    chan = socket.socket(fileno=fd)
    uplink = Uplink(chan, url, node, inc, data_dir, lease, timeout, length, cursor, last_id)
    return asyncio.run(uplink.run())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
