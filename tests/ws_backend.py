"""A WebSocket echo server for tests (the ``websockets`` library, in its own thread and loop)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from websockets.asyncio.server import serve


class EchoServer:
    """A websockets server in its own thread: echoes every message, upper-cased for text, and
    remembers the request path and headers of each handshake."""

    def __init__(self, label: str = "") -> None:
        self.label = label  # prefixed to text replies when set (tells servers apart)
        self.loop = asyncio.new_event_loop()
        self.handshakes: list[tuple[str, dict[str, str]]] = []
        ready = threading.Event()
        self.port = 0

        async def handler(connection: Any) -> None:
            request = connection.request
            self.handshakes.append((request.path, {k.lower(): v for k, v in request.headers.raw_items()}))
            async for message in connection:
                reply = message.upper() if isinstance(message, str) else message
                await connection.send(f"{self.label}:{reply}" if self.label and isinstance(reply, str) else reply)

        async def main() -> None:
            self.server = await serve(handler, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
            ready.set()
            await self.server.wait_closed()

        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(main()), daemon=True)
        self.thread.start()
        ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.thread.join(10)

    # the conformance harness closes backends like socketservers
    def shutdown(self) -> None:
        self.close()

    def server_close(self) -> None:
        pass
