"""Counting work instead of timing it: how many Python steps a piece of code takes.

Tests prove "O(log n) per insert" or "O(screen) per key" by counting, so they hold on a
loaded machine and fail the same way every time when an O(n) walk comes back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


def count_steps(fn: Callable[[], Any], *files: str) -> int:
    """Calls plus executed lines of code in the given source files while fn runs."""
    count = 0

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        if frame.f_code.co_filename not in files:
            return None
        count += 1
        return local

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count
