"""The parent's listening sockets and the open-file limit they and the sessions need."""

from __future__ import annotations

import errno
import logging
import resource
import socket

from chatd.config import Config

log = logging.getLogger("chatd.master")
DEFER_ACCEPT = 1  # seconds (Linux rounds up to a SYN-ACK retransmission, the first at 1 s)
FD_RESERVE = 64  # listeners, database, wakeup pipe, logs, and room to breathe


def listen(config: Config, port: int, message: str = "listening on %s:%d",
           setting: str = "--port") -> list[socket.socket]:
    """Bind every address `config.host` resolves to, on `port` (0: the first one's
    ephemeral port for all); non-blocking sockets, each logged with `message`. A port
    that cannot be bound stops start-up, naming it and its `setting`."""
    infos = socket.getaddrinfo(config.host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    listeners: list[socket.socket] = []
    # IPv6-only when an IPv4 listener shares the port; else `::` also takes IPv4 clients.
    v6only = int(any(info[0] == socket.AF_INET for info in infos))
    for family, stype, proto, _name, addr in infos:
        sock = socket.socket(family, stype, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        try:
            sock.bind((addr[0], port, *addr[2:]))
        except OSError as exc:
            sock.close()
            if listeners and exc.errno == errno.EADDRINUSE:
                continue
            raise OSError(exc.errno, f"{exc.strerror}: port {port} ({setting})") from None
        sock.listen(1024)
        # The kernel holds a connection back until its first bytes (the hello) arrive,
        # or about a second has passed: one that connects and resets without a word
        # never reaches accept(), let alone fork() (issue 8: connection churn).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
        sock.setblocking(False)
        port = sock.getsockname()[1]  # later families share the first one's port
        listeners.append(sock)
        host = str(addr[0])
        shown = f"[{host}]" if ":" in host else host
        log.info(message, shown, port)
    return listeners


def raise_fd_limit(config: Config) -> None:
    """One parent fd per session: make room for the cap, or refuse (SystemExit)."""
    need = config.max_sessions + max(config.spare_children, config.spare_max) + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard != resource.RLIM_INFINITY and hard < need:
        raise SystemExit(f"chatd: max_sessions={config.max_sessions} needs {need} open "
                         f"files but the hard limit is {hard}; lower limits.max_sessions "
                         f"or raise the limit (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    log.info("raised the open-file limit from %d to %d", soft, need)
