"""What /proc says about a server and its session processes (Linux only).

The one place that reads /proc, for the benchmark, the test harness (tests/serverproc.py)
and the soak (tests/soak.py): process state and parent, children, CPU, memory, open fds
and listening sockets.

CPU is read from /proc/PID/task/*/schedstat: nanoseconds on the CPU, summed over every
thread of every live process of the server's tree. The utime/stime of /proc/PID/stat is
counted in whole clock ticks per process, charged to whichever process is running when a
tick lands, and undercounts a tree of many briefly running processes (issue 15 measured
40 % too little). A session that has ended and been reaped is gone from /proc; what is
left of it is the parent's cutime+cstime, in ticks: the only record there is.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

TICK = os.sysconf("SC_CLK_TCK")
CPU_SOURCE = ("/proc/PID/task/*/schedstat (ns) of every live process of the server's tree; "
              "ended sessions from the parent's cutime+cstime (clock ticks)")


class Stat(NamedTuple):
    """The fields of /proc/PID/stat the probes use (times in clock ticks)."""

    state: str  # R, S, D, T, Z, ...
    ppid: int
    utime: int
    stime: int
    cutime: int  # reaped children's
    cstime: int
    minflt: int  # minor page faults: copy-on-write copies, new pages, first touches


def proc_stat(pid: int) -> Stat | None:
    """The process's state, parent and CPU ticks, or None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ")".
    fields = data[data.rindex(b")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return Stat(fields[0].decode(), int(fields[1]), utime, stime, cutime, cstime,
                int(fields[7]))


# /proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN; without it, scan every process.
HAVE_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is `pid`, zombies included; [] when `pid` is gone."""
    if not HAVE_CHILDREN:
        return [int(e) for e in os.listdir("/proc")
                if e.isdigit() and (st := proc_stat(int(e))) is not None and st.ppid == pid]
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just ended
            kids += map(int, Path(f"/proc/{pid}/task/{tid}/children").read_bytes().split())
    return kids




def is_reader(pid: int) -> bool:
    """Whether `pid` is a server's history reader or its cluster uplink (a helper, not a
    session): it runs `python -m chatd.reader` (or chatd.uplink), which its command line
    says once it has exec'd (for a moment before, it is a copy of the parent)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        return b"chatd.reader" in argv or b"chatd.uplink" in argv
    except OSError:
        return False


def is_helper(pid: int) -> bool:
    """A server's helper process (history reader, auth helper, fork server), not a
    session."""
    return is_reader(pid) or is_auth_helper(pid) or is_zygote(pid)


def _comm(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/comm").read_bytes().strip()
    except OSError:
        return b""


def is_auth_helper(pid: int) -> bool:
    """Whether `pid` is a server's auth helper: a fork of the parent that names itself
    (chatd.authhelper.NAME) first thing."""
    return _comm(pid) == b"chatd-auth"


def is_spare(pid: int) -> bool:
    """Whether `pid` is a spare session process still waiting for a client (it names
    itself chatd.child.SPARE_NAME until it is handed one)."""
    return _comm(pid) == b"chatd-spare"


def is_zygote(pid: int) -> bool:
    """Whether `pid` is a server's fork server: it names itself (chatd.zygote.NAME) once
    it has imported what it needs; until then only its command line says so (which the
    sessions it forks inherit, but they name themselves at once)."""
    comm = _comm(pid)
    if comm == b"chatd-zygote":
        return True
    if comm in (b"chatd-spare", b"chatd-session", b""):
        return False
    try:
        return b"chatd.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False


def sessions_of(pid: int) -> list[int]:
    """The children of a server that are session processes (not its helpers)."""
    return [kid for kid in children_of(pid) if not is_helper(kid)]


def child_states(ppid: int, helpers: bool = False) -> list[tuple[int, str]]:
    """(pid, state letter) of each child of `ppid`, zombies included: its session
    processes, and with `helpers` its helpers (history reader, auth helper) too."""
    out = []
    for pid in children_of(ppid):
        st = proc_stat(pid)
        if st is not None and (helpers or not is_helper(pid)):
            out.append((pid, st.state))
    return out


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, their children, ...)."""
    out: list[int] = []
    todo = children_of(pid)
    while todo:
        kid = todo.pop()
        out.append(kid)
        todo += children_of(kid)
    return out


def cpu_usage(pid: int) -> tuple[int, int] | None:
    """(CPU ns, voluntary context switches) summed over the threads of one process, or
    None when it is gone. A voluntary switch is the process going to sleep (in
    epoll_wait, mostly): each one is a wakeup after it."""
    total = switches = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_bytes().split()[0])
            status = Path(f"/proc/{pid}/task/{tid}/status").read_bytes()
            at = status.index(b"voluntary_ctxt_switches:")
            switches += int(status[at + 24 : status.index(b"\n", at)])
        except (OSError, ValueError, IndexError):  # a thread that just ended
            continue
    return total, switches


def tree_usage(pid: int) -> tuple[int, int]:
    """(CPU ns, voluntary context switches) of `pid` and every live process below it."""
    ns = switches = 0
    for p in (pid, *descendants(pid)):
        usage = cpu_usage(p)
        if usage is not None:
            ns, switches = ns + usage[0], switches + usage[1]
    return ns, switches


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """RSS, PSS and USS (private clean + private dirty) of one process in KiB."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    vals: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            vals[name] = int(parts[0])
    return {"rss": vals.get("Rss", 0), "pss": vals.get("Pss", 0),
            "uss": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)}


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def _listening() -> dict[str, int]:
    """Socket inode -> port of every listening TCP socket (IPv4 and IPv6)."""
    out: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                cols = row.split()
                if cols[3] == "0A":  # LISTEN
                    out[f"socket:[{cols[9]}]"] = int(cols[1].rsplit(":", 1)[1], 16)
    return out


