"""Server-wide bans: by nick pattern, by account, by address or network (sans-I/O but
for load() and save(); the caller passes the wall-clock time).

The parent asks `address()` before it forks a session for a new connection and the
broker asks `identity()` when a session takes a nick (hello, nick): both are index
lookups, not a scan of every ban. Addresses are matched per prefix length present (at
most 33 for IPv4, 129 for IPv6), exact nicks and accounts by key, and the nick patterns
with wildcards through one compiled expression. The index is rebuilt on each change,
which is an administrator's command, rare and bounded (MAX_BANS).

Bans are kept in `bans.json` in the data dir, rewritten whole (write, fsync, rename) on
each change, so a ban survives a restart; an expired one is ignored and dropped when
the file is next written.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatd.protocol import MAX_NICK, MAX_REASON, NICK_CHARS, ProtocolError, check_line, nick_key

FILE = "bans.json"
MAX_BANS = 1000
KINDS = ("nick", "account", "address")
PATTERN_RE = re.compile(rf"[{NICK_CHARS}*?]{{1,{MAX_NICK}}}\Z")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class BanError(Exception):
    """A ban that cannot be made (bad target, too many), or a bans file we cannot use."""


@dataclass(slots=True)
class Ban:
    id: int
    kind: str  # one of KINDS
    target: str  # as shown: the pattern, the account name, the network (a.b.c.d/32)
    reason: str
    created: float  # wall-clock seconds
    until: float | None  # wall-clock seconds; None: until unbanned
    by: str  # who made it (the admin socket's peer), for the listing
    hits: int = 0  # connections and registrations refused since the server started

    def expired(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        del out["hits"]  # a figure of this run, not persisted
        return out


def normalise(kind: str, target: str) -> str:
    """The canonical form of a ban's target; BanError saying what is wrong."""
    if kind == "address":
        try:
            net = ipaddress.ip_network(target.partition("%")[0], strict=False)
        except ValueError:
            raise BanError(f"not an address or network: {target!r} (examples: 192.0.2.7, "
                           f"198.51.100.0/24, 2001:db8::/48)") from None
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 \
                and (mapped := ipaddress.IPv6Address(int(net.network_address)).ipv4_mapped):
            net = ipaddress.IPv4Network((int(mapped), net.prefixlen - 96))
        return str(net)
    if kind not in ("nick", "account"):
        raise BanError(f"a ban is by one of {', '.join(KINDS)}, not {kind!r}")
    if not PATTERN_RE.match(target):
        raise BanError(f"a {kind} ban is 1-{MAX_NICK} nick characters (A-Z a-z 0-9 _ - [ ] "
                       f"\\ ^ {{ }} | `), with * and ? as wildcards")
    if not target.strip("*?"):
        raise BanError(f"a {kind} pattern needs at least one character besides * and ?")
    return target


def _glob(key: str) -> str:
    return "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in key)


