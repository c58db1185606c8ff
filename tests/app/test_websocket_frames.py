"""app.websocket_frames: a socket's frames of one event loop turn leave in one write,
in order with everything else sent on that socket, under Uvicorn's flow control."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.http.exceptions import WebSocketDisconnected

from crunchql.app.websocket_frames import FrameWriter, FrameWriterMiddleware, frame_writer

Endpoint = Callable[[WebSocket, FrameWriter], Awaitable[None]]


class CountingTransport:
    """The connection's transport, counting its writes."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Endpoint], Awaitable[str]]]:
    """Serves one WebSocket endpoint under Uvicorn (websockets-sansio, as `crunchql
    serve` runs it); the endpoint gets the connection's writer."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
    failures: list[BaseException] = []

    async def start(endpoint: Endpoint) -> str:
        async def route(websocket: WebSocket) -> None:
            await websocket.accept()
            writer = frame_writer(websocket.scope)
            try:
                assert writer is not None, "no frame writer under Uvicorn"
                await endpoint(websocket, writer)
            except BaseException as error:
                failures.append(error)
                raise

        app = Starlette(
            routes=[WebSocketRoute("/ws", route)], middleware=[Middleware(FrameWriterMiddleware)]
        )
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, log_config=None, ws="websockets-sansio", lifespan="off"
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        servers.append((server, task))
        async with asyncio.timeout(30):
            while not server.started:
                assert not task.done(), "uvicorn did not start"
                await asyncio.sleep(0.01)
        return f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/ws"

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 30)
    if failures:
        raise failures[0]


async def receive(socket: websockets.ClientConnection, count: int) -> list[str]:
    return [str(await asyncio.wait_for(socket.recv(), 30)) for _ in range(count)]


async def test_frames_of_one_turn_leave_in_one_write_in_order(
    serve: Callable[[Endpoint], Awaitable[str]],
) -> None:
    counted: list[int] = []

    async def endpoint(websocket: WebSocket, writer: FrameWriter) -> None:
        protocol = writer._protocol
        transport = protocol.transport = CountingTransport(protocol.transport)
        # Five subscriptions' tasks woken by one event, each sending its frame.
        await asyncio.gather(*(writer.send_text(f"frame {n}") for n in range(5)))
        await asyncio.sleep(0)  # the end of the turn: the writer's flush has run
        counted.append(transport.writes)
        # Frames still unwritten when an ordinary ASGI send follows go out before it.
        await writer.send_text("frame 5")
        await websocket.send_text("complete")
        counted.append(transport.writes)
        await websocket.receive()  # until the client closes

    url = await serve(endpoint)
    async with websockets.connect(url) as socket:
        assert await receive(socket, 7) == [*(f"frame {n}" for n in range(6)), "complete"]
    assert counted == [1, 2]


async def test_every_socket_of_a_turn_is_written_before_the_turns_later_work(
    serve: Callable[[Endpoint], Awaitable[str]],
) -> None:
    """Subscribers on two sockets get their terminal frames, and each schedules its
    completion and clean-up after its own frame: both sockets' frames are written before
    any of that work runs, not one socket's after the other's clean-up."""
    first: asyncio.Future[tuple[WebSocket, FrameWriter]] = asyncio.Future()
    writes_seen: list[tuple[int, int]] = []

    async def endpoint(websocket: WebSocket, writer: FrameWriter) -> None:
        protocol = writer._protocol
        protocol.transport = CountingTransport(protocol.transport)
        if not first.done():
            first.set_result((websocket, writer))
            await websocket.receive()
            return
        other = first.result()[1]
        loop = asyncio.get_running_loop()
        await other.send_text("terminal A")
        loop.call_soon(  # A's clean-up, scheduled after A's frame
            lambda: writes_seen.append(
                (other._protocol.transport.writes, protocol.transport.writes)
            )
        )
        await writer.send_text("terminal B")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        await websocket.receive()

    url = await serve(endpoint)
    async with websockets.connect(url) as a:
        await asyncio.wait_for(first, 30)
        async with websockets.connect(url) as b:
            assert await receive(a, 1) == ["terminal A"]
            assert await receive(b, 1) == ["terminal B"]
    assert writes_seen == [(1, 1)]


async def test_a_paused_transport_holds_the_sender_until_it_resumes(
    serve: Callable[[Endpoint], Awaitable[str]],
) -> None:
    async def endpoint(websocket: WebSocket, writer: FrameWriter) -> None:
        protocol = writer._protocol
        protocol.pause_writing()  # what asyncio calls above the transport's high-water mark
        sending = asyncio.create_task(writer.send_text("held"))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not sending.done()
        protocol.resume_writing()
        await asyncio.wait_for(sending, 30)
        await websocket.send_text("after")
        await websocket.receive()

    url = await serve(endpoint)
    async with websockets.connect(url) as socket:
        assert await receive(socket, 2) == ["held", "after"]


async def test_a_closed_socket_refuses_frames(
    serve: Callable[[Endpoint], Awaitable[str]],
) -> None:
    refused = asyncio.Event()

    async def endpoint(websocket: WebSocket, writer: FrameWriter) -> None:
        message = await websocket.receive()
        assert message["type"] == "websocket.disconnect"
        with pytest.raises(WebSocketDisconnected):
            await writer.send_text("too late")
        refused.set()

    url = await serve(endpoint)
    async with websockets.connect(url):
        pass
    await asyncio.wait_for(refused.wait(), 30)


async def test_no_writer_under_another_server() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(frame_writer(scope))

    async def send(message: Any) -> None:  # not Uvicorn's protocol
        return None

    async def no_message() -> Any:
        return {"type": "websocket.connect"}

    await FrameWriterMiddleware(app)({"type": "websocket"}, no_message, send)
    assert seen == [None]
