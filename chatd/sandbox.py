"""Session processes without privileges, file system or new connections (issue 10 §3).

The parent may need root (a low port, a TLS key); a session process, which parses what
strangers send, must not keep it. `apply()` runs in each new session process after its
fork hygiene and before it reads a byte from its client:

1. as root with `server.user` set: switch to that user and its groups for good (checked
   the way OpenSSH's permanently_set_uid() checks: root cannot be had back);
2. PR_SET_NO_NEW_PRIVS: nothing it could run would gain privileges;
3. with `server.sandbox` (the default): a seccomp filter refuses (EPERM) every system
   call that opens, creates, changes or mounts anything in the file system, makes a
   socket, connects, binds, accepts (but on the adoption socket, fd 3: chatd/orphan.py),
   execs, forks, or signals or inspects another process. What
   the session already holds keeps working: its client socket, its channel to the
   parent (a spare session receives its client there, with recvmsg), stderr.

The filter is classic BPF built here with ctypes (no dependency; why not Landlock or
libseccomp: README, "Unprivileged, sandboxed sessions"). It is a deny list over CPython's
needs rather than an allow list: a syscall CPython or glibc makes on some rare path (an
allocator's mremap, a futex) must not fail a session nobody tested that path for, while
every way to name a file or reach a new peer starts with one of the calls below.
System calls newer than this table get ENOSYS, so that a future one that takes a path is
refused too (glibc falls back from ENOSYS).

The user is looked up and the whole thing tried out once, in the parent, at start-up
(`probe()`): a session process makes no NSS look-up after fork, and where the kernel or
the CPU architecture has no seccomp filters the log says so once and sessions run on
without one.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform
import pwd
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatd.config import Config

log = logging.getLogger("chatd.sandbox")

# linux/prctl.h, linux/seccomp.h, linux/filter.h, linux/audit.h
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 39, 22, 2
PR_SET_CHILD_SUBREAPER, PR_SET_NAME = 36, 15
RET_KILL_PROCESS, RET_ERRNO, RET_ALLOW = 0x80000000, 0x00050000, 0x7FFF0000
# BPF_LD|BPF_W|BPF_ABS; BPF_JMP with BPF_JA, BPF_JEQ|BPF_K, BPF_JGT|BPF_K, BPF_JGE|BPF_K
LD_ABS, JA, JEQ, JGT, JGE, RET = 0x20, 0x05, 0x15, 0x25, 0x35, 0x06  # RET: BPF_RET|BPF_K
NR_AT, ARCH_AT, ARGS_AT = 0, 4, 16  # offsets in struct seccomp_data (args: low words, LE)
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
COLUMN = {"x86_64": 0, "aarch64": 1}
NEWEST = 462  # mseal (Linux 6.10): anything above is newer than this table -> ENOSYS

# (name, x86_64, aarch64); None where that architecture has no such call (only the *at
# forms on aarch64). tests/test_sandbox.py checks the numbers against the kernel headers.
DENIED: tuple[tuple[str, int | None, int | None], ...] = (
    # the file system: open, create, change, remove, watch, mount, execute
    ("open", 2, None), ("creat", 85, None), ("openat", 257, 56), ("openat2", 437, 437),
    ("open_by_handle_at", 304, 265), ("name_to_handle_at", 303, 264),
    ("truncate", 76, 45), ("ftruncate", 77, 46), ("fallocate", 285, 47),
    ("mknod", 133, None), ("mknodat", 259, 33), ("mkdir", 83, None), ("mkdirat", 258, 34),
    ("rmdir", 84, None), ("unlink", 87, None), ("unlinkat", 263, 35),
    ("rename", 82, None), ("renameat", 264, 38), ("renameat2", 316, 276),
    ("link", 86, None), ("linkat", 265, 37), ("symlink", 88, None), ("symlinkat", 266, 36),
    ("chmod", 90, None), ("fchmod", 91, 52), ("fchmodat", 268, 53), ("fchmodat2", 452, 452),
    ("chown", 92, None), ("fchown", 93, 55), ("lchown", 94, None), ("fchownat", 260, 54),
    ("utime", 132, None), ("utimes", 235, None), ("futimesat", 261, None),
    ("utimensat", 280, 88), ("setxattr", 188, 5), ("lsetxattr", 189, 6),
    ("fsetxattr", 190, 7), ("removexattr", 197, 14), ("lremovexattr", 198, 15),
    ("fremovexattr", 199, 16), ("getxattr", 191, 8), ("lgetxattr", 192, 9),
    ("fgetxattr", 193, 10), ("listxattr", 194, 11), ("llistxattr", 195, 12),
    ("flistxattr", 196, 13), ("chdir", 80, 49), ("fchdir", 81, 50), ("chroot", 161, 51),
    ("pivot_root", 155, 41), ("mount", 165, 40), ("umount2", 166, 39),
    ("mount_setattr", 442, 442), ("move_mount", 429, 429), ("open_tree", 428, 428),
    ("fsopen", 430, 430), ("fsconfig", 431, 431), ("fsmount", 432, 432),
    ("fspick", 433, 433), ("statmount", 457, 457), ("listmount", 458, 458),
    ("acct", 163, 89), ("swapon", 167, 224), ("swapoff", 168, 225), ("quotactl", 179, 60),
    ("quotactl_fd", 443, 443), ("inotify_init", 253, None), ("inotify_init1", 294, 26),
    ("inotify_add_watch", 254, 27), ("fanotify_init", 300, 262),
    ("fanotify_mark", 301, 263), ("uselib", 134, None), ("execve", 59, 221),
    ("execveat", 322, 281),
    # io_uring runs opens and connects that no seccomp filter sees
    ("io_uring_setup", 425, 425), ("io_uring_enter", 426, 426),
    ("io_uring_register", 427, 427),
    # the network: no new socket, no new peer
    ("socket", 41, 198), ("socketpair", 53, 199), ("connect", 42, 203), ("bind", 49, 200),
    ("listen", 50, 201),
    # other processes (every session runs as the same user): no signals, no peeking, no
    # new processes or namespaces
    ("kill", 62, 129), ("tkill", 200, 130), ("tgkill", 234, 131),
    ("rt_sigqueueinfo", 129, 138), ("rt_tgsigqueueinfo", 297, 240),
    ("pidfd_open", 434, 434), ("pidfd_getfd", 438, 438), ("pidfd_send_signal", 424, 424),
    ("ptrace", 101, 117), ("process_vm_readv", 310, 270), ("process_vm_writev", 311, 271),
    ("kcmp", 312, 272), ("fork", 57, None), ("vfork", 58, None), ("clone", 56, 220),
    ("clone3", 435, 435), ("unshare", 272, 97), ("setns", 308, 268),
    # the kernel's own attack surface and root's tools (a session left running as root)
    ("bpf", 321, 280), ("perf_event_open", 298, 241), ("userfaultfd", 323, 282),
    ("keyctl", 250, 219), ("add_key", 248, 217), ("request_key", 249, 218),
    ("init_module", 175, 105), ("finit_module", 313, 273), ("delete_module", 176, 106),
    ("kexec_load", 246, 104), ("kexec_file_load", 320, 294), ("reboot", 169, 142),
    ("syslog", 103, 116), ("iopl", 172, None), ("ioperm", 173, None),
)
# (name, x86_64, aarch64, argument, refused values): allowed but for these requests.
# TIOCSTI/TIOCLINUX would type into the operator's terminal (stderr may be one);
# F_SETOWN and its ioctl twins would have the kernel signal another process for us.
REFUSED_ARGS = (
    ("ioctl", 16, 29, 1, (0x5412, 0x541C, 0x8901, 0x8902)),  # TIOCSTI TIOCLINUX FIOSETOWN..
    ("fcntl", 72, 25, 1, (8, 15)),  # F_SETOWN, F_SETOWN_EX
)
# (name, x86_64, aarch64, argument): allowed only when it is 0 (this process).
ONLY_SELF = (("prlimit64", 302, 261, 0),)
# A session listens for a next parent on this fd (chatd/orphan.py), made before the filter;
# accept() works there only, so a listening socket it might still hold by mistake is no use.
ADOPT_FD = 3
ONLY_ADOPT_FD = (("accept", 43, 202, 0), ("accept4", 288, 242, 0))


class SandboxError(Exception):
    """What was asked for cannot be done: the session process must not run."""


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@dataclass(frozen=True)
class Identity:
    name: str
    uid: int
    gid: int
    groups: list[int]
    # setgroups(), setresgid(), setresuid() with their arguments made in the parent
    switch: tuple[Callable[[], int], ...] = field(default=(), compare=False, repr=False)

    @property
    def uids(self) -> tuple[int, int, int]:
        return (self.uid,) * 3

    @property
    def gids(self) -> tuple[int, int, int]:
        return (self.gid,) * 3


_identities: dict[str, Identity] = {}  # filled in the parent, read after fork
_unsupported: str | None = None  # why sessions get no filter, once probe() has found out
_probed = False
_program: dict[str, bytes] = {}  # by architecture: built once, in the parent
_fprog: dict[bytes, tuple[ctypes.Array[ctypes.c_char], _SockFprog]] = {}  # its sock_fprog
_libc = ctypes.CDLL(None, use_errno=True)


def resolve_user(name: str) -> str | None:
    """Look up `server.user` (when the configuration is read, in the parent); returns what
    is wrong with it, or None. The session process only uses the answer."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return f"server.user: no such user {name!r}"
    if pw.pw_uid == 0:
        return f"server.user: {name!r} is root (uid 0); name an unprivileged user"
    groups = sorted(set(os.getgrouplist(name, pw.pw_gid)))  # as the kernel keeps them
    uid, gid = ctypes.c_uint(pw.pw_uid), ctypes.c_uint(pw.pw_gid)
    switch = (partial(_libc.setgroups, ctypes.c_size_t(len(groups)),
                      (ctypes.c_uint * max(1, len(groups)))(*groups)),
              partial(_libc.setresgid, gid, gid, gid), partial(_libc.setresuid, uid, uid, uid))
    _identities[name] = Identity(name, pw.pw_uid, pw.pw_gid, groups, switch)
    return None


