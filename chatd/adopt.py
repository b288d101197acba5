"""Re-adoption: a new parent takes in the sessions a dead one left (parent side).

At start-up (accepting no client until it is done) the parent lists the abstract Unix sockets
named after its data dir in /proc/net/unix (chatd/orphan.py: each session process of an
earlier parent listens on one), connects to each, and waits (up to broker_grace) for
each to re-register: one frame `{"type": "register", "pid", "token", "ip", "state",
"last", "cv"}`. It takes a registration only from the process SO_PEERCRED names as
`pid`, with a state its predecessor signed for that pid and token (chatd/orphan.py);
anything else gets a `close` control and the connection is closed. An adopted session
becomes an ordinary entry in the session table, except that it is not our child: it is
watched through a pidfd (its end, since waitpid() cannot see it) and signalled through
it. The broker then makes it a member of its rooms again and catches it up on each
after the newest message id it delivered (`last`), so its client gets what it missed
with no gap and no duplicate (chatd/history.py: `resume`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
from bisect import insort
from typing import TYPE_CHECKING, Any

import msgpack

from chatd import channel, orphan
from chatd import protocol as p
from chatd.broker import Broker, Member, Room
from chatd.moderation import RoomPolicy
from chatd.outbox import recv
from chatd.protocol import FrameDecoder, ProtocolError
from chatd.routing import now_ms

if TYPE_CHECKING:
    from chatd.master import Master

log = logging.getLogger("chatd.master")
HOLD = 3.0  # seconds new clients wait at most for the found sessions to register
MAX_REGISTER = 64 * 1024  # bytes of a registration frame


def discover(data_dir: Any) -> list[tuple[int, bytes]]:
    """(pid, abstract address) of every listening adoption socket of this data dir."""
    want = b"@" + orphan.prefix(data_dir)
    found = []
    try:
        with open("/proc/net/unix", "rb") as table:
            lines = table.read().splitlines()[1:]
    except OSError as exc:
        log.warning("adoption: cannot list Unix sockets: %s", exc)
        return []
    for line in lines:
        fields = line.split()
        # Num RefCount Protocol Flags Type St Inode Path; St 01 with flags 00010000: listening
        if len(fields) < 8 or not fields[7].startswith(want) or fields[3] != b"00010000":
            continue
        pid = fields[7][len(want):]
        if pid.isdigit():
            found.append((int(pid), b"\0" + fields[7][1:]))
    return sorted(set(found))


class Adopter:
    def __init__(self, master: Master, key: bytes | bytearray) -> None:
        self.master = master
        self.key = key
        self.waiting: dict[socket.socket, tuple[int, FrameDecoder]] = {}
        self.deadline = 0.0  # a found session registers by then (it lives no longer)
        self.hold_until = 0.0
        self.holding = False  # the listeners wait until every found session is settled

    @property
    def busy(self) -> bool:
        return bool(self.waiting)

    def start(self, now: float) -> int:
        """Connect to every orphan found; how many there are."""
        for pid, addr in discover(self.master.config.data_dir):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(addr)
                got_pid, _uid, _gid = orphan.peer(sock)
            except OSError as exc:
                log.info("adoption: session pid %d not reachable: %s", pid, exc)
                sock.close()
                continue
            if got_pid != pid:
                log.warning("adoption: socket of pid %d belongs to pid %d; ignored", pid,
                            got_pid)
                sock.close()
                continue
            sock.setblocking(False)
            self.waiting[sock] = (pid, FrameDecoder(MAX_REGISTER))
            self.master.sel.register(sock, selectors.EVENT_READ, self.readable)
        # A found session outlives its parent by broker_grace: it may register until then
        # (one stopped or starved for a while too); new clients wait HOLD at most.
        self.deadline = now + self.master.config.broker_grace
        self.hold_until = now + HOLD
        if self.waiting:
            log.info("adoption: %d sessions of an earlier parent found", len(self.waiting))
            # New clients wait in the backlog meanwhile: none takes an adoptee's nick.
            for listener in self.master.listeners:
                self.master.hold_listener(listener, True)
            self.holding = True
        return len(self.waiting)

    def _settled(self, now: float = 0.0) -> None:
        """One more found session is adopted or refused: accept again once all are (or
        once new clients have waited HOLD)."""
        if self.holding and (not self.waiting or now >= self.hold_until):
            self.holding = False
            for listener in self.master.listeners:
                self.master.hold_listener(listener, False)

    def timeout(self, now: float) -> float | None:
        if not self.waiting:
            return None
        due = min(self.deadline, self.hold_until) if self.holding else self.deadline
        return max(0.0, due - now)

    def overdue(self, now: float) -> None:
        if self.waiting and now >= self.deadline:
            for sock, (pid, _decoder) in list(self.waiting.items()):
                self._drop(sock, pid, "did not register within keepalive.broker_grace")
        if self.holding and now >= self.hold_until:
            log.warning("adoption: %d sessions not registered after %gs; accepting new "
                        "clients", len(self.waiting), HOLD)
            self._settled(now)

    def _drop(self, sock: socket.socket, pid: int, why: str, tell: bool = False) -> None:
        log.warning("adoption: session pid %d refused: %s", pid, why)
        del self.waiting[sock]
        self.master.sel.unregister(sock)
        if tell:  # it ends its client with this (it is not ours: we cannot signal it)
            with contextlib.suppress(OSError):
                sock.send(channel.control({**channel.close("server_gone"), "message": why}))
        sock.close()
        self._settled()

    def readable(self, sock: socket.socket, mask: int) -> None:
        pid, decoder = self.waiting[sock]
        data = recv(sock)
        if data is None:
            return
        if not data:
            self._drop(sock, pid, "it hung up")
            return
        decoder.receive_data(data)
        try:
            frames = list(decoder.payloads())
        except ProtocolError:
            self._drop(sock, pid, "its registration is over the size limit")
            return
        if not frames:
            return
        try:
            reg = msgpack.unpackb(frames[0], raw=False)
            why = self._check(pid, reg)
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            why = f"its registration is not readable: {exc}"
        if why:
            self._drop(sock, pid, why, tell=True)
            return
        del self.waiting[sock]
        self.master.sel.unregister(sock)
        self._adopt(sock, pid, reg, decoder, frames[1:])
        self._settled()

    def _check(self, pid: int, reg: Any) -> str | None:
        if not isinstance(reg, dict) or reg.get("type") != "register":
            return "no registration"
        if reg.get("cv") not in channel.SUPPORTED:
            return (f"it speaks channel version {reg.get('cv')}, this parent "
                    f"{sorted(channel.SUPPORTED)}")
        token, state = reg.get("token"), reg.get("state")
        if reg.get("pid") != pid:
            return f"it says it is pid {reg.get('pid')!r}, the kernel says pid {pid}"
        if not isinstance(token, str) or not isinstance(state, dict):
            return "its registration is malformed"
        if not orphan.state_valid(self.key, pid, token, state):
            return "its state is not signed for it by this server"
        if not isinstance(reg.get("last"), int) or not isinstance(reg.get("ip"), str):
            return "its registration is malformed"
        return None

    def _adopt(self, sock: socket.socket, pid: int, reg: dict[str, Any],
               decoder: FrameDecoder, requests: list[bytes]) -> None:
        master, table = self.master, self.master.table
        state = reg["state"]
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # it is gone already
            log.info("adoption: session pid %d ended meanwhile: %s", pid, exc)
            sock.close()
            return
        decoder.max_frame = master.config.max_frame
        sid = table.next_sid
        table.next_sid += 1
        kid = table.adopt(pid, sid, sock, reg["token"], reg["ip"], decoder)
        self.watch(pid, pidfd)
        master.router.adopt(kid)
        taken = rejoin(master.broker, sid, reg["token"], state["nick"], state["account"],
                       state["rooms"], reg["last"],
                       orphan.resume_secret(self.key, pid, reg["token"], state))
        if taken:
            master.router.kick(kid, "server_gone", f"adoption: {taken}")
        else:
            master.router.send_control(kid, channel.ADOPTED)
            log.info("adopted session %s (pid %d) as %s in %d rooms, after id %d",
                     kid.token, pid, state["nick"], len(state["rooms"]), reg["last"])
        for payload in requests:  # those that came right behind the registration
            master.broker.receive(sid, payload, now_ms())

    def watch(self, pid: int, pidfd: int) -> None:
        """Learn of adopted session `pid`'s end through its pidfd (readable when it exits)."""
        self.master.table.pidfds[pid] = pidfd
        self.master.sel.register(pidfd, selectors.EVENT_READ, self._ended)

    def _ended(self, pidfd: int, mask: int) -> None:
        """An adopted session's process ended (we cannot reap it: it is not our child)."""
        table = self.master.table
        pid = next((p for p, fd in table.pidfds.items() if fd == pidfd), None)
        self.master.sel.unregister(pidfd)
        os.close(pidfd)
        if pid is not None:
            del table.pidfds[pid]
            table.kill_deadline.pop(pid, None)
            table.reaped(pid, 0)



