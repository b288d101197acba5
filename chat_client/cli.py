"""`chat-client HOST:PORT [--nick NICK] [--room ROOM ...] [--plain] [--no-backlog]`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import sys

from chatd.protocol import MAX_NICK, NICK_CHARS, NICK_RE

from . import __version__
from .commands import UsageError, nick_arg, room_arg
from .connection import Connection
from .core import Core
from .links import terminal_has_hyperlinks
from .localstate import LocalState
from .store import StateStore, state_dir
from .stream import TCPOpener

DEFAULT_PORT = 7777
DEFAULT_ROOM = "#general"


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT, HOST, [IPV6]:PORT, [IPV6] or a bare IPv6 address."""
    match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", text)
    if match:
        host, port = match.group(1), match.group(2)
    elif text.startswith("["):
        raise ValueError("expected [IPV6]:PORT")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:  # a plain host name, or a bare IPv6 address (no port possible)
        host, port = text, None
    if not host:
        raise ValueError("empty host")
    number = int(port) if port else DEFAULT_PORT
    if not 0 < number < 65536:
        raise ValueError(f"port {number} out of range")
    return host, number


def default_nick() -> str:
    """The login name, made into a valid nick."""
    try:
        name = getpass.getuser()
    except Exception:
        name = ""
    nick = re.sub(f"[^{NICK_CHARS}]", "_", name)[:MAX_NICK]
    if nick and not NICK_RE.match(nick):
        nick = ("_" + nick)[:MAX_NICK]
    return nick if nick and NICK_RE.match(nick) else "guest"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chat-client",
        description="Terminal client for chatd. Full-screen when stdin and stdout are a "
                    "terminal; otherwise (or with --plain) one line in is one message or "
                    "/command and one event out is one line.",
        epilog=f"Rooms, direct-message buffers, the current buffer and the last message "
               f"id seen in each are kept in {state_dir()} (override with "
               "CHAT_CLIENT_STATE_DIR; default $XDG_STATE_HOME/chat-client, else "
               "~/.local/state/chat-client), so a restarted client is back where it was "
               "and catches up. Type /help in the client for commands and keys. In plain "
               "mode the exit status is 0 when every message was acknowledged, 1 "
               "otherwise. `chat-client --bench-render [--help]` times the full-screen "
               "client's keys in a big buffer with traffic (no server needed).",
    )
    p.add_argument("address", metavar="HOST:PORT",
                   help=f"server address; the port defaults to {DEFAULT_PORT}; IPv6 as "
                        "[::1]:7777")
    p.add_argument("--nick", default=None,
                   help="your nick (default: your login name, made valid)")
    p.add_argument("--room", dest="rooms", action="extend", nargs="+", metavar="ROOM",
                   help="room(s) to join besides those restored from the last run (with "
                        f"nothing to restore, and always in plain mode: {DEFAULT_ROOM}); "
                        "the '#' is optional, which saves quoting it from the shell; the "
                        "first one is shown first, and is where plain lines go; give "
                        "HOST:PORT before --room (or end the list with --)")
    p.add_argument("--plain", action="store_true",
                   help="line mode even on a terminal")
    p.add_argument("--no-backlog", action="store_true",
                   help="plain mode: do not print messages replayed from history (the "
                        "room's recent messages on joining, those missed while away); "
                        "only live ones")
    p.add_argument("--scrollback", type=int, default=5000, metavar="N",
                   help="lines kept per buffer (default: 5000)")
    p.add_argument("--version", action="version", version=f"chat-client {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--bench-render"]:  # a benchmark, not a client: no address
        from .benchrender import main as bench_render

        return bench_render(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        parser.error(f"bad address {args.address!r}: {exc}")
    try:
        nick = nick_arg(args.nick) if args.nick is not None else default_nick()
        rooms = [room_arg(r) for r in args.rooms or []]
    except UsageError as exc:
        parser.error(str(exc))
    if args.scrollback < 10:
        parser.error("--scrollback must be at least 10")
    store = StateStore(f"{host}:{port}", nick)
    saved = store.load()
    plain = args.plain or not (sys.stdin.isatty() and sys.stdout.isatty())
    # Plain lines go to the first --room (default #general), whatever the last run did;
    # full-screen mode shows the buffer that was current, unless --room names one.
    if not rooms and (plain or not saved.buffers):
        rooms = [DEFAULT_ROOM]
    focus = rooms[0] if rooms and (plain or args.rooms) else None
    core = Core(nick, rooms, saved, args.scrollback, focus=focus, context=not plain)
    local = LocalState.beside(store.path)  # read markers and ignores
    local.load(core.model)
    try:
        if plain:
            from .plain import run_plain

            conn = Connection(TCPOpener(host, port), core, store, first_failure_fatal=True)
            return asyncio.run(run_plain(core, conn, backlog=not args.no_backlog))
        from .tui import UIOptions, run_tui

        options = UIOptions(hyperlinks=terminal_has_hyperlinks(os.environ))
        return asyncio.run(run_tui(core, host, port, store, options=options,
                                   savers=[lambda: local.save(core.model)]))
    except KeyboardInterrupt:
        return 130
    finally:
        local.save(core.model)


if __name__ == "__main__":
    sys.exit(main())
