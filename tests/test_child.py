"""The session process as a worker object (chatd/child.py): its exit statuses name why it
ended."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from chatd import child
from chatd.config import Config


def run_forked(worker: child.SessionWorker) -> int:
    ours, worker.chan = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        worker.main()
    worker.chan.close()
    ours.close()  # a spare sees its channel close and is retired
    _pid, status = os.waitpid(pid, 0)
    return status


def test_exit_reasons_are_named() -> None:
    assert child.exit_reason(0) == "exit status 0"
    assert child.exit_reason(1 << 8) == "exit status 1 (over a resource limit)"
    assert child.exit_reason(child.EXIT_CRASHED << 8) == "exit status 2 (crashed)"
    assert child.exit_reason(signal.SIGKILL) == "killed by SIGKILL"


def test_a_retired_spare_exits_ok() -> None:
    status = run_forked(child.SessionWorker(Config()))
    assert os.waitstatus_to_exitcode(status) == child.EXIT_OK


def test_a_crash_and_a_failed_start_have_their_own_status(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: child.SessionWorker) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(child.SessionWorker, "run", boom)
    assert os.waitstatus_to_exitcode(run_forked(child.SessionWorker(Config()))) == \
        child.EXIT_CRASHED
    monkeypatch.setattr(child.SessionWorker, "init_process", boom)
    assert os.waitstatus_to_exitcode(run_forked(child.SessionWorker(Config()))) == \
        child.EXIT_BOOT_ERROR
