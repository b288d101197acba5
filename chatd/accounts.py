"""Accounts: names, stored password verifiers, registration and nick ownership.

Owned by the auth helper process alone (chatd.authhelper): no other process opens the
accounts database, so neither a session nor the parent ever holds a verifier.

What is stored for a password is one SCRAM-SHA-256 verifier (RFC 5802, RFC 7677): a
per-account random salt, the iteration count it was made with, StoredKey and ServerKey.
It serves both mechanisms, as SASL servers (Dovecot, PostgreSQL) do it: SCRAM checks the
client's proof against StoredKey without ever seeing the password, and PLAIN derives the
keys from the given password with the stored salt and count and compares. The password
itself is never stored, and a stored verifier does not let anyone log in (a proof needs
ClientKey, which only the password gives). The derivation is PBKDF2-HMAC-SHA256, because
that is what a SCRAM client computes; see protocol.md §12 for why not a memory-hard
function (storing an scrypt hash beside the verifier would not help: an attacker with
the file attacks whichever is cheaper).

Unknown accounts get a decoy verifier: the same iteration count and a salt that is
stable for the name (derived from a secret kept in the database), so a failed login
costs the same work and looks the same whether or not the account exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from scramp import ScramException, ScramMechanism
from scramp.utils import saslprep

from chatd.protocol import NICK_RE, nick_key

FILE = "accounts.sqlite3"  # in the data dir, beside the history; the helper's alone
MECHANISM = ScramMechanism("SCRAM-SHA-256")
# PBKDF2 iterations for new verifiers. 300,000 costs about 70 ms on a core of the
# development machine (`chatd bench auth`, see the README), within "tens to a
# hundred ms" per PLAIN login or registration; a SCRAM login costs the server only a few
# HMACs (the client does the iterations). Each verifier keeps its own count, so raising
# this later applies to new and changed passwords without breaking old ones.
DEFAULT_ITERATIONS = 300_000
MIN_ITERATIONS = 4096  # RFC 7677's minimum, and scramp's
MAX_ITERATIONS = 10_000_000  # scramp refuses more (a bound on what a client must compute)
SALT_BYTES = 16
KEY_BYTES = 32  # SHA-256
MIN_PASSWORD = 8  # characters, after SASLprep
MAX_PASSWORD = 512  # UTF-8 bytes: a bound on what one request may make the helper hash
SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    key        TEXT PRIMARY KEY,  -- nick_key(name): look-alike names are one account
    name       TEXT NOT NULL,     -- the spelling chosen at registration (the owned nick)
    created    INTEGER NOT NULL,  -- ms since the epoch
    scheme     TEXT NOT NULL,     -- 'SCRAM-SHA-256'
    iterations INTEGER NOT NULL,
    salt       BLOB NOT NULL,
    stored_key BLOB NOT NULL,
    server_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""


class AccountError(Exception):
    """A request about accounts cannot be carried out; `code` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Verifier:
    """What is stored instead of a password: a SCRAM-SHA-256 verifier."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def scram(self) -> tuple[bytes, bytes, bytes, int]:
        """In the shape scramp's auth_fn returns."""
        return self.salt, self.stored_key, self.server_key, self.iterations


@dataclass(frozen=True)
class Account:
    name: str
    key: str
    created: int
    verifier: Verifier


def check_account_name(name: str) -> str:
    """An account name is a nick (protocol.md §3): the account owns that nick's key."""
    if not NICK_RE.match(name):
        raise AccountError("invalid_account", "an account name follows the nick rules: 1-30 "
                           "characters, letters, digits, _-[]\\^{}|` and not starting "
                           "with a digit or '-'")
    return name


def prepare_password(password: str) -> str:
    """The password as SCRAM hashes it (SASLprep, RFC 4013), within its length bounds."""
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD:
        raise AccountError("invalid_password", f"a password is at most {MAX_PASSWORD} bytes")
    try:
        prepared = saslprep(password)  # the normalisation scramp applies when hashing
    except ScramException:
        raise AccountError("invalid_password", "the password holds characters that "
                           "SASLprep prohibits (control or unassigned characters)") from None
    return prepared


