"""The parent process: its loop, its state, its signals, and accepting clients.

Single-threaded. Signal handlers only wake the loop (signal.set_wakeup_fd);
the loop dispatches handle_<signal>() the way gunicorn's Arbiter does. The
parent never reads a byte from a client: it reads canonical requests from its
sessions' channels and writes to them without ever blocking.

The other parent-side concerns each have a module: lifecycle.py (the parent's state),
admission.py (who may connect), listeners.py, sessiontable.py (slots, kill deadlines,
reaping), routing.py (channels in and out of the broker), helpers.py (the history reader),
sparepool.py (starting sessions: spares, the fork server, forking here).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from chatd import channel, datadir, handover, orphan, tls
from chatd.admin import AdminServer
from chatd.admission import Gate, source_of
from chatd.adopt import Adopter
from chatd.authsupervise import AuthHelperSupervisor
from chatd.broker import Broker, Member
from chatd.cluster import ClusterBroker
from chatd.config import Config, ConfigError, diff, load_file
from chatd.helpers import HistoryReaderHelper
from chatd.lifecycle import Lifecycle
from chatd.listeners import listen, raise_fd_limit
from chatd.retention import Retention
from chatd.routing import Router, now_ms
from chatd.sessiontable import Child, SessionTable
from chatd.sparepool import FORKS_PER_TURN, SparePool
from chatd.stores import history_location, open_history
from chatd.upgrade import Upgrade
from chatd.uplinkhelper import UplinkHelper, join_cluster

log = logging.getLogger("chatd.master")
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)
ACCEPT_BATCH = 64


class Master:
    signals = SIGNALS

    def __init__(self, config: Config, handed: dict[str, Any] | None = None) -> None:
        """`handed`: the state our predecessor handed over on upgrade (chatd/handover.py)."""
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # One parent per data dir (raises datadir.DataDirBusy); an upgrade inherits it.
        self.lock_fd = handed["lock"] if handed else datadir.lock(config.data_dir)
        self.store = open_history(history_location(config.data_dir))
        self.sel = selectors.DefaultSelector()
        # In a cluster, Redis is reached through a helper process (chatd/uplink.py).
        self.uplink: UplinkHelper | None = None
        self.broker: Broker
        if config.redis_url:
            self.broker, self.uplink = join_cluster(config, self.store, self.sel)
        else:
            self.broker = Broker(self.store, config)
        # The TLS context sessions on tls.port get (a bad certificate stops start-up).
        self.tls = tls.ServerTLS(config.values, config.config_file) if config.tls_cert else None
        self.retention = Retention()
        self.listeners: list[socket.socket] = []
        self.listener_kinds: dict[socket.socket, str] = {}  # handover.LISTENER_KINDS
        self.life = Lifecycle()  # running, stopping, killing, stopped (chatd/lifecycle.py)
        self.table = SessionTable()  # session processes, spares, kill deadlines
        self.gate = Gate(config, time.monotonic())  # admission: rates and caps
        # History reads run in a helper process, never on this loop (chatd/reader.py).
        self.reader = HistoryReaderHelper(config, self.sel, self.broker)
        self.router = Router(config, self.sel, self.broker, self.table, self.reader)
        # Password work runs in the auth helper, never here (chatd/authsupervise.py).
        self.auth = self.router.auth = AuthHelperSupervisor(config, self.sel, self.broker,
                                                            self.table)
        # Sessions start in spares from the fork server (chatd/zygote.py) or are forked
        # here, and clients wait for a spare (chatd/sparepool.py).
        self.pool = SparePool(self)
        self.wake_r, self.wake_w = socket.socketpair()
        # `chatd admin` (chatd/admin.py); its server bans are checked at admission and,
        # by the broker, at registration.
        self.admin = AdminServer(self)
        self.broker.screen = self.admin.ops.screen
        if isinstance(self.broker, ClusterBroker):  # other hosts' server bans apply here
            self.broker.server_ban = self.admin.ops.cluster_ban
        self.upgrade = Upgrade(self)  # chatd upgrade / SIGUSR2 (chatd/upgrade.py)
        # Sessions outlive us: each carries the broker's signed word on who it is, which
        # a next parent checks with the data dir's key when it adopts them (chatd/adopt.py).
        orphan.KEY[:] = orphan.load_key(config.data_dir)
        self.broker.signer = self._state
        self.adopter = Adopter(self, orphan.KEY)
        if handed:
            handover.restore(self, handed, time.monotonic())
            self.upgrade.announce(handed["at"])

    @property
    def children(self) -> dict[int, Child]:
        return self.table.children

    def listen(self) -> list[tuple[str, int]]:
        cfg = self.config
        raise_fd_limit(cfg)
        if self.tls is None or cfg.tls_plain:
            self._listen(cfg.port, "plain", "listening on %s:%d", "--port")
        if self.tls is not None:
            self._listen(cfg.tls_port, "tls", "listening for TLS on %s:%d", "tls.port")
        if cfg.irc_port:  # (-1: any free port)
            self._listen(max(cfg.irc_port, 0), "irc", "listening for IRC on %s:%d",
                         "irc.port")
        if cfg.irc_tls_port and self.tls is not None:  # (config: it needs tls.cert)
            self._listen(max(cfg.irc_tls_port, 0), "irc_tls", "listening for IRC over TLS on "
                         "%s:%d", "irc.tls_port")
        self.admin.listen()
        return [sock.getsockname()[:2] for sock in self.listeners]

    def _listen(self, port: int, kind: str, message: str, setting: str) -> None:
        for sock in listen(self.config, port, message, setting):
            self.adopt_listener(sock, kind)

    def adopt_listener(self, sock: socket.socket, kind: str) -> None:
        """Accept on `sock` (bound by us, or by our predecessor before an upgrade)."""
        self.listeners.append(sock)
        self.listener_kinds[sock] = kind
        self.hold_listener(sock, False)

    def hold_listener(self, sock: socket.socket, held: bool) -> None:
        """Stop (or start again) accepting on `sock`: new clients wait in its backlog."""
        accept: dict[str, Callable[[socket.socket, int], None]] = {
            "plain": self._accept, "tls": self._accept_tls, "irc": self._accept_irc,
            "irc_tls": partial(self._accept, over_tls=True, irc=True)}
        if held:
            self.sel.unregister(sock)
        else:
            self.sel.register(sock, selectors.EVENT_READ, accept[self.listener_kinds[sock]])

    def stop_time(self) -> float:
        return self.router.stop_time()

    # ---- the loop ----

    def run(self) -> int:
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        for sig in SIGNALS:
            signal.signal(sig, _note_signal)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        # (blocked across an upgrade's execve(): what came meanwhile is handled now)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self._signals)
        self.handle_sigchld()  # sessions that ended while we were being upgraded
        orphan.prefix(self.config.data_dir)  # made once, for the sessions forked here
        gc.freeze()  # what exists now is shared with every child; keep its pages clean
        self.reader.start()
        self.auth.start()
        if self.uplink is not None:
            self.uplink.start()
        self.pool.start()
        log.info("chatd %d ready (max_sessions=%d)", os.getpid(), self.config.max_sessions)
        while not self.life.stopped:
            now = time.monotonic()
            refill = self.pool.refill_wanted(now)
            events = self.sel.select(self._timeout(now, refill))
            for key, mask in events:
                key.data(key.fileobj, mask)
            restart = self.reader.restart_at
            if restart is not None and self.life.running and time.monotonic() >= restart:
                self.reader.start()
            restart = self.auth.restart_at
            if restart is not None and self.life.running and time.monotonic() >= restart:
                self.auth.start()
            self._restart_uplink()
            self.pool.step()
            self.router.route()
            if self.uplink is not None:
                self.uplink.flush()
            self.admin.tick(time.monotonic())
            self.upgrade.step()  # (returns only if there was no upgrade to hand over)
            # One small batch at most per iteration, after the routing it must not delay.
            self.retention.step(self.config, self.store, time.monotonic(), now_ms(),
                                self.broker.rooms)
            self.broker.history.pruned(self.store.pruned_through)  # memory follows disk
            if refill and not events:  # (only when idle: it may fork a spare here)
                self.pool.idle(now)
            self.upgrade.overdue(time.monotonic())
            self.adopter.overdue(time.monotonic())
            if self.table.kill_deadline:
                self.table.kill_overdue(time.monotonic(), self._helper_pids(),
                                        f"queues.close_grace={self.config.close_grace:g}s + "
                                        f"keepalive.stop_timeout={self.config.stop_timeout:g}s")
            self.life.advance(time.monotonic(), len(self.table) + len(self._helper_pids()))
        self.admin.close()
        self.store.close()
        log.info("stopped")
        return 0

    def _timeout(self, now: float, refill: bool) -> float | None:
        """Until the nearest named deadline: the stop deadline, a kill deadline, the next
        retention run, a helper's restart, or the spare pool's (chatd/sparepool.py)."""
        deadlines = [self.life.timeout(now), self.table.next_kill(now),
                     self.retention.timeout(self.config, now), self.admin.timeout(now),
                     self.upgrade.timeout(now), self.adopter.timeout(now),
                     self.pool.timeout(now, refill)]
        for helper in (self.reader, self.auth, self.uplink):
            if helper is not None and helper.restart_at is not None and self.life.running:
                deadlines.append(max(0.0, helper.restart_at - now))
        return min((d for d in deadlines if d is not None), default=None)

    def _restart_uplink(self) -> None:
        up = self.uplink
        if up is not None and up.restart_at is not None and self.life.running \
                and time.monotonic() >= up.restart_at:
            up.start()

    def _helper_pids(self) -> set[int]:
        return self.reader.pids | self.auth.pids | self.pool.zygote.pids | (
            self.uplink.pids if self.uplink is not None else set())

    def _signals(self, sock: socket.socket, mask: int) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        for signum in dict.fromkeys(data):  # each pending signal once, in order
            name = signal.Signals(signum).name
            getattr(self, f"handle_{name.lower()}")()

    # ---- accepting ----

    def _accept_tls(self, listener: socket.socket, mask: int) -> None:
        """The TLS listener: its connections are the session processes' to decrypt."""
        self._accept(listener, mask, over_tls=True)

    def _accept_irc(self, listener: socket.socket, mask: int) -> None:
        """The IRC listener: its sessions' front end speaks IRC (we only pass that on)."""
        self._accept(listener, mask, irc=True)

    def _accept(self, listener: socket.socket, mask: int, over_tls: bool = False,
                irc: bool = False) -> None:
        forks = 0
        for _ in range(ACCEPT_BATCH):  # refusing is cheap: many per turn
            try:
                conn, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: shed, keep serving
                log.error("accept failed: %s", exc)
                return
            forks += self._admit(conn, addr[0], over_tls, irc)
            if forks >= FORKS_PER_TURN:  # the rest wait in the backlog for the next turn
                return

    def _admit(self, conn: socket.socket, ip: str, over_tls: bool = False,
               irc: bool = False) -> bool:
        """Refuse (an error frame, then close) or hand on; True if that took a fork."""
        now = time.monotonic()
        self.pool.last_accept = now
        refusal = self.admin.ops.refusal(ip, irc) or self.gate.refusal(
            ip, source_of(ip), now, len(self.table.children) + len(self.pool.waiting),
            self.table.per_ip, irc)
        if refusal is not None:
            # A TLS client could not read a plain frame, and the parent speaks no TLS:
            # it is only closed.
            if not over_tls:
                with contextlib.suppress(OSError):  # best effort: it fits any socket buffer
                    conn.send(refusal, socket.MSG_DONTWAIT)
            conn.close()
            return False
        return self.pool.admit(conn, ip, over_tls, irc, now)

    def register(self, pid: int, ours: socket.socket, token: str, ip: str,
                  over_tls: bool = False) -> None:
        self.router.attach(self.table.add(pid, ours, token, ip, self.config.max_frame,
                                          over_tls))
        log.info("session %s from %s: pid %d (%d sessions)", token, ip, pid,
                 len(self.children))


    # ---- signals ----

    def handle_sigchld(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.table.kill_deadline.pop(pid, None)
            if self.upgrade.reaped(pid, status):
                continue
            if not self.reader.reaped(pid, status) and not self.auth.reaped(pid, status) \
                    and not self.pool.zygote.reaped(pid, status) \
                    and not (self.uplink is not None and self.uplink.reaped(pid, status)):
                self.table.reaped(pid, status)

    def handle_sigterm(self) -> None:
        now = time.monotonic()
        if not self.life.stop(now, self.router.stop_time()):
            return
        log.info("stopping: telling %d sessions", len(self.table.children))
        for listener in self.listeners:
            if not self.adopter.holding:  # (held while sessions are being adopted)
                self.sel.unregister(listener)
            listener.close()
        self.listeners.clear()
        self.adopter.holding = False
        self.admin.close()
        deadline = now + self.router.stop_time()  # the stop deadline, for every process
        self.pool.stop()  # the fork server, and the clients waiting for it
        self.table.retire_spares(deadline)
        self.reader.stop()
        self.auth.stop()
        for kid in list(self.table.by_sid.values()):
            # Kicked sessions get nothing more, so nobody hears the others' quit notices.
            self.router.kick(kid, "shutting_down", "server shutting down")
            self.router.flush(kid)
        if self.uplink is not None:  # after the quits it tells the cluster
            self.uplink.stop()
        for pid in self._helper_pids():
            self.table.kill_deadline[pid] = deadline
        for pid in self.table.children:  # its channel is closed already: on its way out
            self.router.doom(pid)

    handle_sigint = handle_sigterm

    def _state(self, member: Member) -> dict[str, Any] | None:
        """The `state` control for a member (Broker.signer): signed for its process."""
        kid = self.table.by_sid.get(member.sid)
        if kid is None:
            return None
        state = {"c": channel.STATE, **orphan.signed_state(
            orphan.KEY, kid.pid, member.token, member.nick, member.account,
            sorted(member.rooms), member.resume)}
        # Every message of its rooms up to the newest id was queued to it before this
        # control (orphan.Delivered.upto), unless a room's catch-up is still under way.
        history = self.broker.history
        if not any((member.sid, room) in history.catching for room in member.rooms):
            state["upto"] = history.last_id
        return state

    def handle_sigusr2(self) -> None:
        """Upgrade in place (chatd/upgrade.py)."""
        self.upgrade.begin(time.monotonic())

    def handle_sighup(self) -> None:
        self.reload()

    def reload(self) -> tuple[bool, str]:
        """SIGHUP (or `chatd admin reload`): (whether it worked, what happened)."""
        path = self.config.config_file
        if path is None:
            log.info("SIGHUP: no --config file to reload")
            return False, "no --config file to reload"
        try:
            values = load_file(path)
            config = self.config.with_values(values)
            raise_fd_limit(config)
        except (ConfigError, SystemExit) as exc:
            log.error("SIGHUP: keeping the old configuration: %s", exc)
            return False, f"keeping the old configuration: {exc}"
        changes = diff(self.config.values, values)
        old, self.config = self.config, config
        renewed = self._reload_tls(old, config)
        self.broker.config = self.router.config = config
        self.reader.configure(config)
        self.auth.configure(config)
        self.gate.reconfigure(config)
        self.pool.size.config = config
        result = f"reloaded {path}: {'; '.join(changes) or 'no changes'}" + (
            "; new connections get the renewed TLS certificate" if renewed else "")
        log.info("SIGHUP: %s", result)
        if renewed and not changes:  # they hold the old certificate; the loop forks new ones
            self.table.retire_spares(time.monotonic() + self.router.stop_time())
        if renewed or changes:  # and so does the fork server: a new one gets the new ones
            self.pool.zygote.restart(config)
        if changes:
            # Spares were forked with the old settings; the loop forks new ones.
            self.table.retire_spares(time.monotonic() + self.router.stop_time())
            for kid in self.table.by_sid.values():
                # A session's canonical frames are at most its own max_frame, which may be
                # the old or the new one until it has read this control: accept both.
                kid.decoder.max_frame = max(kid.decoder.max_frame, config.max_frame)
                if not kid.closing:
                    self.router.send_control(kid, channel.config(values))
        return True, result


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


def _note_signal(signum: int, frame: object) -> None:
    """Deliberately empty: the C handler has already written to the wakeup fd."""
