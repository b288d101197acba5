"""A tiny run of each scenario of chatd/bench/clients.py (burst, steady, idle, connect):
the report's shape and zero loss.

Keeps the benchmark working; it asserts no timing (the numbers live in README).
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from chatd.bench import load

SMOKE = {
    "burst": ["--clients", "6", "--senders", "3", "--messages", "20"],
    "steady": ["--clients", "4", "--senders", "2", "--messages", "5", "--rate", "100"],
    "idle": ["--clients", "8", "--room-size", "3", "--settle", "0"],
    "connect": ["--clients", "6", "--inflight", "2,6"],
}
PHASE_KEYS = {"phase", "seconds", "server_cpu_s", "server_cpu_parent_s",
              "server_cpu_sessions_s", "loadgen_cpu_s", "loadgen_cpu_pct"}


def run_bench(scenario: str, *extra: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "chatd", "bench", scenario, "--json", "--quiet",
           "--timeout", "20", *SMOKE[scenario], *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def check_memory(report: dict[str, Any], sessions: int) -> None:
    mem = report["memory"]
    assert mem["sessions"] >= sessions
    for part in ("parent", "sessions_total", "per_session", "total", "total_per_session"):
        assert set(mem[part]) == {"rss", "pss", "uss"}
        assert mem[part]["rss"] >= mem[part]["pss"] >= mem[part]["uss"] > 0
    assert report["parent_fds"] > sessions


@pytest.mark.parametrize("scenario,generators", [("burst", 3), ("steady", 1)])
def test_delivery_scenarios(scenario: str, generators: int) -> None:
    report = run_bench(scenario, "--generators", str(generators))
    assert report["params"]["generators"] == generators
    assert report["ok"] is True
    assert report["scenario"] == scenario and report["server"]["spawned"] is True
    connect, deliver = report["phases"]
    assert set(connect) >= PHASE_KEYS and set(deliver) >= PHASE_KEYS
    assert deliver["generators"] == generators  # (the helpers' deliveries count too)
    clients, senders = report["params"]["clients"], report["params"]["senders"]
    assert connect["connected"] == clients and connect["failed"] == 0
    messages = senders * report["params"]["messages"]
    assert deliver["messages"] == deliver["acks"] == messages
    assert deliver["expected"] == messages * clients  # one room; the sender hears it too
    assert deliver["received"] == deliver["expected"]
    assert deliver["lost"] == 0 and deliver["duplicates"] == 0 and deliver["errors"] == {}
    assert set(deliver["latency_ms"]) == {"p50", "p90", "p99", "max"}
    assert deliver["latency_ms"]["max"] >= deliver["latency_ms"]["p50"] >= 0
    if load.SO_TIMESTAMPNS is not None:  # each frame reached its socket before it was read
        arrival = deliver["arrival_ms"]
        assert set(arrival) == {"p50", "p90", "p99", "max"}
        assert all(0 <= arrival[q] <= deliver["latency_ms"][q] for q in arrival)
        # into the sockets between the first send and the last arrival, inside the phase
        # (whose length is rounded to 0.1 ms: the 1 %)
        assert deliver["deliveries_per_second_at_sockets"] >= \
            0.99 * deliver["deliveries_per_second"] > 0
    assert deliver["server_cpu_s"] > 0 and deliver["server_cpu_us_per_delivery"] > 0
    assert deliver["session_cpu_us_per_delivery"] > 0
    assert deliver["parent_cpu_us_per_delivery"] >= 0
    # Every session slept in epoll_wait at least once meanwhile (it was woken to relay).
    assert deliver["session_wakeups"] >= clients and deliver["parent_wakeups"] >= 0
    assert deliver["session_wakeups_per_message"] == \
        round(deliver["session_wakeups"] / messages, 2)
    check_memory(report, clients)


@pytest.mark.skipif(load.SO_TIMESTAMPNS is None, reason="no SO_TIMESTAMPNS value known here")
def test_a_stamped_socket_says_when_the_kernel_received_what_it_reads() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        sock = asyncio.run(load.stamped_connection("127.0.0.1", port, None))
        peer, _addr = server.accept()
        with sock, peer:
            before = time.time_ns()
            peer.sendall(b"hello")
            assert select.select([sock], [], [], 10)[0]
            data = sock.recv(64)
            after = time.time_ns()
    assert data == b"hello"
    assert before <= sock.stamp <= after  # CLOCK_REALTIME, as the kernel stamps it


def test_a_stamped_connection_tries_each_address_in_turn() -> None:
    """As loop.create_connection: a name may resolve first to an address nobody listens
    on (localhost to ::1, say); the next one is tried, and the last refusal raised."""
    with socket.create_server(("127.0.0.1", 0)) as server, socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused
        dead, live = unused.getsockname(), server.getsockname()

        async def attempt(*addrs: tuple[str, int]) -> load.StampedSocket:
            async def resolve(*_args: Any, **_kwargs: Any) -> list[Any]:
                return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in addrs]
            asyncio.get_running_loop().getaddrinfo = resolve  # type: ignore[method-assign]
            return await load.stamped_connection("bench.invalid", live[1], None)

        with asyncio.run(attempt(dead, live)) as sock:
            assert sock.getpeername() == live
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(attempt(dead))


def test_idle() -> None:
    report = run_bench("idle")
    assert report["ok"] is True
    (connect,) = report["phases"]
    assert connect["connected"] == 8 and connect["failed"] == 0
    check_memory(report, 8)
    assert report["responsiveness"]["new_session_ms"] > 0
    assert report["responsiveness"]["broker_round_trip_ms"] > 0
    assert [t["name"] for t in report["targets"]] == [
        "PSS per idle session", "new session", "broker round trip"]


def test_connect() -> None:
    report = run_bench("connect")
    assert report["ok"] is True
    runs = report["phases"]
    assert [r["inflight"] for r in runs] == [2, 6]
    for run in runs:
        assert set(run) >= PHASE_KEYS
        assert run["connected"] == 6 and run["failed"] == 0 and run["failures"] == {}
        assert run["per_second"] > 0 and run["server_cpu_us_per_session"] > 0
        costs = run["start_costs"]  # what a new session cost its own process
        assert costs["sessions"] >= 6
        assert costs["session_cpu_ms"] > 0 and costs["session_faults"] > 0
        assert costs["cores"] >= 1


def test_human_report_and_text_output() -> None:
    cmd = [sys.executable, "-m", "chatd", "bench", "burst", "--quiet", *SMOKE["burst"]]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    for word in ("deliveries", "latency p50", "server CPU", "loadgen CPU", "memory",
                 "parent fds", "result         OK"):
        assert word in done.stdout


def test_targets_say_met_or_by_how_much_and_why() -> None:
    from chatd.bench.clients import targets

    phase = {"phase": "deliver", "lost": 0, "duplicates": 0, "deliveries_per_second": 500_000,
             "server_cpu_us_per_delivery": 0.3, "session_wakeups_per_message": 2.5,
             "latency_ms": {"p50": 1.0, "p99": 8.0}}
    cpu, wakeups, rate = targets({"scenario": "burst", "phases": [phase], "memory": None})
    assert cpu["met"] and "why" not in cpu
    assert not wakeups["met"] and wakeups["missed_by"] == 2.5 and wakeups["why"]
    assert not rate["met"] and rate["missed_by"] == 2.0 and rate["why"]
    p50, p99 = targets({"scenario": "steady", "phases": [phase], "memory": None})
    assert p50["met"] and not p99["met"] and p99["missed_by"] == 2.0
    idle = {"scenario": "idle", "phases": [], "memory": None,
            "responsiveness": {"new_session_ms": 100.0, "broker_round_trip_ms": 1.0}}
    fork, round_trip = targets(idle)
    assert not fork["met"] and fork["missed_by"] == 2.0 and fork["why"]
    assert round_trip["met"]


def test_the_connect_target_says_what_a_new_session_costs() -> None:
    from chatd.bench.clients import WHY, targets

    phase = {"phase": "connect x1000", "inflight": 1000, "failed": 0, "connected": 1000,
             "per_second": 500.0, "server_cpu_us_per_session": 2500.0,
             "server_cpu_parent_s": 0.2,
             "start_costs": {"sessions": 1000, "spares": 10, "session_cpu_ms": 2.0,
                             "session_faults": 300, "spare_cpu_ms": 1.0, "spare_faults": 200,
                             "cores": 2}}
    (rate,) = targets({"scenario": "connect", "phases": [phase], "memory": None})
    assert not rate["met"] and rate["missed_by"] == 3.0
    assert "2.50 ms of CPU per new session, so 2 cores do at most 800 a second" in rate["why"]
    assert "2.00 ms, with 300 minor page faults" in rate["why"]
    assert "the parent 0.20 ms" in rate["why"]
    assert "1.00 ms and 200 faults of that to start as a spare" in rate["why"]
    (rate,) = targets({"scenario": "connect", "phases": [{**phase, "start_costs": None}],
                       "memory": None})
    assert rate["why"] == WHY["connect"]  # (a server on another host: no /proc of its own)
