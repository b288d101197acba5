"""Brute-force limits for logins and registrations (sans-I/O: the caller passes the time).

Failed logins are counted per account and per source address in token buckets: each
failure takes a token, and an attempt while either bucket is empty is refused before
any password work is done. The account bucket is keyed by the name *asked for*, whether
or not such an account exists, so the limit itself says nothing about existence.
Registrations take a token of their own per address, successful or not.

The tables are bounded. A bucket that has refilled remembers nothing, so those go first
when a table is full; only if none has, the least recently charged one is dropped (an
attacker who fills the table with fresh names earns back a few guesses on old ones, and
`evicted_live` counts how often that happened).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from chatd.protocol import nick_key
from chatd.ratelimit import TokenBucket


@dataclass(frozen=True)
class LimitSettings:
    account_burst: int = 5  # failed logins to one account at once ...
    account_rate: float = 1 / 60  # ... then one per minute
    address_burst: int = 20  # failed logins from one address at once ...
    address_rate: float = 1 / 10  # ... then one per 10 seconds
    register_burst: int = 3  # registrations from one address at once ...
    register_rate: float = 1 / 600  # ... then one per 10 minutes
    table_size: int = 10_000  # buckets kept per table


def address_key(ip: str) -> str:
    """The unit an address is limited by: an IPv4 address, or an IPv6 /64 (one host
    is usually given a whole /64, so single IPv6 addresses would cost it nothing)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def account_key(name: str) -> str:
    """The unit a name is limited by: its nick key, cut to a bound (a name too long to
    be an account's still gets a bucket, but cannot make the table's keys large)."""
    return nick_key(name[:64])


class BucketTable:
    """Token buckets by key, at most `size` of them."""

    def __init__(self, rate: float, burst: int, size: int) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self.buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.evicted_live = 0

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may try again (0.0: now)."""
        bucket = self.buckets.get(key)
        return 0.0 if bucket is None else bucket.wait(now)

    def charge(self, key: str, now: float) -> None:
        bucket = self.buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self.buckets.move_to_end(key)
        bucket.take(now)

    def _make_room(self, now: float) -> None:
        buckets = self.buckets
        # Oldest first: the least recently charged are the likeliest to have refilled.
        while len(buckets) >= self.size:
            key, bucket = next(iter(buckets.items()))
            del buckets[key]
            if not bucket.full(now):
                self.evicted_live += 1
        # Refilled buckets at the front cost nothing to drop: keep the table lean.
        while buckets:
            key, bucket = next(iter(buckets.items()))
            if not bucket.full(now):
                break
            del buckets[key]

    def __len__(self) -> int:
        return len(self.buckets)


class FailureLimiter:
    def __init__(self, settings: LimitSettings | None = None) -> None:
        s = self.settings = settings or LimitSettings()
        self.accounts = BucketTable(s.account_rate, s.account_burst, s.table_size)
        self.addresses = BucketTable(s.address_rate, s.address_burst, s.table_size)
        self.registrations = BucketTable(s.register_rate, s.register_burst, s.table_size)

    def login_wait(self, account: str, ip: str, now: float) -> float:
        """Seconds until a login to `account` from `ip` may be tried (0.0: now)."""
        return max(self.accounts.wait(account_key(account), now),
                   self.addresses.wait(address_key(ip), now))

    def login_failed(self, account: str, ip: str, now: float) -> None:
        self.accounts.charge(account_key(account), now)
        self.addresses.charge(address_key(ip), now)

    def register_wait(self, ip: str, now: float) -> float:
        return self.registrations.wait(address_key(ip), now)

    def registered(self, ip: str, now: float) -> None:
        """A registration was tried (it costs a hash whether or not it succeeds)."""
        self.registrations.charge(address_key(ip), now)