class Bans:
    """The bans in force, and their index."""

    def __init__(self, bans: list[Ban] | None = None, next_id: int = 1) -> None:
        self.bans: dict[int, Ban] = {b.id: b for b in bans or ()}
        self.next_id = max([next_id, *(b.id + 1 for b in self.bans.values())])
        self._reindex()

    def __len__(self) -> int:
        return len(self.bans)

    def __iter__(self) -> Iterator[Ban]:
        return iter(sorted(self.bans.values(), key=lambda b: b.id))

    def _reindex(self) -> None:
        self._names: dict[tuple[str, str], Ban] = {}  # (kind, key) -> ban, no wildcards
        self._globs: dict[str, tuple[re.Pattern[str], list[Ban]]] = {}  # kind -> any of
        self._nets: dict[int, dict[tuple[int, int], Ban]] = {4: {}, 6: {}}
        globs: dict[str, list[Ban]] = {}
        for ban in self:
            if ban.kind == "address":
                net = ipaddress.ip_network(ban.target)
                self._nets[net.version][(net.prefixlen, int(net.network_address))] = ban
            elif "*" in ban.target or "?" in ban.target:
                globs.setdefault(ban.kind, []).append(ban)
            else:
                self._names[(ban.kind, nick_key(ban.target))] = ban
        for kind, group in globs.items():
            # One expression for all: group N of the match is the Nth ban's pattern.
            regex = "|".join(f"({_glob(nick_key(b.target))})" for b in group)
            self._globs[kind] = (re.compile(regex), group)
        self._lengths = {v: sorted({plen for plen, _ in nets}) for v, nets in self._nets.items()}

    # ---- changes (the admin's commands) ----

    def add(self, kind: str, target: str, reason: str, until: float | None, now: float,
            by: str) -> tuple[Ban, bool]:
        """Ban `target`; (the ban, whether it is new). A ban of the same target is
        replaced (its reason and expiry), keeping its number."""
        target = normalise(kind, target)
        try:
            reason = check_line(reason, "reason", MAX_REASON)
        except ProtocolError as exc:
            raise BanError(exc.message) from None
        if until is not None and not math.isfinite(until):
            raise BanError("the expiry must be a finite time")
        self.expire(now)
        same = next((b for b in self.bans.values() if b.kind == kind
                     and (b.target == target if kind == "address"
                          else nick_key(b.target) == nick_key(target))), None)
        if same is None and len(self.bans) >= MAX_BANS:
            raise BanError(f"there are {MAX_BANS} bans already: lift some first")
        ban = Ban(same.id if same else self.next_id, kind, target, reason, now, until, by)
        if same is None:
            self.next_id += 1
        self.bans[ban.id] = ban
        self._reindex()
        return ban, same is None

    def remove(self, ban_id: int) -> Ban | None:
        ban = self.bans.pop(ban_id, None)
        if ban is not None:
            self._reindex()
        return ban

    def expire(self, now: float) -> list[Ban]:
        """Forget the bans whose time is up; those."""
        gone = [b for b in self.bans.values() if b.expired(now)]
        for ban in gone:
            del self.bans[ban.id]
        if gone:
            self._reindex()
        return gone

    # ---- checks (admission and registration) ----

    def address(self, ip: str, now: float) -> Ban | None:
        """The ban in force on address `ip` (a string from accept()), if any."""
        if not self._lengths[4] and not self._lengths[6]:
            return None
        try:
            addr = ipaddress.ip_address(ip.partition("%")[0])
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        bits, value = addr.max_prefixlen, int(addr)
        nets = self._nets[addr.version]
        for plen in self._lengths[addr.version]:
            ban = nets.get((plen, value >> (bits - plen) << (bits - plen)))
            if ban is not None:
                return self._hit(ban, now)
        return None

    def identity(self, nick: str | None, account: str | None, now: float) -> Ban | None:
        """The ban in force on this nick or account, if any."""
        for kind, name in (("nick", nick), ("account", account)):
            if name is None:
                continue
            key = nick_key(name)
            ban = self._names.get((kind, key))
            if ban is None and kind in self._globs:
                regex, group = self._globs[kind]
                match = regex.fullmatch(key)
                if match is not None:
                    ban = group[match.lastindex - 1 if match.lastindex else 0]
            if ban is not None and (hit := self._hit(ban, now)) is not None:
                return hit
        return None

    def _hit(self, ban: Ban, now: float) -> Ban | None:
        if ban.expired(now):
            self.expire(now)
            return None
        ban.hits += 1
        return ban

    # ---- the file ----

    def dump(self) -> str:
        return json.dumps({"version": 1, "next_id": self.next_id,
                           "bans": [b.record() for b in self]}, indent=1) + "\n"

    def save(self, path: Path, now: float) -> None:
        """Write the bans in force to `path` atomically (OSError if that fails)."""
        self.expire(now)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, self.dump().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)


def load(path: Path) -> Bans:
    """The bans kept in `path` (none if there is no file); BanError naming what is wrong,
    because starting without bans the admin made would let in whom they shut out."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Bans()
    except (OSError, UnicodeDecodeError) as exc:
        raise BanError(f"cannot read the bans file {path}: {exc}") from None
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise ValueError("not a version 1 bans file")
        bans = [_ban(item) for item in doc["bans"]]
        next_id = doc["next_id"]
        if not isinstance(next_id, int) or isinstance(next_id, bool):
            raise ValueError("next_id is not an integer")
        return Bans(bans, next_id)
    except (ValueError, KeyError, TypeError, BanError) as exc:
        raise BanError(f"the bans file {path} is damaged ({exc}): fix it or move it "
                       f"away (that lifts every ban)") from None


def _ban(item: Any) -> Ban:
    if not isinstance(item, dict) or set(item) != {"id", "kind", "target", "reason",
                                                    "created", "until", "by"}:
        raise ValueError(f"not a ban: {item!r}")
    if item["kind"] not in KINDS or not isinstance(item["id"], int):
        raise ValueError(f"not a ban: {item!r}")
    for key in ("created", "until"):
        value = item[key]
        if not (value is None and key == "until") and (
                not isinstance(value, int | float) or isinstance(value, bool)
                or not math.isfinite(value)):
            raise ValueError(f"ban {item['id']}: {key} is not a time")
    if not all(isinstance(item[k], str) for k in ("target", "reason", "by")):
        raise ValueError(f"ban {item['id']}: a field is not text")
    target = normalise(item["kind"], item["target"])
    return Ban(item["id"], item["kind"], target, item["reason"], float(item["created"]),
               None if item["until"] is None else float(item["until"]), item["by"])
