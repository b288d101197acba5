"""Accounts over the native protocol for the integration tests: register and log in with
the client side of chatd.sasl, as chat-client does."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from wire import Client

from chatd.sasl import ClientScram, register_verifier

ITERATIONS = 4096  # the least SCRAM allows: the tests are about logic, not cost
SETTINGS: dict[str, Any] = {"accounts": {"iterations": ITERATIONS}}


def register(client: Client, account: str, password: str) -> dict[str, Any]:
    """`register` with a verifier (no password on the wire); the reply frame."""
    return client.call({"type": "register", "account": account,
                        "verifier": register_verifier(password, ITERATIONS)})


def login(client: Client, account: str, password: str) -> dict[str, Any]:
    """A SCRAM-SHA-256 login; the last reply (`logged_in`, checked, or an `error`)."""
    scram = ClientScram(account, password)
    reply = client.call({"type": "login", "mechanism": "SCRAM-SHA-256",
                         "data": scram.first()})
    if reply["type"] != "auth":
        return reply
    reply = client.call({"type": "auth", "data": scram.final(reply["data"])})
    if reply["type"] == "logged_in":
        scram.verify(reply["data"])
    return reply


def logged_in(client: Client, account: str, password: str) -> dict[str, Any]:
    """Log in before hello, then hello: the welcome (as the account)."""
    reply = login(client, account, password)
    assert reply["type"] == "logged_in", reply
    welcome = client.call({"type": "hello", "version": 1, "nick": account})
    assert welcome["type"] == "welcome" and welcome["account"] == account, welcome
    client.nick = account
    return welcome


def direct_after(client: Client, after: int) -> list[dict[str, Any]]:
    """Every direct message of the session's identity after id `after` (all pages)."""
    out: list[dict[str, Any]] = []
    while True:
        page = client.call({"type": "history", "direct": True, "after": after})
        assert page["type"] == "history" and page["direct"] is True, page
        out += page["messages"]
        if not page["more"]:
            return out
        after = page["messages"][-1]["id"]


BASE64_RE = re.compile(rb"[A-Za-z0-9+/]{12,}={0,2}")
HEX_RE = re.compile(rb"(?:[0-9a-fA-F]{2}){8,}")


def leaks(data: bytes, secret: str) -> bool:
    """Whether `data` (a log, a file) holds `secret` in clear, in base64 (as SASL PLAIN
    carries it on IRC) or in hex."""
    needle = secret.encode()
    if needle in data or needle.hex().encode() in data.lower():
        return True
    for token in BASE64_RE.findall(data):
        for start in range(4):  # wherever a base64 run may have begun
            with_pad = token[start:] + b"=" * (-len(token[start:]) % 4)
            try:
                if needle in base64.b64decode(with_pad):
                    return True
            except (binascii.Error, ValueError):
                continue
    return False
