"""Accounts in the client (sans-I/O; protocol.md §12): log in, register, and fetch every
direct message of our identity that we missed.

Logging in is SCRAM-SHA-256 (chatd.sasl's client side, the server's own rules), before
`hello`: `login` with the client-first-message, `auth` with the proof, then `logged_in`,
whose server signature is checked (a server that cannot show it knows the account's
verifier is not the server we registered with), and only then `hello`. The password is
kept in memory only, for the logins of later reconnections. `/register` sends a verifier
the client derives itself, so the password never leaves it, with or without TLS.

Direct-message catch-up (issue: a DM from a peer never talked to, sent while we were
away, was never fetched): the server answers `history direct: true after: N` with every
direct message of our identity (the account's, or a guest nick's) after N. The client
keeps that N per identity (`Points.direct`, saved across restarts) and asks on every
welcome and whenever its identity changes (a login, a nick taken back); pages follow
until `more` is false. Buffers drop duplicates by id, so each message is shown once. A
guest nick's point starts at its newest direct message from before we first held it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chatd.accounts import AccountError
from chatd.protocol import nick_key
from chatd.sasl import SCRAM_SHA_256, AuthFailed, ClientScram, register_verifier

from .buffer import SERVER
from .catchup import FETCHING, Point
from .lifecycle import HelloRefused
from .requests import Frame, Req

if TYPE_CHECKING:
    from .core import Core

# Login failures a reconnection may fix (the server's auth service restarting, a
# brute-force wait); any other one stops the client: retrying a wrong password only
# locks the account out.
TEMPORARY = frozenset({"auth_unavailable", "rate_limited", "storage_unavailable"})


class LoginRefused(HelloRefused):
    """The login failed; `retry` when waiting may help (TEMPORARY)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.retry = code in TEMPORARY


def identity(core: Core) -> str:
    """Whose direct messages this session gets (the server's rule: chatd.store.identity)."""
    account = core.model.account
    return "@" + nick_key(account) if account else nick_key(core.model.nick)


# ---- logging in ----


def start(core: Core) -> bool:
    """On a new connection: log in first when we have an account (True), else False
    (the caller says hello at once)."""
    if not core.account or core.password is None:
        return False
    try:
        core.scram = ClientScram(core.account, core.password)
    except AccountError as exc:
        core.refused = HelloRefused(exc.code, exc.message)
        return True
    core.request({"type": "login", "mechanism": SCRAM_SHA_256, "data": core.scram.first()},
                 "login", SERVER)
    return True


def on_auth(core: Core, f: Frame, req: Req | None, now: float) -> None:
    """SCRAM's challenge: answer it with our proof."""
    if req is None or req.kind != "login" or core.scram is None:
        return
    try:
        final = core.scram.final(f["data"])
    except AuthFailed as exc:
        core.refused = LoginRefused(exc.code, exc.message)
        return
    core.request({"type": "auth", "data": final}, "login", SERVER)


def on_logged_in(core: Core, f: Frame, req: Req | None, now: float) -> None:
    if req is None or req.kind not in ("login", "register"):
        return
    if req.kind == "login" and core.scram is not None:
        try:
            core.scram.verify(f.get("data") or b"")
        except AuthFailed as exc:
            core.refused = LoginRefused(exc.code, exc.message)
            return
    core.scram = None
    account = str(f["account"])
    core.account, core.model.account = account, account
    core.want_nick = account
    m = core.model
    m.note(m.buffers[SERVER], f"{'registered and ' if req.kind == 'register' else ''}"
           f"logged in as {account}", "notice", activity=False)
    if core.registered:  # (a /register after the welcome) the account's messages now
        m.nick = account
        catch_up(core)
    else:
        core.hello(account)


def failed(core: Core, code: str, text: str) -> None:
    """A login before hello was refused: retrying may help, or it may not."""
    core.scram = None
    core.refused = LoginRefused(code, text)


# ---- registering ----


def register(core: Core, password: str | None) -> None:
    """/register [PASSWORD]: the current nick becomes an account (verifier: the password
    never leaves the client). Without PASSWORD, the one given at start-up."""
    m = core.model
    password = password if password is not None else core.password
    if password is None:
        core.local_error("usage: /register PASSWORD (or start with --password-file or "
                         "CHAT_CLIENT_PASSWORD)")
        return
    if core.model.account:
        core.local_error(f"logged in as {core.model.account} already")
        return
    try:
        verifier = register_verifier(password, core.iterations)
    except AccountError as exc:
        core.local_error(f"not registered: {exc.message}")
        return
    core.password = password  # for the logins of later reconnections
    core.account = m.nick
    core.request({"type": "register", "account": m.nick, "verifier": verifier}, "register",
                 SERVER)


# ---- direct-message catch-up ----


def catch_up(core: Core) -> None:
    """Ask for every direct message of our identity after its point (if the server
    knows the request: one that offers accounts states `welcome.auth`)."""
    if not core.direct_history:
        return
    me = identity(core)
    point = core.points.direct.get(me)
    if point is None and not core.model.account:
        # A guest nick's messages are anyone's who held it before: ours start now. Ask
        # for the newest one before us (not shown): the point starts there, so that the
        # next catch-up of this nick (after a reconnect as nick_, say) misses nothing.
        point = core.points.direct[me] = Point()
        point.start()
        core.request({"type": "history", "direct": True, "limit": 1}, "direct", SERVER,
                     point=point, mark=True)
        return
    if point is None:
        point = core.points.direct[me] = Point()
    if point.state is FETCHING:
        return
    point.start()
    _ask(core, point, point.seen)


def _ask(core: Core, point: Point, after: int) -> None:
    core.request({"type": "history", "direct": True, "after": after}, "direct", SERVER,
                 after=after, point=point)


def on_direct(core: Core, f: Frame, req: Req | None) -> None:
    """A page of `history direct`: each message to its conversation's buffer."""
    from .events import message_line  # (events dispatches to this module)

    m = core.model
    point: Point | None = req.extra.get("point") if req is not None else None
    if req is not None and req.extra.get("mark") and point is not None:
        # where a guest nick's point starts: its newest direct message before us
        point.page(max((int(msg["id"]) for msg in f["messages"]), default=0))
        point.finish()
        return
    last = 0
    for msg in f["messages"]:
        sender, to = str(msg["from"]), str(msg.get("to", ""))
        mine = nick_key(sender) == nick_key(m.nick)
        peer = to if mine else sender
        line = message_line(core, msg)
        line.backlog = True
        m.add(m.dm(peer), line, True)
        core.points.dm(nick_key(m.nick), nick_key(peer), peer).page(int(msg["id"]))
        last = max(last, int(msg["id"]))
    if point is None:
        return
    if last:
        point.page(last)
    if f["more"] and last:
        _ask(core, point, last)
    else:
        point.finish()


def saw(core: Core, f: Frame) -> None:
    """A live direct message: it moves our identity's point (when we keep one)."""
    point = core.points.direct.get(identity(core))
    if point is not None:
        point.got(int(f["id"]))


def welcome(core: Core, f: Frame) -> None:
    """What a welcome says about accounts."""
    auth: Any = f.get("auth")
    core.direct_history = isinstance(auth, dict)
    if isinstance(auth, dict) and isinstance(auth.get("iterations"), int):
        core.iterations = auth["iterations"]
    account = f.get("account")
    core.model.account = account if isinstance(account, str) else None
