"""A tiny stand-in for chatd, to play a hostile or broken server to the real client.

It speaks the real framing (chatd.protocol) on a loopback port, answers `hello` and `join`
the way the real server does (the join reply's history comes from the test), answers
pings, and sends whatever other frames the test hands it. It runs its own event loop on
its own thread, so tests drive it with plain calls; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from chatd.protocol import FrameDecoder, decode_payload, pack

Frame = dict[str, Any]
T0 = 1_763_719_200_000  # a fixed server time (ms) for the frames tests build


def message(mid: int, text: str | None = None, room: str = "#a", sender: str = "bob",
            ts: Any = None) -> Frame:
    return {"type": "message", "id": mid, "ts": T0 + mid * 1000 if ts is None else ts,
            "room": room, "from": sender, "text": text or f"m{mid}", "action": False}


class FakeChatd:
    def __init__(self, history: Callable[[str], list[Frame]] = lambda room: []) -> None:
        self.history = history  # the messages a join of `room` gets, in the order to send
        self.received: list[Frame] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = self._run(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.host, self.port = self.server.sockets[0].getsockname()[:2]

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        decoder = FrameDecoder(max_frame=1 << 20)
        nick = ""
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                decoder.receive_data(data)
                for payload in decoder.payloads():
                    frame = decode_payload(payload)
                    self.received.append(frame)
                    nick = self._answer(writer, frame, nick)
        self.writers.remove(writer)

    def _answer(self, writer: asyncio.StreamWriter, f: Frame, nick: str) -> str:
        label = {"label": f["label"]} if "label" in f else {}
        if f.get("type") == "hello":
            nick = str(f.get("nick"))
            writer.write(pack({"type": "welcome", "version": 1, "server": "fake",
                               "session": "0123456789abcdef", "nick": nick, "time": T0,
                               "limits": {"max_text": 4000, "history_page": 200,
                                          "history_on_join": 50}, **label}))
        elif f.get("type") == "join":
            room = str(f.get("room"))
            writer.write(pack({"type": "joined", "room": room, "topic": "",
                               "members": [nick, "bob"], **label}))
            writer.write(pack({"type": "history", "room": room,
                               "messages": self.history(room), "more": False, **label}))
        elif f.get("type") == "ping":
            writer.write(pack({"type": "pong", **({"token": f["token"]} if "token" in f
                                                  else {})}))
        return nick

    def send(self, *frames: Frame) -> None:
        """Send frames to every connected client, in order."""
        def write() -> None:
            for writer in self.writers:
                for frame in frames:
                    writer.write(pack(frame))
        self.loop.call_soon_threadsafe(write)

    def wait_for(self, pred: Callable[[Frame], bool], timeout: float = 10.0) -> Frame:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for frame in list(self.received):
                if pred(frame):
                    return frame
            time.sleep(0.01)
        raise AssertionError(f"no such frame from the client; got {self.received[-5:]}")

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for writer in list(self.writers):
                writer.close()
            await self.server.wait_closed()

        with contextlib.suppress(Exception):
            self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
