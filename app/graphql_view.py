"""Strawberry's ASGI view, adapted to the contract.

- the context carries the services, the client address and the caller's token claims
  (HTTP ``Authorization`` header; WebSocket ``connection_init`` payload);
- a bad token in ``connection_init`` closes the socket with 4403; no token is allowed
  and protected fields then answer UNAUTHENTICATED;
- a malformed request is a 400 with a JSON ``errors`` array, never plain text;
- ``application/graphql-response+json`` is spoken when the client accepts it;
- browsers get our own GraphiQL page with its assets served from the package.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse
from strawberry.schema import BaseSchema
from strawberry.types import ExecutionResult

from app.graphiql import content_security_policy, graphiql_html
from core.errors import CrunchError, ErrorCode
from core.logging import log_context
from resolvers.context import Context
from services.container import Services

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
APPLICATION_JSON = "application/json"


def bearer_token(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def client_address(connection: Request | WebSocket) -> str:
    # Behind nginx, Uvicorn's --proxy-headers (with --forwarded-allow-ips) already put
    # the real client here.
    return connection.client.host if connection.client else "unknown"


def wants_graphql_response_json(accept: str) -> bool:
    """True when the client lists application/graphql-response+json before application/json."""
    if not accept:
        return False
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(accept.split(",")):
        media, *params = (item.strip() for item in part.split(";"))
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        ranked.append((-quality, index, media.lower()))
    for _, _, media in sorted(ranked):
        if media == GRAPHQL_RESPONSE_JSON:
            return True
        if media in (APPLICATION_JSON, "application/*", "*/*"):
            return False
    return False


def error_body(message: str, code: ErrorCode = ErrorCode.BAD_USER_INPUT) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code.value}}]}


class CrunchGraphQL(GraphQL[Context, None]):
    def __init__(
        self,
        schema: BaseSchema,
        services: Services,
        *,
        allowed_origins: list[str],
        connection_init_timeout: float,
        max_request_bytes: int,
    ) -> None:
        super().__init__(
            schema,
            graphql_ide="graphiql",
            connection_init_wait_timeout=timedelta(seconds=connection_init_timeout),
            allowed_origins=allowed_origins,
            max_subscriptions_per_connection=100,
        )
        self.services = services
        self.max_request_bytes = max_request_bytes
        self._page = graphiql_html(endpoint="/graphql", assets_prefix="/graphiql-assets")
        self._page_csp = content_security_policy(self._page)

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
        if header is None:
            return None  # anonymous: protected operations answer UNAUTHENTICATED
        self._authenticate(context, header)
        if context.auth_error is not None:
            raise ConnectionRejectionError({"message": context.auth_error.message})
        return None

    async def render_graphql_ide(self, request: Request) -> Response:
        return HTMLResponse(
            self._page,
            headers={"Content-Security-Policy": self._page_csp, "Cache-Control": "no-cache"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive=receive)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_request_bytes:
            response: Response = JSONResponse(
                error_body(f"Request body is larger than {self.max_request_bytes} bytes."),
                status_code=413,
            )
        else:
            try:
                response = await self.run(request)
            except HTTPException as error:
                response = JSONResponse(
                    error_body(error.reason),
                    status_code=error.status_code,
                    media_type=self._media_type(request),
                )
        await response(scope, receive, send)

    def _media_type(self, request: Request) -> str:
        accept = request.headers.get("accept", "")
        return GRAPHQL_RESPONSE_JSON if wants_graphql_response_json(accept) else APPLICATION_JSON

    def create_response(
        self,
        response_data: GraphQLHTTPResponse | list[GraphQLHTTPResponse],
        sub_response: Response,
    ) -> Response:
        response = super().create_response(response_data, sub_response)
        request: Request | None = getattr(sub_response, "crunch_request", None)
        if request is not None and wants_graphql_response_json(request.headers.get("accept", "")):
            response.headers["content-type"] = GRAPHQL_RESPONSE_JSON
            # GraphQL over HTTP: a response without data (the request never reached
            # execution) is a 4xx under this media type.
            if isinstance(response_data, dict) and "data" not in response_data:
                response.status_code = 400
        return response

    async def get_sub_response(self, request: Request | WebSocket) -> Response:
        sub_response = await super().get_sub_response(request)
        sub_response.crunch_request = request  # type: ignore[attr-defined]
        return sub_response

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        processed = await super().process_result(request, result)
        # A request refused before execution (syntax, validation, limits) has no
        # "data" entry at all, as the GraphQL spec asks.
        if result.data is None and result.errors and all(e.path is None for e in result.errors):
            processed.pop("data", None)  # type: ignore[misc]
        return processed
