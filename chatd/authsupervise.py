"""The parent's side of the auth helper (chatd/authhelper.py): start it, feed it, restart it.

Like the history reader (chatd/helpers.py), the helper is supervised like a session: the
loop starts it when `restart_at` has come, SIGCHLD hands its pid to `reaped()`, and when
it dies (or breaks the rules of its channel and is killed) every login in flight fails
with `auth_unavailable` and a new one starts after RestartPolicy's delay. Meanwhile the
broker answers logins and registrations `auth_unavailable` itself; guests and sessions
logged in already carry on.

This is where the client's address joins a request (for the per-address brute-force
limits): the parent knows it from accept(), and never takes a session's word for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from typing import Any

from chatd import authhelper
from chatd.accounts import FILE
from chatd.authlimit import LimitSettings
from chatd.authservice import AuthSettings
from chatd.broker import Broker
from chatd.config import Config
from chatd.routing import now_ms
from chatd.sessiontable import SessionTable, reaped_helper

log = logging.getLogger("chatd.master")
WITH_ADDRESS = frozenset({"register", "register_verifier", "plain", "scram_start"})


class AuthHelperSupervisor:
    def __init__(self, config: Config, sel: selectors.BaseSelector, broker: Broker,
                 table: SessionTable) -> None:
        self.config = config
        self.sel = sel
        self.broker = broker
        self.table = table
        self.client = authhelper.HelperClient()
        self.policy = authhelper.RestartPolicy()
        self.helper: authhelper.Helper | None = None
        self.restart_at: float | None = 0.0  # when to start one; None while one runs
        self.writing = False
        self.old: set[int] = set()  # helpers that are gone but not yet reaped
        self.running = True  # False once the parent stops

    @property
    def pids(self) -> set[int]:
        return self.old | ({self.helper.pid} if self.helper is not None else set())

    def configure(self, config: Config) -> None:
        """SIGHUP: a new iteration count needs a new helper (it is the helper's setting)."""
        old, self.config = self.config, config
        if old.accounts_iterations != config.accounts_iterations and self.helper is not None:
            log.info("SIGHUP: accounts.iterations changed: restarting the auth helper")
            self.lost()

    def start(self) -> None:
        cfg = self.config
        settings = AuthSettings(iterations=cfg.accounts_iterations, limits=LimitSettings())
        try:
            helper = authhelper.spawn(cfg.data_dir / FILE, settings)
        except OSError as exc:
            log.error("cannot start the auth helper: %s", exc)
            self.restart_at = self.policy.died(time.monotonic())
            return
        helper.chan.setblocking(False)
        self.helper = helper
        self.policy.started(time.monotonic())
        self.sel.register(helper.chan, selectors.EVENT_READ, self.ready)
        self.restart_at = None
        self.writing = False
        self.broker.logins.started()

    def submit(self, requests: list[tuple[tuple[int, int], str, dict[str, Any]]]) -> None:
        """The broker's requests for the helper; the address of each session added."""
        for token, op, fields in requests:
            kid = self.table.by_sid.get(token[0])
            if op in WITH_ADDRESS:
                if kid is None:  # the session is gone: nobody waits for the answer
                    self._fail(token, "the session is gone")
                    continue
                fields = {**fields, "ip": kid.ip}
            if self.helper is None:
                self._fail(token, "the auth service is restarting, try again")
                continue
            try:
                self.client.request(op, token, **fields)
            except authhelper.HelperBusy:
                self._fail(token, "the auth service is busy, try again")
        self.flush()

    def _fail(self, token: tuple[int, int], message: str) -> None:
        self.broker.logins.done(token, {"ok": False, "code": "auth_unavailable",
                                      "message": message}, now_ms())

    def flush(self) -> None:
        helper = self.helper
        if helper is None:
            return
        out = self.client.out
        if out:
            try:
                del out[:helper.chan.send(out)]
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return  # gone: its EOF (or SIGCHLD) says so
        writing = bool(out)
        if writing != self.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self.sel.modify(helper.chan, events, self.ready)
            self.writing = writing

    def ready(self, chan: socket.socket, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            data = authhelper.receive(chan)
            if data == b"":
                self.lost()
                return
            if data:
                try:
                    replies = self.client.receive_data(data)
                except authhelper.HelperBroken as exc:
                    log.error("%s: killing it", exc)
                    if self.helper is not None:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(self.helper.pid, signal.SIGKILL)
                    self.lost()
                    return
                now = now_ms()
                for token, reply in replies:
                    self.broker.logins.done(token, reply, now)
        self.flush()

    def lost(self) -> None:
        """The helper died or was ended: what it had in flight fails; a new one follows."""
        helper, self.helper = self.helper, None
        if helper is None:
            return
        self.sel.unregister(helper.chan)
        helper.chan.close()
        self.old.add(helper.pid)
        self.client.lost()
        self.broker.logins.available = False
        self.broker.logins.lost()
        if self.running:
            self.restart_at = self.policy.died(time.monotonic())

    def stop(self) -> None:
        """At shutdown: it exits when it sees its channel close."""
        self.running = False
        self.restart_at = None
        self.lost()

    def resume(self) -> None:
        """After stop() for an upgrade that did not happen: start a new one at once."""
        self.running = True
        self.restart_at = time.monotonic()

    def reaped(self, pid: int, status: int) -> bool:
        """Whether `pid` was one of ours (and is now forgotten)."""
        if self.helper is not None and pid == self.helper.pid:
            self.lost()
        return reaped_helper(self.old, pid, status, self.running, "auth helper")