def rejoin(broker: Broker, sid: int, token: str, nick: str | None, account: str | None,
           rooms: list[str], after: int, resume: str = "") -> str | None:
    """Make an adopted session a broker member again, in its rooms without a word to them
    (they never saw it leave), and catch it up in each after `after`, the newest message
    id it delivered; its client may still take it over with `resume`. Why not, if it
    cannot be."""
    holder = broker.nicks.get(p.nick_key(nick)) if nick is not None else None
    if holder is not None and (account is None or holder.account != account):
        return f"nick {nick!r} was taken meanwhile"  # (an account's sessions share it)
    member = broker.members[sid] = Member(sid, token, nick, account=account, resume=resume)
    if account is not None:
        broker.directory.logged_in(member, account)
    if nick is not None:
        broker.nicks.setdefault(p.nick_key(nick), member)
        broker.history.took_nick(sid)
    for name in rooms:
        room = broker.rooms.get(name)
        if room is None:  # (its guests' operator status died with the old parent)
            policy = RoomPolicy.from_json(broker.store.policy(name), name)
            room = broker.rooms[name] = Room(name, *broker.store.topic(name), policy=policy)
            insort(broker.room_names, name)
            broker.history.room_created(name)
        room.members[sid] = member
        member.rooms.add(name)
        broker.history.resume(sid, name, after)
    return None
