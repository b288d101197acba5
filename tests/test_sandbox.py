"""Unprivileged, sandboxed session processes (chatd/sandbox.py; issue 10 §3).

Three layers of proof:
* the filter program itself, run through a small BPF interpreter for each architecture it
  supports (every denied call refused, every call a session makes allowed; numbers from
  the kernel's own headers where this machine has them);
* a process forked here that goes through the same `sandbox.apply()` a session process
  does: open(), socket(), connect() and the rest fail there, what a session needs works,
  and a twin without the filter (same user) shows the failures are the filter's;
* real session processes of `chatd serve`: their /proc status (user, groups, no new
  privileges, a seccomp filter, no capabilities), the very filter installed in them (read
  back with ptrace, as root), and a whole chat through them (tests/test_sandbox_chat.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import json
import logging
import os
import pwd
import re
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serverproc import ServerProcess, newest_session
from wire import connect

from chatd import sandbox, seccomp, zygote
from chatd.config import Config

HEADERS = {"x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
           "aarch64": Path("/usr/include/asm-generic/unistd.h")}
EPERM = seccomp.RET_ERRNO | errno.EPERM
ENOSYS = seccomp.RET_ERRNO | errno.ENOSYS
AUDIT_ARCH_I386 = 0x40000003
# What a session process does after apply() (strace of a whole chat session, and the
# rare paths: MemoryError, a crash's traceback, the final flush), by name.
SESSION_CALLS = ("read", "write", "close", "recvfrom", "sendto", "recvmsg", "sendmsg",
                 "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "ppoll",
                 "mmap", "munmap", "mremap", "brk", "madvise", "futex", "getrandom",
                 "clock_gettime", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
                 "setsockopt", "getsockopt", "getsockname", "shutdown", "fstat",
                 "newfstatat", "lseek", "getpid", "gettid", "exit", "exit_group",
                 "sched_yield", "dup", "fcntl", "ioctl", "prlimit64", "writev")


def syscall_numbers(machine: str) -> dict[str, int]:
    path = HEADERS[machine]
    if not path.exists():
        pytest.skip(f"no kernel headers for {machine} here ({path})")
    text = path.read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"#define __NR(?:3264)?_(\w+)\s+(\d+)", text)}


def run_filter(prog: bytes, nr: int, arch: int, args: tuple[int, ...] = ()) -> int:
    """Classic BPF, the few instructions sandbox.py emits: the filter's verdict."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, *(list(args) + [0] * 6)[:6])
    insns = [struct.unpack_from("=HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    while True:
        op, jt, jf, k = insns[pc]
        if op == seccomp.LD_ABS:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif op == seccomp.JEQ:
            pc += 1 + (jt if acc == k else jf)
        elif op == seccomp.JGT:
            pc += 1 + (jt if acc > k else jf)
        elif op == seccomp.JGE:
            pc += 1 + (jt if acc >= k else jf)
        elif op == seccomp.JA:
            pc += 1 + k
        elif op == seccomp.RET:
            return k
        else:
            raise AssertionError(f"unexpected BPF op {op:#x}")


@pytest.mark.parametrize("machine", sorted(seccomp.COLUMN))
def test_filter_numbers_match_the_kernel_headers(machine: str) -> None:
    nrs = syscall_numbers(machine)
    col = seccomp.COLUMN[machine] + 1
    rows = [row[:3] for row in (*seccomp.DENIED, *seccomp.REFUSED_ARGS, *seccomp.ONLY_SELF,
                                *seccomp.ONLY_ADOPT_FD)]
    checked = 0
    for name, *by_arch in rows:
        ours = by_arch[col - 1]
        assert ours is None or ours <= seccomp.NEWEST, name
        if name in nrs:  # headers older than a call do not know it: newer ones are unified
            assert ours == nrs[name], f"{machine} {name}: ours {ours}, kernel {nrs[name]}"
            checked += 1
        elif ours is not None:
            assert ours >= 424, f"{machine} {name}: not in the headers, and not unified"
    assert checked > 80


@pytest.mark.parametrize("machine", sorted(seccomp.COLUMN))
def test_filter_refuses_what_it_must_and_allows_what_a_session_needs(machine: str) -> None:
    nrs = syscall_numbers(machine)
    prog = seccomp.program(machine)
    assert prog is not None
    arch = seccomp.AUDIT_ARCH[machine]
    col = seccomp.COLUMN[machine] + 1
    denied = {row[col] for row in seccomp.DENIED if row[col] is not None}
    # accept() on the adoption socket's fd only (arguments 0 here: refused)
    denied |= {row[col] for row in seccomp.ONLY_ADOPT_FD}
    for nr in range(seccomp.NEWEST + 1):  # every call: refused if and only if listed
        want = EPERM if nr in denied else seccomp.RET_ALLOW
        assert run_filter(prog, nr, arch) == want, nr
    for name in SESSION_CALLS:
        if name in nrs:
            assert run_filter(prog, nrs[name], arch) == seccomp.RET_ALLOW, name
    ioctl, fcntl, prlimit = nrs["ioctl"], nrs["fcntl"], nrs["prlimit64"]
    assert run_filter(prog, ioctl, arch, (3, 0x5411)) == seccomp.RET_ALLOW  # TIOCOUTQ
    assert run_filter(prog, ioctl, arch, (2, 0x5412)) == EPERM  # TIOCSTI
    assert run_filter(prog, fcntl, arch, (3, 4)) == seccomp.RET_ALLOW  # F_SETFL
    assert run_filter(prog, fcntl, arch, (3, 8)) == EPERM  # F_SETOWN
    assert run_filter(prog, prlimit, arch, (0, 7)) == seccomp.RET_ALLOW
    assert run_filter(prog, prlimit, arch, (1234, 7)) == EPERM
    for name in ("accept", "accept4"):  # the adoption socket (chatd/orphan.py) only
        assert run_filter(prog, nrs[name], arch, (seccomp.ADOPT_FD, 0)) == seccomp.RET_ALLOW
        assert run_filter(prog, nrs[name], arch, (seccomp.ADOPT_FD + 1, 0)) == EPERM
    # Newer than the table (or x32, or -1): ENOSYS, so glibc falls back; another ABI: kill.
    for nr in (seccomp.NEWEST + 1, 0x40000000 | nrs["openat"], -1):
        assert run_filter(prog, nr, arch) == ENOSYS
    assert run_filter(prog, nrs["read"], AUDIT_ARCH_I386) == seccomp.RET_KILL_PROCESS


def strictest(*verdicts: int) -> int:
    """What the kernel does when several filters run: the strictest action (kill, then
    errno, then allow); among equals, the newest filter's (the last here)."""
    rank = {seccomp.RET_KILL_PROCESS: 0, seccomp.RET_ERRNO: 1, seccomp.RET_ALLOW: 2}
    best = min(rank[v & 0xFFFF0000] for v in verdicts)
    return [v for v in verdicts if rank[v & 0xFFFF0000] == best][-1]


@pytest.mark.parametrize("machine", sorted(seccomp.COLUMN))
def test_the_fork_servers_layer_and_a_sessions_together_refuse_what_the_whole_does(
        machine: str) -> None:
    whole, forker, own = (seccomp.program(machine, layer) for layer in seccomp.LAYERS)
    assert whole and forker and own
    arch = seccomp.AUDIT_ARCH[machine]
    col = seccomp.COLUMN[machine] + 1
    kept = {row[col] for row in seccomp.DENIED if row[0] in seccomp.FORK_SERVER_KEEPS}
    assert len(kept - {None}) >= 6  # fork/clone, socketpair, socket, bind, listen
    fds = (0, seccomp.ADOPT_FD, 7)
    for nr in [*range(seccomp.NEWEST + 40), -1, 0x40000000 | 2]:
        for args in [(fd, value) for fd in fds for value in (0, 4, 8, 0x5412)]:
            layered = strictest(run_filter(forker, nr, arch, args),
                                run_filter(own, nr, arch, args))
            assert layered == run_filter(whole, nr, arch, args), (nr, args)
        # The fork server itself may fork and make sockets; nothing else of the list.
        if nr in kept:
            assert run_filter(forker, nr, arch) == seccomp.RET_ALLOW, nr
    assert run_filter(own, 0, AUDIT_ARCH_I386) == seccomp.RET_KILL_PROCESS
    assert len(own) // 8 < 24  # what each new session makes the kernel check and cache


def test_an_unknown_architecture_gets_no_filter() -> None:
    assert seccomp.program("riscv64") is None


def test_server_user_is_checked_when_the_configuration_is_read() -> None:
    from chatd.config import ConfigError, parse_settings

    with pytest.raises(ConfigError, match="no such user"):
        parse_settings({"server": {"user": "no-such-user-here"}})
    with pytest.raises(ConfigError, match="root"):
        parse_settings({"server": {"user": "root"}})
    with pytest.raises(ConfigError, match="expected bool"):
        parse_settings({"server": {"sandbox": "yes"}})


# ---- a process forked here, through the same apply() as a session process ----


def nobody() -> pwd.struct_passwd | None:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam("nobody")
    return None


def config(**values: Any) -> Config:
    base = Config()
    return base.with_values({**base.values, **values})


def attempt(fn: Callable[[], object]) -> str:
    try:
        fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def in_sandboxed_process(cfg: Config, tmp: Path, listener: socket.socket,
                         fork_server: bool = False) -> dict[str, Any]:
    """Fork; the child runs sandbox.apply(cfg), then tries things and reports them. With
    `fork_server`, the child is a fork server (sandbox.lock_fork_server(cfg)) that tries
    a few things and forks a session, which does the rest."""
    chan, chan_theirs = socket.socketpair()
    client_ours = socket.create_connection(listener.getsockname())
    client_theirs, _ = listener.accept()
    # Queued before the fork, received after apply(): how a spare gets its client.
    socket.send_fds(chan, [b"client"], [client_theirs.fileno()])
    client_theirs.close()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        report: dict[str, Any] = {}
        try:
            os.close(rfd)
            premade = socket.socket()  # made before the filter: connect() is what is tried
            if fork_server:
                sandbox.lock_fork_server(cfg)
                report["fork_server"] = {
                    "read_file": attempt(lambda: open("/etc/passwd").read()),  # noqa: SIM115
                    "connect": attempt(lambda: socket.socket().connect(("127.0.0.1", 9))),
                    "socketpair": attempt(socket.socketpair), "fork": attempt(fork_and_exit),
                    "uids": os.getresuid()}
                if os.fork() != 0:  # the fork server: its session reports for both
                    os._exit(0)
            sandbox.apply(cfg)
            report.update(checks(tmp, listener.getsockname(), premade, chan_theirs))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            report = {"crash": repr(exc)}
        finally:
            os.write(wfd, json.dumps(report).encode())
            os._exit(0)
    os.close(wfd)
    chan_theirs.close()
    with os.fdopen(rfd, "rb") as pipe:
        report = json.loads(pipe.read() or b"{}")
    os.waitpid(pid, 0)
    client_ours.settimeout(5)
    report["client_got"] = client_ours.recv(100).decode(errors="replace")
    listener.setblocking(False)
    report["connections_that_reached_us"] = attempt(listener.accept) == "ok"
    client_ours.close()
    chan.close()
    return report


def checks(tmp: Path, addr: tuple[str, int], premade: socket.socket,
           chan: socket.socket) -> dict[str, Any]:
    out = {
        "uids": os.getresuid(), "gids": os.getresgid(),
        "read_file": attempt(lambda: open("/etc/passwd").read()),  # noqa: SIM115
        "create_file": attempt(lambda: open(tmp / "made-by-session", "w")),  # noqa: SIM115
        "list_dir": attempt(lambda: os.listdir("/")),
        "own_proc": attempt(lambda: open("/proc/self/status").read()),  # noqa: SIM115
        "unlink": attempt(lambda: os.unlink(tmp / "victim")),
        "tcp_socket": attempt(socket.socket),
        "udp_socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        "unix_socket": attempt(lambda: socket.socket(socket.AF_UNIX)),
        "connect": attempt(lambda: premade.connect(addr)),
        # (a path that is not there: without the filter, exec would replace the reporter)
        "exec": attempt(lambda: os.execv(tmp / "no-such-program", ["x"])),
        "fork": attempt(fork_and_exit),
        "signal_parent": attempt(lambda: os.kill(os.getppid(), 0)),
        "become_root": attempt(lambda: os.setuid(0)),
    }
    # What a session does keeps working: a client socket handed over the channel...
    data, fds, _flags, _addr = socket.recv_fds(chan, 100, 4)
    client = socket.socket(fileno=fds[0])
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    client.sendall(data + b" works")
    # ...epoll, the clock, stderr, and logging a traceback (linecache cannot open sources)
    ep = select.epoll(2)
    ep.register(client.fileno(), select.EPOLLOUT)
    out["epoll"] = bool(ep.poll(1.0))
    out["clock"] = time.monotonic() > 0 and time.time() > 0
    out["stderr"] = os.write(2, b"") == 0
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    logger = logging.getLogger("chatd.test_sandbox")
    logger.addHandler(handler)
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("logged")
    logger.removeHandler(handler)
    out["traceback"] = "ValueError: boom" in text.getvalue()
    return out


def fork_and_exit() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


DENIED_HERE = ("read_file", "create_file", "list_dir", "own_proc", "unlink", "tcp_socket",
               "udp_socket", "unix_socket", "connect", "exec", "fork", "signal_parent")


@pytest.fixture
def playground() -> Iterator[Path]:
    """A directory anyone may reach and write to, with a file anyone may delete."""
    with tempfile.TemporaryDirectory(prefix="chatd-sandbox-") as name:
        path = Path(name)
        path.chmod(0o777)
        (path / "victim").write_text("x")
        yield path


@pytest.fixture
def listener() -> Any:
    sock = socket.create_server(("127.0.0.1", 0))
    yield sock
    sock.close()


@pytest.mark.parametrize("forker", [False, True], ids=["forked-by-parent", "by-fork-server"])
def test_a_sandboxed_process_has_no_file_system_network_or_processes(
        playground: Path, listener: socket.socket, forker: bool) -> None:
    if seccomp.program() is None:
        pytest.skip("no seccomp filter for this CPU architecture")
    user = nobody() if os.geteuid() == 0 else None
    cfg = config(sandbox=True, user=user.pw_name if user else "")
    report = in_sandboxed_process(cfg, playground, listener, fork_server=forker)
    assert "crash" not in report, report
    if forker:
        assert report["fork_server"] == {
            "read_file": "EPERM", "connect": "EPERM", "socketpair": "ok", "fork": "ok",
            "uids": [user.pw_uid] * 3 if user else list(os.getresuid())}
    for what in DENIED_HERE:
        assert report[what] == "EPERM", (what, report)
    assert not report["connections_that_reached_us"]
    assert report["client_got"] == "client works"
    assert report["epoll"] and report["clock"] and report["stderr"] and report["traceback"]
    assert (playground / "victim").exists() and not (playground / "made-by-session").exists()
    if user is not None:
        assert report["uids"] == [user.pw_uid] * 3 and report["gids"] == [user.pw_gid] * 3
        assert report["become_root"] == "EPERM"


def test_without_the_filter_the_same_user_could_do_all_that(
        playground: Path, listener: socket.socket) -> None:
    """The twin of the test above: what failed there failed because of the filter."""
    if os.geteuid() != 0 or nobody() is None:
        pytest.skip("needs root and a 'nobody' user to drop to")
    report = in_sandboxed_process(config(sandbox=False, user="nobody"), playground, listener)
    assert "crash" not in report, report
    for what in ("read_file", "create_file", "list_dir", "own_proc", "unlink", "tcp_socket",
                 "udp_socket", "unix_socket", "connect", "fork"):
        assert report[what] == "ok", (what, report)
    assert report["exec"] == "ENOENT"  # the kernel looked for it
    assert report["connections_that_reached_us"]
    assert report["become_root"] == "EPERM"  # the user drop alone holds


def in_fork(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a forked process (what it does to itself stays there); its result."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            try:
                result: Any = fn()
            except Exception as exc:  # noqa: BLE001 - reported to the test
                result = f"{type(exc).__name__}: {exc}"
            os.write(wfd, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def seccomp_mode() -> str:
    return proc_status(os.getpid())["Seccomp"]


def test_where_filters_are_unsupported_start_up_says_so_once_and_sessions_carry_on(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sandbox, "_unsupported", None)
    monkeypatch.setattr(sandbox, "_probed", False)
    monkeypatch.setattr(sandbox, "program", lambda machine=None, layer="whole": None)  # no table
    monkeypatch.setattr(sandbox, "_attach", {})  # (made by an earlier probe)
    cfg = config(sandbox=True, user="")
    with caplog.at_level(logging.INFO, logger="chatd.sandbox"):
        sandbox.probe(cfg)
    said = [r.getMessage() for r in caplog.records if "sandboxed" in r.getMessage()]
    assert said == ["sessions are not sandboxed: no system call table for this CPU "
                    f"({os.uname().machine}); they keep the file system and network access "
                    "of their user"]
    caplog.clear()
    assert in_fork(lambda: (sandbox.apply(cfg), seccomp_mode())[1]) == "0"
    assert not caplog.records  # sessions say nothing more


def test_a_filter_that_fails_after_start_up_said_it_works_ends_the_session(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A call the kernel refuses as it would a filter it cannot take (no such mode).
    monkeypatch.setattr(sandbox, "_attach", {"whole": sandbox._ready(sandbox.PR_SET_SECCOMP, 99)})
    monkeypatch.setattr(sandbox, "_unsupported", None)
    cfg = config(sandbox=True, user="")
    monkeypatch.setattr(sandbox, "_probed", True)
    assert in_fork(lambda: sandbox.apply(cfg)) == ("SandboxError: the kernel refused a "
                                                  "seccomp filter: [Errno 22] Invalid argument")
    monkeypatch.setattr(sandbox, "_probed", False)  # never probed: warn, carry on
    assert in_fork(lambda: sandbox.apply(cfg)) is None


# ---- real session processes of `chatd serve` ----


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def installed_filters(pid: int) -> list[bytes] | None:
    """The seccomp filters of process `pid`, oldest first, read with
    PTRACE_SECCOMP_GET_FILTER (root); None where the kernel cannot (no
    CONFIG_CHECKPOINT_RESTORE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    seize, interrupt, detach, get_filter = 0x4206, 0x4207, 17, 0x420C
    if libc.ptrace(seize, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), "PTRACE_SEIZE")
    try:
        libc.ptrace(interrupt, pid, None, None)
        os.waitpid(pid, 0x40000000)  # __WALL: the tracee is not our child
        filters = []
        while (count := libc.ptrace(get_filter, pid, len(filters), None)) > 0:
            buf = ctypes.create_string_buffer(count * 8)
            assert libc.ptrace(get_filter, pid, len(filters), buf) == count
            filters.append(buf.raw)
        return filters or None
    finally:
        libc.ptrace(detach, pid, None, None)


@pytest.mark.parametrize("spares", [0, 1], ids=["fork-on-accept", "spare"])
def test_real_session_processes_run_unprivileged_with_the_filter(tmp_path: Path,
                                                                 spares: int) -> None:
    if os.geteuid() != 0 or nobody() is None:
        pytest.skip("needs root (to start chatd as root) and a 'nobody' user")
    if seccomp.program() is None:
        pytest.skip("no seccomp filter for this CPU architecture")
    user = nobody()
    assert user is not None
    server = ServerProcess(tmp_path, {"server": {"user": "nobody",
                                                 "spare_children": spares}}).start()
    try:
        server.wait_for_log("sessions are sandboxed")
        mark = server.mark()
        alice = connect(server, "alice")
        _sid, pid = newest_session(server, mark)
        bob = connect(server, "bob")
        status = proc_status(pid)
        assert status["Uid"].split() == [str(user.pw_uid)] * 4
        assert status["Gid"].split() == [str(user.pw_gid)] * 4
        groups = sorted(set(os.getgrouplist("nobody", user.pw_gid)))
        assert status["Groups"].split() == [str(g) for g in groups]
        assert status["NoNewPrivs"] == "1"
        # Forked by the fork server: its layer of the filter, and the session's own.
        assert status["Seccomp"] == "2" and status["Seccomp_filters"] == "2"
        assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
        assert proc_status(server.pid)["Uid"].split()[0] == "0"  # the parent stays root
        forker = proc_status(fork_server(server.pid))
        assert forker["Uid"].split() == [str(user.pw_uid)] * 4
        assert forker["NoNewPrivs"] == "1" and forker["Seccomp_filters"] == "1"
        # The filters in that process are byte for byte the ones the tests above exercised.
        got = installed_filters(pid)
        if got is not None:
            assert got == [seccomp.program(layer="forkserver"),
                           seccomp.program(layer="session")]
        alice.join("#s")
        bob.join("#s")
        alice.say("#s", "still chatting")
        assert bob.messages("#s", 1)[0]["text"] == "still chatting"
        alice.close()
        bob.close()
    finally:
        assert server.stop() == 0
    assert not [line for line in server.lines if "Traceback" in line or "crashed" in line]


def fork_server(parent: int) -> int:
    """The pid of `parent`'s fork server (chatd/zygote.py)."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")"):]
            if comm == zygote.NAME and int(rest.split()[2]) == parent:  # ") STATE PPID"
                return int(entry.name)
    raise AssertionError(f"no fork server under {parent}")


def test_start_up_says_once_what_sessions_get(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, {"server": {"sandbox": False, "user": ""}}).start()
    try:
        server.wait_for_log("sessions are not sandboxed: server.sandbox = false")
        if os.geteuid() == 0:
            server.wait_for_log("sessions run as root: set server.user")
        connect(server, "carol").close()
    finally:
        assert server.stop() == 0
    assert sum("sandboxed" in line for line in server.lines) == 1


@pytest.mark.timeout(180)
def test_bench_sandbox_compares_a_scenario_with_the_sandbox_on_and_off() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "sandbox", "--rounds", "1", "--scenario",
           "burst", "--json", "--quiet", "--", "--clients", "4", "--senders", "2",
           "--messages", "10", "--timeout", "20"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(done.stdout)
    assert result["scenario"] == "burst" and result["ok"] is True
    assert len(result["on"]) == len(result["off"]) == 1
    assert isinstance(result["cost_pct"], float) and isinstance(result["met"], bool)


@pytest.mark.timeout(180)
def test_bench_sandbox_start_compares_session_starts_in_one_run() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "sandbox", "--rounds", "2", "--scenario",
           "start", "--json", "--quiet", "--", "10"]  # (10 session starts of each side)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    (result,) = json.loads(done.stdout)
    assert result["scenario"] == "start" and result["ok"] is True
    assert result["figure"] == "CPU of a session process's start (us)"
    assert len(result["on"]) == len(result["off"]) == 2
    assert all(v > 0 for v in result["on"] + result["off"])
    assert isinstance(result["cost_pct"], float)
