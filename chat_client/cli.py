"""`chat-client [HOST:PORT|SERVER] [--nick NICK | --account NAME [--password-file FILE]]
[--room ROOM ...] [--plain] [--no-backlog] [--config FILE] [--tls [--ca FILE | --tofu]]`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import re
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from chatd.protocol import MAX_NICK, NICK_CHARS, NICK_RE

from . import __version__
from .chatlog import ChatLog
from .commands import UsageError, nick_arg, room_arg
from .config import Config, ConfigError, default_path, load
from .connection import Connection
from .core import Core
from .links import terminal_has_hyperlinks
from .localstate import LocalState
from .store import StateStore, state_dir
from .stream import Opener, TCPOpener

DEFAULT_PORT = 7777
DEFAULT_TLS_PORT = 7778
DEFAULT_ROOM = "#general"


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
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
    number = int(port) if port else default_port
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
    p.add_argument("address", metavar="HOST:PORT|SERVER", nargs="?", default=None,
                   help=f"server address; the port defaults to {DEFAULT_PORT} "
                        f"({DEFAULT_TLS_PORT} with --tls); IPv6 as [::1]:7777; or the NAME "
                        "of a [servers.NAME] table of the config file; without it, the "
                        "config file's default server")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help=f"config file (default: {default_path()}, if it exists)")
    p.add_argument("--nick", default=None,
                   help="your nick (default: your login name, made valid)")
    p.add_argument("--room", dest="rooms", action="extend", nargs="+", metavar="ROOM",
                   help="room(s) to join besides those restored from the last run (with "
                        f"nothing to restore, and always in plain mode: {DEFAULT_ROOM}); "
                        "the '#' is optional, which saves quoting it from the shell; the "
                        "first one is shown first, and is where plain lines go; give "
                        "HOST:PORT before --room (or end the list with --)")
    acct = p.add_argument_group("accounts")
    acct.add_argument("--account", default=None, metavar="NAME",
                      help="log in to account NAME (your nick is then NAME); the password "
                           "comes from --password-file, else $CHAT_CLIENT_PASSWORD, else a "
                           "prompt on the terminal. /register makes your nick an account")
    acct.add_argument("--password-file", type=Path, default=None, metavar="FILE",
                      help="read the password from the first line of FILE (for scripts)")
    p.add_argument("--plain", action="store_true",
                   help="line mode even on a terminal")
    p.add_argument("--no-backlog", action="store_true",
                   help="plain mode: do not print messages replayed from history (the "
                        "room's recent messages on joining, those missed while away); "
                        "only live ones")
    p.add_argument("--scrollback", type=int, default=None, metavar="N",
                   help="lines kept per buffer (default: 5000)")
    tls = p.add_argument_group("TLS")
    tls.add_argument("--tls", action="store_true",
                     help="connect with TLS (to the server's TLS port), trusting the "
                          "certificates the system trusts")
    trust = tls.add_mutually_exclusive_group()
    trust.add_argument("--ca", type=Path, metavar="FILE",
                       help="trust the CA certificate(s) in FILE (PEM) instead: a private "
                            "CA, or the server's own self-signed certificate (implies --tls)")
    trust.add_argument("--tofu", action="store_true",
                       help="trust on first use, for a self-signed server: pin its key the "
                            "first time in known_hosts in the state dir, and refuse any "
                            "other key later (implies --tls)")
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
        cfg = load(args.config)
    except ConfigError as exc:
        parser.error(str(exc))
    # The command line wins over the server's table, which wins over the file's top level.
    picked = cfg.pick(args.address)
    server = picked[1] if picked else None
    address = server.address if server else args.address
    args.ca_from = "--ca"  # where the CA file was named, for an error about it
    if picked is not None and args.ca is None and not args.tofu:
        args.ca, args.tofu = picked[1].ca, picked[1].tofu
        args.ca_from = f"{cfg.path}: servers.{picked[0]}.ca:"
    args.tls = args.tls or args.ca is not None or args.tofu or bool(server and server.tls)
    if address is None:
        parser.error(f"no server: give HOST:PORT, or a [servers.NAME] table in "
                     f"{cfg.path or default_path()}")
    try:
        host, port = parse_address(address, DEFAULT_TLS_PORT if args.tls else DEFAULT_PORT)
    except ValueError as exc:
        where = f"{cfg.path}: servers.{picked[0]}.address: " if picked else ""
        parser.error(f"{where}bad address {address!r}: {exc}")
    try:
        account = nick_arg(args.account) if args.account is not None else \
            (server.account if server else None) or cfg.account
        nick = account or (nick_arg(args.nick) if args.nick is not None else
                           (server.nick if server else None) or cfg.nick or default_nick())
        rooms = [room_arg(r) for r in args.rooms or []]
    except UsageError as exc:
        parser.error(str(exc))
    scrollback = args.scrollback if args.scrollback is not None else cfg.scrollback or 5000
    if scrollback < 10:
        parser.error("--scrollback must be at least 10")
    store = StateStore(f"{host}:{port}", nick)
    saved = store.load()
    plain = args.plain or not (sys.stdin.isatty() and sys.stdout.isatty())
    # Rooms to join besides the restored ones: --room, else the config file's.
    rooms = rooms or (server.rooms if server else None) or cfg.rooms or []
    # Plain lines go to the first room (default #general), whatever the last run did;
    # full-screen mode shows the buffer that was current, unless --room names one.
    if not rooms and (plain or not saved.buffers):
        rooms = [DEFAULT_ROOM]
    focus = rooms[0] if rooms and (plain or args.rooms) else None
    password = read_password(parser, args.password_file, account)
    core = Core(nick, rooms, saved, scrollback, focus=focus, context=not plain,
                account=account, password=password)
    opener = make_opener(parser, args, host, port, core, plain)
    savers = setup(core, cfg, server.highlight if server else None, store, f"{host}:{port}")
    try:
        if plain:
            from .plain import run_plain

            conn = Connection(opener, core, store, first_failure_fatal=True)
            return asyncio.run(run_plain(core, conn, backlog=not args.no_backlog))
        from .tui import UIOptions, run_tui

        links = cfg.hyperlinks if isinstance(cfg.hyperlinks, bool) else \
            terminal_has_hyperlinks(os.environ)
        options = UIOptions(cfg.keys, cfg.colours, links)
        return asyncio.run(run_tui(core, host, port, store, options=options, savers=savers,
                                     opener=opener))
    except KeyboardInterrupt:
        return 130
    finally:
        for save in savers:
            save()


def read_password(parser: argparse.ArgumentParser, path: Path | None,
                  account: str | None) -> str | None:
    """--password-file, else $CHAT_CLIENT_PASSWORD, else (with an account) a prompt on
    the terminal; None without any (a guest; /register then asks for one)."""
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").partition("\n")[0].rstrip("\r")
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"--password-file {path}: {getattr(exc, 'strerror', None) or exc}")
    password = os.environ.get("CHAT_CLIENT_PASSWORD")
    if password is not None or account is None:
        return password
    try:  # from the terminal itself (/dev/tty), whatever stdin is
        return getpass.getpass(f"password for {account}: ")
    except (EOFError, OSError, getpass.GetPassWarning):
        parser.error(f"--account {account}: no password (no terminal to ask on: use "
                     "--password-file or CHAT_CLIENT_PASSWORD)")


def setup(core: Core, cfg: Config, highlight: list[str] | None, store: StateStore,
          server: str) -> list[Callable[[], None]]:
    """What the config file and the local state add to the model: highlight words, read
    markers and ignores, buffer logs. Returns what saves them."""
    core.model.set_highlights(cfg.highlight if highlight is None else highlight)
    local = LocalState.beside(store.path)
    local.load(core.model)
    savers: list[Callable[[], None]] = [lambda: local.save(core.model)]
    if cfg.log:
        chatlog = ChatLog(cfg.log_dir or state_dir() / "logs", server, core.model)
        savers.append(chatlog.save)
    return savers


def make_opener(parser: argparse.ArgumentParser, args: argparse.Namespace, host: str,
                port: int, core: Core, plain: bool) -> Opener:
    """Plain TCP, or TLS with the trust the flags ask for. What TLS has to say (a key
    pinned on first use) goes to stderr in plain mode, else to the server buffer, where a
    refusal goes too (plain mode prints why the connection ended anyway)."""
    if not args.tls:
        return TCPOpener(host, port)
    from .buffer import SERVER
    from .trust import tls_opener

    def notify(text: str, kind: str = "notice") -> None:
        if plain:
            print(f"chat-client: {text}", file=sys.stderr, flush=True)
        else:
            core.model.note(core.model.buffers[SERVER], text, kind)

    try:
        return tls_opener(host, port, args.ca, args.tofu, notify,
                          None if plain else lambda text: notify(text, "error"))
    except (OSError, ssl.SSLError) as exc:
        parser.error(f"{getattr(args, 'ca_from', '--ca')} {args.ca}: "
                     f"{getattr(exc, 'strerror', None) or exc}")


if __name__ == "__main__":
    sys.exit(main())
