"""The floor of the lean server's stack: uvloop and httptools answering 200, deciding nothing.

    python -m bench.floor PORT

Each request is parsed by httptools and answered with a fixed 200 once the loop's pass
ends, a connection's answers with one write: the lean server's way of writing
(token_service/validator/protocol.py) without its decision. bench.run measures it beside
nginx's ceiling, so each run shows what the server stack costs on its own, and so how
much of the validator's distance to the ceiling is the decision's. Not part of the product.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-mltokens-subject: bench\r\n\r\n"


class Floor(asyncio.Protocol):
    def __init__(self, ready: list[Floor]) -> None:
        self.ready = ready  # the server's connections with answers queued in this pass
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.answers = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        if not self.answers:
            if not self.ready:
                asyncio.get_running_loop().call_soon(flush, self.ready)
            self.ready.append(self)
        self.answers += 1

    def write(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(ANSWER * self.answers)
        self.answers = 0


def flush(ready: list[Floor]) -> None:
    for connection in ready:
        connection.write()
    ready.clear()


async def serve(port: int) -> None:
    ready: list[Floor] = []
    server = await asyncio.get_running_loop().create_server(lambda: Floor(ready), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))
