"""The session process: a worker object between one client socket and the broker.

Like gunicorn's Worker, a `SessionWorker` is built in the parent before the fork,
does its fork hygiene in `init_process()` after it, then `run()`s its loop and owns its
exit: `main()` ends the process with one of the named EXIT_* statuses, which the
parent's SIGCHLD handler turns back into words (`exit_reason`).

Bytes from the client go through `Session`; RAW envelopes from the parent are
forwarded to the client as they are. Output towards the client is a list of
whole-frame chunks sent with one sendmsg() per wakeup.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # (no stubs)
import gc
import logging
import os
import resource
import select
import signal
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import NoReturn

from chatd import channel, logsetup, orphan, sandbox, tls
from chatd.channel import CTRL, EnvelopeReader, decode_control
from chatd.config import Config
from chatd.outbox import recv, tune_client_socket
from chatd.sessionloop import Loop, ResourceLimit

log = logging.getLogger("chatd.session")
CPU_GRACE = 5  # CPU seconds between SIGXCPU and the kernel's SIGKILL
NAME = "chatd-session"  # a session process's name (/proc/PID/comm)
SPARE_NAME = "chatd-spare"  # and a spare's, until it is handed a client
Envelopes = list[tuple[int, memoryview]]

# Exit statuses, so that the parent can log why a session process ended.
# A session that ends by the rules exits 0 whatever ended it (the client, a limit the
# client was told of, a broker that never came back): the parent logged the why already.
EXIT_OK = 0  # the session ended, or a spare was retired
EXIT_RESOURCE_LIMIT = 1  # over max_memory_mb or max_cpu_seconds
EXIT_CRASHED = 2  # an exception escaped the loop: a bug
EXIT_BOOT_ERROR = 3  # fork hygiene failed: it never served its client
EXIT_REASONS = {EXIT_OK: "", EXIT_RESOURCE_LIMIT: "over a resource limit",
                EXIT_CRASHED: "crashed", EXIT_BOOT_ERROR: "could not start"}


def exit_reason(status: int) -> str:
    """A wait() status in words: "exit status 1 (over a resource limit)"."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    code = os.WEXITSTATUS(status)
    why = EXIT_REASONS.get(code)
    return f"exit status {code}" + (f" ({why})" if why else "")


def close_inherited(keep: set[int]) -> None:
    """Close every fd the parent left us except `keep` (listener, other channels, db).

    closerange() is one close_range(2) per gap, where a loop over /proc/self/fd cost a
    system call per fd: with thousands of sessions open that was most of a fork's cost.
    """
    low = 0
    for fd in sorted(keep):
        if fd > low:
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, max(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0]))


def _on_sigxcpu(signum: int, frame: object) -> None:
    # Raising (not recording) is deliberate: a process over its CPU budget may be stuck
    # in a loop that never returns to ours. The hard limit still kills it if this fails.
    raise ResourceLimit("max_cpu_seconds")


def prepare(config: Config, keep: set[int], label: str) -> socket.socket | None:
    """Fork hygiene, done first thing in the new process (SessionWorker.init_process);
    returns the socket a next parent would find us on (chatd/orphan.py), if any."""
    orphan.forget_key()  # the parent's: never a session's
    sandbox.name_process(NAME if label != "spare" else SPARE_NAME)
    # Whatever the parent built is ours only to read: keep the collector off its pages.
    gc.freeze()
    close_inherited(keep | {0, 1, 2})
    # (_signal: the signal module's wrappers make enums of every argument and result,
    # which costs each new process pages of the parent's heap)
    _signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        _signal.signal(sig, _signal.SIG_DFL)
    # The parent orchestrates shutdown; a terminal's ^C or hangup is for it alone.
    for sig in (signal.SIGINT, signal.SIGHUP):
        _signal.signal(sig, _signal.SIG_IGN)
    _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
    logsetup.set_session(label)
    limits = [(resource.RLIMIT_NOFILE, config.max_files)]
    if config.max_memory_mb:
        limits.append((resource.RLIMIT_AS, config.max_memory_mb << 20))
    for which, value in limits:
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, hard))
    if config.max_cpu_seconds:
        # The soft limit sends SIGXCPU, which ends the session with an error frame; the
        # kernel kills at the hard limit, CPU_GRACE seconds later, if that does not work.
        _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = config.max_cpu_seconds
        cap = soft + CPU_GRACE
        if hard != resource.RLIM_INFINITY:
            soft, cap = min(soft, hard), min(cap, hard)
        _signal.signal(_signal.SIGXCPU, _on_sigxcpu)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cap))
    # Made while we may still make sockets; accept() works on it (and only it) after.
    listener = orphan.listen(config.data_dir)
    # Last, before the first client byte: the unprivileged user, then the seccomp filter.
    sandbox.apply(config)
    return listener


@dataclass
class Handed:
    """What a spare process is handed: its client and what followed on the channel."""

    sock: socket.socket
    token: str
    ip: str
    tls: bool  # it came to the TLS listener: the handshake comes first
    irc: bool  # it came to the IRC listener: the client speaks IRC
    reader: EnvelopeReader = field(default_factory=EnvelopeReader)
    pending: Envelopes = field(default_factory=list)


