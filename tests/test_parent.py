"""Unit tests of the parent's admission, reaping, reload and escalation, with fakes.

No process is started: os.waitpid and os.kill are patched (as gunicorn's arbiter tests
do), session channels are socketpairs nobody serves, and the time is passed in.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import msgpack
import pytest

from chatd.admission import Gate
from chatd.config import Config, parse_settings
from chatd.lifecycle import Lifecycle, ParentState
from chatd.master import Master
from chatd.protocol import FrameDecoder
from chatd.sessiontable import SessionTable


def config(tmp_path: Path, **sections: dict[str, object]) -> Config:
    return Config(data_dir=tmp_path / "data").with_values(parse_settings(sections))


def refusal_error(frame: bytes | None) -> dict[str, object]:
    assert frame is not None
    decoder = FrameDecoder(1 << 16)
    decoder.receive_data(frame)
    (payload,) = list(decoder.payloads())
    body: dict[str, object] = msgpack.unpackb(payload)
    return body


# ---- admission ----


def test_admission_checks_the_source_rate_first_then_the_caps_then_the_session_rate(
        tmp_path: Path) -> None:
    gate = Gate(config(tmp_path, limits={"conn_burst_per_ip": 2, "conn_rate_per_ip": 1.0,
                                         "max_sessions": 3, "max_sessions_per_ip": 2,
                                         "session_burst": 1, "session_rate": 1.0}), 0.0)
    assert gate.refusal("10.0.0.1", "10.0.0.1", 0.0, 0, {}) is None
    # At the per-source cap, but the source rate is checked (and spent) first.
    err = refusal_error(gate.refusal("10.0.0.1", "10.0.0.1", 0.0, 1, {"10.0.0.1": 2}))
    assert err["limit"] == "max_sessions_per_ip"
    err = refusal_error(gate.refusal("10.0.0.1", "10.0.0.1", 0.0, 1, {}))
    assert err["limit"] == "conn_rate_per_ip" and err["code"] == "too_many_connections"
    assert float(err["retry_after"]) > 0  # type: ignore[arg-type]
    err = refusal_error(gate.refusal("10.0.0.2", "10.0.0.2", 0.0, 3, {}))
    assert err["limit"] == "max_sessions" and err["code"] == "server_full"
    # The session bucket held one token, taken by the first admission.
    err = refusal_error(gate.refusal("10.0.0.3", "10.0.0.3", 0.0, 1, {}))
    assert err["limit"] == "session_rate" and err["code"] == "server_busy"
    assert gate.refusal("10.0.0.3", "10.0.0.3", 1.0, 1, {}) is None


# ---- the session table, reaping and escalation ----


@pytest.fixture
def chans() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def pair(chans: list[socket.socket]) -> socket.socket:
    ours, theirs = socket.socketpair()
    chans += [ours, theirs]
    return ours


def test_reaping_frees_slots_and_spares_and_logs_how_each_ended(
        chans: list[socket.socket], caplog: pytest.LogCaptureFixture) -> None:
    table = SessionTable()
    ok = table.add(101, pair(chans), "aa", "10.0.0.1", 4096)
    table.add(102, pair(chans), "bb", "10.0.0.1", 4096)
    table.spares[103] = pair(chans)
    assert table.per_ip == {"10.0.0.1": 2} and len(table) == 3
    table.doom(ok.pid, 5.0)
    with caplog.at_level(logging.INFO, "chatd.master"):
        table.reaped(101, 0)
        table.reaped(102, signal.SIGKILL)  # a raw status: killed by signal 9
        table.reaped(103, 1 << 8)
    assert not table.children and not table.spares and not table.per_ip
    assert not table.kill_deadline and len(table) == 0
    assert "session aa (pid 101) ended: exit status 0" in caplog.text
    assert "session bb (pid 102) ended: killed by SIGKILL" in caplog.text
    assert "spare pid 103 ended before it had a client" in caplog.text
    assert table.by_sid  # the channels stay until their EOF tells the broker


def test_an_earlier_kill_deadline_stands_and_only_overdue_processes_are_killed(
        chans: list[socket.socket]) -> None:
    table = SessionTable()
    early = table.add(201, pair(chans), "aa", "10.0.0.1", 4096)
    late = table.add(202, pair(chans), "bb", "10.0.0.2", 4096)
    table.doom(early.pid, 1.0)
    table.doom(early.pid, 9.0)  # told again later: the first deadline stands
    table.doom(late.pid, 3.0)
    table.doom(999, 1.0)  # not ours (reaped already): never signalled
    assert table.kill_deadline == {201: 1.0, 202: 3.0}
    assert table.next_kill(0.5) == pytest.approx(0.5)
    with mock.patch("os.kill") as kill:
        assert table.kill_overdue(2.0, set(), "why") == [201]
        kill.assert_called_once_with(201, signal.SIGKILL)
    # A killed session holds no slot any more, but is still ours to reap.
    assert 201 not in table.children and 201 in table.retiring
    assert table.per_ip == {"10.0.0.2": 1}
    table.reaped(201, signal.SIGKILL)
    assert 201 not in table.retiring


def test_lifecycle_stops_then_kills_at_the_stop_deadline_then_ends() -> None:
    life = Lifecycle()
    assert life.advance(100.0, 5) is ParentState.RUNNING  # only a signal stops it
    assert life.stop(10.0, 8.0) and not life.stop(11.0, 8.0)  # once
    assert life.timeout(12.0) == pytest.approx(6.0)
    assert life.advance(17.9, 2) is ParentState.STOPPING
    assert life.advance(18.0, 2) is ParentState.KILLING
    assert life.timeout(18.0) is None
    assert life.advance(18.5, 0) is ParentState.STOPPED


def test_a_parent_with_nothing_left_stops_before_its_deadline() -> None:
    life = Lifecycle()
    life.stop(0.0, 8.0)
    assert life.advance(0.1, 0) is ParentState.STOPPED


# ---- the parent, with patched waitpid and kill ----


@pytest.fixture
def master(tmp_path: Path) -> Iterator[Master]:
    m = Master(config(tmp_path))
    yield m
    m.store.close()
    m.sel.close()
    for kid in list(m.table.children.values()):
        kid.chan.close()


def fake_session(master: Master, pid: int, ip: str = "10.0.0.1") -> socket.socket:
    """Register a session process that does not exist; returns its end of the channel."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    master.register(pid, ours, f"s{pid}", ip)
    return theirs