def identity(name: str) -> Identity:
    if name not in _identities and (problem := resolve_user(name)):
        raise SandboxError(problem)
    return _identities[name]


def program(machine: str | None = None) -> bytes | None:
    """The filter for this CPU architecture (struct sock_filter[]), or None if unknown."""
    machine = machine or platform.machine()
    if machine not in COLUMN:
        return None
    if machine not in _program:
        _program[machine] = _build(machine)
    return _program[machine]


def _build(machine: str) -> bytes:
    """Check the ABI, refuse what is newer than the table, then find the call by a binary
    search: attaching a filter makes the kernel compile it and run it for every call
    number (to cache the calls it always allows). That took 0.16 ms per session with a
    linear list, 0.075 ms with a tree of 8-call leaves (176 instructions on x86_64) and
    takes 0.062 ms with a search over runs of numbers (119); a filter of one instruction
    takes 0.03 ms. The allowed calls then cost nothing per call."""
    col = COLUMN[machine] + 1
    cases: dict[int, str] = {int(nr): "deny" for row in DENIED
                             if (nr := row[col]) is not None}
    code: list[object] = [(LD_ABS, ARCH_AT, 0, 0), (JEQ, AUDIT_ARCH[machine], 0, "kill"),
                          (LD_ABS, NR_AT, 0, 0), (JGT, NEWEST, "enosys", 0)]
    blocks: list[object] = []
    for name, *nr_by_arch, arg, values in REFUSED_ARGS:
        cases[int(nr_by_arch[col - 1])] = name
        blocks += [name, (LD_ABS, ARGS_AT + 8 * arg, 0, 0)]
        blocks += [(JEQ, value, "deny", 0) for value in values]
        blocks += [(JA, "allow")]
    for rows, value in ((ONLY_SELF, 0), (ONLY_ADOPT_FD, ADOPT_FD)):
        for name, *nr_by_arch, arg in rows:
            cases[int(nr_by_arch[col - 1])] = name
            blocks += [name, (LD_ABS, ARGS_AT + 8 * arg, 0, 0), (JEQ, value, "allow", "deny")]
    code += _tree(cases, [0])
    code += blocks
    code += ["allow", (RET, RET_ALLOW, 0, 0), "deny", (RET, RET_ERRNO | errno.EPERM, 0, 0),
             "enosys", (RET, RET_ERRNO | errno.ENOSYS, 0, 0),
             "kill", (RET, RET_KILL_PROCESS, 0, 0)]  # a foreign ABI (int 0x80): nothing of ours
    return _assemble(code)


