"""Making the fork server's objects immortal, so that its sessions keep sharing them.

A forked process that only reads an object still writes it: every reference CPython
takes or drops changes the object's reference count, so each page holding an object a
session merely looks at (a function it calls, a constant, a class, a module's dict)
is copied into that session. CPython 3.12 and 3.13 have immortal objects (PEP 683):
an object whose count holds the immortal value is never counted, so never written,
and never freed. Their interpreter gives it to its own static objects (None, small
ints, interned strings); PEP 683 names this use, a pre-fork server's heap made
immortal before it forks, as its motivation (Instagram's Cinder does it for its web
servers).

`immortalize()` gives the immortal count to every object the fork server holds when it
is ready to fork: what the garbage collector tracks, what those objects refer to, and
the constants of code objects (which it does not see), transitively.
Nothing else changes: an immortal object is mutable as before, only never freed, which
for what the fork server holds at that point (its modules, their functions and
constants, the configuration, the TLS context) is what happens anyway; a session
forked from it ends with os._exit(), without freeing anything. Measured, an idle
joined session held ~40 % fewer private pages.

Where the interpreter has no such immortal count (3.11, 32-bit builds, the
free-threaded build, whose counts are laid out otherwise, or a later CPython whose
immortal value may differ), nothing is done.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import sysconfig
from types import CodeType

IMMORTAL = 0xFFFFFFFF  # _Py_IMMORTAL_REFCNT of CPython 3.12 and 3.13 on 64-bit builds


def supported() -> bool:
    """Whether this interpreter counts references as immortalize() expects."""
    return _SUPPORTED


_SUPPORTED = (sys.implementation.name == "cpython"
              and sys.version_info[:2] in ((3, 12), (3, 13))
              # (read on import: sysconfig may need its files, which the fork server's
              # sandbox takes away before it immortalizes)
              and not sysconfig.get_config_var("Py_GIL_DISABLED")
              and sys.getrefcount(None) == IMMORTAL)


def immortalize() -> int:
    """Make every object reachable from what the collector tracks immortal (see above);
    returns how many objects were changed (0 where not supported). For a process with
    one thread, right before gc.freeze()."""
    if not supported():
        return 0
    count = ctypes.c_ssize_t  # ob_refcnt, the object's first field
    todo = gc.get_objects()
    seen: set[int] = set()  # (made after: itself in todo, it and its ids would stay for good)
    changed = 0
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        refcnt = count.from_address(id(obj))
        if refcnt.value != IMMORTAL:
            refcnt.value = IMMORTAL
            changed += 1
        todo += gc.get_referents(obj)
        if type(obj) is CodeType:  # (which the collector does not see into)
            todo += obj.co_consts  # counted at each use; names are interned: immortal
    return changed
