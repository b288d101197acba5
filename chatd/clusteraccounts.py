"""Accounts in a cluster (sans-I/O; in the parent of a cluster host, with ClusterBroker).

* A **registration** is made by this host's auth helper (the verifier), then offered to
  Redis (the ACCOUNT script, chatd/clusterscripts.py): the name is the cluster's unless
  another host registered it first (`account_exists`, and this helper takes the
  cluster's record) or a session of another host holds the nick (`nick_taken`); a
  refused registration is withdrawn from this helper (`drop_account`).
* **Every host's helper stores every account** (`put_account`, again after a helper
  restart until it says it has): from the stream (`a` entries) and, when a host comes
  up, from Redis's snapshot. So an account logs in on any host, and its nick is owned
  (refused to guests) on every host.
* **What Redis lacks** (it lost its data, or the account was registered on this host
  before it joined the cluster) is offered back when the host comes up: the helper's
  record (`get_record`, a few at a time), then the ACCOUNT script. If the cluster has the
  name with another verifier, the cluster's wins here too (logged).

The records (chatd.accounts.record) hold verifiers, never passwords: the parent passes
them between its helper and Redis and writes them nowhere.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from chatd import protocol as p
from chatd.store import StorageError

if TYPE_CHECKING:
    from chatd.broker import Member
    from chatd.cluster import ClusterBroker

log = logging.getLogger("chatd.cluster")
OFFERING = 16  # records asked of the helper at once, to offer to Redis


def name_of(record: str) -> str:
    return record.split(" ", 1)[0]


class SharedAccounts:
    def __init__(self, broker: ClusterBroker) -> None:
        self.b = broker
        self.puts: dict[str, str] = {}  # account key -> record the helper has yet to store
        self.offers: deque[str] = deque()  # names of accounts Redis lacks, to offer
        self.asking: set[str] = set()  # those whose records the helper is asked for

    # ---- Redis's side ----

    def shared(self, member: Member | None, record: str, pending: Any, msg: dict[str, Any],
               now_ms: int) -> None:
        """Redis's answer to an account offered (ClusterBroker.share_account): a
        registration here (`pending`: Logins' own), or one Redis lacked (None)."""
        name = name_of(record)
        outcome = -1 if "e" in msg else int(msg["v"][0])
        if outcome == 0 and str(msg["v"][1]) != record:  # another host's first: theirs
            self.known(str(msg["v"][1]))
            if pending is None:
                log.error("account %s was registered differently on this host than in "
                          "the cluster: the cluster's (its password) is kept", name)
        if pending is None:
            if outcome == 2:
                log.warning("account %s: not offered to the cluster, a session of another "
                            "host holds its nick (offered again when this host reconnects)",
                            name)
            return
        error: bytes | None = None
        label = pending[0].label
        if outcome != 1:
            self.b.logins.ask_helper("drop_account", "", record=record)
            error = {-1: p.error_frame("storage_unavailable", "not stored: this server "
                                       "cannot reach the cluster's Redis; try again later",
                                       label=label),
                     0: p.error_frame("account_exists", f"the account {name!r} exists",
                                      label=label),
                     2: p.error_frame("nick_taken", f"nick {name!r} is in use",
                                      label=label)}[outcome]
        if member is not None:
            self.b.logins.registered(member, name, pending, error, now_ms)

    def known(self, record: str) -> None:
        """An account of the cluster: its nick is owned here, the helper stores it."""
        name = p.check_nick(name_of(record))
        key = p.nick_key(name)
        for members in self.b.remote.values():  # (held by its sessions only, from now on)
            if key in members:
                self.b.remote_account(members[key], name, self.b.now_ms)
        if self.b.directory.owned.get(key) != name:
            self.b.directory.owned[key] = name
            try:
                self.b.store.own(name)
            except StorageError as exc:  # (the next snapshot or login records it again)
                log.error("cannot record that %s owns its nick: %s", name, exc.message)
        self.puts[key] = record
        if self.b.logins.available:
            self.b.logins.ask_helper("put_account", key, record=record)

    def came_up(self, records: list[str]) -> None:
        """Redis's accounts when this host (re)connected: those this host lacks are
        stored here, those Redis lacks are offered to it."""
        have = {p.nick_key(name_of(record)) for record in records}
        for record in records:
            if self.b.directory.owned.get(p.nick_key(name_of(record))) is None:
                self.known(record)
        self.offers = deque(name for key, name in self.b.directory.owned.items()
                            if key not in have)
        self.asking.clear()
        self._ask()

    # ---- the helper's side ----

    def started(self) -> None:
        """A helper runs (again): what it has not stored yet, and the offers."""
        for key, record in self.puts.items():
            self.b.logins.ask_helper("put_account", key, record=record)
        self._ask()

    def lost(self) -> None:
        """The helper died (its requests with it): offers not answered are asked again."""
        self.offers.extendleft(self.asking)
        self.asking.clear()

    def _ask(self) -> None:
        while self.offers and len(self.asking) < OFFERING and self.b.logins.available:
            name = self.offers.popleft()
            self.asking.add(name)
            self.b.logins.ask_helper("get_record", p.nick_key(name), account=name)

    def done(self, op: str, key: str, record: str, reply: Any) -> None:
        """The helper's reply to a request of the cluster's (Logins.ask_helper)."""
        ok = isinstance(reply, dict) and reply.get("ok") is True
        if op == "put_account":
            if ok and self.puts.get(key) == record:
                del self.puts[key]
            elif not ok:  # kept: sent again when the next helper starts
                log.error("auth helper did not store the cluster's account %s: %s",
                          name_of(record), str(reply)[:200])
        elif op == "get_record":
            self.asking = {n for n in self.asking if p.nick_key(n) != key}
            text = reply.get("record") if ok else None
            if isinstance(text, str) and len(text) <= 512 and self.b.up:
                self.b.share_account(None, text, None, 0)
            self._ask()
