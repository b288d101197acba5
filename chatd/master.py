"""The parent process: accept, fork, reap, route. A thin loop around the Broker.

Single-threaded. Signal handlers only wake the loop (signal.set_wakeup_fd);
the loop dispatches handle_<signal>() the way gunicorn's Arbiter does. The
parent never reads a byte from a client: it reads canonical requests from its
sessions' channels and writes to them without ever blocking.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import resource
import secrets
import selectors
import signal
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from chatd import channel, child, outbox, reader, tls
from chatd.admission import SourceRates, source_of
from chatd.broker import Broker
from chatd.config import Config, ConfigError, diff, load_file
from chatd.lifecycle import Lifecycle
from chatd.protocol import FrameDecoder, ProtocolError, error_frame
from chatd.ratelimit import TokenBucket
from chatd.retention import Retention
from chatd.session import QUIT_REASONS
from chatd.store import Store

log = logging.getLogger("chatd.master")
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ACCEPT_BATCH = 64
DEFER_ACCEPT = 1  # seconds (Linux rounds up to a SYN-ACK retransmission, the first at 1 s)
# Forks per turn of the loop: each stalls routing for milliseconds, so between a few of
# them the loop routes what the sessions it already has are waiting for.
FORKS_PER_TURN = 4
BUSY_LOG_EVERY = 10.0  # seconds between log lines about refusals over session_rate
REFILL_QUIET = 0.05  # seconds without a new client before spare processes are forked
FD_RESERVE = 64  # listeners, database, wakeup pipe, logs, and room to breathe


@dataclass(eq=False)
class Child:
    pid: int
    sid: int
    chan: socket.socket
    token: str  # the session's token (the broker's Member.session); `sid` is its number
    ip: str
    decoder: FrameDecoder
    source: str = ""  # what the per-source caps count (admission.source_of)
    out: outbox.Outbox = field(default_factory=outbox.Outbox)
    closing: bool = False  # told to close: it gets nothing more from the broker
    attached: bool = True
    handler: object = None  # the selector callback bound to this child
    writing: bool = False  # its channel is registered for EVENT_WRITE too


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Master:
    def __init__(self, config: Config) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(config.data_dir / "history.sqlite3")
        self.broker = Broker(self.store, config)
        # The TLS context sessions on tls.port get (a bad certificate stops start-up).
        self.tls = tls.ServerTLS(config.values, config.config_file) if config.tls_cert else None
        self.retention = Retention()
        # History reads run in a helper process, never on this loop (chatd/reader.py).
        self.reader = reader.ReaderLink(config.max_frame)
        self.reader_restart_at: float | None = 0.0  # when to start it; None while it runs
        self._reader_writing = False  # its channel is registered for EVENT_WRITE too
        self.old_readers: set[int] = set()  # readers that are gone but not yet reaped
        self.sel = selectors.DefaultSelector()
        self.listeners: list[socket.socket] = []
        self.children: dict[int, Child] = {}  # by pid
        # Pre-forked session processes waiting for a client: pid -> their channel.
        self.spares: dict[int, socket.socket] = {}
        # Told to exit, holding no slot, not yet reaped: retired spares, killed sessions.
        self.retiring: set[int] = set()
        # pid -> its kill deadline: every process told to end, until it is reaped.
        self.kill_deadline: dict[int, float] = {}
        self.last_accept = 0.0
        self.by_sid: dict[int, Child] = {}
        self.per_ip: dict[str, int] = {}  # sessions by source (admission.source_of)
        self.sources = SourceRates(config.conn_rate_per_ip, config.conn_burst_per_ip,
                                   config.conn_sources)
        self.new_sessions = TokenBucket(config.session_rate, config.session_burst,
                                        time.monotonic())
        self.busy_refused = 0  # refusals over session_rate not yet logged
        self.busy_logged = -BUSY_LOG_EVERY
        self.next_sid = 1
        self.life = Lifecycle()  # running, stopping, killing, stopped (chatd/lifecycle.py)
        self.wake_r, self.wake_w = socket.socketpair()

    # ---- start-up ----

    def listen(self) -> list[tuple[str, int]]:
        self._raise_fd_limit()
        cfg = self.config
        bound: list[tuple[str, int]] = []
        if self.tls is None or cfg.tls_plain:
            bound += self._bind(cfg.port, self._accept, "listening on %s:%d")
        if self.tls is not None:
            bound += self._bind(cfg.tls_port, self._accept_tls, "listening for TLS on %s:%d")
        return bound

    def _bind(self, port: int, accept: Callable[[socket.socket, int], None],
              message: str) -> list[tuple[str, int]]:
        """Listen on `port` at --host (each address it resolves to); `accept` is called
        when a listener is ready."""
        cfg = self.config
        infos = socket.getaddrinfo(cfg.host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        bound: list[tuple[str, int]] = []
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
                if bound and exc.errno == errno.EADDRINUSE:
                    continue
                raise
            sock.listen(1024)
            # The kernel holds a connection back until its first bytes (the hello) arrive,
            # or about a second has passed: one that connects and resets without a word
            # never reaches accept(), let alone fork() (issue 8: connection churn).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT)
            sock.setblocking(False)
            port = sock.getsockname()[1]  # later families share the first one's port
            self.listeners.append(sock)
            self.sel.register(sock, selectors.EVENT_READ, accept)
            host = addr[0]
            shown = f"[{host}]" if ":" in host else host
            log.info(message, shown, port)
            bound.append((host, port))
        return bound

    def _raise_fd_limit(self, config: Config | None = None) -> None:
        """One parent fd per session: make room for the cap, or refuse (SystemExit)."""
        config = config or self.config
        need = config.max_sessions + config.spare_children + FD_RESERVE
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft >= need:
            return
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"chatd: max_sessions={config.max_sessions} needs {need} open "
                             f"files but the hard limit is {hard}; lower limits.max_sessions "
                             f"or raise the limit (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        log.info("raised the open-file limit from %d to %d", soft, need)

    # ---- the loop ----

    def run(self) -> int:
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        for sig in SIGNALS:
            signal.signal(sig, _note_signal)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._signals)
        gc.freeze()  # what exists now is shared with every child; keep its pages clean
        self._start_reader()
        log.info("chatd %d ready (max_sessions=%d)", os.getpid(), self.config.max_sessions)
        while not self.life.stopped:
            running = self.life.running
            refill = running and len(self.spares) < self.config.spare_children
            now = time.monotonic()
            quiet = now - self.last_accept
            deadlines = [self.life.timeout(now), self.retention.timeout(self.config, now)]
            if refill:
                deadlines.append(max(0.0, REFILL_QUIET - quiet))
            if self.kill_deadline:
                deadlines.append(max(0.0, min(self.kill_deadline.values()) - now))
            if self.reader_restart_at is not None and running:
                deadlines.append(max(0.0, self.reader_restart_at - now))
            events = self.sel.select(min((d for d in deadlines if d is not None), default=None))
            for key, mask in events:
                key.data(key.fileobj, mask)
            if (self.reader_restart_at is not None and self.life.running
                    and time.monotonic() >= self.reader_restart_at):
                self._start_reader()
            self._route()
            # One small batch at most per iteration, after the routing it must not delay.
            self.retention.step(self.config, self.store, time.monotonic(), now_ms(),
                                self.broker.rooms)
            self.broker.history.pruned(self.store.pruned_through)  # memory follows disk
            # Only when idle: a fork stalls this loop for milliseconds, and a burst of
            # clients is better served by the spares left plus forking on accept.
            if refill and not events and quiet >= REFILL_QUIET:
                self._fork_spare()
            if self.kill_deadline:
                self._kill_overdue(time.monotonic())
            self.life.advance(time.monotonic(), self._processes())
        self.store.close()
        log.info("stopped")
        return 0

    def _processes(self) -> int:
        """Processes of ours not yet reaped: the parent stops only when none is left."""
        return (len(self.children) + len(self.spares) + len(self.retiring)
                + (self.reader.pid is not None) + len(self.old_readers))

    def _signals(self, sock: socket.socket, mask: int) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):  # each pending signal once, in order
            name = signal.Signals(signum).name
            getattr(self, f"handle_{name.lower()}")()

    def _route(self) -> None:
        """Hand the broker's output to the session channels (drain() has committed it:
        stored before anyone hears of it).

        Kicking a slow session makes it leave its rooms, which queues quit notices for
        the others: route again until the broker has nothing more to say.
        """
        while True:
            outbox = self.broker.drain()
            # drain() has committed: a read handed over now sees every message accepted
            # before it, and the broker never hands out a write that is rolled back.
            reads = self.broker.take_reads()
            if not outbox and not reads:
                break
            for sid, read in reads:
                self.reader.submit(sid, read)
            limit = self.config.child_queue
            # A room's members get the same frames: encode each distinct queue once.
            encoded: dict[object, bytes] = {}
            for sid, items in outbox.items():
                kid = self.by_sid.get(sid)
                if kid is None or kid.closing:
                    continue
                try:  # a queue holding a control (a dict) is unhashable: encode it alone
                    key = items[0] if len(items) == 1 else tuple(items)
                    data = encoded.get(key)
                    if data is None:
                        data = encoded[key] = channel.encode_items(items)
                except TypeError:
                    data = channel.encode_items(items)
                    if any(map(channel.is_close, items)):
                        self._doom(kid.pid)  # the broker ended it (a bug in a request)
                kid.out.add(data)
                self._flush(kid)  # child_queue bounds what stays queued, not one delivery
                if kid.out.size > limit:
                    self._kick(kid, "slow_consumer", "queue_limit", limit="child_queue")
                    self._flush(kid)
        self.reader.pump()
        self._reader_events()

    def _flush(self, kid: Child) -> None:
        try:
            kid.out.send(kid.chan)
        except OSError:  # the session process is gone; its channel's EOF cleans up
            kid.out.clear()
            return
        writing = bool(kid.out.chunks)
        if writing != kid.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.sel.modify(kid.chan, events, kid.handler)
            kid.writing = writing

    def _kick(self, kid: Child, code: str, why: str, limit: str | None = None) -> None:
        """Tell a session process to end with `code`; it gets nothing else from us."""
        log.warning("ending session %s (pid %d): %s", kid.token, kid.pid, why)
        if kid.attached:
            reason = QUIT_REASONS.get(code, code.replace("_", " "))
            self.broker.detach(kid.sid, reason, now_ms(), code=code)
            self.reader.drop(kid.sid)
            kid.attached = False
        kid.out.discard()
        kid.out.add(channel.control(channel.close(code, limit)))
        kid.closing = True
        self._doom(kid.pid)

    def _doom(self, pid: int) -> None:
        """Session `pid` was told to end (or has nothing left to do): kill it if it has not
        ended within keepalive.stop_timeout (a stopped or wedged process holds its slot)
        after the close_grace it may spend handing its client the last frames."""
        if pid in self.children:  # not reaped, so the pid is still ours to signal
            self.kill_deadline.setdefault(pid, time.monotonic() + self._stop_time())

    def _stop_time(self) -> float:
        return self.config.close_grace + self.config.stop_timeout

    def _kill_overdue(self, now: float) -> None:
        for pid, due in list(self.kill_deadline.items()):
            if due > now:
                continue
            del self.kill_deadline[pid]
            kid = self.children.pop(pid, None)
            reader_pid = pid == self.reader.pid or pid in self.old_readers
            what = ("history reader" if reader_pid else "spare") if kid is None \
                else f"session {kid.token}"
            log.warning("pid %d did not stop; killing it (%s, queues.close_grace=%gs + "
                        "keepalive.stop_timeout=%gs)", pid, what, self.config.close_grace,
                        self.config.stop_timeout)
            if kid is not None:  # the caps count it no longer; SIGCHLD reaps it
                self._free_slot(kid)
                self.retiring.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _free_slot(self, kid: Child) -> None:
        self.per_ip[kid.source] -= 1
        if not self.per_ip[kid.source]:
            del self.per_ip[kid.source]

    # ---- accepting ----

    def _accept_tls(self, listener: socket.socket, mask: int) -> None:
        """The TLS listener: its connections are the session processes' to decrypt."""
        self._accept(listener, mask, over_tls=True)

    def _accept(self, listener: socket.socket, mask: int, over_tls: bool = False) -> None:
        forks = 0
        for _ in range(ACCEPT_BATCH):  # refusing is cheap: many per turn
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: shed, keep serving
                log.error("accept failed: %s", exc)
                return
            forks += self._admit(conn, addr[0], over_tls)
            if forks >= FORKS_PER_TURN:  # the rest wait in the backlog for the next turn
                return

    def _admit(self, conn: socket.socket, ip: str, over_tls: bool = False) -> bool:
        """Refuse (an error frame, then close) or hand on; True if that took a fork."""
        now = time.monotonic()
        self.last_accept = now
        source = source_of(ip)
        refusal = self._refusal(ip, source, now)
        if refusal is not None:
            # A TLS client could not read a plain frame, and the parent speaks no TLS:
            # it is only closed.
            if not over_tls:
                with contextlib.suppress(OSError):  # best effort: it fits any socket buffer
                    conn.send(refusal, socket.MSG_DONTWAIT)
            conn.close()
            return False
        try:
            if self._hand_to_spare(conn, ip, over_tls):
                return False
            self._fork(conn, ip, over_tls)
        except OSError as exc:
            log.error("fork failed, dropping %s: %s", ip, exc)
        finally:
            conn.close()
        return True

    def _refusal(self, ip: str, source: str, now: float) -> bytes | None:
        """The error frame refusing a new connection, or None to admit it.

        Cheapest and most specific first: the source's connection rate (a refusal costs
        a token too, so a source that hammers gets nothing), the session caps, then the
        rate of new sessions from everyone (only sessions about to be started count).
        """
        cfg = self.config
        wait = self.sources.take(source, now)
        for gone, count in self.sources.forgotten:
            log.info("%s: %d connections were refused over conn_rate_per_ip", gone, count)
        self.sources.forgotten.clear()
        if wait:
            if self.sources.refused(source) == 1:  # once per run of refusals
                log.warning("refusing new connections from %s: over conn_rate_per_ip=%g/s "
                            "(burst %d)", source, cfg.conn_rate_per_ip, cfg.conn_burst_per_ip)
            return error_frame("too_many_connections", f"conn_rate_per_ip="
                               f"{cfg.conn_rate_per_ip:g}/s exceeded by {source}",
                               limit="conn_rate_per_ip", retry_after=round(wait, 3))
        if len(self.children) >= cfg.max_sessions:
            log.info("refused %s: at a session cap", ip)
            return error_frame("server_full", f"max_sessions={cfg.max_sessions} reached",
                               limit="max_sessions")
        if self.per_ip.get(source, 0) >= cfg.max_sessions_per_ip:
            log.info("refused %s: at a session cap", ip)
            return error_frame("too_many_connections", f"max_sessions_per_ip="
                               f"{cfg.max_sessions_per_ip} reached for {source}",
                               limit="max_sessions_per_ip")
        wait = self.new_sessions.take(now)
        if wait:
            self.busy_refused += 1
            if now - self.busy_logged >= BUSY_LOG_EVERY:
                log.warning("refused %d new connections over session_rate=%g/s (burst %d) "
                            "since the last such line", self.busy_refused, cfg.session_rate,
                            cfg.session_burst)
                self.busy_refused, self.busy_logged = 0, now
            return error_frame("server_busy", f"session_rate={cfg.session_rate:g}/s reached",
                               limit="session_rate", retry_after=round(wait, 3))
        return None

    def _spawn(self, worker: child.SessionWorker) -> tuple[int, socket.socket]:
        """Fork a session process that runs `worker` (built here, before the fork).

        Signals stay blocked across fork() so the new process cannot run our handlers
        before its init_process() resets them. Returns (pid, our end of the channel).
        """
        ours, worker.chan = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            ours.close()
            worker.chan.close()
            raise
        if pid == 0:  # the session process
            worker.main()  # never returns
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        worker.chan.close()
        return pid, ours

    def _fork_spare(self) -> None:
        """Fork a session process ahead of time; it waits for a client on its channel."""
        try:
            worker = child.SessionWorker(self.config, tls_context=self._tls_context())
            pid, ours = self._spawn(worker)
        except OSError as exc:
            log.error("cannot fork a spare session process: %s", exc)
            return
        self.spares[pid] = ours

    def _hand_to_spare(self, conn: socket.socket, ip: str, over_tls: bool = False) -> bool:
        """Pass the accepted socket to a pre-forked process (SCM_RIGHTS); False if none."""
        while self.spares:
            pid, chan = self.spares.popitem()
            token = secrets.token_hex(8)
            hello = channel.control(channel.client(token, ip, over_tls))
            try:
                socket.send_fds(chan, [hello], [conn.fileno()])
            except OSError as exc:  # it died, or its channel is full: retire it
                log.warning("spare pid %d unusable: %s", pid, exc)
                chan.close()
                continue
            chan.setblocking(False)
            self._register(pid, chan, token, ip)
            return True
        return False

    def _retire_spares(self) -> None:
        """Close the spares' channels: each exits (e.g. after a reload, or at shutdown)."""
        for pid, chan in self.spares.items():
            chan.close()
            self.retiring.add(pid)
            self.kill_deadline[pid] = time.monotonic() + self._stop_time()
        self.spares.clear()

    def _fork(self, conn: socket.socket, ip: str, over_tls: bool = False) -> None:
        token = secrets.token_hex(8)
        worker = child.SessionWorker(self.config, conn, token, ip, over_tls,
                                     self._tls_context())
        pid, ours = self._spawn(worker)
        ours.setblocking(False)
        self._register(pid, ours, token, ip)

    def _tls_context(self) -> ssl.SSLContext | None:
        return self.tls.context if self.tls is not None else None

    def _register(self, pid: int, ours: socket.socket, token: str, ip: str) -> None:
        sid = self.next_sid
        self.next_sid += 1
        kid = Child(pid, sid, ours, token, ip, FrameDecoder(self.config.max_frame),
                    source=source_of(ip))
        self.children[pid] = kid
        self.by_sid[sid] = kid
        self.per_ip[kid.source] = self.per_ip.get(kid.source, 0) + 1
        kid.handler = lambda _chan, mask: self._channel(kid, mask)
        self.sel.register(ours, selectors.EVENT_READ, kid.handler)
        self.broker.attach(sid, token)
        log.info("session %s from %s: pid %d (%d sessions)", token, ip, pid,
                 len(self.children))

    # ---- session channels ----

    def _channel(self, kid: Child, mask: int) -> None:
        if kid.sid not in self.by_sid:
            return
        chan = kid.chan
        if mask & selectors.EVENT_WRITE:
            self._flush(kid)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = chan.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._channel_closed(kid, "connection lost")
            return
        kid.decoder.receive_data(data)
        now = now_ms()
        try:
            for payload in kid.decoder.payloads():
                self.broker.receive(kid.sid, payload, now)
        except ProtocolError:
            # Only our own session code writes here: this is a bug or a compromise.
            log.error("session %s (pid %d) broke channel framing", kid.token, kid.pid)
            os.kill(kid.pid, signal.SIGKILL)

    def _channel_closed(self, kid: Child, reason: str) -> None:
        self._doom(kid.pid)  # nothing left for it to do but exit
        if kid.attached:
            self.broker.detach(kid.sid, reason, now_ms(), code="closed")
            self.reader.drop(kid.sid)
            kid.attached = False
        if kid.sid in self.by_sid:
            self.sel.unregister(kid.chan)
            kid.chan.close()
            del self.by_sid[kid.sid]

    # ---- the history reader ----

    def _start_reader(self) -> None:
        cfg = self.config
        try:
            pid, chan = reader.spawn(cfg.data_dir / "history.sqlite3", cfg.log_level,
                                     cfg.max_memory_mb)
        except OSError as exc:
            log.error("cannot start the history reader: %s", exc)
            self.reader_restart_at = time.monotonic() + reader.RESTART_PAUSE
            return
        self.reader.attach(pid, chan, time.monotonic())
        self.sel.register(chan, selectors.EVENT_READ, self._reader_ready)
        self.reader_restart_at = None
        self._reader_writing = False
        log.info("history reader: pid %d", pid)
        self.reader.pump()  # what the last one left unanswered
        self._reader_events()

    def _reader_ready(self, chan: socket.socket, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.reader.flush()
        if mask & selectors.EVENT_READ:
            replies = self.reader.receive()
            if replies is None:  # gone, or broke the rules: a new one takes over
                pid = self.reader.pid
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self._reader_lost()
                return
            for reply in replies:
                self.broker.read_done(reply)
            self.reader.pump()
        self._reader_events()

    def _reader_events(self) -> None:
        """Watch the reader's channel for writing only while requests wait to go out."""
        chan = self.reader.chan
        if chan is None or self.reader.writing == self._reader_writing:
            return
        self._reader_writing = self.reader.writing
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self._reader_writing else 0)
        self.sel.modify(chan, events, self._reader_ready)

    def _reader_lost(self) -> None:
        """The reader died or was ended: its reads go to the next one (reaped later)."""
        if self.reader.chan is not None:
            self.sel.unregister(self.reader.chan)
        if self.reader.pid is not None:
            self.old_readers.add(self.reader.pid)  # to reap, and to log how it ended
        for failure in self.reader.lost():
            self.broker.read_done(failure)
        if self.life.running:
            self.reader_restart_at = max(time.monotonic(),
                                  self.reader.started + reader.RESTART_PAUSE)

    # ---- signals ----

    def handle_sigchld(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.kill_deadline.pop(pid, None)
            if pid == self.reader.pid:
                self._reader_lost()  # (before its channel's EOF said so)
            if pid in self.old_readers:
                self.old_readers.discard(pid)
                level = logging.WARNING if self.life.running else logging.INFO
                log.log(level, "history reader (pid %d) ended: %s", pid, _how(status))
                continue
            kid = self.children.pop(pid, None)
            if kid is None:
                self.retiring.discard(pid)
                spare = self.spares.pop(pid, None)
                if spare is not None:
                    log.warning("spare pid %d ended before it had a client: %s", pid,
                                child.exit_reason(status))
                    spare.close()
                continue
            level = (logging.INFO if os.WIFEXITED(status) and os.WEXITSTATUS(status) ==
                     child.EXIT_OK else logging.WARNING)
            log.log(level, "session %s (pid %d) ended: %s", kid.token, pid,
                    child.exit_reason(status))
            self._free_slot(kid)
            # The broker hears of the end from the channel's EOF, after any last words.

    def handle_sigterm(self) -> None:
        now = time.monotonic()
        if not self.life.stop(now, self._stop_time()):
            return
        log.info("stopping: telling %d sessions", len(self.children))
        for listener in self.listeners:
            self.sel.unregister(listener)
            listener.close()
        self.listeners.clear()
        self._retire_spares()
        if self.reader.chan is not None:  # it exits when it sees the channel close
            self.sel.unregister(self.reader.chan)
            self.reader.close()
        for pid in [self.reader.pid, *self.old_readers]:
            if pid is not None:
                self.kill_deadline[pid] = now + self._stop_time()  # the stop deadline
        for kid in list(self.by_sid.values()):
            # Kicked sessions get nothing more, so nobody hears the others' quit notices.
            self._kick(kid, "shutting_down", "server shutting down")
            self._flush(kid)
        for pid in self.children:  # its channel is closed already: it is on its way out
            self._doom(pid)

    handle_sigint = handle_sigterm

    def handle_sighup(self) -> None:
        path = self.config.config_file
        if path is None:
            log.info("SIGHUP: no --config file to reload")
            return
        try:
            values = load_file(path)
        except ConfigError as exc:
            log.error("SIGHUP: keeping the old configuration: %s", exc)
            return
        changes = diff(self.config.values, values)
        try:
            self._raise_fd_limit(self.config.with_values(values))
        except SystemExit as exc:
            log.error("SIGHUP: keeping the old configuration: %s", exc)
            return
        old, self.config = self.config, self.config.with_values(values)
        config = self.config
        renewed = self._reload_tls(old, config)
        self.broker.config = config
        self.reader.configure(config.max_frame)
        self.sources.reconfigure(config.conn_rate_per_ip, config.conn_burst_per_ip,
                                 config.conn_sources)
        self.new_sessions.reconfigure(config.session_rate, config.session_burst)
        log.info("SIGHUP: reloaded %s: %s", path, "; ".join(changes) or "no changes")
        if renewed and not changes:
            self._retire_spares()  # they hold the old certificate; the loop forks new ones
        if changes:
            self._retire_spares()  # forked with the old settings; the loop forks new ones
            for kid in self.by_sid.values():
                # A session's canonical frames are at most its own max_frame, which may be
                # the old or the new one until it has read this control: accept both.
                kid.decoder.max_frame = max(kid.decoder.max_frame, self.config.max_frame)
                if not kid.closing:
                    kid.out.add(channel.control(channel.config(values)))
                    self._flush(kid)

    def _reload_tls(self, old: Config, new: Config) -> bool:
        """SIGHUP: load tls.cert and tls.key again for new connections (a session keeps
        the context it started with); True if new connections now get a new context.
        Listeners stay as they were started."""
        for key in ("tls_port", "tls_plain"):
            if getattr(old, key) != getattr(new, key):
                log.warning("SIGHUP: a change of tls.%s takes a restart", key[4:])
        if (self.tls is None) != (not new.tls_cert):
            log.warning("SIGHUP: turning TLS on or off takes a restart")
        if self.tls is None or not new.tls_cert:
            return False
        return self.tls.reload(new.values, new.config_file)


def _how(status: int) -> str:
    return (f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
            if os.WIFSIGNALED(status) else f"exit status {os.WEXITSTATUS(status)}")


def _note_signal(signum: int, frame: object) -> None:
    """Deliberately empty: the C handler has already written to the wakeup fd."""