def _tree(cases: dict[int, str], count: list[int]) -> list[object]:
    """Code sending the call number in A to its case's label, or else to "allow": a
    binary search over the runs of numbers that go to the same place, each node one
    comparison that jumps straight to a run's label where a side holds just one run."""
    runs: list[tuple[int, str]] = []  # (its first number, label)
    for nr in range(NEWEST + 1):
        label = cases.get(nr, "allow")
        if not runs or runs[-1][1] != label:
            runs.append((nr, label))
    return _search(runs, count)


def _search(runs: list[tuple[int, str]], count: list[int]) -> list[object]:
    if len(runs) == 1:
        return [(JA, runs[0][1])]
    mid = len(runs) // 2
    low, high = runs[:mid], runs[mid:]
    count[0] += 1
    upper = high[0][1] if len(high) == 1 else f"upper{count[0]}"
    if len(low) == 1:  # both sides may be labels: one instruction
        code: list[object] = [(JGE, high[0][0], upper, low[0][1])]
    else:
        code = [(JGE, high[0][0], upper, 0), *_search(low, count)]
    if len(high) > 1:
        code += [upper, *_search(high, count)]
    return code


def _assemble(code: list[object]) -> bytes:
    """Classic BPF with jumps to named places (forward only; a conditional one at most
    255 instructions)."""
    where: dict[str, int] = {}
    insns: list[tuple[Any, ...]] = []
    for item in code:
        if isinstance(item, str):
            where[item] = len(insns)
        else:
            insns.append(item)  # type: ignore[arg-type]
    out = bytearray()
    for i, insn in enumerate(insns):
        if insn[0] == JA:  # (JA, label): the offset is k
            out += struct.pack("=HBBI", JA, 0, 0, where[insn[1]] - i - 1)
            continue
        op, k, jt, jf = insn
        hops = [where[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= hop <= 255 for hop in hops):
            raise ValueError(f"BPF jump out of range at instruction {i}")
        out += struct.pack("=HBBI", op, hops[0], hops[1], k)
    return bytes(out)


def _prctl(option: int, arg: int, ptr: Any = None) -> None:
    if _libc.prctl(option, ctypes.c_ulong(arg), ptr, 0, 0) != 0:
        raise _errno()


def _errno() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def _ready(option: int, arg: int, ptr: Any = None) -> Callable[[], int]:
    """prctl(option, arg, ptr, 0, 0) with its arguments made now, in the parent: a new
    session process then only makes the call (it returns 0, or -1 and errno)."""
    zero = ctypes.c_ulong(0)
    return partial(_libc.prctl, ctypes.c_int(option), ctypes.c_ulong(arg),
                   zero if ptr is None else ptr, zero, zero)


_no_new_privs = _ready(PR_SET_NO_NEW_PRIVS, 1)
_attach: Callable[[], int] | None = None  # attaches this CPU's filter: made by probe()


def _prepare() -> Callable[[], int] | None:
    """The call that attaches this CPU's filter (None: no table for this CPU), with the
    struct the kernel takes, made once (by probe(), in the parent)."""
    global _attach
    if _attach is None and (prog := program()) is not None:
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
        _fprog[prog] = (buf, fprog)  # (kept alive for the kernel to read)
        _attach = _ready(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog))
    return _attach


