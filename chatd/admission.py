"""Who may open a session, decided before anything is forked (sans-I/O: the caller passes
the time).

A fork and a process start cost the parent's loop milliseconds; a client that connects and
resets as fast as it can would otherwise buy one per connection and starve everyone else.
As with sshd's PerSourcePenalties and MaxStartups, each source address gets a token bucket
of new connections, in a table of bounded size, and all sources together a bucket of new
sessions (see Master._refusal for the order of the checks).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from chatd.ratelimit import TokenBucket

EXPIRE_STEP = 4  # sources looked at per take(): forgetting is cheap and spread out


def source_of(ip: str) -> str:
    """The unit per-source rules count: an IPv4 address, or the /64 of an IPv6 address.

    One IPv6 host usually holds a whole /64, so counting its addresses one by one would
    count nothing. An IPv4 address mapped into IPv6 (a dual-stack listener) is IPv4.
    """
    if ":" not in ip:  # accept() gives IPv4 as a dotted quad already: the hot path
        return ip
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0])  # no zone index (fe80::1%eth0)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


class Source:
    """One source's bucket and the refusals it earned while in the table."""

    __slots__ = ("bucket", "refused")

    def __init__(self, bucket: TokenBucket) -> None:
        self.bucket = bucket
        self.refused = 0


class SourceRates:
    """A token bucket of new connections per source, for at most `size` sources.

    A refused connection costs a token too, down to a debt of `burst` tokens: a source
    that keeps connecting faster than `rate` (a client hammering in a loop) is refused
    until it slows down, instead of being let in `rate` times a second, while one that
    waits `retry_after` after a refusal (or backs off) gets in. This is sshd's
    PerSourcePenalties in token form; the longest penalty is (burst + 1) / rate.

    A bucket that has refilled is as good as none, so such sources are forgotten. When the
    table is full of sources still owed tokens, the one seen least recently goes (and gets
    a fresh bucket if it comes back): memory stays bounded whatever the number of
    addresses, and the global bucket of new sessions bounds what many sources can do.
    """

    def __init__(self, rate: float, burst: int, size: int) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self.table: OrderedDict[str, Source] = OrderedDict()  # least recently seen first
        self.evicted = 0  # sources dropped while still owed tokens (the table was full)
        self.forgotten: list[tuple[str, int]] = []  # (source, refusals) for the log

    def take(self, source: str, now: float) -> float:
        """0.0: `source` may connect; else refused, and the seconds until it may again."""
        self.expire(now)
        entry = self.table.get(source)
        if entry is None:
            while len(self.table) >= self.size:
                self._drop(*self.table.popitem(last=False))
                self.evicted += 1
            entry = self.table[source] = Source(TokenBucket(self.rate, self.burst, now))
        else:
            self.table.move_to_end(source)
        bucket = entry.bucket
        if not bucket.take(now):
            return 0.0
        entry.refused += 1
        bucket.tokens = max(-float(bucket.burst), bucket.tokens - 1.0)
        return (1.0 - bucket.tokens) / bucket.rate

    def refused(self, source: str) -> int:
        """Refusals of `source` since it entered the table (1 on the first of a run)."""
        entry = self.table.get(source)
        return 0 if entry is None else entry.refused

    def expire(self, now: float) -> None:
        """Forget a few of the least recently seen sources whose bucket is full again."""
        for _ in range(EXPIRE_STEP):
            if not self.table:
                return
            source, entry = next(iter(self.table.items()))
            bucket = entry.bucket
            if bucket.tokens + (now - bucket.stamp) * bucket.rate < bucket.burst:
                return
            del self.table[source]
            self._drop(source, entry)

    def _drop(self, source: str, entry: Source) -> None:
        if entry.refused:
            self.forgotten.append((source, entry.refused))

    def reconfigure(self, rate: float, burst: int, size: int) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        for entry in self.table.values():
            entry.bucket.reconfigure(rate, burst)
            entry.bucket.tokens = max(entry.bucket.tokens, -float(burst))
        while len(self.table) > size:
            self._drop(*self.table.popitem(last=False))
