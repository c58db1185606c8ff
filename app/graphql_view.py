"""Strawberry's ASGI view, adapted to the contract and to GraphQL over HTTP.

- the context carries the services, the client address and the caller's token claims
  (HTTP ``Authorization`` header; WebSocket ``connection_init`` payload);
- a bad token in ``connection_init`` closes the socket with 4403; no token is allowed
  and protected fields then answer UNAUTHENTICATED;
- every answer is JSON, never plain text: a malformed request (bad JSON, no query,
  parameters of the wrong type) is a 400 with an ``errors`` array, a POST that is not
  ``application/json`` a 415, an ``Accept`` header we cannot satisfy a 406, a mutation
  over GET a 405 (``Allow: POST``), a body over the size limit a 413, and a fault in
  the view itself a 500 INTERNAL_SERVER_ERROR without detail;
- ``application/graphql-response+json`` is spoken when the client prefers it; under it
  a request refused before execution (no ``data`` entry) is a 400;
- every GraphQL error carries an ``extensions.code`` from the contract;
- a response that consumed rate limits carries ``RateLimit-Policy``/``RateLimit``
  headers, and one over ``max_response_bytes`` is replaced by an error before encoding;
- WebSockets: a per-socket operation rate, and a per-user cap on open sockets (4429);
- browsers get our own GraphiQL page with its assets served from the package (unless
  switched off: the default in production).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, cast

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema import BaseSchema
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    ErrorMessage as TransportErrorMessage,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import SubscribeMessage
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage,
    StartMessage,
)
from strawberry.subscriptions.protocols.graphql_ws.types import ErrorMessage as LegacyErrorMessage
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError
from strawberry.types.graphql import OperationType

from crunchql.app.graphiql import content_security_policy, graphiql_html
from crunchql.app.limits import (
    OperationRate,
    estimated_json_size,
    rate_limit_headers,
    too_large_body,
)
from crunchql.app.websocket_frames import frame_writer
from crunchql.auth.rate_limit import tracking_usage
from crunchql.core.errors import CrunchError, ErrorCode
from crunchql.core.logging import log_context
from crunchql.resolvers.context import Context
from crunchql.schema.sharing import DirectSink, direct_sink, use_direct_sink
from crunchql.services.container import ServiceContainer
from crunchql.services.revocation import SessionEndedError
from crunchql.services.sessions import ensure_live

logger = logging.getLogger("crunchql.graphql")

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"
MASKED_MESSAGE = "Internal server error."
# Operation types per HTTP method: subscriptions are served over WebSocket only.
ALLOWED_OPERATIONS = {
    "GET": frozenset({OperationType.QUERY}),
    "POST": frozenset({OperationType.QUERY, OperationType.MUTATION}),
}


# The request body as parse_http_body decoded it, for Strawberry's second look at it
# (each request runs in its own task, so this is per request).
_decoded_body: ContextVar[tuple[bytes, Any] | None] = ContextVar(
    "crunchql_decoded_body", default=None
)


class ViewError(HTTPException):
    """An HTTP-level refusal, answered with a JSON ``errors`` body."""

    def __init__(
        self,
        status_code: int,
        reason: str,
        *,
        headers: dict[str, str] | None = None,
        json_only: bool = False,
    ) -> None:
        super().__init__(status_code, reason)
        self.headers = headers or {}
        self.json_only = json_only  # 406: the client's Accept cannot be honoured anyway


class BodyTooLarge(Exception):
    pass


def bearer_token(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def client_address(connection: Request | WebSocket) -> str:
    # Behind nginx, Uvicorn's --proxy-headers (with --forwarded-allow-ips) already put
    # the real client here.
    return connection.client.host if connection.client else "unknown"


def _media_ranges(accept: str) -> list[tuple[str, float, int]]:
    """The media ranges of an Accept header as (range, quality, position)."""
    ranges: list[tuple[str, float, int]] = []
    for index, part in enumerate(accept.split(",")):
        media, *params = (item.strip() for item in part.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        ranges.append((media.lower(), quality, index))
    return ranges


def _acceptance(media_type: str, ranges: list[tuple[str, float, int]]) -> tuple[float, int]:
    """(quality, position) of the most specific range matching ``media_type``; q=0 if none."""
    main = media_type.split("/")[0]
    best: tuple[int, float, int] = (-1, 0.0, 0)
    for media, quality, index in ranges:
        if media == media_type:
            specificity = 2
        elif media == f"{main}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best[0]:
            best = (specificity, quality, index)
    return best[1], best[2]


def negotiate_media_type(accept: str | None) -> str | None:
    """The response media type for an Accept header, None when neither JSON type is
    acceptable. No (or an empty) Accept header means application/json; on a tie the
    type the client listed first wins, and wildcards alone mean application/json."""
    if accept is None or not accept.strip():
        return APPLICATION_JSON
    ranges = _media_ranges(accept)
    graphql_q, graphql_at = _acceptance(GRAPHQL_RESPONSE_JSON, ranges)
    json_q, json_at = _acceptance(APPLICATION_JSON, ranges)
    if graphql_q <= 0 and json_q <= 0:
        return None
    if graphql_q > json_q or (graphql_q == json_q and graphql_at < json_at):
        return GRAPHQL_RESPONSE_JSON
    return APPLICATION_JSON


def accepts_html(accept: str | None) -> bool:
    if not accept:
        return False
    return _acceptance("text/html", _media_ranges(accept))[0] > 0


def error_body(message: str, code: ErrorCode = ErrorCode.BAD_USER_INPUT) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code.value}}]}


async def _run_on_close(context: Context) -> None:
    while context.on_close:
        with contextlib.suppress(Exception):
            await context.on_close.pop()()


def _ends_session(result: ExecutionResult) -> bool:
    """True for the answer of an operation whose session (or account) was ended."""
    return any(isinstance(error.original_error, SessionEndedError) for error in result.errors or [])


class GraphQLTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with a per-socket operation rate and a per-user socket cap,
    and the contract's rule for operations whose session ends (a revoked session, a
    disabled account): a running subscription ends with an ``error`` message carrying
    UNAUTHENTICATED, not a ``next`` with errors, and so does any operation started with
    that session afterwards; the socket stays open. (Strawberry otherwise sends errors
    raised mid-stream as ``next``; other errors keep that form.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rate = OperationRate(self.context.services.limits.ws_operations_per_minute)
        self._socket = cast("ASGIWebSocketAdapter", self.websocket).ws
        # Below ASGI under Uvicorn: what one turn of the event loop sends on this socket
        # (a fan-out's frames, then their `complete`s) leaves in one write.
        self._writer = frame_writer(self._socket.scope)

    async def send_message(self, message: Any) -> None:
        encoded = self.view.encode_json(message)
        if isinstance(encoded, bytes):  # a binary frame: Strawberry's own send
            await super().send_message(message)
            return
        await self._send_text(encoded)

    async def _send_text(self, text: str) -> None:
        if self._writer is not None:
            await self._writer.send_text(text)
            return
        try:
            await self._socket.send_text(text)
        except WebSocketDisconnect as error:
            raise WebSocketDisconnected from error

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and not self.context.on_close:
            refusal = await cast("CrunchGraphQL", self.view).admit_socket(self.context)
            if refusal is not None:
                self.connection_acknowledged = False
                await self.websocket.close(code=4429, reason=refusal)

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        if self.connection_acknowledged and message["id"] not in self.operations:
            refusal = self.rate.refusal()
            if refusal is not None:
                await self.send_message(
                    TransportErrorMessage(id=message["id"], type="error", payload=[refusal])
                )
                return
        await super().handle_subscribe(message)

    async def shutdown(self) -> None:
        try:
            await super().shutdown()
        finally:
            await _run_on_close(self.context)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        # The operation's own task: the sink is seen by its resolver and nowhere else.
        if cast("CrunchGraphQL", self.view).direct_frames:
            use_direct_sink(
                DirectSink(
                    operation.id,
                    self.context,
                    self.view.encode_json,
                    lambda frame: self._send_frame(operation, frame),
                )
            )
        await super().run_operation(operation)

    async def _send_frame(self, operation: Operation[Context, None], frame: str) -> None:
        """A pre-encoded ``next`` of ``operation`` (what ``send_next`` would send)."""
        if not operation.completed:
            await self._send_text(frame)

    async def _send_result_stream(
        self, operation: Operation[Context, None], result_source: Any
    ) -> None:
        is_first_result = True
        async for result in result_source:
            if (
                isinstance(result, ExecutionResult)
                and not isinstance(result, PreExecutionError)
                and result.data is None
                and _ends_session(result)
            ):
                await operation.send_initial_errors(list(result.errors or []))
                return
            if is_first_result and isinstance(result, PreExecutionError):
                await self._handle_pre_execution_error(operation, result)
                return
            if not isinstance(result, ExecutionResult):
                await self._reject_incremental_delivery(operation)
                return
            await operation.send_next(result)
            is_first_result = False
            if not result.errors:
                sink = direct_sink()
                if sink is not None:
                    sink.sent_normally(result.extensions)


class LegacyGraphQLWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The older graphql-ws protocol: Strawberry closes a rejected connection_init with
    1011 there; the contract wants 4403 on both protocols. Both close a socket over the
    user's open-socket cap with 4429."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rate = OperationRate(self.context.services.limits.ws_operations_per_minute)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        payload = message.get("payload")
        if isinstance(payload, dict):
            self.context.connection_params = payload
            try:
                await self.view.on_ws_connect(self.context)
            except ConnectionRejectionError:
                await self.websocket.close(code=4403, reason="Forbidden")
                return
        if not self.context.on_close:  # a repeated connection_init takes no second slot
            refusal = await cast("CrunchGraphQL", self.view).admit_socket(self.context)
            if refusal is not None:
                await self.websocket.close(code=4429, reason=refusal)
                return
        await super().handle_connection_init(message)

    async def handle_start(self, message: StartMessage) -> None:
        if self.connection_acknowledged:
            refusal = self.rate.refusal()
            if refusal is not None:
                await self.send_message(
                    LegacyErrorMessage(type="error", id=message["id"], payload=refusal)
                )
                return
        await super().handle_start(message)

    async def handle(self) -> None:
        try:
            await super().handle()
        finally:
            await _run_on_close(self.context)


class CrunchGraphQL(GraphQL[Context, None]):
    graphql_ws_handler_class = LegacyGraphQLWSHandler
    graphql_transport_ws_handler_class = GraphQLTransportWSHandler

    def __init__(
        self,
        schema: BaseSchema,
        services: ServiceContainer,
        *,
        allowed_origins: list[str],
        connection_init_timeout: float,
        max_request_bytes: int,
        max_response_bytes: int = 32 * 1024 * 1024,
        graphiql: bool = True,
        direct_frames: bool = True,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql else None,
            connection_init_wait_timeout=timedelta(seconds=connection_init_timeout),
            allowed_origins=allowed_origins,
            max_subscriptions_per_connection=100,
        )
        self.services = services
        self.direct_frames = direct_frames
        self.max_request_bytes = max_request_bytes
        self.max_response_bytes = max_response_bytes
        self._page = graphiql_html(endpoint="/graphql", assets_prefix="/graphiql-assets")
        self._page_csp = content_security_policy(self._page)

    # ---- context and authentication -------------------------------------------

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        context = Context(
            services=self.services,
            connection=request,
            client=client_address(request),
            request_id=request_id[:64],
        )
        if isinstance(request, Request):
            self._authenticate(context, request.headers.get("authorization"))
        log_context.set({"request_id": context.request_id})
        return context

    def _authenticate(self, context: Context, header: object) -> None:
        if header is None:
            return
        token = bearer_token(header)
        if token is None:
            context.auth_error = CrunchError("Authorization must be 'Bearer <accessToken>'.")
            context.auth_error.code = ErrorCode.UNAUTHENTICATED
            return
        try:
            context.claims = self.services.tokens.decode_access_token(token)
        except CrunchError as error:
            context.auth_error = error

    async def on_ws_connect(self, context: Context) -> None:
        params = context.connection_params or {}
        header = params.get("Authorization", params.get("authorization"))
        if header is not None:
            self._authenticate(context, header)
            if context.claims is not None:
                try:
                    # A token of an ended session is as bad as an expired one.
                    await ensure_live(self.services, context.claims)
                except CrunchError as error:
                    context.auth_error = error
            if context.auth_error is not None:
                raise ConnectionRejectionError({"message": context.auth_error.message})
        return None

    async def admit_socket(self, context: Context) -> str | None:
        """Take one of the user's socket slots (anonymous sockets count per client
        address) until the socket closes; the refusal's reason when none is left."""
        owner = f"user:{context.claims.user_id}" if context.claims else f"addr:{context.client}"
        limit = self.services.limits.ws_max_sockets_per_user
        slots = self.services.slots
        slot = await slots.acquire(f"sockets:{owner}", limit)
        if slot is None:
            return f"Too many open sockets (limit {limit})"
        context.on_close.append(lambda: slots.release(slot))
        return None

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(
            self._page,
            headers={"Content-Security-Policy": self._page_csp, "Cache-Control": "no-cache"},
        )

    # ---- the HTTP edge ------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive=self._limited(receive))
        with tracking_usage() as usages:
            response = await self._answer(request)
        if response is None:
            return
        if usages:
            response.headers.update(rate_limit_headers(usages))
        await response(scope, receive, send)

    async def _answer(self, request: Request) -> Response | None:
        try:
            response = await self._respond(request)
        except ViewError as error:
            media_type = APPLICATION_JSON if error.json_only else self._media_type(request)
            response = self._error_response(error, media_type)
        except HTTPException as error:
            response = self._error_response(error, self._media_type(request))
        except BodyTooLarge:
            response = self._error_response(
                HTTPException(413, f"Request body is larger than {self.max_request_bytes} bytes."),
                self._media_type(request),
            )
        except ClientDisconnect:
            return None
        except Exception:
            request_id = (request.headers.get("x-request-id") or uuid.uuid4().hex)[:64]
            logger.exception("unexpected error answering an HTTP request (request %s)", request_id)
            body = error_body(MASKED_MESSAGE, ErrorCode.INTERNAL_SERVER_ERROR)
            body["errors"][0]["extensions"]["requestId"] = request_id
            response = JSONResponse(body, status_code=500, media_type=self._media_type(request))
        return response

    async def _respond(self, request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            raise BodyTooLarge
        if request.method not in ("GET", "POST"):
            raise ViewError(
                405, "GraphQL is served over GET and POST.", headers={"Allow": "GET, POST"}
            )
        accept = request.headers.get("accept")
        if negotiate_media_type(accept) is None and not (
            request.method == "GET" and "query" not in request.query_params and accepts_html(accept)
        ):
            raise ViewError(
                406,
                f"Not acceptable: this endpoint answers {GRAPHQL_RESPONSE_JSON} or "
                f"{APPLICATION_JSON}.",
                json_only=True,
            )
        return await self.run(request)

    def _limited(self, receive: Receive) -> Receive:
        """Counts the body as it streams in (chunked requests declare no length)."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    raise BodyTooLarge
            return message

        return limited_receive

    @staticmethod
    def _error_response(error: HTTPException, media_type: str) -> Response:
        headers = getattr(error, "headers", None) or {}
        return JSONResponse(
            error_body(error.reason),
            status_code=error.status_code,
            media_type=media_type,
            headers=headers,
        )

    def _media_type(self, request: Request) -> str:
        return negotiate_media_type(request.headers.get("accept")) or APPLICATION_JSON

    # ---- request parsing ------------------------------------------------------------

    def parse_json(self, data: str | bytes) -> Any:
        decoded = _decoded_body.get()
        if decoded is not None and decoded[0] is data:
            return decoded[1]  # this very body, decoded by parse_http_body already
        try:
            return self.decode_json(data)
        except (ValueError, RecursionError) as error:  # JSONDecodeError, bad UTF-8, nesting
            raise HTTPException(400, "Unable to parse request body as JSON") from error

    async def parse_http_body(
        self, request: AsyncHTTPRequestAdapter
    ) -> GraphQLRequestData | list[GraphQLRequestData]:
        if request.method == "POST":
            header = request.content_type
            if header != APPLICATION_JSON:  # the usual header, exactly: nothing to parse
                content_type = parse_content_type(header)[0] if header else ""
                if content_type != APPLICATION_JSON:
                    problem = (
                        f"Unsupported Content-Type {header!r}" if header else "No Content-Type"
                    )
                    raise ViewError(415, f"{problem}: send the request as {APPLICATION_JSON}.")
            raw = await request.get_body()
            body = self.parse_json(raw)
            # Strawberry's own parse_http_body decodes the body again: hand it this one.
            _decoded_body.set((raw, body))
            if not isinstance(body, dict | list):
                raise HTTPException(400, "The request body must be a JSON object.")
            if isinstance(body, list) and not all(isinstance(item, dict) for item in body):
                raise HTTPException(400, "Each operation of a batch must be a JSON object.")
        try:
            data = await super().parse_http_body(request)
        except json.JSONDecodeError as error:
            raise HTTPException(400, "Unable to parse request body as JSON") from error
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item.operation_name, str | None):
                raise HTTPException(
                    400,
                    "The GraphQL operation's `operationName` must be a string or null, "
                    "if provided.",
                )
        return data

    # ---- execution ----------------------------------------------------------------------

    async def execute_single(
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: None,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        method = request_adapter.method
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=ALLOWED_OPERATIONS.get(method, frozenset()),
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as error:
            raise HTTPException(400, error.as_http_error_reason()) from error
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(
                    400,
                    "Subscriptions are served over WebSocket (graphql-transport-ws) at /graphql.",
                ) from error
            # GraphQL over HTTP: a mutation over GET is 405, with the method that works.
            raise ViewError(
                405, "Mutations are not allowed over GET: use POST.", headers={"Allow": "POST"}
            ) from error
        except MissingQueryError as error:
            raise HTTPException(400, "No GraphQL query found in the request") from error

    # ---- responses ------------------------------------------------------------------------

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        sub_response.crunch_request = request  # type: ignore[attr-defined]
        return sub_response

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        request: Request | None = getattr(sub_response, "crunch_request", None)
        if request is not None and self._media_type(request) == GRAPHQL_RESPONSE_JSON:
            response.headers["content-type"] = GRAPHQL_RESPONSE_JSON
            # GraphQL over HTTP: a response without data (the request never reached
            # execution) is a 4xx under this media type.
            if isinstance(response_data, dict) and "data" not in response_data:
                response.status_code = 400
        return response

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        processed = await super().process_result(request, result)
        # A request refused before execution (syntax, validation, limits) has no
        # "data" entry at all, as the GraphQL spec asks.
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            processed.pop("data", None)
        if estimated_json_size(processed, self.max_response_bytes) > self.max_response_bytes:
            # Refused before encoding: the encoded copy of a huge answer is never made.
            logger.warning("response over %d bytes refused", self.max_response_bytes)
            return cast(
                GraphQLHTTPResponse,
                too_large_body(self.max_response_bytes, processed.get("extensions")),
            )
        return processed