def check_new_password(password: str) -> str:
    """A password good enough to register with."""
    prepared = prepare_password(password)
    if len(prepared) < MIN_PASSWORD:
        raise AccountError("invalid_password",
                           f"a password needs at least {MIN_PASSWORD} characters")
    return prepared


def make_verifier(password: str, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> Verifier:
    """Derive the stored verifier (the expensive part: `iterations` of PBKDF2)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    salt, stored_key, server_key, count = MECHANISM.make_auth_info(
        password, iteration_count=iterations, salt=salt)
    return Verifier(salt, count, stored_key, server_key)


def check_password(verifier: Verifier, password: str) -> bool:
    """Whether `password` is the one `verifier` was made from (PLAIN). Runs the
    verifier's iterations whatever the answer, and compares in constant time."""
    try:
        prepared, valid = prepare_password(password), True
    except AccountError:
        prepared, valid = "-", False  # still derive: the same work either way
    derived = make_verifier(prepared, verifier.iterations, verifier.salt)
    return hmac.compare_digest(derived.stored_key, verifier.stored_key) and valid


def check_verifier(verifier: Verifier, min_iterations: int) -> Verifier:
    """A verifier a client made is of SCRAM-SHA-256's shape and costs at least ours."""
    if not min_iterations <= verifier.iterations <= MAX_ITERATIONS:
        raise AccountError("invalid_password", f"a verifier needs {min_iterations} to "
                           f"{MAX_ITERATIONS} iterations")
    if (not SALT_BYTES <= len(verifier.salt) <= 64 or len(verifier.stored_key) != KEY_BYTES
            or len(verifier.server_key) != KEY_BYTES):
        raise AccountError("invalid_password", f"a verifier has a salt of {SALT_BYTES} to "
                           f"64 bytes and keys of {KEY_BYTES} bytes")
    return verifier


class AccountStore:
    """The accounts database (SQLite). Every method may raise sqlite3.Error, which the
    caller turns into `storage_unavailable` for that one request."""

    def __init__(self, path: Path, iterations: int = DEFAULT_ITERATIONS) -> None:
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise ValueError(f"iterations must be {MIN_ITERATIONS} to {MAX_ITERATIONS}")
        self.iterations = iterations
        self.path = path
        # Created owner-only before SQLite opens it: it holds verifiers, readable by no one
        # else (a verifier is what an offline guessing attack starts from).
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(path, isolation_level=None, timeout=0.25)
        self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._secret = self._decoy_secret()
        # Decoys are made from random keys once per process: no password gives them.
        self._decoy_keys = secrets.token_bytes(32), secrets.token_bytes(32)

    def close(self) -> None:
        self.db.close()

    def _decoy_secret(self) -> bytes:
        row = self.db.execute("SELECT value FROM meta WHERE name = 'decoy'").fetchone()
        if row is not None:
            return bytes(row[0])
        secret = secrets.token_bytes(32)
        self.db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('decoy', ?)",
                        (secret,))
        row = self.db.execute("SELECT value FROM meta WHERE name = 'decoy'").fetchone()
        return bytes(row[0])

    def get(self, name: str) -> Account | None:
        """The account whose name has the same key as `name` (any spelling)."""
        row = self.db.execute(
            "SELECT name, key, created, iterations, salt, stored_key, server_key "
            "FROM accounts WHERE key = ?", (nick_key(name),)).fetchone()
        if row is None:
            return None
        return Account(row[0], row[1], row[2],
                       Verifier(bytes(row[4]), row[3], bytes(row[5]), bytes(row[6])))

    def owner(self, nick: str) -> str | None:
        """The name of the account that owns `nick` (by key), or None for a free nick."""
        row = self.db.execute("SELECT name FROM accounts WHERE key = ?",
                              (nick_key(nick),)).fetchone()
        return None if row is None else str(row[0])

    def decoy(self, name: str) -> Verifier:
        """A verifier for a name that has no account: stable salt, current count."""
        salt = hmac.new(self._secret, nick_key(name).encode(), hashlib.sha256).digest()
        return Verifier(salt[:SALT_BYTES], self.iterations, *self._decoy_keys)

    def verifier(self, name: str) -> tuple[Verifier, Account | None]:
        """The account's verifier, or a decoy when there is no such account."""
        account = self.get(name)
        return (account.verifier, account) if account else (self.decoy(name), None)

    def register(self, name: str, password: str, now_ms: int) -> Account:
        """Create an account; raises AccountError (invalid_account, invalid_password,
        account_exists). The hash runs only when the name is free and valid."""
        check_account_name(name)
        prepared = check_new_password(password)
        self._free(name)
        return self._insert(name, make_verifier(prepared, self.iterations), now_ms)

    def register_verifier(self, name: str, verifier: Verifier, now_ms: int) -> Account:
        """Create an account from a verifier the client derived itself, so that the
        password never crossed the wire. No hash runs here; the password's quality is
        the client's to check, the verifier's shape and work factor are checked here."""
        check_account_name(name)
        check_verifier(verifier, self.iterations)
        self._free(name)
        return self._insert(name, verifier, now_ms)

    def _free(self, name: str) -> None:
        if self.get(name) is not None:
            raise AccountError("account_exists", f"the account {name!r} exists")

    def _insert(self, name: str, verifier: Verifier, now_ms: int) -> Account:
        try:
            self.db.execute(
                "INSERT INTO accounts (key, name, created, scheme, iterations, salt, "
                "stored_key, server_key) VALUES (?, ?, ?, 'SCRAM-SHA-256', ?, ?, ?, ?)",
                (nick_key(name), name, now_ms, verifier.iterations, verifier.salt,
                 verifier.stored_key, verifier.server_key))
        except sqlite3.IntegrityError:  # registered meanwhile by another program
            raise AccountError("account_exists", f"the account {name!r} exists") from None
        return Account(name, nick_key(name), now_ms, verifier)

    def set_password(self, name: str, password: str) -> None:
        """Replace an account's verifier (made with the current iteration count)."""
        verifier = make_verifier(check_new_password(password), self.iterations)
        cur = self.db.execute(
            "UPDATE accounts SET iterations = ?, salt = ?, stored_key = ?, server_key = ? "
            "WHERE key = ?", (verifier.iterations, verifier.salt, verifier.stored_key,
                              verifier.server_key, nick_key(name)))
        if cur.rowcount == 0:
            raise AccountError("no_such_account", f"no account {name!r}")

    def put(self, account: Account) -> bool:
        """Store another host's account as it is (a cluster: chatd/cluster.py), replacing
        this database's record of the name; whether anything changed."""
        if self.get(account.name) == account:
            return False
        v = account.verifier
        self.db.execute(
            "INSERT OR REPLACE INTO accounts (key, name, created, scheme, iterations, salt, "
            "stored_key, server_key) VALUES (?, ?, ?, 'SCRAM-SHA-256', ?, ?, ?, ?)",
            (account.key, account.name, account.created, v.iterations, v.salt, v.stored_key,
             v.server_key))
        return True

    def drop(self, account: Account) -> bool:
        """Forget a registration the cluster refused: only if this record is still it."""
        cur = self.db.execute("DELETE FROM accounts WHERE key = ? AND stored_key = ?",
                              (account.key, account.verifier.stored_key))
        return cur.rowcount > 0

    def count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM accounts").fetchone()[0])


def record(account: Account) -> str:
    """An account as one line of text, for the cluster's Redis (chatd/clusterscripts.py):
    `NAME CREATED ITERATIONS SALT STORED_KEY SERVER_KEY`, the bytes in hex. A verifier,
    not a password: it lets nobody log in, but it is what an offline guess starts from."""
    v = account.verifier
    return " ".join((account.name, str(account.created), str(v.iterations), v.salt.hex(),
                     v.stored_key.hex(), v.server_key.hex()))


def from_record(text: str) -> Account:
    """The account of a `record()` line; AccountError (invalid_account) if it is not one."""
    try:
        name, created, iterations, salt, stored, server = text.split(" ")
        account = Account(check_account_name(name), nick_key(name), int(created),
                          Verifier(bytes.fromhex(salt), int(iterations),
                                   bytes.fromhex(stored), bytes.fromhex(server)))
        check_verifier(account.verifier, MIN_ITERATIONS)
    except (ValueError, AccountError):
        raise AccountError("invalid_account", f"not an account record: {text[:80]!r}"
                           ) from None
    return account
