"""SASL mechanisms, server side (sans-I/O): SCRAM-SHA-256 (RFC 5802, RFC 7677) and PLAIN
(RFC 4616). Shared by every front end: the native protocol carries the SASL messages in
`login`/`auth` frames, an IRC front end in AUTHENTICATE lines; both hand them to the
auth helper, where these objects run next to the accounts database.

The SCRAM arithmetic is scramp's; this module adds what a server around it needs: the
account lookup with decoys (an unknown account gets a stable fake salt and a proof that
can never match, so the exchange looks the same as a wrong password), bounds on the
messages, and one exception type whose `code` goes on the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scramp import ScramClient, ScramException

from chatd.accounts import (
    MECHANISM,
    MIN_ITERATIONS,
    Verifier,
    check_new_password,
    make_verifier,
    prepare_password,
)

SCRAM_SHA_256 = "SCRAM-SHA-256"
MECHANISMS = (SCRAM_SHA_256, "PLAIN")
MAX_MESSAGE = 2048  # bytes of one SASL message from a client (a real one is ~200)
FAILED = "invalid credentials or no such account"  # the one answer for both


class AuthFailed(Exception):
    """An authentication step failed. `code` is the wire code: `auth_failed` (wrong
    password, unknown account: never told apart) or `invalid_auth` (a malformed
    message). `data` is a SASL message for the client, if any (SCRAM's `e=...`)."""

    def __init__(self, code: str, message: str, data: bytes = b"") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def _text(data: bytes, what: str) -> str:
    if len(data) > MAX_MESSAGE:
        raise AuthFailed("invalid_auth", f"{what} is over {MAX_MESSAGE} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthFailed("invalid_auth", f"{what} is not UTF-8") from None


def parse_plain(data: bytes) -> tuple[str, str]:
    """(account, password) of a PLAIN message: [authzid] NUL authcid NUL password.

    An authorization identity other than the account itself is refused: nobody may
    log in as someone else, even knowing a password.
    """
    parts = _text(data, "the PLAIN message").split("\0")
    if len(parts) != 3 or not parts[1]:
        raise AuthFailed("invalid_auth", "PLAIN takes authzid NUL account NUL password")
    authzid, account, password = parts
    if authzid and authzid != account:
        raise AuthFailed("invalid_auth", "PLAIN: the authorization identity must be empty "
                         "or the account itself")
    return account, password


# name -> (verifier, whether it is a real account's). The auth helper answers with a
# decoy for unknown names (chatd.accounts.AccountStore.verifier).
Lookup = Callable[[str], tuple[Verifier, bool]]


class ScramExchange:
    """One SCRAM-SHA-256 exchange: `start(client-first)` gives server-first, and
    `finish(client-final)` gives the account and server-final, or raises AuthFailed.

    Channel binding (SCRAM-SHA-256-PLUS) is not offered yet: a client that supports it
    sends the gs2 flag `y`, which scramp accepts while the server offers no binding.
    """

    def __init__(self, lookup: Lookup, nonce: str | None = None) -> None:
        self._lookup = lookup
        self._server = MECHANISM.make_server(self._credentials, s_nonce=nonce)
        self.account: str | None = None  # the name the client asked for
        self._real = False
        self.done = False

    def _credentials(self, username: str) -> tuple[bytes, bytes, bytes, int]:
        verifier, real = self._lookup(username)
        self.account, self._real = username, real
        return verifier.scram()

    def start(self, client_first: bytes) -> bytes:
        message = _text(client_first, "client-first-message")
        try:
            self._server.set_client_first(message)
            return self._server.get_server_first().encode()
        except ScramException as exc:
            self.done = True
            raise AuthFailed("invalid_auth", f"SCRAM: {exc}") from None

    def finish(self, client_final: bytes) -> tuple[str, bytes]:
        """(the name asked for, server-final-message) when the proof is right."""
        if self.done or self.account is None:
            raise AuthFailed("invalid_auth", "SCRAM: the exchange is not at client-final")
        self.done = True
        message = _text(client_final, "client-final-message")
        try:
            self._server.set_client_final(message)
        except ScramException:
            # A wrong proof, a changed nonce, a bad binding: all one failure, and all
            # counted as a failed login by the caller.
            raise AuthFailed("auth_failed", FAILED, _server_error(self._server)) from None
        if not self._real:  # unreachable unless a decoy key is guessed: refuse anyway
            raise AuthFailed("auth_failed", FAILED, b"e=invalid-proof")
        return self.account, self._server.get_server_final().encode()


def _server_error(server: object) -> bytes:
    """The `e=...` server-final scramp prepared after a failure, when it did."""
    try:
        return server.get_server_final().encode()  # type: ignore[attr-defined]
    except ScramException:
        return b"e=other-error"


# ---- the client's side (chat-client, tests): the same rules, written once ----


def plain_message(account: str, password: str) -> bytes:
    """PLAIN's message (RFC 4616) for `account` (only ever sent over TLS)."""
    return f"\0{account}\0{password}".encode()


def register_verifier(password: str, iterations: int) -> dict[str, Any]:
    """`register`'s `verifier` for `password`, so that the password never leaves the
    client (protocol.md §12.3). Raises AccountError (invalid_password) for a password
    the server would refuse; `iterations` is welcome.auth.iterations."""
    prepared = check_new_password(password)
    verifier = make_verifier(prepared, max(iterations, MIN_ITERATIONS))
    return {"salt": verifier.salt, "iterations": verifier.iterations,
            "stored_key": verifier.stored_key, "server_key": verifier.server_key}


class ClientScram:
    """A client's SCRAM-SHA-256 login: `first()` for `login`, `final(server-first)` for
    `auth`, `verify(server-final)` on `logged_in` (which proves the server holds the
    verifier). Each raises AuthFailed (`invalid_auth`) on a broken server message."""

    def __init__(self, account: str, password: str) -> None:
        prepare_password(password)  # AccountError for what no account can have
        self._client = ScramClient([MECHANISM.name], account, password)

    def first(self) -> bytes:
        return self._client.get_client_first().encode()

    def final(self, server_first: bytes) -> bytes:
        try:
            self._client.set_server_first(_text(server_first, "server-first-message"))
            return self._client.get_client_final().encode()
        except ScramException as exc:
            raise AuthFailed("invalid_auth", f"SCRAM: {exc}") from None

    def verify(self, server_final: bytes) -> None:
        try:
            self._client.set_server_final(_text(server_final, "server-final-message"))
        except ScramException as exc:
            raise AuthFailed("invalid_auth", f"SCRAM: the server did not prove it knows "
                             f"the account ({exc})") from None
