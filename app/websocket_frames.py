"""One socket write per event loop turn for the frames of a fan-out.

When a watched calculation changes, every subscription of a socket that watches it
sends a ``next`` frame in the same turn of the event loop: 25 frames on one socket in
the 10,000-subscriber benchmark, each an ASGI ``websocket.send`` ending in its own
``transport.write`` (one system call each; a quarter of the fan-out's CPU). Below ASGI
they can share one: Uvicorn's websockets-sansio protocol keeps a
``websockets.ServerProtocol`` whose ``send_text`` only frames the message into the
connection's outgoing buffer, and every write Uvicorn itself makes (its own ``send``,
pings, the close) takes that whole buffer first. So :class:`FrameWriter` frames a
message there and writes the buffer once, at the end of the turn: the frames of one
socket go out in the order they were sent, interleaved correctly with everything else
sent on it, in one system call. The graphql-transport-ws handler sends every message
through it (``GraphQLTransportWSHandler.send_message``): the fan-out's pre-encoded
frames, and the ``complete`` of each subscription after its terminal frame.

It keeps what Uvicorn's ``send`` guarantees: it waits while the transport is paused
(a slow client holds its subscriptions' tasks, whose mailboxes coalesce progress
meanwhile), and a closed or closing socket raises ``WebSocketDisconnected`` instead of
writing. Only that server is recognised (``FrameWriterMiddleware`` finds its protocol
behind the ``send`` it hands the application); under any other server, or with
``CRUNCHQL_WS_BATCHED_WRITES=false``, frames take the ordinary ASGI send.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.http.exceptions import WebSocketDisconnected
from websockets.exceptions import InvalidState

SCOPE_KEY = "crunchql.frame_writer"
logger = logging.getLogger(__name__)

try:  # the server is not a dependency of the application, only of `crunchql serve`
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
except ImportError:  # pragma: no cover - uvicorn is installed with crunchql
    WebSocketsSansIOProtocol = None  # type: ignore[assignment,misc]


class FrameWriter:
    """Text frames for one Uvicorn websockets-sansio connection, written once per turn."""

    __slots__ = ("_protocol", "_queued")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._queued = False  # in this turn's _to_flush

    async def send_text(self, text: str) -> None:
        protocol = self._protocol
        if not protocol.writable.is_set():
            await protocol.writable.wait()  # the client reads slowly: wait, as Uvicorn does
        if protocol.disconnected or protocol.close_sent or protocol.transport.is_closing():
            raise WebSocketDisconnected
        try:
            protocol.conn.send_text(text.encode())
        except InvalidState:  # the close handshake began
            raise WebSocketDisconnected from None
        if not self._queued:
            self._queued = True
            _flush_later(protocol.loop, self)

    def flush(self) -> None:
        self._queued = False
        protocol = self._protocol
        output = protocol.conn.data_to_send()  # empty if Uvicorn has written it since
        if output and not protocol.transport.is_closing():
            protocol.transport.write(b"".join(output))


# Per event loop, the writers with frames to write at the end of this turn. One callback
# flushes them all, scheduled by the turn's first frame: it runs before whatever the
# turn's tasks scheduled after that frame (a subscriber's completion and clean-up after
# its terminal frame), so no frame waits behind other subscriptions' work.
_to_flush: dict[asyncio.AbstractEventLoop, list[FrameWriter]] = {}


def _flush_later(loop: asyncio.AbstractEventLoop, writer: FrameWriter) -> None:
    writers = _to_flush.get(loop)
    if writers is None:
        writers = _to_flush[loop] = []
        loop.call_soon(_flush_all, loop)
    writers.append(writer)


def _flush_all(loop: asyncio.AbstractEventLoop) -> None:
    for writer in _to_flush.pop(loop, ()):
        try:
            writer.flush()
        except Exception:  # one broken connection must not keep the others' frames
            logger.warning("a WebSocket write failed", exc_info=True)


def frame_writer(scope: Scope) -> FrameWriter | None:
    """The batched writer of this WebSocket's connection, if its server has one."""
    writer = scope.get(SCOPE_KEY)
    return writer if isinstance(writer, FrameWriter) else None


class FrameWriterMiddleware:
    """Outermost middleware: sees the ``send`` the server passes, unwrapped. For a
    WebSocket served by Uvicorn's websockets-sansio protocol, puts a
    :class:`FrameWriter` for that connection in the scope; passes everything on
    unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and WebSocketsSansIOProtocol is not None:
            protocol = getattr(send, "__self__", None)
            if isinstance(protocol, WebSocketsSansIOProtocol):
                scope[SCOPE_KEY] = FrameWriter(protocol)
        await self.app(scope, receive, send)
