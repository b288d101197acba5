"""The IRC front end (sans-I/O): IRC clients in chatd's rooms.

An IRC session is a native session whose client happens to speak IRC. `IrcFrontEnd`
translates between IRC lines and native protocol frames (protocol.md is the contract):
every request it makes is a native request frame, exactly as a native client would send
it, fed to the same `chatd.session.Session`, so that the native validation, rate limits,
keepalive and handshake deadline apply unchanged; every native frame the client is sent
(the Session's own and the broker's) comes back through it as IRC lines. The parent and
the broker never learn which protocol a session speaks.

Why a translator in front of the Session, rather than an IRC Session beside it: the
Session is where a connection's limits live, and there must be one of it. IRC commands
chatd has nothing to ask about (CAP, MODE, WHOIS, ...) are answered by the front end,
from what it has seen, and cost a token of a `cmd` bucket of its own, sized like the
Session's, so that they are not a way around the rate limit.

Wiring, for the session process's loop (the shell feeds bytes, the cores answer):

    front = IrcFrontEnd(config, now)           # next to Session(config, now)
    # client bytes (not while front.paused: the input waits for answers):
    front.receive_data(data, now)
    session.receive_data(b"".join(front.to_session), now)   # even when empty: b"" is
    front.to_session.clear()                                 # the client's sign of life
    # native frames for the client: session.to_client, and the broker's RAW envelopes:
    front.receive_frames(frames, now)          # then feed front.to_session as above, but
                                               # only when it holds something
    out = b"".join(front.to_client)            # IRC lines for the client socket
    # front.ended: the front end wrote its last line (ERROR); the Session ends too.

Modules: lines (the line codec), frontend (state, reply order), commands (dispatch,
registration-time commands, rooms), welcome (CAP, 001-005, MOTD), messaging (PRIVMSG,
NOTICE, multiline batches), queries (NAMES, LIST, WHO, WHOIS, MODE, ...), chathistory,
away (AWAY, away-notify, who is away), render (native frames as IRC lines, errors as
numerics, labelled responses).
"""

from chatd.irc.frontend import IrcFrontEnd
from chatd.irc.lines import IrcError, Line, LineReader, parse, serialise

__all__ = ["IrcError", "IrcFrontEnd", "Line", "LineReader", "parse", "serialise"]
