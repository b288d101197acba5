"""The auth helper as a real forked process: spawn, requests, death and a new helper."""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import scramp
import serverproc

from chatd.authhelper import HelperBroken, HelperBusy, HelperClient, RestartPolicy, spawn
from chatd.authservice import AuthSettings
from chatd.protocol import pack

FAST = 4096
PASSWORD = "correct horse battery"
IP = "192.0.2.1"


class Parent:
    """What the server's parent will do, in miniature: spawn, send, read, reap."""

    def __init__(self, path: Path, iterations: int = FAST, **kwargs: Any) -> None:
        self.path, self.iterations, self.kwargs = path, iterations, kwargs
        self.start()

    def start(self) -> None:
        self.helper = spawn(self.path, AuthSettings(iterations=self.iterations), **self.kwargs)
        self.client = HelperClient()

    def send(self, op: str, token: Any = None, **fields: Any) -> int:
        rid = self.client.request(op, token, **fields)
        self.helper.chan.sendall(self.client.out)
        self.client.out.clear()
        return rid

    def replies(self, count: int, timeout: float = 20.0) -> list[tuple[Any, dict[str, Any]]]:
        got: list[tuple[Any, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"only {len(got)} of {count} replies"
            if select.select([self.helper.chan], [], [], remaining)[0]:
                data = self.helper.chan.recv(65536)
                assert data, "the helper closed the channel"
                got += self.client.receive_data(data)
        return got

    def call(self, op: str, **fields: Any) -> dict[str, Any]:
        self.send(op, op, **fields)
        return self.replies(1)[0][1]

    def plain(self, name: str, password: str) -> dict[str, Any]:
        return self.call("plain", data=f"\0{name}\0{password}".encode(), ip=IP)

    def reap(self, timeout: float = 10.0) -> int:
        """The helper's wait status, once it has exited."""
        status = serverproc.reap(self.helper.pid, timeout)
        assert status is not None, "the helper was reaped already"
        return status

    def stop(self) -> None:
        self.helper.chan.close()
        try:
            serverproc.reap(self.helper.pid)  # None if a test reaped it already
        except AssertionError:
            os.kill(self.helper.pid, signal.SIGKILL)
            os.waitpid(self.helper.pid, 0)


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[Parent]:
    p = Parent(tmp_path / "accounts.sqlite3")
    yield p
    p.stop()


def test_register_and_log_in_through_the_process(parent: Parent) -> None:
    assert parent.call("register", account="alice", password=PASSWORD, ip=IP)["ok"]
    assert parent.plain("alice", PASSWORD)["account"] == "alice"
    wrong, unknown = parent.plain("alice", "not it"), parent.plain("nobody", "not it")
    assert wrong["code"] == unknown["code"] == "auth_failed"
    assert wrong["message"] == unknown["message"]
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    first = parent.call("scram_start", ex=1, data=client.get_client_first().encode(), ip=IP)
    client.set_server_first(first["data"].decode())
    final = parent.call("scram_finish", ex=1, data=client.get_client_final().encode())
    client.set_server_final(final["data"].decode())
    assert final["account"] == "alice"
    assert parent.call("owner", nick="ALICE")["account"] == "alice"


def test_the_helper_keeps_no_inherited_fd(tmp_path: Path) -> None:
    stray = socket.socket()  # stands for the listener and the sessions' channels
    try:
        p = Parent(tmp_path / "accounts.sqlite3")
        try:
            assert p.call("stats")["ok"]
            fds = {name: os.readlink(f"/proc/{p.helper.pid}/fd/{name}")
                   for name in os.listdir(f"/proc/{p.helper.pid}/fd")}
            assert f"socket:[{os.fstat(stray.fileno()).st_ino}]" not in fds.values()
            others = {fd: t for fd, t in fds.items() if int(fd) > 2
                      and not t.startswith(str(tmp_path))}
            assert len(others) == 1  # its channel
        finally:
            p.stop()
    finally:
        stray.close()


def test_the_helper_exits_when_the_parent_closes(parent: Parent) -> None:
    assert parent.call("stats")["ok"]
    parent.helper.chan.close()
    status = parent.reap()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_sigterm_ends_it(parent: Parent) -> None:
    os.kill(parent.helper.pid, signal.SIGTERM)
    status = parent.reap()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_killed_then_replaced_with_nothing_lost(parent: Parent) -> None:
    assert parent.call("register", account="alice", password=PASSWORD, ip=IP)["ok"]
    client = scramp.ScramClient(["SCRAM-SHA-256"], "alice", PASSWORD)
    assert parent.call("scram_start", ex=7, data=client.get_client_first().encode(),
                       ip=IP)["ok"]
    parent.send("stats", "in flight")  # may or may not be answered before the kill
    os.kill(parent.helper.pid, signal.SIGKILL)
    status = parent.reap()
    assert os.WIFSIGNALED(status)
    while select.select([parent.helper.chan], [], [], 5.0)[0]:
        try:
            data = parent.helper.chan.recv(65536)
        except ConnectionResetError:  # it died with our request unread
            break
        if not data:
            break  # end of stream: the helper is gone
        parent.client.receive_data(data)
    lost = parent.client.lost()
    assert lost in ([], ["in flight"])
    parent.helper.chan.close()
    policy = RestartPolicy()
    policy.started(0.0)
    assert policy.died(1.0) == 1.0  # the first death: a new helper at once
    parent.start()
    assert parent.plain("alice", PASSWORD)["account"] == "alice"  # the account survived
    # The exchange did not (it lived in the dead helper's memory): start again.
    assert parent.call("scram_finish", ex=7, data=b"c=biws,r=x,p=AAAA")["code"] == "no_exchange"


def test_over_its_queue_it_refuses_at_once(tmp_path: Path) -> None:
    # Slow hashes and a queue of 2: most of a burst must be refused, none lost.
    p = Parent(tmp_path / "accounts.sqlite3", iterations=200_000, max_queue=2)
    try:
        burst = 12
        ids = [p.send("plain", i, data=b"\0nobody\0guess", ip=f"192.0.2.{i}")
               for i in range(burst)]
        got = p.replies(burst)
        assert sorted(token for token, _ in got) == list(range(burst))
        codes = [reply["code"] for _, reply in got]
        assert codes.count("auth_unavailable") >= 1
        assert codes.count("auth_failed") >= 2
        assert set(codes) == {"auth_unavailable", "auth_failed"}
        assert len(ids) == burst
    finally:
        p.stop()


def test_a_broken_frame_from_the_parent_ends_it(parent: Parent) -> None:
    parent.helper.chan.sendall(b"\xff\xff\xff\xff")  # a frame far over the bound
    status = parent.reap()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2


def test_undecodable_requests_get_an_error(parent: Parent) -> None:
    parent.helper.chan.sendall(b"\x00\x00\x00\x01\xc1" + pack({"id": 5, "op": "nope"}))
    assert parent.call("stats")["ok"]  # it carried on


def test_the_client_bounds_requests_in_flight() -> None:
    client = HelperClient(max_pending=2)
    client.request("stats", "a")
    client.request("stats", "b")
    with pytest.raises(HelperBusy):
        client.request("stats", "c")
    replies = pack({"id": 2, "ok": True}) + pack({"id": 99, "ok": True})
    assert client.receive_data(replies[:5]) == []
    assert client.receive_data(replies[5:]) == [("b", {"id": 2, "ok": True})]
    assert client.lost() == ["a"]
    assert client.pending == {} and not client.out


def test_restart_policy_backs_off_a_crash_loop() -> None:
    policy = RestartPolicy(first=0.1, cap=1.0, stable=60.0)
    now = 0.0
    delays = []
    for _ in range(6):
        policy.started(now)
        now += 1.0  # it dies a second after each start
        at = policy.died(now)
        delays.append(round(at - now, 3))
        now = at
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    policy.started(now)
    assert policy.died(now + 61.0) == now + 61.0  # after a good long run: at once again


@pytest.mark.parametrize("garbage", [b"\x00\x00\x00\x01\xc1", b"\x7f\xff\xff\xff"])
def test_a_helper_that_sends_garbage_is_broken(garbage: bytes) -> None:
    client = HelperClient()
    client.request("stats", "a")
    with pytest.raises(HelperBroken):
        client.receive_data(garbage)
    assert client.lost() == ["a"]