class SessionWorker:
    """One session process. `conn` is None for a spare, which waits to be handed one.

    `token` is the session's token (what the client may resume with); the parent's
    number for it (`sid`) never reaches this process.
    """

    def __init__(self, config: Config, conn: socket.socket | None = None,
                 token: str = "", ip: str = "", over_tls: bool = False,
                 tls_context: ssl.SSLContext | None = None, irc: bool = False) -> None:
        self.config = config
        self.conn, self.token, self.ip, self.over_tls = conn, token, ip, over_tls
        self.irc = irc  # the client came to the IRC listener
        self.tls_context = tls_context  # for a client of the TLS listener
        self.chan: socket.socket | None = None  # set by the parent's spawn, before fork
        self.reader = EnvelopeReader()
        self.pending: Envelopes = []
        self.adoption: orphan.Adoption | None = None

    # ---- the process's life ----

    def main(self) -> NoReturn:
        """The forked process's whole life; never returns."""
        status = EXIT_CRASHED
        try:
            try:
                self.init_process()
            except Exception:
                log.exception("session process could not start")
                status = EXIT_BOOT_ERROR
            else:
                status = self.run()
        except BaseException:
            log.exception("session crashed")
        finally:
            logging.shutdown()
            os._exit(status)

    def init_process(self) -> None:
        """Fork hygiene, first thing after the fork."""
        assert self.chan is not None
        keep = {self.chan.fileno()} | ({self.conn.fileno()} if self.conn else set())
        parent_uid = sandbox.server_uid()  # (not ours: the sandbox may switch users)
        listener = prepare(self.config, keep, self.token or "spare")
        if listener is not None:
            self.adoption = orphan.Adoption(listener, parent_uid)

    def run(self) -> int:
        """Wait for a client if we are a spare, then serve it; returns the exit status."""
        assert self.chan is not None
        if self.conn is None:
            handed = wait_for_client(self.chan)
            if handed is None:  # the parent retired us or went away
                return EXIT_OK
            self.conn, self.token, self.ip, self.over_tls = (handed.sock, handed.token,
                                                             handed.ip, handed.tls)
            self.reader, self.pending, self.irc = handed.reader, handed.pending, handed.irc
            logsetup.set_session(self.token)
            sandbox.name_process(NAME)
        started = time.monotonic()
        client: socket.socket | tls.TLSStream = self.conn
        if self.over_tls and self.tls_context is not None:
            stream = self.handshake(started + self.config.handshake_timeout)
            if stream is None:
                self.conn.close()
                return EXIT_OK
            client = stream
        if self.adoption is not None:
            self.adoption.token, self.adoption.ip = self.token, self.ip
        return Loop(client, self.chan, self.config, self.ip, self.reader, self.pending,
                    started, self.irc, self.adoption).serve()

    def handshake(self, deadline: float) -> tls.TLSStream | None:
        """The server side of the TLS handshake, first of all, within handshake_timeout
        (which then also bounds the hello). Returns the stream, or None if the handshake
        failed or the parent meanwhile closed the channel or told us to close; envelopes
        read meanwhile join `pending`."""
        assert self.conn is not None and self.chan is not None and self.tls_context
        tune_client_socket(self.conn, self.config)
        shake = tls.ServerHandshake(self.tls_context, self.conn, deadline)
        poller = select.poll()
        poller.register(self.chan, select.POLLIN)
        while not any(kind == CTRL and channel.is_close(decode_control(body))
                      for kind, body in self.pending):
            try:
                want = shake.step(time.monotonic())
            except tls.HandshakeFailed as exc:
                log.info("TLS handshake failed: %s", exc)
                return None
            if not want:
                stream = shake.stream()
                log.debug("TLS handshake done: %s", stream.version())
                return stream
            poller.register(self.conn, want)
            for fd, _ev in poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
                if fd == self.chan.fileno():
                    data = recv(self.chan)
                    if data == b"":
                        return None  # the parent is gone: no session to start
                    self.pending += self.reader.feed(data or b"")
        return None


def wait_for_client(chan: socket.socket) -> Handed | None:
    """A spare session process blocks here until the parent hands it a client socket.

    Returns the client socket, its token, its address and the channel's reader with the
    envelopes that followed the hand-over; None when the parent closed the channel
    instead (retired, or gone).
    """
    reader = EnvelopeReader()
    fds: list[int] = []
    while True:
        try:
            data, got, _flags, _addr = socket.recv_fds(chan, 65536, 4)
        except InterruptedError:
            continue
        except OSError:
            data, got = b"", []
        fds += got
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        envelopes = reader.feed(data)
        for i, (kind, body) in enumerate(envelopes):
            ctrl = decode_control(body) if kind == CTRL else {}
            if ctrl.get("c") == channel.CLIENT and fds:
                for extra in fds[1:]:
                    os.close(extra)
                sock = socket.socket(fileno=fds[0])
                return Handed(sock, str(ctrl["token"]), str(ctrl["ip"]),
                              bool(ctrl.get("tls")), bool(ctrl.get("irc")), reader,
                              envelopes[i + 1 :])
