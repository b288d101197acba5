"""`chatd bench SCENARIO`: options, the server under test, one run, the report.

Without --target it starts its own `chatd serve` (ephemeral loopback port, temporary data
dir, per-client rate limits lifted); with --target HOST:PORT it drives a running one.
Each scenario family is a module with the same few names (see FAMILIES); `chatd bench
auth` needs no server and has options of its own (chatd/bench/auth.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import secrets
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from . import admin, churn, clients, history, report, upgrade
from .load import ServerRef
from .probes import CPU_SOURCE, ServerProbe, find_listener_pid
from .server import Server, bench_settings, spawn

# A family module defines SCENARIOS (each one's defaults), ADMISSION (keep the server's
# admission limits, or lift them), describe(opts), async run(server, opts, tag),
# ok(report), targets(report) and render(report) -> its phase lines; and, if it needs
# to, prepare(opts, extra settings) before the server starts.
FAMILIES: tuple[ModuleType, ...] = (clients, churn, history, upgrade, admin)
FAMILY = {name: fam for fam in FAMILIES for name in fam.SCENARIOS}
SCENARIOS = {name: defaults for fam in FAMILIES for name, defaults in fam.SCENARIOS.items()}


def parse_set(items: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"chatd bench: --set wants SECTION.NAME=VALUE, got {item!r}")
        value: Any = raw
        for conv in (int, float):
            try:
                value = conv(raw)
                break
            except ValueError:
                continue
        if raw in ("true", "false"):
            value = raw == "true"
        out.setdefault(section, {})[name] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatd bench", description="Load-test a chatd server over loopback and print a "
        "report. Without --target it starts its own server with rate limits lifted.",
        epilog="`chatd bench auth [--help]` times the auth helper's logins instead (no "
        "server needed); `chatd bench floor [--help]` measures a minimal relay here and "
        "chatd against it; `chatd bench roomsize [--help]` tabulates steady by room size; "
        "`chatd bench sandbox [--help]` the sandbox's cost; `chatd bench cluster [--help]` "
        "runs hosts sharing a Redis; `chatd bench irc [--help]` runs the scenarios over IRC "
        "against chatd, ngIRCd and InspIRCd side by side.")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--target", metavar="HOST:PORT",
                        help="bench a running server instead of starting one (its rate "
                        "limits and session caps must allow the load)")
    parser.add_argument("--server-pid", type=int, help="pid of the --target server's parent "
                        "(default: found from the listening port, on this host)")
    parser.add_argument("--clients", type=int, help="client connections")
    parser.add_argument("--senders", type=int, help="clients that send (burst, steady)")
    parser.add_argument("--messages", type=int, help="messages per sender")
    parser.add_argument("--rate", type=float, help="messages/s in total (0: as fast as "
                        "possible)")
    parser.add_argument("--room-size", type=int, help="clients per room (0: all in one room, "
                        "-1: no room)")
    parser.add_argument("--inflight", help="connection attempts in flight, comma-separated "
                        "for several connect runs")
    parser.add_argument("--generators", type=int, help="burst, steady: load generator "
                        "processes (default 2 for burst, 1 otherwise); the senders stay in "
                        "the main one, the other clients are shared out")
    parser.add_argument("--size", type=int, default=0, help="pad message texts to about "
                        "this many bytes")
    parser.add_argument("--spare", type=int, help="server.spare_children of the spawned "
                        "server")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
                        help="extra setting for the spawned server (repeatable)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds to wait before measuring idle memory (default 1)")
    parser.add_argument("--attack-rate", type=float, default=0.0,
                        help="churn: the attacker's connections per second (default 0: as "
                        "fast as it can)")
    parser.add_argument("--attack-bytes", type=int, default=0,
                        help="churn: bytes the attacker writes before each reset (default "
                        "0; with any, the server's kernel hands the connection over)")
    parser.add_argument("--phase-seconds", type=float,
                        help="churn, history: seconds of each measured phase (default 4 "
                        "for churn, 10 for history)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds without progress before giving up (default 30)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--server-log", type=Path, help="keep the spawned server's log here")
    return parser


def options(argv: list[str]) -> argparse.Namespace:
    opts = build_parser().parse_args(argv)
    defaults = SCENARIOS[opts.scenario]
    for key in ("clients", "senders", "messages", "rate", "room_size"):
        if getattr(opts, key) is None:
            setattr(opts, key, defaults[key])
    opts.inflight = ([int(x) for x in opts.inflight.split(",")] if opts.inflight
                     else list(defaults["inflight"]))
    if opts.generators is None:
        opts.generators = defaults.get("generators", 1)
    if opts.phase_seconds is None:
        opts.phase_seconds = defaults.get("phase_seconds")
    opts.senders = min(opts.senders, opts.clients)
    opts.progress = not opts.quiet
    if opts.clients < 1 or opts.generators < 1 or any(n < 1 for n in opts.inflight):
        raise SystemExit("chatd bench: --clients and --inflight must be at least 1")
    if opts.scenario in ("burst", "steady") and opts.room_size < 0:
        raise SystemExit("chatd bench: burst and steady need rooms (--room-size >= 0)")
    return opts


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < need:
        print(f"chatd bench: warning: {need} open files wanted, the limit is {want}",
              file=sys.stderr)


def main(argv: list[str]) -> int:
    if argv[:1] == ["auth"]:  # the auth helper's costs: no server, options of its own
        from . import auth

        return auth.main(argv[1:])
    if argv[:1] == ["floor"]:  # a minimal relay's cost here, and chatd against it
        from . import floor

        return floor.main(argv[1:])
    if argv[:1] == ["roomsize"]:  # steady at several room sizes, one table
        from . import roomsize

        return roomsize.main(argv[1:])
    if argv[:1] == ["cluster"]:  # several hosts and a Redis of its own (options of its own)
        from . import cluster

        return cluster.main(argv[1:])
    if argv[:1] == ["irc"]:  # the scenarios over IRC: chatd, ngIRCd, InspIRCd side by side
        from . import irc

        return irc.main(argv[1:])
    if argv[:1] == ["sandbox"]:  # the session sandbox's cost, on vs off (runs scenarios)
        from . import sandbox

        return sandbox.main(argv[1:])
    opts = options(argv)
    family = FAMILY[opts.scenario]
    raise_fd_limit(opts.clients + 64)
    extra = parse_set(opts.set)
    if opts.spare is not None:
        extra.setdefault("server", {})["spare_children"] = opts.spare
    if hasattr(family, "prepare"):
        family.prepare(opts, extra)
    server: Server | None = None
    with contextlib.ExitStack() as cleanup:
        if opts.target:
            host, _, port_s = opts.target.rpartition(":")
            host = host.strip("[]") or "127.0.0.1"
            port = int(port_s)
            pid = opts.server_pid or find_listener_pid(port)
        else:
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="chatd-bench-"))
            try:
                server = spawn(bench_settings(opts.clients, extra, family.ADMISSION), Path(tmp))
            except (RuntimeError, TimeoutError) as exc:
                print(f"chatd bench: {exc}", file=sys.stderr)
                return 2
            cleanup.callback(stop, server, opts.server_log)
            host, port, pid = server.host, server.port, server.pid
        spare = server.settings.get("server", {}).get("spare_children", -1) if server else None
        out: dict[str, Any] = {
            "scenario": opts.scenario,
            "params": {"clients": opts.clients, "senders": opts.senders,
                       "messages": opts.messages, "rate": opts.rate,
                       "room_size": opts.room_size, "inflight": opts.inflight,
                       "size": opts.size, "generators": opts.generators},
            "server": {"spawned": server is not None, "pid": pid, "address": f"{host}:{port}",
                       "spare_children": spare},
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1]},
            "cpu_source": CPU_SOURCE,
        }
        ref = ServerRef(host, port, ServerProbe(pid), max(spare or 0, 0),
                        server.data_dir if server else None)
        gc_was = gc.isenabled()
        gc.disable()  # no collector pauses inside the measured windows
        try:
            out["description"] = family.describe(opts)
            out.update(asyncio.run(family.run(ref, opts, "b" + secrets.token_hex(3))))
        except KeyboardInterrupt:
            return 130
        finally:
            if gc_was:
                gc.enable()
    out["ok"] = family.ok(out)  # loss, duplicates and failures; targets are information
    out["targets"] = family.targets(out)
    print(json.dumps(out, indent=2) if opts.json else report.render(out, family.render(out)))
    return 0 if out["ok"] else 1


def stop(server: Server, log: Path | None) -> None:
    """Stop the spawned server and let its sessions exit (a next run starts clean)."""
    server.stop(20.0, wait_sessions=30.0)
    if log is not None:
        with contextlib.suppress(OSError):
            log.write_text("\n".join(server.lines) + "\n")
