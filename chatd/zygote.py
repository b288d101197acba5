"""The fork server (zygote): a lean process that forks spare session processes.

Forking the parent costs its routing loop milliseconds per session (its page tables, the
broker's heap), and every page the parent writes afterwards stays private in each
session forked before. This process is a fresh interpreter (`python -m chatd.zygote FD`,
started by the parent through chatd/helperproc.py) that imports what a session runs and
nothing else: no broker, no store, no history, no key. It rehearses a session's first
steps (chatd/rehearsal.py), versions its classes and namespaces (chatd/versions.py), makes
that heap immortal (chatd/immortal.py) and freezes it (gc.freeze), and then only forks,
so its pages stay shared by every session it made.

Spares are forked by a middle process (one per batch asked for) that exits when the batch
is done: the kernel then gives the orphans to the nearest subreaper above them, the chatd
parent (PR_SET_CHILD_SUBREAPER, chatd/master.py). The zygote holds the parent's ends of
the new spares' channels and sends them up only after the middle has exited. A session
forked here is so the parent's child like one the parent forked itself: SIGCHLD and
waitpid() reap it, `chatd upgrade`'s execve() keeps it, a parent killed with -9 leaves it
to be adopted (chatd/adopt.py).

The channel to the parent is a SOCK_SEQPACKET pair, one message each:
  parent -> zygote  first the configuration (JSON), then b"F" + count: fork that many
  zygote -> parent  pid (struct "!i") with the parent's end of the new spare's channel
                    (SCM_RIGHTS); pid -1 and no fd when a fork failed
The zygote exits when the parent closes its end (a stop, an upgrade, a parent gone).

It forks with fork(2) itself, not os.fork(): see fork() below.
"""

from __future__ import annotations

import ctypes
import gc
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chatd import child, helperproc, immortal, orphan, pools, rehearsal, sandbox, tls, versions
from chatd.config import Config

log = logging.getLogger("chatd.zygote")
NAME = "chatd-zygote"  # its process name (/proc/PID/comm), to tell it from the sessions
PID = struct.Struct("!i")
FORK = b"F"
COUNT = struct.Struct("!I")
# fork(2) from the C library, called with the GIL held (PyDLL), as os.fork() calls it.
_fork = ctypes.PyDLL(None, use_errno=True).fork
_bare = False  # whether fork() may skip CPython's after-fork work (set in main())
# The standard library's modules whose after-fork hook in the child (os.register_at_fork
# with after_in_child, in CPython 3.11-3.13) a session must not go without. fork() skips
# every such hook, so where one of these is imported the fork server forks with os.fork().
HOOKED = (
    "random",  # reseeds the shared generator: else every session draws the same numbers
    "asyncio.events",  # (3.12+) forgets the running loop, its policy and wakeup fd
    "concurrent.futures.thread",  # remakes its shutdown lock, which a thread may hold
)
# Not here: threading's and logging's hooks, which mend thread states and locks another
# thread may have left (the zygote has one thread: see fork()), and multiprocessing,
# whose after-fork registry runs only in the processes it starts itself.


def fork() -> int:
    """os.fork() without what CPython does around fork(2) for a process with several
    threads: its after-fork hooks (os.register_at_fork) and its own mending of the
    locks, thread states and pending signals another thread may have left. threading's
    and logging's hooks, which every session needs imported, write pages that then
    stop being shared: measured, each session held 0.2-0.4 MiB more for them. In the
    zygote they would mend nothing: it has one thread, forks only here (never inside an
    import, a logging call or a lock), and handles no signal in Python. Where that was
    not so at the start, or where a module in HOOKED is imported (main()), this is
    os.fork()."""
    if not _bare:
        return os.fork()
    pid = int(_fork())
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def why_not_bare(single: bool, modules: Mapping[str, object]) -> str | None:
    """Why fork() must be os.fork() in a process that has one thread if `single` and
    has imported `modules` (sys.modules); None if fork(2) alone is safe."""
    if not single:
        return "it could not be seen to have one thread"
    hooked = [name for name in HOOKED if name in modules]
    if hooked:
        return f"{', '.join(hooked)} imported, whose after-fork hooks sessions need"
    return None


def single_threaded() -> bool:
    """Whether this process has one thread (/proc/self/task)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def config_message(config: Config) -> bytes:
    """What the zygote needs to build sessions as the parent would (first message)."""
    return json.dumps({
        "host": config.host, "port": config.port, "data_dir": str(config.data_dir),
        "config_file": str(config.config_file) if config.config_file else None,
        "log_level": config.log_level, "values": config.values,
        "unsupported": sandbox.verdict()}).encode()


def read_config(doc: dict[str, Any]) -> Config:
    return Config(host=doc["host"], port=doc["port"], data_dir=Path(doc["data_dir"]),
                  config_file=Path(doc["config_file"]) if doc["config_file"] else None,
                  log_level=doc["log_level"], values=doc["values"])


def fork_request(count: int) -> bytes:
    return FORK + COUNT.pack(count)


def fork_spares(theirs: list[socket.socket], config: Config, context: Any,
                report: int) -> None:
    """In a middle process: fork one spare on each channel end of `theirs`, and write
    each one's pid (-1 if that fork failed) to the pipe `report`."""
    pids = []
    for end in theirs:
        try:
            pid = fork()
        except OSError as exc:
            log.error("cannot fork a spare: %s", exc)
            pid = -1
        if pid == 0:  # the spare session process
            sandbox.name_process(child.SPARE_NAME)  # at once: not taken for us
            worker = child.SessionWorker(config, tls_context=context)
            worker.chan = end
            worker.main()  # never returns
        pids.append(pid)
    os.write(report, b"".join(PID.pack(pid) for pid in pids))