def test_sigchld_reaps_until_none_is_left(master: Master) -> None:
    theirs = [fake_session(master, pid) for pid in (301, 302)]
    master.router.doom(301)
    statuses = iter([(301, 0), (302, 1 << 8), (0, 0)])
    with mock.patch("os.waitpid", side_effect=lambda *_: next(statuses)) as waitpid:
        master.handle_sigchld()
    assert waitpid.call_count == 3
    assert not master.table.children and not master.table.kill_deadline
    assert not master.table.per_ip
    with mock.patch("os.waitpid", side_effect=ChildProcessError):
        master.handle_sigchld()  # no children at all: returns
    for sock in theirs:
        sock.close()


def test_sigterm_tells_every_session_and_kills_what_outlives_the_stop_deadline(
        master: Master) -> None:
    theirs = fake_session(master, 401)
    master.listeners = []
    master.router.clock = lambda: 1000.0
    with mock.patch("time.monotonic", return_value=1000.0):
        master.handle_sigterm()
    assert master.life.state is ParentState.STOPPING
    stop = master.config.close_grace + master.config.stop_timeout
    assert master.table.kill_deadline == {401: 1000.0 + stop}
    theirs.setblocking(False)
    told = theirs.recv(65536)
    assert b"shutting_down" in told and b"close" in told
    assert master.life.advance(1000.0 + stop, len(master.table)) is ParentState.KILLING
    with mock.patch("os.kill") as kill:
        master.table.kill_overdue(1000.0 + stop, master.reader.pids, "why")
    kill.assert_called_once_with(401, signal.SIGKILL)
    with mock.patch("os.waitpid", side_effect=[(401, signal.SIGKILL), (0, 0)]):
        master.handle_sigchld()
    assert master.life.advance(1000.0 + stop, len(master.table)) is ParentState.STOPPED
    theirs.close()


def test_sighup_applies_a_new_file_everywhere_and_keeps_the_old_one_when_bad(
        master: Master, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "chatd.toml"
    path.write_text("[limits]\nmax_sessions = 7\nconn_rate_per_ip = 3.0\n")
    master.config = master.config.__class__(data_dir=master.config.data_dir,
                                            config_file=path, values=master.config.values)
    theirs = fake_session(master, 501)
    spare, spare_theirs = socket.socketpair()
    master.table.spares[502] = spare
    with caplog.at_level(logging.INFO, "chatd.master"):
        master.handle_sighup()
    assert master.config.max_sessions == 7
    assert master.broker.config is master.config is master.router.config
    assert master.gate.config is master.config and master.gate.sources.rate == 3.0
    assert 502 in master.table.retiring and not master.table.spares  # forked with old ones
    theirs.setblocking(False)
    assert b"config" in theirs.recv(65536)  # the session hears of the new values
    path.write_text("[limits]\nmax_sessions = 'many'\n")
    with caplog.at_level(logging.INFO, "chatd.master"):
        master.handle_sighup()
    assert master.config.max_sessions == 7
    assert "SIGHUP: keeping the old configuration" in caplog.text
    theirs.close()
    spare_theirs.close()


def test_waitpid_status_helpers_read_real_statuses() -> None:
    # The statuses used above are what waitpid returns: exit code << 8, or the signal.
    assert os.WIFSIGNALED(signal.SIGKILL) and os.WEXITSTATUS(1 << 8) == 1
