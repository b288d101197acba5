"""`chatd bench floor`: what the design's floor is on this machine, and chatd against it.

chatd relays every delivery through the member's own process: the parent writes the frame
to the session's channel, the session wakes in epoll_wait, reads it and sends it to its
client. The least that can cost is a process that does exactly that and nothing else. This
measures it here, with the shape of `chatd bench steady` (100 members, 200 messages/s):

- a Python relay, forked from this process: epoll -> recv -> send, in a loop;
- the same few lines in C, built with the system compiler (`cc`) into a temporary
  directory, as the lower bound no Python code can beat ("no compiler" when none);
- the driver's side, one send() per member per message: the parent's floor;

then runs `chatd bench steady` and `chatd bench burst` as they are, alternately with the
floors, `--rounds` times, and reports the medians: the session loop's and the parent's CPU
per delivery against the floors, and the wakeups per message (voluntary context switches
of the sessions, from /proc) in both scenarios. On a machine shared with other work the
figures are noisy: compare within a run, never across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from .load import percentiles
from .probes import cpu_usage
from .report import target, verdicts

RELAY_C = r"""
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
    int chan = atoi(argv[1]), sock = atoi(argv[2]), ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = chan}, got;
    static char buf[65536];
    epoll_ctl(ep, EPOLL_CTL_ADD, chan, &ev);
    for (;;) {
        if (epoll_wait(ep, &got, 1, -1) < 1) continue;
        ssize_t n = recv(chan, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) return 0;
        if (n > 0) send(sock, buf, n, 0);
    }
}
"""
FRAME = 90  # bytes: about a chatd delivery frame of a short chat line


def python_relay(chan: socket.socket, sock: socket.socket) -> NoReturn:
    """The Python floor: a forked process that relays its channel to its client."""
    try:
        ep = select.epoll(1)
        ep.register(chan.fileno(), select.EPOLLIN)
        # Into one reused buffer: recv(n) would malloc (above 128 KiB: mmap) n bytes and
        # shrink them on every call, which costs more than the rest of the wakeup.
        buf = bytearray(65536)
        view = memoryview(buf)
        recv_into, send, poll = chan.recv_into, sock.send, ep.poll
        while True:
            poll()
            size = recv_into(buf, 0, socket.MSG_DONTWAIT)
            if not size:
                break
            send(view[:size])
    finally:
        os._exit(0)


def build_c(tmp: Path) -> Path | None:
    """The C relay built with the system compiler, or None if there is none (or it fails)."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None
    src = tmp / "relay.c"
    src.write_text(RELAY_C)
    done = subprocess.run([cc, "-O2", "-o", str(tmp / "relay"), str(src)],
                          capture_output=True)
    return tmp / "relay" if done.returncode == 0 else None


