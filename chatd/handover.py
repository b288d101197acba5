"""What the parent hands its successor on `chatd upgrade`: fds it keeps open, and a state.

The parent re-executes itself (same PID: its sessions stay its children, systemd sees no
new main PID). Its listeners, the data dir lock and every session channel stay open
across execve(); `snapshot()` names them and writes down the little state that no fd
holds (who each channel is, the broker's members, nicks and rooms, the bytes queued
for a session or half-read from it) as one msgpack map in a memfd, whose fd number the
new process finds in $CHATD_HANDOVER. `restore()` rebuilds the parent from it.

What is not handed over is rebuilt or not needed: topics come from the store with each
room, the rings of recent messages refill (until then pages come from the history
reader), the admission rates start afresh, spares are forked again by the new code, and
the old history reader is told to exit and a new one is started. The parent hands over
only when no history read is in flight (see chatd/upgrade.py), so no catch-up is cut.

State added to the parent later must be added here too: the members go field by field
(tests/test_handover.py), anything else the broker keeps must be named. The format has a
version (`VERSION`): the probe of the new code is told which one the
old parent writes and refuses the upgrade if it cannot read it, and the same for the
channel versions its sessions speak (chatd/channel.py: VERSION).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import fields
from typing import TYPE_CHECKING, Any

import msgpack

from chatd import channel, uplinkhelper
from chatd.broker import Member, Room
from chatd.cluster import ClusterBroker
from chatd.history import Catchup
from chatd.moderation import RoomPolicy
from chatd.protocol import FrameDecoder

if TYPE_CHECKING:
    from chatd.master import Master

log = logging.getLogger("chatd.master")
VERSION = 2  # of the snapshot's format (2: the admin socket is handed over too)
SUPPORTED = frozenset({1, 2})  # snapshot formats this code restores
ENV = "CHATD_HANDOVER"  # the memfd's fd number, for the new process
LISTENER_KINDS = ("plain", "tls", "irc", "irc_tls")


class HandoverError(Exception):
    """The snapshot cannot be restored by this code."""


# ---- the old parent ----


def snapshot(master: Master, now: float) -> dict[str, Any]:
    """Everything the successor needs that the kept fds do not say. Called with the
    broker drained, the routes flushed as far as they go, and no history read in flight.
    Kill deadlines are handed over as seconds from `now`."""
    table, broker = master.table, master.broker

    def kill_in(pid: int) -> float | None:
        due = table.kill_deadline.get(pid)
        return None if due is None else max(0.0, due - now)

    children = []
    # (the history reader is told to exit on handover: the new parent reaps it)
    # (and so is the auth helper, stopped before the snapshot: chatd/upgrade.py)
    # (and so is the fork server: its channel does not survive execve())
    retiring = [[pid, kill_in(pid)] for pid in table.retiring | master.reader.pids
                | master.auth.pids | master.pool.zygote.pids
                | (master.uplink.pids if master.uplink else set())]
    for pid, kid in table.children.items():
        if table.by_sid.get(kid.sid) is not kid:  # its channel is closed: on its way out
            retiring.append([pid, kill_in(pid)])
            continue
        out = b"".join(bytes(c) for c in kid.out.chunks)[kid.out.offset:]
        children.append({"pid": pid, "sid": kid.sid, "fd": kid.chan.fileno(),
                         "token": kid.token, "ip": kid.ip, "cv": channel.VERSION,
                         "in": kid.decoder.take(), "out": out, "closing": kid.closing,
                         "attached": kid.attached, "kill": kill_in(pid)})
    # every field of each Member, by name (a field added later is handed over too)
    members = [{f.name: sorted(m.rooms) if f.name == "rooms" else getattr(m, f.name)
                for f in fields(Member)} for m in broker.members.values()]
    return {
        "v": VERSION, "lock": master.lock_fd, "next_sid": table.next_sid,
        "at": now,  # (monotonic: the same clock after execve())
        "listeners": [[sock.fileno(), kind] for sock, kind in master.listener_kinds.items()],
        # admin.sock's listener (chatd/admin.py): `chatd admin` is answered across the
        # upgrade, a request sent meanwhile waiting in its backlog
        "admin": master.admin.handed(),
        "children": children, "retiring": retiring, "members": members,
        "nicks": [[key, m.sid] for key, m in broker.nicks.items()],
        "rooms": [[r.name, r.topic, r.topic_by, r.topic_ts, policy(r.policy)]
                  for r in broker.rooms.values()],
        "endings": [[tok, code, why] for tok, (code, why) in broker.endings.items()],
        "marks": [[sid, mark] for sid, mark in broker.history.marks.items()],
        # members still paging through a room's catch-up (no read is in flight)
        "catching": [[cu.sid, cu.room] for cu in broker.history.catching.values()],
        # sessions adopted from a dead parent are watched through these (chatd/adopt.py)
        "pidfds": [[pid, fd] for pid, fd in table.pidfds.items()],
        # a cluster host goes on as the same host (chatd/uplinkhelper.py; retired uplink)
        **({"cluster": uplinkhelper.hand_over(broker, master.uplink)}
           if master.uplink is not None and isinstance(broker, ClusterBroker) else {}),
    }


def policy(rules: RoomPolicy) -> dict[str, Any]:
    """A room's moderation policy whole: what the store keeps, and what it does not (the
    guests' operator status and invitations, which last as long as the room)."""
    return {"stored": rules.to_json(), "operators": sorted(rules.operators),
            "invites": dict(rules.invites)}


def room_policy(doc: dict[str, Any], room: str) -> RoomPolicy:
    rules = RoomPolicy.from_json(doc["stored"], room)
    rules.operators, rules.invites = set(doc["operators"]), dict(doc["invites"])
    return rules


