"""The seccomp filters of chatd's sandbox (chatd/sandbox.py attaches them): classic BPF
built here, for each CPU architecture chatd has a system call table for.

It is a deny list over CPython's needs rather than an allow list: a syscall CPython or
glibc makes on some rare path (an allocator's mremap, a futex) must not fail a session
nobody tested that path for, while every way to name a file or reach a new peer starts
with one of the calls below. System calls newer than this table get ENOSYS, so that a
future one that takes a path is refused too (glibc falls back from ENOSYS).

Three filters (LAYERS), all the same deny list taken apart:
- "whole": everything, for a session process forked by the parent itself;
- "forkserver": what the fork server (chatd/zygote.py) takes for itself: all but what it,
  or a session it forks before that session's own layer, still needs (FORK_SERVER_KEEPS:
  forking, a socket pair per spare, a session's adoption socket);
- "session": just those calls, which each session forked by the fork server adds. The
  kernel runs every filter a process has and the strictest answer wins, so such a session
  is refused exactly what "whole" refuses; attaching this small filter is what a new
  session pays, instead of the user switch and the whole filter (`chatd bench sandbox`).
"""

from __future__ import annotations

import errno
import platform
import struct
from typing import Any

# linux/seccomp.h, linux/filter.h, linux/audit.h
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

# What the fork server still does after its filter (fork through a middle process, a
# socket pair per spare), and a session it forks before adding its own ("session") layer
# (its adoption socket: chatd/orphan.py). Refused by that layer.
FORK_SERVER_KEEPS = ("fork", "vfork", "clone", "clone3", "socketpair", "socket", "bind",
                     "listen")
LAYERS = ("whole", "forkserver", "session")
_program: dict[tuple[str, str], bytes] = {}  # built once, in the parent or fork server


def program(machine: str | None = None, layer: str = "whole") -> bytes | None:
    """`layer` of the filter for this CPU architecture (struct sock_filter[]), or None if
    chatd has no system call table for it."""
    machine = machine or platform.machine()
    if machine not in COLUMN:
        return None
    if (machine, layer) not in _program:
        _program[machine, layer] = _build(machine, layer)
    return _program[machine, layer]


def _build(machine: str, layer: str) -> bytes:
    """Check the ABI, refuse what is newer than the table, then find the call by a binary
    search: attaching a filter makes the kernel compile it and run it for every call
    number (to cache the calls it always allows). That took 0.16 ms per session with a
    linear list, 0.075 ms with a tree of 8-call leaves (176 instructions on x86_64) and
    takes 0.062 ms with a search over runs of numbers (119); a filter of one instruction
    takes 0.03 ms. The allowed calls then cost nothing per call."""
    if layer not in LAYERS:
        raise ValueError(f"no such filter layer: {layer!r}")
    col = COLUMN[machine] + 1
    listed = [row for row in DENIED if layer == "whole"
              or (row[0] in FORK_SERVER_KEEPS) == (layer == "session")]
    cases: dict[int, str] = {int(nr): "deny" for row in listed if (nr := row[col]) is not None}
    code: list[object] = [(LD_ABS, ARCH_AT, 0, 0), (JEQ, AUDIT_ARCH[machine], 0, "kill"),
                          (LD_ABS, NR_AT, 0, 0)]
    if layer == "session":  # (the fork server's layer does the rest: it runs too)
        return _assemble([*code, *_tree(cases, [0]), *_ends()])
    code += [(JGT, NEWEST, "enosys", 0)]
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
    return _assemble([*code, *_tree(cases, [0]), *blocks, *_ends()])


def _ends() -> list[object]:
    return ["allow", (RET, RET_ALLOW, 0, 0), "deny", (RET, RET_ERRNO | errno.EPERM, 0, 0),
            "enosys", (RET, RET_ERRNO | errno.ENOSYS, 0, 0),
            "kill", (RET, RET_KILL_PROCESS, 0, 0)]  # a foreign ABI (int 0x80): nothing of ours


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