class Relays:
    """`members` relay processes, each between a channel from us and a TCP client of ours."""

    def __init__(self, members: int, binary: Path | None) -> None:
        self.pids: list[int] = []
        self.chans: list[socket.socket] = []
        self.clients: list[socket.socket] = []
        listener = socket.create_server(("127.0.0.1", 0))
        try:
            for _ in range(members):
                client = socket.create_connection(listener.getsockname())
                conn, _addr = listener.accept()
                for s in (client, conn):
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                self.pids.append(self._start(binary, theirs, conn))
                theirs.close()
                conn.close()
                client.setblocking(False)
                self.chans.append(ours)
                self.clients.append(client)
        finally:
            listener.close()

    @staticmethod
    def _start(binary: Path | None, chan: socket.socket, conn: socket.socket) -> int:
        if binary is not None:
            fds = (chan.fileno(), conn.fileno())
            proc = subprocess.Popen([str(binary), *map(str, fds)], pass_fds=fds)
            return proc.pid
        pid = os.fork()
        if pid == 0:
            python_relay(chan, conn)
        return pid

    def usage(self) -> tuple[int, int]:
        ns = switches = 0
        for pid in self.pids:
            got = cpu_usage(pid)
            if got is not None:
                ns, switches = ns + got[0], switches + got[1]
        return ns, switches

    def close(self) -> None:
        for s in self.chans + self.clients:
            s.close()
        for pid in self.pids:  # our own children, by pid
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def drive(relays: Relays, messages: int, rate: float, timeout: float) -> dict[str, Any]:
    """`messages` frames at `rate`/s to every relay; CPU, wakeups and latency per delivery."""
    frame = b"x" * FRAME
    members = len(relays.chans)
    clients = {c.fileno(): c for c in relays.clients}
    got = dict.fromkeys(clients, 0)  # bytes each client has received
    ep = select.epoll(members)
    for fd in clients:
        ep.register(fd, select.EPOLLIN)
    sent_at: list[int] = []
    latencies: list[int] = []
    send_ns = received = 0
    cpu0, switches0 = relays.usage()
    t0 = time.monotonic()
    deadline = t0 + messages / rate + timeout
    while received < messages * members and time.monotonic() < deadline:
        timeout_s = deadline - time.monotonic()
        if len(sent_at) < messages:
            due = t0 + len(sent_at) / rate
            if time.monotonic() >= due:
                sent_at.append(time.monotonic_ns())
                c0 = time.thread_time_ns()
                for chan in relays.chans:
                    chan.send(frame)
                send_ns += time.thread_time_ns() - c0
                continue
            timeout_s = due - time.monotonic()
        for fd, _ev in ep.poll(max(0.0, timeout_s)):
            now = time.monotonic_ns()
            before = got[fd] // FRAME
            got[fd] += len(clients[fd].recv(65536))
            for k in range(before, got[fd] // FRAME):
                latencies.append(now - sent_at[k])
                received += 1
    cpu1, switches1 = relays.usage()
    ep.close()
    deliveries = max(1, received)
    return {"deliveries": received, "expected": messages * members,
            "relay_us_per_delivery": round((cpu1 - cpu0) / 1e3 / deliveries, 2),
            "send_us_per_delivery": round(send_ns / 1e3 / deliveries, 2),
            "wakeups_per_delivery": round((switches1 - switches0) / deliveries, 2),
            "latency_ms": percentiles(latencies)}


def floor_run(members: int, messages: int, rate: float, binary: Path | None,
              timeout: float) -> dict[str, Any]:
    relays = Relays(members, binary)
    try:
        return drive(relays, messages, rate, timeout)
    finally:
        relays.close()


def chatd_run(scenario: str, opts: argparse.Namespace) -> dict[str, Any] | None:
    """One `chatd bench SCENARIO` run of the same shape; its deliver phase, or None."""
    senders = 10
    cmd = [sys.executable, "-m", "chatd", "bench", scenario, "--json", "--quiet",
           "--clients", str(opts.members), "--senders", str(senders),
           "--messages", str(max(1, opts.messages // senders)), *opts.extra]
    if scenario == "steady":
        cmd += ["--rate", f"{opts.rate:g}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        print(f"chatd bench floor: {' '.join(cmd[2:])} failed:\n{done.stderr[-2000:]}",
              file=sys.stderr)
        return None
    phases = [ph for ph in report["phases"] if ph["phase"] == "deliver"]
    return phases[0] if phases else None


def median(values: list[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return round(statistics.median(clean), 3) if clean else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd bench floor", description="Measure a minimal forked relay (Python, and "
        "C if a compiler is present) per wakeup on this machine, and chatd's session loop "
        "and parent per delivery against it (steady and burst, alternately, medians).")
    parser.add_argument("--members", type=int, default=100, help="relays / room members")
    parser.add_argument("--messages", type=int, default=1000, help="messages per run")
    parser.add_argument("--rate", type=float, default=200.0, help="messages/s (steady)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default 3)")
    parser.add_argument("--no-chatd", action="store_true", help="measure the floors only")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("extra", nargs="*", help="after --: options for each chatd run")
    return parser


def main(argv: list[str]) -> int:
    opts = build_parser().parse_args(argv)
    rows: dict[str, list[dict[str, Any]]] = {"python": [], "c": [], "steady": [], "burst": []}
    with tempfile.TemporaryDirectory(prefix="chatd-floor-") as tmp:
        binary = build_c(Path(tmp))
        for _ in range(opts.rounds):  # interleaved: the machine's mood hits all alike
            rows["python"].append(floor_run(opts.members, opts.messages, opts.rate, None,
                                            opts.timeout))
            if binary is not None:
                rows["c"].append(floor_run(opts.members, opts.messages, opts.rate, binary,
                                           opts.timeout))
            if not opts.no_chatd:
                for scenario in ("steady", "burst"):
                    ph = chatd_run(scenario, opts)
                    if ph is not None:
                        rows[scenario].append(ph)
    out = summarize(rows, opts, binary is not None)
    print(json.dumps(out, indent=2) if opts.json else render(out))
    return 0


def summarize(rows: dict[str, list[dict[str, Any]]], opts: argparse.Namespace,
              compiler: bool) -> dict[str, Any]:
    def med(kind: str, key: str, sub: str | None = None) -> float | None:
        return median([(r[key][sub] if sub else r.get(key)) for r in rows[kind]])

    out: dict[str, Any] = {
        "shape": {"members": opts.members, "messages": opts.messages, "rate": opts.rate,
                  "rounds": opts.rounds},
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                    "load": os.getloadavg()[0]},
        "compiler": compiler,
        "floor_python": {k: med("python", k) for k in
                         ("relay_us_per_delivery", "send_us_per_delivery",
                          "wakeups_per_delivery")},
        "floor_c": {k: med("c", k) for k in ("relay_us_per_delivery",
                                              "wakeups_per_delivery")} if compiler else None,
        "floor_latency_ms": {q: med("python", "latency_ms", q) for q in ("p50", "p99")},
    }
    for scenario in ("steady", "burst"):
        if rows[scenario]:
            out[scenario] = {k: med(scenario, k) for k in (
                "server_cpu_us_per_delivery", "session_cpu_us_per_delivery",
                "parent_cpu_us_per_delivery", "session_wakeups_per_message",
                "parent_wakeups_per_message", "deliveries_per_second")}
            out[scenario]["latency_ms"] = {q: med(scenario, "latency_ms", q)
                                           for q in ("p50", "p99")}
    py = out["floor_python"]["relay_us_per_delivery"]
    send = out["floor_python"]["send_us_per_delivery"]
    # What a delivery costs the design at least: a relay's wakeup and the sender's send.
    design = round(py + send, 3) if py and send else None
    out["floor_design_us_per_delivery"] = design
    targets = []
    if "steady" in out and py and design and out["steady"]["server_cpu_us_per_delivery"]:
        # The whole server (parent and sessions) against one relay's wakeup (issue 15).
        total = out["steady"]["server_cpu_us_per_delivery"]
        targets.append(target("steady server CPU per delivery vs the Python floor",
                              round(total / py, 2), 1.2, "x", True,
                              f"the design's own floor (the relay's wakeup and the "
                              f"sender's send) is {design / py:.2f}x; chatd is "
                              f"{total / design:.2f}x that: its session loop and parent "
                              "do more than relay and send"))
    out["targets"] = targets
    return out


def render(out: dict[str, Any]) -> str:
    m, fp, fc = out["machine"], out["floor_python"], out["floor_c"]
    sh = out["shape"]
    lines = [f"chatd bench floor - {sh['members']} members, {sh['messages']} messages at "
             f"{sh['rate']:g}/s, medians of {sh['rounds']} interleaved rounds",
             f"machine: {m['cpus']} CPUs, Python {m['python']}, load average {m['load']:.1f} "
             "(a loaded machine inflates every figure alike)",
             f"floor, per wakeup (epoll -> recv -> send): Python {fp['relay_us_per_delivery']}"
             f" us, C " + (f"{fc['relay_us_per_delivery']} us" if fc else "- (no compiler)")
             + f"; wakeups per delivery {fp['wakeups_per_delivery']}",
             f"floor, sender side (one send per member): {fp['send_us_per_delivery']} us "
             f"per delivery; latency p50 {out['floor_latency_ms']['p50']} ms, p99 "
             f"{out['floor_latency_ms']['p99']} ms",
             f"floor of the design (a relay's wakeup and the sender's send): "
             f"{out['floor_design_us_per_delivery']} us per delivery"]
    for scenario in ("steady", "burst"):
        c = out.get(scenario)
        if not c:
            continue
        sess, parent = c["session_cpu_us_per_delivery"], c["parent_cpu_us_per_delivery"]
        lines.append(
            f"chatd {scenario}: {c['server_cpu_us_per_delivery']} us per delivery: sessions "
            f"{sess} us ({ratio(sess, fp['relay_us_per_delivery'])} the Python floor, "
            f"{ratio(sess, fc['relay_us_per_delivery'] if fc else None)} C), parent "
            f"{parent} us ({ratio(parent, fp['send_us_per_delivery'])} the send floor); "
            f"in all {ratio(c['server_cpu_us_per_delivery'], out['floor_design_us_per_delivery'])}"
            " the design's floor")
        lines.append(
            f"{'':<6} wakeups per message: sessions {c['session_wakeups_per_message']}, "
            f"parent {c['parent_wakeups_per_message']}; latency p50 {c['latency_ms']['p50']}"
            f" ms, p99 {c['latency_ms']['p99']} ms; {c['deliveries_per_second']:,.0f} "
            "deliveries/s")
    lines += verdicts(out["targets"])
    return "\n".join(lines)