def kept_fds(state: dict[str, Any]) -> list[int]:
    """The fds the snapshot names: they must stay open across execve()."""
    admin = [state["admin"][0]] if state.get("admin") else []
    return [state["lock"], *(fd for fd, _kind in state["listeners"]), *admin,
            *(kid["fd"] for kid in state["children"]),
            *(fd for _pid, fd in state.get("pidfds", []))]


def write(state: dict[str, Any]) -> int:
    """The snapshot in an inheritable memfd, read from its start; its fd."""
    fd = os.memfd_create("chatd-handover", 0)  # not MFD_CLOEXEC: the successor reads it
    data = msgpack.packb(state, use_bin_type=True)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# ---- the new parent ----


def take_from_environment() -> dict[str, Any] | None:
    """The snapshot our predecessor left us, if any (and out of the environment, so that
    no process we start sees it)."""
    value = os.environ.pop(ENV, None)
    if value is None:
        return None
    fd = int(value)
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    state = msgpack.unpackb(b"".join(chunks), raw=False, strict_map_key=False)
    if not isinstance(state, dict) or state.get("v") not in SUPPORTED:
        raise HandoverError(f"handover format {state.get('v') if isinstance(state, dict) else '?'}"
                            f" is not one this code reads ({sorted(SUPPORTED)})")
    return state


def check(handover: str, channels: str) -> list[str]:
    """The probe's part (`chatd serve --check`): what this code could not take over from
    a parent that writes format `handover` and has sessions speaking `channels`
    (comma-separated versions). Empty when everything can be taken over."""
    problems = []
    if handover and int(handover) not in SUPPORTED:
        problems.append(f"the running parent hands over format {handover}, this code reads "
                        f"{sorted(SUPPORTED)}")
    for version in filter(None, channels.split(",")):
        if int(version) not in channel.SUPPORTED:
            problems.append(f"sessions speak channel version {version}, this code speaks "
                            f"{sorted(channel.SUPPORTED)}")
    return problems


def restore(master: Master, state: dict[str, Any], now: float) -> None:
    """Rebuild `master`'s listeners, session table and broker from `state`."""
    for fd, kind in state["listeners"]:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        master.adopt_listener(sock, kind)
    if state.get("admin"):  # (format 1 has none: the new code makes admin.sock afresh)
        master.admin.adopt(*state["admin"])
    table, broker, router = master.table, master.broker, master.router
    table.next_sid = state["next_sid"]
    for pid, kill in state["retiring"]:
        table.retiring.add(pid)
        table.kill_deadline[pid] = now + (kill if kill is not None else master.stop_time())
    members: dict[int, Member] = {}
    known = {f.name for f in fields(Member)}
    for rec in state["members"]:  # (a field this code does not know is left out)
        member = Member(**{k: v for k, v in rec.items() if k in known})
        member.rooms = set(member.rooms)
        members[member.sid] = member
    refused = 0
    for rec in state["children"]:
        chan = socket.socket(fileno=rec["fd"])
        if rec["cv"] not in channel.SUPPORTED:
            # (the probe refuses such an upgrade; this is the last line of defence)
            log.error("session %s (pid %d) speaks channel version %s, this parent %s: "
                      "closing its channel", rec["token"], rec["pid"], rec["cv"],
                      sorted(channel.SUPPORTED))
            chan.close()
            members.pop(rec["sid"], None)
            table.retiring.add(rec["pid"])
            table.kill_deadline[rec["pid"]] = now + master.config.broker_grace + \
                master.stop_time()
            refused += 1
            continue
        chan.setblocking(False)
        kid = table.adopt(rec["pid"], rec["sid"], chan, rec["token"], rec["ip"],
                          FrameDecoder(master.config.max_frame))
        kid.decoder.receive_data(rec["in"])
        kid.out.add(rec["out"])
        kid.closing, kid.attached = rec["closing"], rec["attached"]
        if rec["kill"] is not None:
            table.kill_deadline[kid.pid] = now + rec["kill"]
        router.adopt(kid)
    broker.members.update(members)
    for member in members.values():  # the sessions of each account (chatd/direct.py)
        if member.account is not None and not member.gone:
            broker.directory.logged_in(member, member.account)
    for key, sid in state["nicks"]:
        if sid in members:
            broker.nicks[key] = members[sid]
    for name, topic, by, ts, rules in state["rooms"]:
        broker.rooms[name] = Room(name, topic, by, ts, policy=room_policy(rules, name))
        broker.history.room_created(name)
    for member in members.values():
        for name in member.rooms:
            broker.rooms[name].members[member.sid] = member
    broker.room_names[:] = sorted(broker.rooms)
    for token, code, why in state["endings"]:
        broker.endings[token] = (code, why)
    history = broker.history
    history.marks.update({sid: mark for sid, mark in state["marks"] if sid in members})
    for sid, name in state["catching"]:
        if sid in members and name in broker.rooms:
            history.catching[(sid, name)] = Catchup(sid, name)
            history.held[name].add(sid)
    for pid, fd in state.get("pidfds", []):
        master.adopter.watch(pid, fd)
    if "cluster" in state and master.uplink is not None and isinstance(broker, ClusterBroker):
        uplinkhelper.take_over(broker, master.uplink, state["cluster"])
    for kid in list(table.by_sid.values()):
        router.flush(kid)  # what the old parent had queued for it
    log.info("took over %d sessions, %d rooms, %d listeners%s", len(table.by_sid),
             len(broker.rooms), len(master.listener_kinds),
             f" ({refused} refused)" if refused else "")

