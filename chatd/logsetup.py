"""Logging: every line carries the process id and the session it serves."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s chatd[%(process)d] %(session)s %(name)s: %(message)s"


class SessionFilter(logging.Filter):
    """Stamps each record with the current process's session (or 'master')."""

    session = "master"

    def filter(self, record: logging.LogRecord) -> bool:
        record.session = SessionFilter.session
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(SessionFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def set_session(name: str) -> None:
    SessionFilter.session = name