def _drop(ident: Identity, prove: bool = False) -> None:
    """Become `ident` for good: groups first (they need root), then gid, then uid.

    With `prove` (the start-up probe), also read the ids back and check that root cannot
    be had back (as OpenSSH's permanently_set_uid() does). What they show depends on the
    kernel and on securebits every session inherits alike, so sessions skip those calls
    and make only the three, readied in the parent (see apply()).
    """
    for call in ident.switch:
        if call() != 0:
            raise SandboxError(f"cannot switch to user {ident.name}: {_errno()}")
    if not prove:
        return
    if (os.getresuid() != ident.uids or os.getresgid() != ident.gids
            or os.getgroups() != ident.groups):
        raise SandboxError(f"switching to user {ident.name} did not take")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise SandboxError(f"user {ident.name} could become root again")


def apply(config: Config) -> None:
    """Drop privileges and lock the session process down; before its first client byte.

    Raises SandboxError when that fails where it is supported: such a session ends
    before it serves anyone.
    """
    ident = identity(config.user) if config.user and os.geteuid() == 0 else None
    if ident is not None:
        _drop(ident)
    if not (config.sandbox or ident):
        return
    # Only calls made ready in the parent (here and in _drop()): each object a new session
    # process makes or first touches costs it a copied page (CPython writes reference
    # counts into what it reads). Making the ctypes arguments here, the user's ids and the
    # platform look-up in the child took 40 such pages, about half the sandbox's cost.
    if _no_new_privs() != 0:
        raise SandboxError(f"PR_SET_NO_NEW_PRIVS: {_errno()}")
    if not config.sandbox or _unsupported is not None:
        return
    attach = _attach or _prepare()
    problem = "no system call table for this CPU architecture" if attach is None else None
    if attach is not None and attach() != 0:
        problem = f"the kernel refused a seccomp filter: {_errno()}"
    if problem and _probed:  # it worked at start-up: something is wrong, do not serve
        raise SandboxError(problem)
    if problem:
        log.warning("session not sandboxed: %s", problem)