def batch(chan: socket.socket, config: Config, context: Any, count: int) -> None:
    """Fork `count` spares through a middle process and hand each to the parent (its
    pid, with the parent's end of its channel) once the middle has exited: by then the
    kernel has made them the parent's children, so the parent never sees one that is
    not (yet) its own."""
    pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(count)]
    rpipe, wpipe = os.pipe()
    try:
        middle = fork()
    except OSError as exc:
        log.error("cannot fork: %s", exc)
        middle = -1
    if middle == 0:
        status = 1
        try:
            os.close(rpipe)
            fork_spares([theirs for _ours, theirs in pairs], config, context, wpipe)
            status = 0
        finally:
            os._exit(status)
    os.close(wpipe)
    for _ours, theirs in pairs:
        theirs.close()
    with os.fdopen(rpipe, "rb") as pipe:
        said = pipe.read(count * PID.size) if middle > 0 else b""
    if middle > 0:
        os.waitpid(middle, 0)
    pids = [PID.unpack_from(said, i)[0] for i in range(0, len(said), PID.size)]
    pids += [-1] * (count - len(pids))
    try:
        for pid, (ours, _theirs) in zip(pids, pairs, strict=True):
            if pid > 0:
                socket.send_fds(chan, [PID.pack(pid)], [ours.fileno()])
            else:
                chan.send(PID.pack(-1))
    finally:
        for ours, _theirs in pairs:
            ours.close()


def requests(chan: socket.socket) -> int | None:
    """Spares asked for: blocks for one request, then adds those queued behind it;
    None when the parent has closed the channel (or broken its rules)."""
    count = 0
    flags = 0
    while True:
        try:
            data = chan.recv(64, flags)
        except InterruptedError:
            continue
        except BlockingIOError:
            return count
        except OSError:
            data = b""
        if not data:
            return count or None
        if not data.startswith(FORK) or len(data) != 1 + COUNT.size:
            log.error("unexpected message from the parent: %r", data[:16])
            return None
        count += COUNT.unpack_from(data, 1)[0]
        flags = socket.MSG_DONTWAIT


def serve(chan: socket.socket, config: Config, context: Any) -> int:
    """Fork spares as asked until the parent closes the channel."""
    while True:
        count = requests(chan)
        if count is None:
            return 0
        try:
            batch(chan, config, context, count)
        except OSError:
            return 0  # the parent is gone: so is every spare it did not take


def main(argv: list[str]) -> int:
    chan = socket.socket(fileno=int(argv[0]))
    helperproc.begin(NAME, "zygote", argv[1] if len(argv) > 1 else "info")
    first = chan.recv(1 << 22)
    if not first:
        return 0
    doc = json.loads(first)
    config = read_config(doc)
    try:
        sandbox.prime(doc["unsupported"], config.user)
        context = (tls.ServerTLS(config.values, config.config_file).context
                   if config.tls_cert else None)
        orphan.prefix(config.data_dir)  # each session's adoption socket name: made once
        single = single_threaded()  # (while /proc can still be read)
        loops = rehearsal.connections()  # (while it may still connect)
        # Last: from here on this process has what each session it forks would get (the
        # user, the filter but for forking), so a session only adds the rest.
        sandbox.lock_fork_server(config)
    except (OSError, sandbox.SandboxError, tls.TLSConfigError) as exc:
        log.error("the fork server cannot start: %s", exc)
        return 1
    try:  # so that sessions find what runs first specialized
        served = rehearsal.rehearse(config, loops=loops)
        log.debug("rehearsed a session's first steps: %d times its core, %d times its loop",
                  rehearsal.ROUNDS, served)
    except Exception:  # (a bug of ours: sessions start unrehearsed, as they used to)
        log.exception("the rehearsal of a session's first steps failed")
    gc.collect()
    # What exists now is every session's: versioned, so that the interpreter's caches do
    # not write it (chatd/versions.py), immortal, so that using it does not copy its
    # pages (chatd/immortal.py), and frozen, so that the collector keeps off them; and
    # what a session makes goes to pools of its own (chatd/pools.py), filled after
    # immortalize() has allocated and freed its bookkeeping (measured, interleaved: an
    # idle joined session ~34 KiB less PSS with 3.13 than the other way round, 3.12
    # within the noise; with 3.11 immortalize() does nothing).
    versions.assign()
    immortal.immortalize()
    pools.fill_pools()
    gc.freeze()
    # Decided last, once all is imported that the fork server imports (serving imports
    # nothing more).
    global _bare
    reason = why_not_bare(single, sys.modules)
    _bare = reason is None
    if reason is None:
        log.debug("the fork server forks with fork(2) alone")
    else:
        log.warning("the fork server forks with os.fork(), which costs each session pages:"
                    " %s", reason)
    return serve(chan, config, context)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
