"""Giving the fork server's classes and module namespaces their version numbers before it
forks, so that its sessions do not write them.

CPython's specializing interpreter (3.11+) caches what a name lookup found under a
version number of where it looked: a class's attribute (in the interpreter's type cache
and in the instructions that used it) under the class's version tag, a module's global
under the version of its namespace's keys. Each is given lazily, the first time some
lookup is cached, by writing it into the class or the keys: a session that is the first
to use a class or a module of the fork server's wrote that page, and so copied it
(measured page by page with 3.12: ~15 pages of classes and ~9 of namespaces per idle
joined session). The rehearsal (chatd/rehearsal.py) versions what it runs; assign() gives
every class and namespace the fork server holds its version, just before it forks. A
later change to a class or a namespace's keys gives it a new one, as it would have anyway.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import types

# A module's attribute loaded often enough to be specialized (3.11 specializes code only
# after 8 runs of it; 3.12 and 3.13 an instruction at its second run), which versions
# the module's namespace keys. One fresh copy per module: specialized once, it stays so.
PROBE = compile("for _ in range(16): module.__name__", "<versions>", "exec")


def assign() -> tuple[int, int]:
    """Version every class and every module namespace this process holds (see above);
    returns how many classes and modules were seen."""
    classes = 0
    for obj in gc.get_objects():
        if issubclass(type(obj), type):
            # a lookup through the type cache tags the class and its bases
            with contextlib.suppress(Exception):
                getattr(obj, "__init__", None)
                classes += 1
    modules = 0
    for module in list(sys.modules.values()):
        if isinstance(module, types.ModuleType):
            with contextlib.suppress(Exception):
                exec(PROBE.replace(), {"module": module})
                modules += 1
    return classes, modules