def probe(config: Config) -> None:
    """Once, in the parent at start-up: try it all in a throwaway process and say in the
    log what sessions get. Raises SandboxError if `server.user` cannot be switched to, or
    if a filter that the kernel took does not refuse what it must."""
    global _unsupported, _probed
    if _prepare() is not None:  # made here once: every session process inherits it
        # ctypes sets up its call machinery on the first call: done here, it is shared
        # with every session instead of costing each one 0.1 ms of copied pages.
        _prctl(PR_GET_NO_NEW_PRIVS, 0)
    ours, theirs = os.pipe()
    pid = os.fork()
    if pid == 0:  # the throwaway process: it reports and exits, whatever happens
        try:
            os.close(ours)
            os.write(theirs, _try_out(config).encode())
        finally:
            os._exit(0)
    os.close(theirs)
    with os.fdopen(ours, "rb") as pipe:
        verdict, _, detail = pipe.read().decode().partition(" ")
    os.waitpid(pid, 0)
    if verdict != "ok" and verdict != "unsupported":
        raise SandboxError(detail or "the sandbox probe died")
    _unsupported = detail if verdict == "unsupported" else None
    _probed = True
    root = os.geteuid() == 0
    if root and config.user:
        ident = identity(config.user)
        log.info("sessions run as %s (uid %d, gid %d, groups %s) with no new privileges",
                 ident.name, ident.uid, ident.gid, ",".join(map(str, ident.groups)))
    elif root:
        log.warning("sessions run as root: set server.user to an unprivileged user")
    elif config.user and identity(config.user).uid != os.geteuid():
        log.warning("server.user = %r has no effect: chatd is not running as root",
                    config.user)
    if not config.sandbox:
        log.info("sessions are not sandboxed: server.sandbox = false")
    elif _unsupported:
        log.warning("sessions are not sandboxed: %s; they keep the file system and network "
                    "access of their user", _unsupported)
    else:
        log.info("sessions are sandboxed (seccomp): no file system, no new sockets or "
                 "connections, no other processes")


def name_process(name: str) -> None:
    """`name` as this process's name (/proc/PID/comm, what ps shows): one prctl(), which
    the filter allows (the sandbox takes /proc away)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphans below us become our children (the sessions the
    fork server makes, chatd/zygote.py). It lasts across execve() (`chatd upgrade`).
    False where the kernel has no such thing."""
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        return False
    return True


def verdict() -> str | None:
    """What probe() found, for the fork server to take over (prime()): None when
    sessions get the filter, else why not."""
    return _unsupported


def prime(unsupported: str | None, user: str) -> None:
    """In the fork server (chatd/zygote.py): take over the parent's probe() verdict and
    do its one-time work here (the calls readied, the user looked up), so that every
    session forked from us shares it."""
    global _unsupported, _probed
    _unsupported, _probed = unsupported, True
    if _prepare() is not None:
        _prctl(PR_GET_NO_NEW_PRIVS, 0)
    if user and os.geteuid() == 0:
        identity(user)


def _try_out(config: Config) -> str:
    """In the throwaway process: apply() step by step, then check that open() and
    socket() are refused. Returns "ok", "unsupported REASON" or "error REASON"."""
    try:
        if config.user and os.geteuid() == 0:
            _drop(identity(config.user), prove=True)
        if _no_new_privs() != 0:
            raise _errno()
    except (SandboxError, OSError) as exc:
        return f"error {exc}"
    attach = _prepare()
    if attach is None:
        return f"unsupported no system call table for this CPU ({platform.machine()})"
    if attach() != 0:
        return f"unsupported the kernel refused a seccomp filter: {_errno()}"
    for what, attempt in (("open()", lambda: os.open("/", os.O_RDONLY)),
                          ("socket()", socket.socket)):
        try:
            attempt()
        except PermissionError:
            continue
        return f"error the seccomp filter is in place but {what} still works"
    return "ok"
