"""Whom `chat-client --tls` trusts: the system's CAs (the default), the CA certificates of a
file (`--ca`), or the server's key as it was the first time (`--tofu`).

Trust on first use pins the key the way SSH pins host keys: `known_hosts` in the state dir
holds one `HOST:PORT sha256//BASE64` line per server, the SHA-256 of the certificate's
public key (chatd.tls.public_key_pin), so that a certificate renewed with the same key
still matches. A different key is refused, loudly, until the user removes the line.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path

from chatd.tls import public_key_pin

from .lifecycle import TLSRefused
from .store import state_dir
from .stream import TLSOpener

KNOWN_HOSTS = "known_hosts"


def server_name(host: str, port: int) -> str:
    """How a server is named in known_hosts: `host:port`, `[v6addr]:port`."""
    host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_context(ca: Path | None = None, tofu: bool = False) -> ssl.SSLContext:
    """TLS 1.2 or later, verifying the certificate and host name against the system's CAs
    or `ca`; with `tofu` verifying nothing (the pin check does it). Raises OSError or
    ssl.SSLError when `ca` cannot be read."""
    if tofu:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class KnownHosts:
    """The pins file: `HOST:PORT PIN` lines; others (`#` comments, blank) are kept."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / KNOWN_HOSTS

    def lookup(self, server: str) -> str | None:
        """The pin of `server`, or None. Raises OSError if the file exists but cannot be
        read (the pin cannot be checked then)."""
        try:
            text = self.path.read_text(errors="replace")
        except (FileNotFoundError, NotADirectoryError):
            return None
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == server:
                return fields[1]
        return None

    def add(self, server: str, pin: str) -> None:
        """Append a pin (written atomically: a crash leaves the old file or the new one).
        Raises OSError."""
        try:
            old = self.path.read_text(errors="replace")
        except FileNotFoundError:
            old = ""
        if old and not old.endswith("\n"):
            old += "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp{os.getpid()}")
        tmp.write_text(f"{old}{server} {pin}\n")
        os.replace(tmp, self.path)


def pin_check(server: str, known: KnownHosts,
              notify: Callable[[str], None]) -> Callable[[bytes], None]:
    """The check for TLSOpener in --tofu mode: pin the key on first use (and say so),
    accept the same key silently, refuse any other (TLSRefused)."""

    def check(der: bytes) -> None:
        pin = public_key_pin(der)
        try:
            pinned = known.lookup(server)
        except OSError as exc:
            raise TLSRefused(f"cannot check the TLS key of {server}: cannot read "
                             f"{known.path}: {exc.strerror or exc}") from None
        if pinned == pin:
            return
        if pinned is not None:
            raise TLSRefused(
                f"REFUSED: the TLS key of {server} has CHANGED since it was pinned "
                f"(pinned {pinned}, offered {pin}). Someone may be intercepting the "
                f"connection, or the server has a new key. If you know that it has (its "
                f"admin can tell: chatd logs its key in the 'TLS certificate' line), "
                f"delete the line starting '{server} ' from {known.path} and connect "
                f"again to pin the new key.")
        try:
            known.add(server, pin)
            where = f"saved in {known.path}"
        except OSError as exc:
            where = f"NOT saved, {known.path}: {exc.strerror or exc}"
        notify(f"first TLS connection to {server}: trusting and pinning its key {pin} "
               f"({where}). Compare it with the key in chatd's 'TLS certificate' log line.")

    return check


def tls_opener(host: str, port: int, ca: Path | None, tofu: bool,
               notify: Callable[[str], None],
               on_refused: Callable[[str], None] | None = None) -> TLSOpener:
    """The opener for `--tls` with `--ca FILE` or `--tofu` (or neither); `notify` hears
    of a key pinned, `on_refused` of a refusal. Raises OSError or ssl.SSLError when `ca`
    cannot be read."""
    server = server_name(host, port)
    if tofu:
        known = KnownHosts()
        return TLSOpener(host, port, client_context(tofu=True),
                         check=pin_check(server, known, notify), on_refused=on_refused)
    if ca is not None:
        hint = f" (checked against --ca {ca})"
    else:
        hint = (" (checked against the system's trusted CAs). If the server has its own "
                "CA, pass its certificate with --ca FILE; if its certificate is "
                "self-signed, pass that with --ca, or use --tofu to pin its key on first "
                "use")
    return TLSOpener(host, port, client_context(ca), hint=hint, on_refused=on_refused)
