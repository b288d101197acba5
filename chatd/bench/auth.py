"""`chatd bench auth`: what a login costs the auth helper, and the helper's memory.

Spawns the real helper (chatd.authhelper) on a temporary accounts database with the
given iteration count (default: the server's), registers accounts, then times through
the process channel: PLAIN logins with the right password, a wrong one and an unknown
account (these two must cost the same: the error does not say whether an account
exists), and SCRAM-SHA-256 logins (the helper's share, and the client's PBKDF2 apart).
Memory is the helper's PSS/USS from /proc/PID/smaps_rollup after the run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import scramp

from chatd.accounts import DEFAULT_ITERATIONS, MAX_ITERATIONS, MIN_ITERATIONS
from chatd.authhelper import HelperClient, spawn
from chatd.authlimit import LimitSettings
from chatd.authservice import AuthSettings

from .probes import smaps_rollup
from .report import kib

OPEN = LimitSettings(account_burst=10**9, address_burst=10**9, register_burst=10**9)
PASSWORD = "correct horse battery staple"
# (name, low, high, unit): a PLAIN login's hash within "tens to a hundred ms"; a wrong
# password and an unknown account within 15 % of each other; a small helper.
TARGETS = (("plain_ms", 20.0, 100.0, "ms"), ("unknown_vs_wrong", 0.85, 1.15, "x"),
           ("pss_kib", 0.0, 20 * 1024, "KiB"))


class Channel:
    def __init__(self, path: Path, iterations: int) -> None:
        self.helper = spawn(path, AuthSettings(iterations=iterations, limits=OPEN))
        self.client = HelperClient()

    def call(self, op: str, **fields: Any) -> tuple[dict[str, Any], float]:
        """The reply and the round trip in ms."""
        start = time.perf_counter()
        self.client.request(op, None, **fields)
        self.helper.chan.sendall(self.client.out)
        self.client.out.clear()
        while True:
            data = self.helper.chan.recv(65536)
            if not data:
                raise RuntimeError("the auth helper exited")
            got = self.client.receive_data(data)
            if got:
                return got[0][1], (time.perf_counter() - start) * 1000

    def close(self) -> None:
        import os

        self.helper.chan.close()
        os.waitpid(self.helper.pid, 0)


def run(iterations: int, logins: int, accounts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chatd-authbench-") as tmp:
        chan = Channel(Path(tmp) / "accounts.sqlite3", iterations)
        try:
            times: dict[str, list[float]] = {k: [] for k in (
                "register", "plain", "wrong", "unknown", "scram_server", "scram_client")}
            for i in range(accounts):
                reply, ms = chan.call("register", account=f"user{i}", password=PASSWORD,
                                      ip="192.0.2.1")
                assert reply["ok"], reply
                times["register"].append(ms)
            for i in range(logins):
                name = f"user{i % accounts}"
                for key, who, password in (("plain", name, PASSWORD),
                                           ("wrong", name, "not the password"),
                                           ("unknown", f"ghost{i}", PASSWORD)):
                    data = f"\0{who}\0{password}".encode()
                    reply, ms = chan.call("plain", data=data, ip="192.0.2.1")
                    assert reply["ok"] == (key == "plain"), reply
                    times[key].append(ms)
                server, client_ms = _scram(chan, name, i)
                times["scram_server"].append(server)
                times["scram_client"].append(client_ms)
            memory = smaps_rollup(chan.helper.pid) or {}
        finally:
            chan.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    report = {"iterations": iterations, "logins": logins, "accounts": accounts,
              "median_ms": {k: round(v, 3) for k, v in med.items()},
              "p90_ms": {k: round(_p90(v), 3) for k, v in times.items()},
              "memory_kib": memory}
    measured = {"plain_ms": med["plain"], "unknown_vs_wrong": med["unknown"] / med["wrong"],
                "pss_kib": memory.get("pss")}
    report["targets"] = [{"name": name, "value": value, "low": low, "high": high,
                          "unit": unit, "met": value is not None and low <= value <= high}
                         for name, low, high, unit in TARGETS
                         for value in [measured[name]]]
    return report


def _scram(chan: Channel, name: str, ex: int) -> tuple[float, float]:
    """One SCRAM login: (the helper's round trips in ms, the client's work in ms)."""
    start = time.perf_counter()
    client = scramp.ScramClient(["SCRAM-SHA-256"], name, PASSWORD)
    first = client.get_client_first().encode()
    client_ms = (time.perf_counter() - start) * 1000
    reply, server = chan.call("scram_start", ex=ex, data=first, ip="192.0.2.1")
    start = time.perf_counter()
    client.set_server_first(reply["data"].decode())
    final = client.get_client_final().encode()  # the PBKDF2 is here, on the client
    client_ms += (time.perf_counter() - start) * 1000
    reply, ms = chan.call("scram_finish", ex=ex, data=final)
    assert reply["ok"], reply
    client.set_server_final(reply["data"].decode())
    return server + ms, client_ms


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def render(report: dict[str, Any]) -> str:
    med, p90, mem = report["median_ms"], report["p90_ms"], report["memory_kib"]
    lines = [f"chatd bench auth: {report['logins']} logins of each kind, "
             f"{report['accounts']} accounts, {report['iterations']:,} PBKDF2 iterations",
             "", f"{'':28}{'median':>10}{'p90':>10}"]
    names = {"register": "register", "plain": "PLAIN, right password",
             "wrong": "PLAIN, wrong password", "unknown": "PLAIN, unknown account",
             "scram_server": "SCRAM, helper's share", "scram_client": "SCRAM, client's share"}
    for key, label in names.items():
        lines.append(f"{label:28}{med[key]:>8.2f}ms{p90[key]:>8.2f}ms")
    lines += ["", f"helper memory: PSS {kib(mem.get('pss'))}, USS {kib(mem.get('uss'))}, "
              f"RSS {kib(mem.get('rss'))}", ""]
    for t in report["targets"]:
        value = t["value"]
        shown = "n/a" if value is None else f"{value:.3g} {t['unit']}"
        lines.append(f"  {'met   ' if t['met'] else 'MISSED'} {t['name']}: {shown} "
                     f"(target {t['low']:g} to {t['high']:g} {t['unit']})")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="chatd bench auth", description=__doc__)
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--logins", type=int, default=20)
    parser.add_argument("--accounts", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    if not MIN_ITERATIONS <= opts.iterations <= MAX_ITERATIONS:  # else the helper refuses
        parser.error(f"--iterations must be {MIN_ITERATIONS:,} to {MAX_ITERATIONS:,}")
    report = run(opts.iterations, max(1, opts.logins), max(1, opts.accounts))
    print(json.dumps(report, indent=2) if opts.json else render(report))
    return 0
