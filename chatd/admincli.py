"""`chatd admin`: ask a running server (its admin socket, chatd/admin.py) how it is and
tell it what to do. Tables for people by default, `--json` for scripts.

Exit status: 0 done; 1 the server refused the request (no such nick, a bad ban, a
reload that failed, ...); 2 bad usage; 3 no answer (no server running on that data dir,
permission denied, timed out).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

from chatd.admin import SOCKET_NAME, unix_address
from chatd.config import default_data_dir

MAX_ANSWER = 64 << 20  # bytes: a list of 100,000 sessions fits many times over
DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# What a terminal must not be sent from the server's answer: C0 and C1 controls.
UNPRINTABLE = {c: "?" for c in [*range(0x20), *range(0x7F, 0xA0)]}
EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class Unreachable(Exception):
    """No answer from the server: `code` for --json, the message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def duration(text: str) -> float:
    """`90`, `90s`, `30m`, `2h`, `7d`, `1w`, or a sum such as `1h30m`, in seconds."""
    parts = DURATION_RE.findall(text)
    if not text or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 2h, 7d)")
    return sum(float(n) * UNITS[u] for n, u in parts)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS,
                        help=f"the server's --data-dir (default: {default_data_dir()})")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the server's answer as JSON")
    common.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                        help="seconds to wait for the server (default: 10)")
    parser = argparse.ArgumentParser(
        prog="chatd admin", parents=[common],
        description="Talk to the chatd running on a data dir, through its admin.sock "
        "(only its user and root may). Exit status: 0 done, 1 refused by the server, "
        "2 bad usage, 3 no answer (no server, permission denied, timeout).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", parents=[common], help="uptime, sessions, rooms, messages/s, "
                   "memory, storage, version")
    sub.add_parser("sessions", parents=[common], help="every session: nick, account, "
                   "address, connected for, rooms, queue")
    kick = sub.add_parser("kick", parents=[common], help="end a session; its client is "
                          "told the reason")
    kick.add_argument("nick")
    kick.add_argument("reason", nargs="*", help="what the client and its rooms are told")
    ban = sub.add_parser("ban", parents=[common], help="ban a nick pattern, an account or "
                         "an address/network from the whole server; ends matching sessions")
    target = ban.add_mutually_exclusive_group(required=True)
    target.add_argument("--nick", metavar="PATTERN", help="a nick, * and ? as wildcards "
                        "(case and look-alikes as for nicks)")
    target.add_argument("--account", metavar="NAME", help="an account name")
    target.add_argument("--address", metavar="ADDR[/BITS]",
                        help="an IPv4 or IPv6 address or network (CIDR)")
    ban.add_argument("--for", dest="duration", type=duration, metavar="DURATION",
                     help="how long (90s, 30m, 2h, 7d, 1w); default: until lifted")
    ban.add_argument("--reason", default="", help="what banned clients are told")
    unban = sub.add_parser("unban", parents=[common], help="lift a ban (its number, from "
                           "`bans`)")
    unban.add_argument("id", type=int)
    sub.add_parser("bans", parents=[common], help="list the bans in force")
    sub.add_parser("reload", parents=[common], help="reload --config, like SIGHUP, and "
                   "say what changed")
    return parser


def request_of(args: argparse.Namespace) -> dict[str, Any]:
    req: dict[str, Any] = {"cmd": args.cmd}
    if args.cmd == "kick":
        req["nick"] = args.nick
        if args.reason:
            req["reason"] = " ".join(args.reason)
    elif args.cmd == "ban":
        kind = next(k for k in ("nick", "account", "address") if getattr(args, k))
        req.update(kind=kind, target=getattr(args, kind))
        if args.reason:
            req["reason"] = args.reason
        if args.duration is not None:
            req["duration"] = args.duration
    elif args.cmd == "unban":
        req["id"] = args.id
    return req


def ask(data_dir: Path, req: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request to the server on `data_dir`; its answer (Unreachable if none)."""
    path = data_dir / SOCKET_NAME
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            with unix_address(path) as address:
                sock.connect(address)
        except FileNotFoundError:
            raise Unreachable("no_server", f"no chatd is running on {data_dir} (there is "
                              f"no {path})") from None
        except ConnectionRefusedError:
            raise Unreachable("no_server", f"no chatd is running on {data_dir} ({path} is "
                              f"left over from one that ended)") from None
        except PermissionError:
            raise Unreachable("permission_denied", f"permission denied: {path}: run "
                              f"chatd admin as the user chatd runs as, or as root") from None
        except OSError as exc:
            raise Unreachable("no_server", f"cannot connect to {path}: "
                              f"{exc.strerror or exc}") from None
        data = bytearray()
        try:
            try:
                sock.sendall(json.dumps(req).encode() + b"\n")
                sock.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # it may have refused us at once (who we are) and hung up: read why
            while chunk := sock.recv(1 << 20):
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise Unreachable("bad_answer", f"the answer is over {MAX_ANSWER} bytes")
        except TimeoutError:
            raise Unreachable("timeout", f"no answer from the server within {timeout:g} s")\
                from None
        except OSError as exc:
            if not data:
                raise Unreachable("no_server", f"the server hung up: {exc.strerror or exc}")\
                    from None
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise Unreachable("bad_answer", "the server's answer is not one (is "
                          f"{path} a chatd's admin socket?)")
    return answer


def pss_kb(pid: int) -> int | None:
    """The process's proportional set size (kB), or None if it is gone or not ours."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def memory(processes: dict[str, Any]) -> dict[str, Any]:
    """PSS of the server's processes, read here: the parent lists them, we do the reading
    (walking page tables is no work for the routing loop)."""
    out: dict[str, Any] = {"unreadable": 0}
    for group in ("parent", "sessions", "spares", "helpers"):
        pids = processes.get(group, [])
        pids = pids if isinstance(pids, list) else [pids]
        sizes = [pss_kb(pid) for pid in pids if isinstance(pid, int)]
        out[f"{group}_pss_kb"] = sum(s for s in sizes if s is not None)
        out[f"{group}_counted"] = sum(s is not None for s in sizes)
        out["unreadable"] += sum(s is None for s in sizes)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir = getattr(args, "data_dir", None) or default_data_dir()
    as_json = getattr(args, "json", False)
    timeout = getattr(args, "timeout", 10.0)
    if args.cmd == "ban" and args.duration is not None and args.duration <= 0:
        print("chatd admin: --for must be longer than 0", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = ask(data_dir, request_of(args), timeout)
    except Unreachable as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": exc.code, "message": str(exc)}))
        else:
            print(f"chatd admin: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if answer["ok"] and args.cmd == "status" and isinstance(answer.get("processes"), dict):
        answer["memory"] = memory(answer["processes"])
    if as_json:
        print(json.dumps(answer, indent=2))
    elif not answer["ok"]:
        print(f"chatd admin: {clean(answer.get('message'))} ({clean(answer.get('error'))})",
              file=sys.stderr)
    else:
        from chatd import admintext

        print(admintext.render(args.cmd, answer, time.time()))
    if answer["ok"]:
        return 0
    return EXIT_UNREACHABLE if answer.get("error") == "permission_denied" else EXIT_REFUSED


def clean(value: object) -> str:
    """Server text made safe for a terminal."""
    return str(value).translate(UNPRINTABLE)
