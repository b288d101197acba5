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

The filter is classic BPF, built by chatd/seccomp.py and attached here with ctypes (no
dependency; why not Landlock or libseccomp: README, "Unprivileged, sandboxed sessions").

A session forked by the fork server (chatd/zygote.py, the default) has steps 1-2 and most
of 3 done before it exists: the fork server does them to itself once (`lock_fork_server()`),
and the kernel hands all three down with every fork. Such a session only adds the small
"session" layer of the filter (what the fork server still needs: forks, new sockets), so
a new session pays ~0.03 ms instead of ~0.1 ms (`chatd bench sandbox --scenario start`).

The user is looked up and the whole thing tried out once, in the parent, at start-up
(`probe()`): a session process makes no NSS look-up after fork, and where the kernel or
the CPU architecture has no seccomp filters the log says so once and sessions run on
without one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import pwd
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from chatd.config import Config

from chatd.seccomp import program

log = logging.getLogger("chatd.sandbox")

# linux/prctl.h, linux/seccomp.h
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 39, 22, 2
PR_SET_CHILD_SUBREAPER, PR_SET_NAME = 36, 15


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
# By layer (chatd/seccomp.py), the call attaching it: made by probe() or prime().
_attach: dict[str, Callable[[], int]] = {}
_below_fork_server = False  # a session of a locked fork server: only "session" is left
_server_uid: int | None = None  # who chatd runs as, kept by a fork server that switched


def _prepare(layer: str = "whole") -> Callable[[], int] | None:
    """The call that attaches `layer` of this CPU's filter (None: no table for this CPU),
    with the struct the kernel takes, made once (in the parent or the fork server)."""
    if layer not in _attach and (prog := program(layer=layer)) is not None:
        buf = ctypes.create_string_buffer(prog, len(prog))
        fprog = _SockFprog(len(prog) // 8, ctypes.addressof(buf))
        _fprog[prog] = (buf, fprog)  # (kept alive for the kernel to read)
        _attach[layer] = _ready(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog))
    return _attach.get(layer)


def _lock(layer: str) -> str | None:
    """Attach `layer`; what went wrong, if anything (a SandboxError where start-up found
    that it works: something is wrong, do not serve)."""
    attach = _attach.get(layer) or _prepare(layer)
    problem = "no system call table for this CPU architecture" if attach is None else None
    if attach is not None and attach() != 0:
        problem = f"the kernel refused a seccomp filter: {_errno()}"
    if problem and _probed:
        raise SandboxError(problem)
    if problem:
        log.warning("session not sandboxed: %s", problem)
    return problem


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
    if _below_fork_server:  # it did the rest for us (lock_fork_server())
        if config.sandbox and _unsupported is None:
            _lock("session")
        return
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
    if config.sandbox and _unsupported is None:
        _lock("whole")


def lock_fork_server(config: Config) -> None:
    """In the fork server, once its start-up is done (it reads nothing more from the file
    system): apply() for every session it will fork, done to itself. The user switch, no
    new privileges and the "forkserver" layer of the filter pass to each fork; apply() in
    those sessions then attaches only the "session" layer. Raises SandboxError (the fork
    server must not start) where a step fails."""
    global _server_uid, _below_fork_server, _unsupported
    _server_uid = os.getuid()
    ident = identity(config.user) if config.user and os.geteuid() == 0 else None
    if ident is not None:
        _drop(ident)
    if (config.sandbox or ident) and _no_new_privs() != 0:
        raise SandboxError(f"PR_SET_NO_NEW_PRIVS: {_errno()}")
    if config.sandbox and _unsupported is None:
        _unsupported = _lock("forkserver")
        if _unsupported is None:
            try:  # (one call, once: a filter that lets this through must not be trusted)
                os.close(os.open("/", os.O_RDONLY))
            except PermissionError:
                pass
            else:
                raise SandboxError("the fork server's filter let open() through")
    _below_fork_server = True


def server_uid() -> int:
    """The user chatd runs as, also in a session whose fork server switched users: only
    that user (or root) may adopt the session (chatd/orphan.py)."""
    return os.getuid() if _server_uid is None else _server_uid


def probe(config: Config) -> None:
    """Once, in the parent at start-up: try it all in a throwaway process and say in the
    log what sessions get. Raises SandboxError if `server.user` cannot be switched to, or
    if a filter that the kernel took does not refuse what it must."""
    global _unsupported, _probed
    if _prepare("whole") is not None:  # made here once: every session process inherits it
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
    if _prepare("forkserver") is not None and _prepare("session") is not None:
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
    attach = _prepare("whole")
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
