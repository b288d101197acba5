"""What the admin socket (chatd/admin.py) can be asked, and the answers, in the parent.

A request is one JSON object: `{"cmd": NAME, ...}` with exactly the fields of REQUESTS
(types checked, strings bounded); anything else is `bad_request` or `unknown_command`.
An answer is one JSON object, `{"ok": true, ...}` or `{"ok": false, "error": CODE,
"message": TEXT}`. Every answer is made from what the parent holds in memory, but for
two stat() calls (the database's size) and, for `ban`/`unban`, writing bans.json.

Memory (PSS) is not read here: reading /proc/PID/smaps_rollup walks each process's page
tables, which for thousands of sessions would stall routing; the answer to `status` lists
the pids and `chatd admin` reads their smaps_rollup itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chatd import __version__, bans, outbox
from chatd.frontends import irc_refusal
from chatd.protocol import MAX_REASON, ProtocolError, check_line, error_frame, nick_key

if TYPE_CHECKING:
    from chatd.master import Master
    from chatd.sessiontable import Child

log = logging.getLogger("chatd.master")
MAX_FIELD = 300  # characters of any string field
MAX_DURATION = 100 * 365 * 86400.0  # seconds a ban may last (or forever: no duration)
SESSIONS_CHUNK = 200  # sessions described per turn of the loop
# Fields of each request: name -> (JSON types, required).
REQUESTS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "status": {}, "sessions": {}, "bans": {}, "reload": {},
    "kick": {"nick": ((str,), True), "reason": ((str,), False)},
    "ban": {"kind": ((str,), True), "target": ((str,), True), "reason": ((str,), False),
            "duration": ((int, float), False)},
    "unban": {"id": ((int,), True)},
}


class AdminRequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end of an admin connection (SO_PEERCRED)."""

    pid: int
    uid: int


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key appears twice")
    return dict(pairs)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def parse_request(data: bytes) -> dict[str, Any]:
    """The request in `data`, checked field by field; AdminRequestError if it is not one."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_unique,
                         parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise AdminRequestError("bad_request", f"not a JSON request: {exc}") from None
    if not isinstance(obj, dict):
        raise AdminRequestError("bad_request", "a request is a JSON object")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or cmd not in REQUESTS:
        raise AdminRequestError("unknown_command", f"cmd is one of {', '.join(REQUESTS)}")
    fields = REQUESTS[cmd]
    for key in obj:
        if key != "cmd" and key not in fields:
            raise AdminRequestError("bad_request", f"{cmd} has no field {key[:40]!r}")
    for key, (types, required) in fields.items():
        if key not in obj:
            if required:
                raise AdminRequestError("bad_request", f"{cmd} needs {key!r}")
            continue
        value = obj[key]
        if isinstance(value, bool) or not isinstance(value, types) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise AdminRequestError("bad_request", f"{cmd}: {key!r} has the wrong type")
        if isinstance(value, str) and len(value) > MAX_FIELD:
            raise AdminRequestError("bad_request", f"{cmd}: {key!r} is over {MAX_FIELD} "
                                    f"characters")
    return obj


class MessageRate:
    """Messages per second, from the newest message id as the loop sees it each turn.

    Nothing on the hot path: a sample is taken only in a turn where the id moved, and
    samples closer than RESOLUTION are merged, so at most KEEP / RESOLUTION are kept.
    """

    RESOLUTION = 0.1
    KEEP = 60.0

    def __init__(self, now: float, last_id: int) -> None:
        self.start = now
        self.last_id = last_id
        self.samples: deque[tuple[float, int]] = deque([(now, last_id)])

    def sample(self, now: float, last_id: int) -> None:
        if last_id == self.last_id:
            return
        self.last_id = last_id
        samples = self.samples
        if len(samples) > 1 and now - samples[-1][0] < self.RESOLUTION:
            samples[-1] = (samples[-1][0], last_id)
        else:
            samples.append((now, last_id))
        while len(samples) > 2 and samples[1][0] <= now - self.KEEP:
            samples.popleft()

    def per_second(self, now: float, window: float) -> float:
        span = min(window, now - self.start)
        if span <= 0:
            return 0.0
        base = self.samples[0][1]
        for stamp, msg_id in self.samples:
            if stamp > now - span:
                break
            base = msg_id
        return max(0, self.last_id - base) / span


def ban_message(ban: bans.Ban) -> str:
    """What a banned client is told (UTC: the same for every reader)."""
    text = "banned from this server"
    if ban.reason:
        text += f": {ban.reason}"
    if ban.until is not None:
        text += time.strftime(" (until %Y-%m-%d %H:%M:%S UTC)", time.gmtime(ban.until))
    return text


class Ops:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.started = time.monotonic()
        self.started_wall = time.time()
        self.rate = MessageRate(self.started, master.broker.history.last_id)
        self.bans_path = master.config.data_dir / bans.FILE
        self.bans = bans.load(self.bans_path)  # BanError stops start-up

    def handle(self, req: dict[str, Any], peer: Peer) -> bytes | Iterator[bytes]:
        cmd = req["cmd"]
        if cmd == "sessions":
            return self.sessions()
        answer: dict[str, Any] = getattr(self, f"_{cmd}")(req, peer)
        return json.dumps({"ok": True, **answer}).encode() + b"\n"

    # ---- admission and registration (the parent's and the broker's hooks) ----

    def refusal(self, ip: str, irc: bool) -> bytes | None:
        """What a new connection from a banned address is sent (then closed), or None."""
        if not self.bans:
            return None
        ban = self.bans.address(ip, time.time())
        if ban is None:
            return None
        # Once per ban at info: a banned client in a loop would fill the log (`bans` counts).
        log.log(logging.INFO if ban.hits == 1 else logging.DEBUG,
                "refused %s: server ban #%d", ip, ban.id)
        if irc:
            return irc_refusal(self.master.config.server_name, ban_message(ban))
        return error_frame("server_banned", ban_message(ban))

    def screen(self, nick: str | None, account: str | None) -> str | None:
        """Why a session may not register with this nick (or account), or None."""
        if not self.bans:
            return None
        ban = self.bans.identity(nick, account, time.time())
        return None if ban is None else ban_message(ban)

    # ---- requests ----

    def _status(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        m = self.master
        now = time.monotonic()
        table = m.table
        members = m.broker.members.values()
        store: dict[str, Any] = {"path": m.store.path, "bytes": 0, "wal_bytes": 0}
        for key, suffix in (("bytes", ""), ("wal_bytes", "-wal")):
            with contextlib.suppress(OSError):
                store[key] = os.stat(m.store.path + suffix).st_size
        trouble = getattr(m.store, "trouble", None)
        store.update(trouble() if callable(trouble) else {"failing": [], "last_error": None})
        return {
            "version": __version__, "pid": os.getpid(), "state": m.life.state.value,
            "started": self.started_wall, "uptime": now - self.started,
            "config": str(m.config.config_file) if m.config.config_file else None,
            "sessions": {"total": len(table.children),
                         "registered": sum(1 for x in members if x.nick is not None),
                         "spares": len(table.spares), "max": m.config.max_sessions},
            "rooms": len(m.broker.rooms),
            "messages": {"last_id": self.rate.last_id,
                         "per_second_10s": round(self.rate.per_second(now, 10.0), 2),
                         "per_second_60s": round(self.rate.per_second(now, 60.0), 2)},
            "storage": store, "bans": len(self.bans),
            "processes": {"parent": os.getpid(), "sessions": sorted(table.children),
                          "spares": sorted(table.spares),
                          "helpers": sorted(m.reader.pids | m.pool.zygote.pids)},
        }

    def sessions(self) -> Iterator[bytes]:
        """The session list, SESSIONS_CHUNK at a time (the loop routes in between)."""
        pids = sorted(self.master.table.children)
        yield b'{"ok": true, "sessions": ['
        sep = b""
        for start in range(0, len(pids), SESSIONS_CHUNK):
            now, wall = time.monotonic(), time.time()
            parts = []
            for pid in pids[start:start + SESSIONS_CHUNK]:
                kid = self.master.table.children.get(pid)
                if kid is not None:  # not ended since the list began
                    parts.append(json.dumps(self._session(kid, now, wall)).encode())
            if parts:
                yield sep + b", ".join(parts)
                sep = b", "
        yield b"]}\n"

    def _session(self, kid: Child, now: float, wall: float) -> dict[str, Any]:
        member = self.master.broker.members.get(kid.sid)
        is_open = kid.sid in self.master.table.by_sid
        return {
            "session": kid.token, "pid": kid.pid, "address": kid.ip,
            "nick": member.nick if member else None,
            "account": member.account if member else None,
            "since": wall - (now - kid.started), "age": now - kid.started,
            "rooms": sorted(member.rooms) if member else [],
            "queue": kid.out.size,  # bytes the parent holds for it
            "channel_queue": outbox.unacknowledged(kid.chan) if is_open else 0,
            "closing": kid.closing or not is_open,
        }

    def _kick(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        reason = self._reason(req)
        kid, nick = self._find(req["nick"])
        message = "kicked by the server administrator" + (f": {reason}" if reason else "")
        ended = []
        for other in self._account_sessions(kid):  # (a guest: just its own)
            self._end(other, "kicked", f"kicked by the admin (uid {peer.uid}): "
                      f"{reason or '-'}", message, f"kicked: {reason}" if reason else "kicked")
            ended.append({"session": other.token, "pid": other.pid, "address": other.ip})
        return {"kicked": {"nick": nick, **ended[0]}, "sessions": ended}

    def _account_sessions(self, kid: Child) -> list[Child]:
        """`kid`, then the other open sessions logged in to its account, if it has one."""
        broker, table = self.master.broker, self.master.table
        others = [table.by_sid.get(m.sid) for m in broker.directory.of_account(
            broker.members[kid.sid]) if m.sid != kid.sid]
        return [kid, *(o for o in others if o is not None and not o.closing)]

    def _find(self, nick: str) -> tuple[Child, str]:
        member = self.master.broker.nicks.get(nick_key(nick))
        kid = self.master.table.by_sid.get(member.sid) if member else None
        if member is None or member.nick is None or kid is None or kid.closing:
            raise AdminRequestError("no_such_nick", f"nobody is called {nick!r}")
        return kid, member.nick

    def _end(self, kid: Child, code: str, why: str, message: str, reason: str) -> None:
        self.master.router.kick(kid, code, why, message=message, reason=reason)
        self.master.router.flush(kid)

    @staticmethod
    def _reason(req: dict[str, Any]) -> str:
        try:
            return check_line(req.get("reason", ""), "reason", MAX_REASON)
        except ProtocolError as exc:
            raise AdminRequestError("bad_request", exc.message) from None

    def _ban(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        duration = req.get("duration")
        if duration is not None and not 1 <= duration <= MAX_DURATION:
            raise AdminRequestError("invalid_ban", f"a ban lasts 1 s to {MAX_DURATION:g} s "
                                    f"(100 years), or until lifted (no duration)")
        wall = time.time()
        try:
            ban, new = self.bans.add(req["kind"], req["target"], self._reason(req),
                                     None if duration is None else wall + duration, wall,
                                     f"uid {peer.uid}")
        except bans.BanError as exc:
            raise AdminRequestError("invalid_ban", str(exc)) from None
        log.warning("server ban #%d %s %s by uid %d: %s", ban.id, ban.kind, ban.target,
                    peer.uid, ban.reason or "-")
        answer = {"ban": self._listed(ban, wall), "new": new, **self._save(wall),
                  "ended": self._enforce(ban, wall)}
        return {**answer, **self._tell_cluster({"op": "ban", **ban.record()})}

    def _enforce(self, ban: bans.Ban, wall: float) -> list[dict[str, Any]]:
        """End the sessions the new ban matches (as IRC's KLINE does)."""
        only = bans.Bans([bans.Ban(**ban.record())])
        ended = []
        for kid in list(self.master.table.by_sid.values()):
            member = self.master.broker.members.get(kid.sid)
            if kid.closing or member is None:
                continue
            nick, account = member.nick, member.account
            if only.address(kid.ip, wall) or only.identity(nick, account, wall):
                self._end(kid, "server_banned", f"server ban #{ban.id}", ban_message(ban),
                          "banned from the server")
                ban.hits += 1
                ended.append({"nick": nick, "session": kid.token, "address": kid.ip})
        return ended

    def _save(self, wall: float) -> dict[str, Any]:
        try:
            self.bans.save(self.bans_path, wall)
        except OSError as exc:
            log.error("cannot save the bans to %s: %s", self.bans_path, exc)
            return {"saved": False, "warning": f"in force, but not saved to "
                    f"{self.bans_path} ({exc.strerror}): lost at a restart"}
        return {"saved": True}

    def _unban(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        ban = self.bans.remove(req["id"])
        if ban is None:
            raise AdminRequestError("no_such_ban", f"there is no ban #{req['id']}")
        log.warning("server ban #%d %s %s lifted by uid %d", ban.id, ban.kind, ban.target,
                    peer.uid)
        wall = time.time()
        return {"ban": self._listed(ban, wall), **self._save(wall),
                **self._tell_cluster({"op": "unban", "kind": ban.kind, "target": ban.target})}

    # ---- a cluster: every host's bans (chatd/cluster.py) ----

    def _tell_cluster(self, change: dict[str, Any]) -> dict[str, Any]:
        if not self.master.config.redis_url:
            return {}
        if self.master.broker.share_server_ban(change):
            return {"cluster": True}
        return {"cluster": False, "warning": "in force here, but not sent to the other "
                "hosts (this host cannot reach the cluster's Redis): do it again later"}

    def cluster_ban(self, change: dict[str, Any]) -> None:
        """Another host's administrator banned or unbanned: the same here."""
        wall = time.time()
        kind, target, node = str(change["kind"]), str(change["target"]), change["node"]
        try:
            if change["op"] == "ban":
                until = change["until"]
                ban, _new = self.bans.add(kind, target, str(change["reason"]),
                                          None if until is None else float(until), wall,
                                          f"{change['by']} on node {node}")
                self._enforce(ban, wall)
            else:
                same = bans.normalise(kind, target)
                found = next((b for b in self.bans if b.kind == kind and (
                    b.target == same if kind == "address"
                    else nick_key(b.target) == nick_key(same))), None)
                if found is None or self.bans.remove(found.id) is None:
                    return
                ban = found
        except (bans.BanError, KeyError, TypeError, ValueError) as exc:
            log.error("a server ban from node %s not applied: %s", node, exc)
            return
        log.warning("server ban #%d %s %s %s on node %s", ban.id, kind, target,
                    "made" if change["op"] == "ban" else "lifted", node)
        self._save(wall)

    def _bans(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        wall = time.time()
        self.bans.expire(wall)
        return {"bans": [self._listed(ban, wall) for ban in self.bans]}

    @staticmethod
    def _listed(ban: bans.Ban, wall: float) -> dict[str, Any]:
        return {**ban.record(), "hits": ban.hits,
                "remaining": None if ban.until is None else max(0.0, ban.until - wall)}

    def _reload(self, req: dict[str, Any], peer: Peer) -> dict[str, Any]:
        ok, result = self.master.reload()
        if not ok:
            raise AdminRequestError("reload_failed", result)
        return {"result": result}
