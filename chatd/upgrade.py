"""`chatd upgrade`: the parent replaces its own code, dropping no connection.

SIGUSR2 (which `chatd upgrade --data-dir DIR` sends to the pid in DIR/chatd.pid) starts
it; the loop does the work, in three steps:

1. **Probe.** The new code is started as `chatd serve ... --check` (same command line,
   like `nginx -t`): it imports everything, parses the config, opens the store, checks
   the TLS files and the sandbox, and that it can read the handover format this parent
   writes and serve the channel versions its sessions speak. Meanwhile the parent serves
   on. If the probe fails (or takes over PROBE_TIMEOUT) the parent stays on its old code
   and says why, in its log and in DIR/upgrade.status.
2. **Settle.** Between two turns of the loop: the broker is drained and committed, and
   the parent waits (at most SETTLE_TIMEOUT, reading only the history reader) until no
   history read is in flight, so no catch-up is cut in half.
3. **Re-exec.** The state goes to a memfd (chatd/handover.py), the fds it names are made
   inheritable, signals are blocked (their pending ones survive execve() and are handled
   by the new code), and the parent execve()s its own command line. Same PID: its
   sessions stay its children. The new parent restores, writes "upgraded" to
   DIR/upgrade.status and serves; what sessions sent meanwhile waited in their channels.
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chatd import channel, datadir, handover

if TYPE_CHECKING:
    from chatd.master import Master

log = logging.getLogger("chatd.master")
PROBE_TIMEOUT = 30.0  # seconds the new code may take to prove it starts
SETTLE_TIMEOUT = 2.0  # seconds to wait for history reads in flight
STATUS_FILE = "upgrade.status"
CHECK_ENV = "CHATD_CHECK_HANDOVER"  # "FORMAT:CHANNEL,VERSIONS" for the probe


def command_line() -> list[str]:
    """How this parent was started (the interpreter's own options included)."""
    return [sys.executable, *sys.orig_argv[1:]]


def write_status(data_dir: Path, ok: bool, message: str) -> None:
    """What became of the last upgrade, for `chatd upgrade` to print (atomic)."""
    path = data_dir / STATUS_FILE
    tmp = path.with_suffix(".tmp")
    try:
        tmp.write_text(json.dumps({"pid": os.getpid(), "ok": ok, "message": message,
                                   "nonce": os.urandom(8).hex()}) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.error("upgrade: cannot write %s: %s", path, exc)


def read_status(data_dir: Path) -> dict[str, object] | None:
    try:
        value = json.loads((data_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class Upgrade:
    """The parent's side: one upgrade at a time, driven by the loop."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.probe: int | None = None  # the probe's pid while it runs
        self.probe_out = -1  # the read end of its stdout and stderr
        self.deadline = 0.0
        self.passed = False  # the probe passed: hand over at the end of this turn

    def begin(self, now: float) -> None:
        """SIGUSR2."""
        if self.probe is not None or self.passed:
            log.warning("upgrade: already under way")
            return
        if not self.master.life.running:
            self.fail("the server is stopping")
            return
        if self.master.adopter.busy:  # (their half-made registrations are not handed over)
            self.fail("sessions of a dead parent are still being adopted; try again")
            return
        check = f"{handover.VERSION}:{channel.VERSION}"
        argv = [*command_line(), "--log-level", "warning", "--check"]
        env = dict(os.environ, **{CHECK_ENV: check})
        rfd, wfd = os.pipe()
        try:
            self.probe = os.posix_spawn(sys.executable, argv, env, setsigmask=set(),
                                        file_actions=[(os.POSIX_SPAWN_DUP2, wfd, 1),
                                                      (os.POSIX_SPAWN_DUP2, wfd, 2)])
        except OSError as exc:
            os.close(rfd)
            self.fail(f"cannot start the new code: {exc}")
            return
        finally:
            os.close(wfd)
        os.set_blocking(rfd, False)
        self.probe_out = rfd
        self.deadline = now + PROBE_TIMEOUT
        log.info("upgrade: checking the new code (pid %d): %s", self.probe, " ".join(argv))

    def timeout(self, now: float) -> float | None:
        return max(0.0, self.deadline - now) if self.probe is not None else None

    def overdue(self, now: float) -> None:
        if self.probe is not None and now >= self.deadline:
            log.warning("upgrade: the probe took over %gs; killing it", PROBE_TIMEOUT)
            os.kill(self.probe, signal.SIGKILL)  # reaped() reports it
            self.deadline = float("inf")

    def reaped(self, pid: int, status: int) -> bool:
        """Whether `pid` was the probe; its verdict decides the upgrade."""
        if pid != self.probe:
            return False
        self.probe = None
        output = self._output()
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            self.passed = True
            return True
        how = (f"exit status {os.WEXITSTATUS(status)}" if os.WIFEXITED(status)
               else f"killed by {signal.Signals(os.WTERMSIG(status)).name}")
        last = [line for line in output.splitlines() if line.strip()][-3:]
        self.fail(f"the new code does not start ({how}): {' | '.join(last) or 'no output'}")
        return True

    def _output(self) -> str:
        chunks: list[bytes] = []
        try:
            while len(chunks) < 16:
                chunk = os.read(self.probe_out, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except BlockingIOError:
            pass
        os.close(self.probe_out)
        self.probe_out = -1
        return b"".join(chunks).decode("utf-8", "replace")

    def fail(self, why: str) -> None:
        log.error("upgrade refused, staying on the running code: %s", why)
        write_status(self.master.config.data_dir, False, why)

    def step(self) -> None:
        """At the end of a turn of the loop: hand over if the probe has passed."""
        if not self.passed:
            return
        self.passed = False
        master = self.master
        if not master.life.running:
            self.fail("the server is stopping")
            return
        master.auth.stop()  # logins in flight fail (auth_unavailable); settle() routes that
        if not self.settle(time.monotonic() + SETTLE_TIMEOUT):
            master.auth.resume()
            self.fail(f"history reads still in flight after {SETTLE_TIMEOUT:g}s; try again")
            return
        if master.uplink is not None:  # ends without leaving the cluster (the next
            master.uplink.retire()  # parent goes on as this host: handover.snapshot)
        master.pool.fork_waiting()  # clients waiting for a spare: theirs would not survive it
        state = handover.snapshot(master, time.monotonic())  # "at": the pause starts
        self.exec(state)

    def settle(self, deadline: float) -> bool:
        """Commit and route what the broker has, then wait (reading only the history
        reader) until no history read is in flight; False at `deadline`."""
        master = self.master
        master.router.route()
        history = master.broker.history
        while history.pending or history.reads:
            chan = master.reader.link.chan
            left = deadline - time.monotonic()
            if chan is None or left <= 0:
                return False
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if master.reader.writing
                                             else 0)
            with selectors.DefaultSelector() as poller:
                poller.register(chan, events)
                ready = poller.select(left)
            for _key, mask in ready:
                master.reader.ready(chan, mask)
            master.router.route()
        return True

    def announce(self, handed_at: float) -> None:
        """We are the new code, restored: say so (to `chatd upgrade` too)."""
        master = self.master
        took = (time.monotonic() - handed_at) * 1000
        message = (f"upgraded: pid {os.getpid()} serves {len(master.table.by_sid)} sessions "
                   f"with the code now installed ({took:.0f} ms from hand-over to now)")
        log.info("%s", message)
        write_status(master.config.data_dir, True, message)

    def exec(self, state: dict[str, Any]) -> None:
        """Become the new code; returns only if execve() failed (the old code serves on)."""
        master = self.master
        master.reader.stop()  # the old reader exits on its channel's EOF; the new parent reaps
        memfd = handover.write(state)  # (the reader's pid: its `retiring`, see below)
        kept = handover.kept_fds(state)
        for fd in kept:
            os.set_inheritable(fd, True)
        env = dict(os.environ, **{handover.ENV: str(memfd)})
        argv = command_line()
        log.info("upgrade: handing %d sessions to the new code", len(state["children"]))
        # Pending signals survive execve(); blocked, none can kill us meanwhile.
        signal.pthread_sigmask(signal.SIG_BLOCK, master.signals)
        try:
            os.execve(sys.executable, argv, env)
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, master.signals)
            os.close(memfd)
            for fd in kept:
                os.set_inheritable(fd, False)
            master.reader.running = True
            master.reader.restart_at = time.monotonic()
            master.auth.resume()
            if master.uplink is not None:
                master.uplink.resume()
            self.fail(f"cannot execute {sys.executable}: {exc}")


def request(data_dir: Path, timeout: float) -> tuple[bool, str]:
    """Signal the parent holding `data_dir` to upgrade; (upgraded?, what it said)."""
    pid = datadir.holder(data_dir)
    if pid is None:
        return False, f"no chatd serve holds {data_dir}"
    before = read_status(data_dir)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(data_dir)
        if status is not None and status != before:
            return bool(status.get("ok")), str(status.get("message"))
        time.sleep(0.02)
    return False, f"no answer from pid {pid} within {timeout:g}s (see its log)"


def send(data_dir: Path, timeout: float) -> int:
    """`chatd upgrade --data-dir DIR`: signal the parent and print what became of it."""
    ok, message = request(data_dir, timeout)
    print(f"chatd upgrade: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
