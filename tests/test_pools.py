"""chatd/pools.py: the fork server takes the free blocks of CPython's small-object
allocator. Run in a fresh interpreter: what it takes is never freed."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json
from chatd import pools

def free_blocks():
    return {int(size): int(free) for size, free in pools.SIZE_CLASS.findall(pools._report())}

before = free_blocks()
taken = pools.fill_pools()
print(json.dumps({"before": before, "taken": taken, "after": free_blocks()}))
"""


def test_the_free_blocks_of_each_size_class_are_taken() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, check=True)
    out = json.loads(done.stdout)
    before = {int(size): free for size, free in out["before"].items()}
    after = {int(size): free for size, free in out["after"].items()}
    # The allocator's report reads as expected: 32 size classes of 16 to 512 bytes.
    assert sorted(before) == list(range(16, 513, 16))
    # (less the few blocks the first report's own figures took meanwhile)
    assert out["taken"] >= sum(free for size, free in before.items() if size >= 32) - 256
    # What is left free is about the tail of one pool (16 KiB) opened meanwhile, and
    # the few blocks the report's own parsing let go of.
    assert all(after[size] <= 16384 // size + 64 for size in after if size >= 32)
