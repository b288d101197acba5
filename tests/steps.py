"""Counting work instead of timing it: how many Python steps a piece of code takes.

Tests prove "O(log n) per insert" or "O(screen) per key" by counting, so they hold on a
loaded machine and fail the same way every time when an O(n) walk comes back.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


class StepCounter:
    """A trace function (sys.settrace) that counts calls and executed lines in the given
    source files, and nothing else. `count` may be read from another thread."""

    def __init__(self, *files: str) -> None:
        self.files = set(files)
        self.count = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename not in self.files:
            return None
        self.count += 1
        return self._line

    def _line(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.count += 1
        return self._line


def count_steps(fn: Callable[[], Any], *files: str) -> int:
    """Calls plus executed lines of code in the given source files while fn runs."""
    counter = StepCounter(*files)
    previous = sys.gettrace()
    sys.settrace(counter)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return counter.count
