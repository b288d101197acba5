"""Who may open a session, decided before anything is forked (sans-I/O: the caller passes
the time).

A fork and a process start cost the parent's loop milliseconds; a client that connects and
resets as fast as it can would otherwise buy one per connection and starve everyone else.
As with sshd's PerSourcePenalties and MaxStartups, each source address gets a token bucket
of new connections, in a table of bounded size, and all sources together a bucket of new
sessions (see Gate.refusal for the order of the checks).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Mapping

from chatd.config import Config
from chatd.frontends import irc_refusal
from chatd.protocol import error_frame
from chatd.ratelimit import TokenBucket

log = logging.getLogger("chatd.master")
BUSY_LOG_EVERY = 10.0  # seconds between log lines about refusals over session_rate

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


class Gate:
    """Decides, per new connection, whether it may become a session (sans-I/O)."""

    def __init__(self, config: Config, now: float) -> None:
        self.config = config
        self.sources = SourceRates(config.conn_rate_per_ip, config.conn_burst_per_ip,
                                   config.conn_sources)
        self.new_sessions = TokenBucket(config.session_rate, config.session_burst, now)
        self.busy_refused = 0  # refusals over session_rate not yet logged
        self.busy_logged = -BUSY_LOG_EVERY

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.sources.reconfigure(config.conn_rate_per_ip, config.conn_burst_per_ip,
                                 config.conn_sources)
        self.new_sessions.reconfigure(config.session_rate, config.session_burst)

    def refusal(self, ip: str, source: str, now: float, sessions: int,
                per_source: Mapping[str, int], irc: bool = False) -> bytes | None:
        """The error frame refusing a new connection, or None to admit it. On the IRC
        listener (`irc`) it is one fixed `ERROR :Closing link` line instead, which an IRC
        client can read (the parent formats it; it parses nothing).

        Cheapest and most specific first: the source's connection rate (a refusal costs
        a token too, so a source that hammers gets nothing), the session caps (`sessions`
        in all, `per_source` by source), then the rate of new sessions from everyone (only
        sessions about to be started count).
        """
        cfg = self.config

        def refuse(code: str, message: str, **extra: object) -> bytes:
            if irc:
                return irc_refusal(cfg.server_name, message)
            return error_frame(code, message, **extra)

        wait = self.sources.take(source, now)
        for gone, count in self.sources.forgotten:
            log.info("%s: %d connections were refused over conn_rate_per_ip", gone, count)
        self.sources.forgotten.clear()
        if wait:
            if self.sources.refused(source) == 1:  # once per run of refusals
                log.warning("refusing new connections from %s: over conn_rate_per_ip=%g/s "
                            "(burst %d)", source, cfg.conn_rate_per_ip, cfg.conn_burst_per_ip)
            return refuse("too_many_connections", f"conn_rate_per_ip="
                               f"{cfg.conn_rate_per_ip:g}/s exceeded by {source}",
                               limit="conn_rate_per_ip", retry_after=round(wait, 3))
        if sessions >= cfg.max_sessions:
            log.info("refused %s: at a session cap", ip)
            return refuse("server_full", f"max_sessions={cfg.max_sessions} reached",
                               limit="max_sessions")
        if per_source.get(source, 0) >= cfg.max_sessions_per_ip:
            log.info("refused %s: at a session cap", ip)
            return refuse("too_many_connections", f"max_sessions_per_ip="
                               f"{cfg.max_sessions_per_ip} reached for {source}",
                               limit="max_sessions_per_ip")
        wait = self.new_sessions.take(now)
        if wait:
            self.busy_refused += 1
            if now - self.busy_logged >= BUSY_LOG_EVERY:
                log.warning("refused %d new connections over session_rate=%g/s (burst %d) "
                            "since the last such line", self.busy_refused, cfg.session_rate,
                            cfg.session_burst)
                self.busy_refused, self.busy_logged = 0, now
            return refuse("server_busy", f"session_rate={cfg.session_rate:g}/s reached",
                               limit="session_rate", retry_after=round(wait, 3))
        return None
