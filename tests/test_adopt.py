"""Unit tests of what a new parent believes of a session that asks to be adopted."""

from __future__ import annotations

import os
from typing import Any

from chatd import channel, orphan
from chatd.adopt import Adopter, discover

KEY = os.urandom(32)


def registration(**change: Any) -> dict[str, Any]:
    reg = {"type": "register", "pid": 4242, "token": "t0k", "ip": "10.0.0.1", "last": 17,
           "cv": channel.VERSION,
           "state": orphan.signed_state(KEY, 4242, "t0k", "alice", None, ["#r"])}
    return {**reg, **change}


def check(reg: Any, pid: int = 4242) -> str | None:
    return Adopter(None, KEY)._check(pid, reg)  # type: ignore[arg-type]


def test_a_registration_signed_for_its_process_is_taken() -> None:
    assert check(registration()) is None


def test_an_old_or_unknown_channel_version_is_refused_by_name() -> None:
    why = check(registration(cv=0))
    assert why is not None and "channel version 0" in why


def test_what_was_not_signed_for_this_process_is_refused() -> None:
    assert "the kernel says pid 4243" in (check(registration(), pid=4243) or "")
    assert "not signed" in (check(registration(pid=4243), pid=4243) or "")
    forged = registration()
    forged["state"] = {**forged["state"], "nick": "bob"}
    assert "not signed" in (check(forged) or "")
    assert "not signed" in (check(registration(token="other")) or "")
    assert check("garbage") == "no registration"
    assert check(registration(last="17")) == "its registration is malformed"


def test_discover_finds_only_listening_sockets_of_this_data_dir(tmp_path, monkeypatch) -> None:
    ours = "@" + orphan.prefix(tmp_path).decode()
    table = "\n".join([
        "Num       RefCount Protocol Flags    Type St Inode Path",
        f"0000: 00000002 00000000 00010000 0001 01 1 {ours}123",
        f"0000: 00000002 00000000 00000000 0001 03 2 {ours}124",  # connected, not listening
        "0000: 00000002 00000000 00010000 0001 01 3 @chatd-0000000000000000-125",
        f"0000: 00000002 00000000 00010000 0001 01 4 {ours}x",
    ]).encode()
    real_open = open

    def fake_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        if path == "/proc/net/unix":
            import io
            return io.BytesIO(table + b"\n")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert discover(tmp_path) == [(123, b"\0" + ours[1:].encode() + b"123")]
