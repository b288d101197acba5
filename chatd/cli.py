"""Command line: `chatd serve` (and `chatd bench`)."""

from __future__ import annotations

import argparse
import logging
import sys
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
    from chatd.admin import AdminError
    from chatd.bans import BanError
    from chatd.master import Master
    from chatd.store import StoreUnusable
    from chatd.tls import TLSConfigError

    try:
        master = Master(config)
        master.listen()
        # Once, before the first session: what sessions get (and a user we cannot be).
        sandbox.probe(config)
    except (StoreUnusable, TLSConfigError, sandbox.SandboxError, AdminError,
            BanError) as exc:  # one line
        print(f"chatd: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        logging.getLogger("chatd").error("cannot start: %s", exc)
        return 1
    return master.run()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # the benchmark parses its own options, --help included
        from chatd.bench.cli import main as bench  # only the benchmark pays for its imports

        return bench(argv[1:])
    if argv[:1] == ["admin"]:
        from chatd.admincli import main as admin

        return admin(argv[1:])
    args = build_parser().parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
