"""Command line: `chatd serve` (and `chatd bench`)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from chatd import logsetup, sandbox
from chatd.config import Config, ConfigError, default_data_dir, load_file


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatd", description="fork-per-client chat server")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server in the foreground",
                           description="Run the chat server in the foreground. SIGTERM/SIGINT "
                           "stop it gracefully, SIGHUP reloads --config.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address or name to listen on; '::' or '0.0.0.0' for all "
                       "(default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=7777,
                       help="TCP port; 0 picks a free one (default: 7777)")
    serve.add_argument("--data-dir", type=Path, default=None,
                       help=f"where history is stored (default: {default_data_dir()})")
    serve.add_argument("--config", type=Path, default=None,
                       help="TOML file with limits and other settings (see README)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"],
                       help="log verbosity (default: info)")
    serve.add_argument("--check", action="store_true",
                       help="only check that this code starts with these settings (config "
                       "parses, the store opens, TLS files load), like `nginx -t`; exit 0 "
                       "if so")
    upgrade = sub.add_parser("upgrade", help="replace the running server's code with the "
                             "installed one, keeping every connection",
                             description="Tell the `chatd serve` holding --data-dir to "
                             "upgrade in place (the same as SIGUSR2 to it) and print the "
                             "outcome: it checks the new code first and stays on the old "
                             "one if that does not start. Exit status 0 if it upgraded.")
    upgrade.add_argument("--data-dir", type=Path, default=None,
                         help=f"the server's data dir (default: {default_data_dir()})")
    upgrade.add_argument("--timeout", type=float, default=60.0,
                         help="seconds to wait for the outcome (default: 60)")
    sub.add_parser("bench", help="load-test a server and print a report "
                   "(chatd bench --help)")
    sub.add_parser("admin", help="look at and steer a running server: status, sessions, "
                   "kick, ban, reload (chatd admin --help)")
    return parser


def serve(args: argparse.Namespace) -> int:
    logsetup.setup(args.log_level)
    try:
        values = load_file(args.config)
    except ConfigError as exc:
        print(f"chatd: {exc}", file=sys.stderr)
        return 2
    config = Config(host=args.host, port=args.port,
                    data_dir=args.data_dir or default_data_dir(),
                    config_file=args.config, log_level=args.log_level, values=values)
    from chatd import handover
    from chatd.admin import AdminError
    from chatd.bans import BanError
    from chatd.datadir import DataDirBusy
    from chatd.master import Master
    from chatd.store import StoreUnusable
    from chatd.tls import TLSConfigError

    if args.check:
        return check(config)
    try:
        # After `chatd upgrade`: our predecessor's state (the same process, new code).
        handed = handover.take_from_environment()
        master = Master(config, handed)
        if handed is None:
            master.listen()
            master.adopter.start(time.monotonic())  # sessions a dead parent left
        elif master.admin.listener is None:  # handed over with the state, from format 2
            master.admin.listen()
        # Once, before the first session: what sessions get (and a user we cannot be).
        sandbox.probe(config)
    except (StoreUnusable, TLSConfigError, sandbox.SandboxError, AdminError,
            BanError, DataDirBusy, handover.HandoverError) as exc:  # one line
        print(f"chatd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        logging.getLogger("chatd").error("cannot start: %s", exc)
        return 1
    return master.run()


def check(config: Config) -> int:
    """`chatd serve --check`: would this code start with this config? (The probe of
    `chatd upgrade` runs it, and passes what it must also take over in the environment.)"""
    import os

    from chatd import handover, tls, upgrade
    from chatd.master import Master  # noqa: F401 (importing it is part of the check)
    from chatd.store import StoreUnusable
    from chatd.stores import history_location, open_reads

    problems = []
    try:
        if Path(history_location(config.data_dir)).exists():
            open_reads(history_location(config.data_dir)).close()
        if config.tls_cert:
            tls.ServerTLS(config.values, config.config_file)
        sandbox.probe(config)
    except (StoreUnusable, tls.TLSConfigError, sandbox.SandboxError) as exc:
        problems.append(str(exc))
    fmt, _sep, channels = os.environ.get(upgrade.CHECK_ENV, "").partition(":")
    problems += handover.check(fmt, channels)
    for problem in problems:
        print(f"chatd: {problem}", file=sys.stderr)
    if not problems:
        print("chatd: the code and the configuration are fine")
    return 2 if problems else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark parses its own options, --help included
        from chatd.bench.cli import main as bench  # only the benchmark pays for its imports

        return bench(argv[1:])
    if argv[:1] == ["admin"]:
        from chatd.admincli import main as admin

        return admin(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "upgrade":
        from chatd.upgrade import send

        return send(args.data_dir or default_data_dir(), args.timeout)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
