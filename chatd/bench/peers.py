"""The IRC servers `chatd bench irc` compares: chatd's IRC port, ngIRCd, InspIRCd.

Each is started by the benchmark itself on a free loopback port with a minimal config
written into a temporary directory (nothing of the system's configuration is read or
changed), with its flood protection and per-address limits lifted as far as its config
allows (what is measured is relaying, as for chatd's rate limits), and stopped with
SIGTERM. A server whose program is not installed is skipped with a line saying so: on
Debian, `apt-get install ngircd inspircd` (neither needs to run as a service).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .probes import listening_ports
from .server import bench_settings, spawn, wait_until

SBIN = ("/usr/sbin", "/usr/local/sbin")  # where Debian puts both, often not on PATH


@dataclass
class Running:
    """One started server: its pid (the root of the tree the probes watch) and port."""

    name: str
    pid: int
    port: int
    stop: Callable[[], object] = field(repr=False)


def free_port() -> int:
    """A loopback port free right now (the servers that cannot pick one want a number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find(program: str) -> str | None:
    """The program's path: as given if it has a slash, else from PATH or the sbin dirs."""
    if os.sep in program:
        return program if os.access(program, os.X_OK) else None
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN])
    return shutil.which(program, path=path)


def start_chatd(tmp: Path, clients: int) -> Running:
    """chatd with its IRC listener on, rate limits lifted as for `chatd bench`."""
    port = free_port()
    server = spawn(bench_settings(clients, {"irc": {"port": port}}), tmp)
    try:
        wait_until(lambda: port in listening_ports(server.pid), 20.0,
                   message="chatd's IRC listener")
    except TimeoutError:
        server.stop()
        raise
    return Running("chatd", server.pid, port,
                   lambda: server.stop(20.0, wait_sessions=30.0))


NGIRCD = """[Global]
    Name = bench.ngircd
    Info = chatd bench
    Listen = 127.0.0.1
    Ports = {port}
    MotdPhrase = chatd bench
    PidFile = {tmp}/ngircd.pid
[Limits]
    MaxConnections = 0
    MaxConnectionsIP = 0
    MaxJoins = 0
    MaxNickLength = 30
    PingTimeout = 3600
    PongTimeout = 3600
    MaxPenaltyTime = 0
[Options]
    DNS = no
    Ident = no
    PAM = no
"""

INSPIRCD = """<server name="bench.inspircd" description="chatd bench" network="bench">
<admin name="bench" nick="bench" email="bench@localhost">
<bind address="127.0.0.1" port="{port}" type="clients">
<pid file="{tmp}/inspircd.pid">
<path configdir="{tmp}" datadir="{tmp}" logdir="{tmp}">
<connect allow="*" maxchans="20" timeout="3600" pingfreq="3600" recvq="67108864"
  sendq="67108864" softsendq="67108864" hardsendq="67108864" threshold="1000000000"
  commandrate="1000000000" fakelag="off" localmax="1000000" globalmax="1000000"
  limit="1000000" useident="no" resolvehostnames="no">
<performance clonesonconnect="no" softlimit="1000000" somaxconn="1024" nouserdns="yes">
<limits maxnick="30" maxchan="64">
"""


def start_program(name: str, tmp: Path, conf: str, argv: list[str]) -> Running:
    """Write the config, start the program in the foreground, wait for its listener."""
    port = free_port()
    (tmp / "bench.conf").write_text(conf.format(port=port, tmp=tmp))
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp)
    log.close()

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by its handle
                proc.wait(5)

    try:
        wait_until(lambda: proc.poll() is not None or port in listening_ports(proc.pid),
                   20.0, message=f"{name}'s listener")
    except TimeoutError:
        stop()
        raise
    if proc.poll() is not None:
        tail = (tmp / "server.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")
    return Running(name, proc.pid, port, stop)


def start_ngircd(tmp: Path, program: str) -> Running:
    return start_program("ngIRCd", tmp, NGIRCD,
                         [program, "--nodaemon", "--config", str(tmp / "bench.conf")])


def start_inspircd(tmp: Path, program: str) -> Running:
    root = ["--runasroot"] if os.geteuid() == 0 else []  # (it refuses root without it)
    return start_program("InspIRCd", tmp, INSPIRCD,
                         [program, "--nofork", *root, f"--config={tmp / 'bench.conf'}"])


STARTERS = {"ngircd": start_ngircd, "inspircd": start_inspircd}
NAMES = ("chatd", *STARTERS)


def missing(name: str, program: str = "") -> str | None:
    """Why server `name` (one of NAMES) is skipped, or None when it can be started."""
    if name == "chatd" or find(program or name) is not None:
        return None
    return (f"{name} is not installed: skipped (no {program or name}; on Debian: "
            f"apt-get install {name})")


def start(name: str, tmp: Path, clients: int, program: str = "") -> Running:
    """Start server `name` (`program`: its executable, by default its name) in `tmp`."""
    if name == "chatd":
        return start_chatd(tmp, clients)
    path = find(program or name)
    assert path is not None, "check missing() first"
    return STARTERS[name](tmp, path)