def _sockets(pid: int) -> set[str]:
    links = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return links


def listening_ports(pid: int) -> set[int]:
    """TCP ports that process `pid` listens on."""
    table = _listening()
    return {table[link] for link in _sockets(pid) if link in table}


def find_listener_pid(port: int) -> int | None:
    """The pid holding a listening TCP socket on `port` (same host only)."""
    inodes = {inode for inode, p in _listening().items() if p == port}
    if not inodes:
        return None
    found = [int(entry) for entry in os.listdir("/proc")
             if entry.isdigit() and _sockets(int(entry)) & inodes]
    return min(found) if found else None  # the parent: its sessions are forked later


@dataclass
class CpuSample:
    parent: float
    sessions: float  # live session processes (and below) plus those reaped by the parent
    reader: float = 0.0  # the live helpers (history reader, auth helper, fork server), spares
    # Voluntary context switches (sleeps, so wakeups) of the parent and of the live
    # sessions: a session reaped meanwhile takes its count with it.
    parent_wakeups: int = 0
    session_wakeups: int = 0


class ServerProbe:
    """CPU and memory of the server parent and all its session processes."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    def cpu(self) -> CpuSample | None:
        if self.pid is None:
            return None
        # Read the parent first: a child reaped after this is still counted live below.
        st, own = proc_stat(self.pid), cpu_usage(self.pid)
        if st is None or own is None:
            return None
        reaped = (st.cutime + st.cstime) / TICK
        live = reader = 0.0
        wakeups = 0
        for kid in children_of(self.pid):
            ns, switches = tree_usage(kid)
            # A spare counts with the helpers until it has a client: the adaptive pool
            # retires spares when arrivals stop (mid-phase), and a reaped process's CPU
            # comes back only as whole clock ticks in the parent's cutime, so counted as a
            # session a retired spare could make the sessions' share negative.
            if is_helper(kid) or is_spare(kid):
                reader += ns / 1e9
                kst = proc_stat(kid)  # and what the fork server's middle processes used
                reader += (kst.cutime + kst.cstime) / TICK if kst is not None else 0.0
            else:
                live += ns / 1e9
                wakeups += switches
        return CpuSample(own[0] / 1e9, reaped + live, reader, own[1], wakeups)

    def memory(self) -> dict[str, Any] | None:
        if self.pid is None:
            return None
        parent = smaps_rollup(self.pid)
        if parent is None:
            return None
        total = {"rss": 0, "pss": 0, "uss": 0}
        spares = {"rss": 0, "pss": 0, "uss": 0}
        n = n_spares = 0
        for kid in sessions_of(self.pid):
            m = smaps_rollup(kid)
            if m is None:
                continue
            into = total
            if is_spare(kid):  # waiting for a client: not a session yet
                into = spares
                n_spares += 1
            else:
                n += 1
            for k in into:
                into[k] += m[k]
        per = {k: round(v / n) for k, v in total.items()} if n else None
        everything = {k: total[k] + parent[k] for k in total}
        return {"unit": "KiB", "parent": parent, "sessions": n, "sessions_total": total,
                "spares": n_spares, "spares_total": spares,
                "per_session": per, "total": everything,
                "total_per_session": {k: round(v / n) for k, v in everything.items()}
                if n else None}

    def start_costs(self, before: set[int] | frozenset[int] = frozenset()
                    ) -> dict[str, Any] | None:
        """What a session process has cost by now, medians over the live ones but those
        in `before` (serving() before the phase): CPU (ms) and minor page faults
        (copy-on-write copies of pages it shared with the fork server above all, and new
        pages), in all and, for the spares still waiting, just to start. For a connect
        phase (sessions idle since their welcome) that is what a new session costs its
        process, and the spares' share of it; `cores` is what the server may run on."""
        if self.pid is None:
            return None
        costs: dict[bool, list[tuple[float, int]]] = {True: [], False: []}
        for kid in sessions_of(self.pid):
            usage, st = cpu_usage(kid), proc_stat(kid)
            if usage is not None and st is not None and kid not in before:
                costs[is_spare(kid)].append((usage[0] / 1e6, st.minflt))
        if not costs[False]:
            return None
        try:
            cores = len(os.sched_getaffinity(self.pid))
        except OSError:
            cores = os.cpu_count() or 1
        out: dict[str, Any] = {"sessions": len(costs[False]), "spares": len(costs[True]),
                               "cores": cores}
        for spare, label in ((False, "session"), (True, "spare")):
            if costs[spare]:
                out[f"{label}_cpu_ms"] = round(statistics.median(c for c, _f in costs[spare]), 3)
                out[f"{label}_faults"] = round(statistics.median(f for _c, f in costs[spare]))
        return out

    def serving(self) -> set[int]:
        """The session processes serving a client now (spares not counted)."""
        return set() if self.pid is None else \
            {kid for kid in sessions_of(self.pid) if not is_spare(kid)}

    def fds(self) -> int | None:
        return None if self.pid is None else open_fds(self.pid)

    def session_count(self) -> int | None:
        """Session processes serving a client (spares not counted)."""
        return None if self.pid is None else len(self.serving())

    def spare_count(self) -> int | None:
        """Spare session processes waiting for a client."""
        return None if self.pid is None else sum(map(is_spare, sessions_of(self.pid)))


def own_cpu() -> float:
    """This process's CPU time in seconds (the load generator's)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime
