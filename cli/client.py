"""A small GraphQL client of the crunchql API for the command line, built on ``gql``
(HTTP through httpx, subscriptions over graphql-transport-ws through websockets).

It imports nothing of the server (no numba, SQLAlchemy or Strawberry): ``crunchql
submit`` starts in a fraction of a second and runs on a machine with only the client's
dependencies.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from gql import Client, GraphQLRequest
from gql.transport.exceptions import (
    TransportClosed,
    TransportError,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from crunchql.cli.config import Credentials

TIMEOUT_SECONDS = 30.0

CALCULATION_FIELDS = """
  id kind status progress input error attempts createdAt startedAt finishedAt
  partialResult { __typename
    ... on MonteCarloPiResult { estimate standardError samples }
    ... on OptionPricingResult { price standardError } }
  result { __typename
    ... on MonteCarloPiResult { estimate standardError samples }
    ... on OptionPricingResult { price standardError confidenceLow confidenceHigh analyticPrice }
    ... on PrimeCountResult { limit count }
    ... on MandelbrotResult { width height insideFraction png }
    ... on NBodyResult { bodies steps initialEnergy finalEnergy relativeEnergyError }
    ... on KMeansResult { k iterations converged inertia centroids recoveredFraction } }
"""


class ClientError(Exception):
    """An answer of the API: ``code`` is the contract's ``extensions.code``."""

    def __init__(self, message: str, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field


class ConnectionFailed(Exception):
    """The server could not be reached, or the connection dropped."""


def endpoints(url: str) -> tuple[str, str]:
    """The HTTP and WebSocket GraphQL endpoints for a server URL (with or without
    ``/graphql``)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path = parts.path.rstrip("/")
    if not path.endswith("/graphql"):
        path += "/graphql"
    http = urlunsplit((parts.scheme, parts.netloc, path, "", ""))
    ws = urlunsplit(("wss" if parts.scheme == "https" else "ws", parts.netloc, path, "", ""))
    return http, ws


def _first_error(error: TransportQueryError) -> ClientError:
    first: dict[str, Any] = (error.errors or [{}])[0]
    extensions = first.get("extensions") or {}
    return ClientError(
        str(first.get("message") or error),
        extensions.get("code"),
        extensions.get("field"),
    )


class ApiClient:
    """Runs operations as the stored user; an expired access token is refreshed once per
    call (the rotated tokens are saved through ``on_tokens``)."""

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        on_tokens: Callable[[Credentials], object] | None = None,
    ) -> None:
        self.url = url
        self.http_url, self.ws_url = endpoints(url)
        self.credentials = credentials or Credentials(url=url)
        self.on_tokens = on_tokens

    def _auth(self) -> dict[str, str]:
        token = self.credentials.access_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _execute_once(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        transport = HTTPXAsyncTransport(
            url=self.http_url, headers=self._auth(), timeout=TIMEOUT_SECONDS
        )
        try:
            async with Client(transport=transport) as session:
                result: dict[str, Any] = await session.execute(
                    GraphQLRequest(query, variable_values=variables)
                )
                return result
        except TransportQueryError as error:
            raise _first_error(error) from None
        except (httpx.HTTPError, OSError, TransportError) as error:
            raise ConnectionFailed(f"{self.http_url}: {error}") from None

    async def execute(
        self, query: str, variables: dict[str, Any] | None = None, *, refresh: bool = True
    ) -> dict[str, Any]:
        try:
            return await self._execute_once(query, variables or {})
        except ClientError as error:
            if error.code != "UNAUTHENTICATED" or not refresh or not await self.refresh():
                raise
        return await self._execute_once(query, variables or {})

    async def refresh(self) -> bool:
        """Trade the refresh token for new tokens; False when there is none or it is
        refused (the session ended: log in again)."""
        if not self.credentials.refresh_token:
            return False
        try:
            data = await self._execute_once(
                "mutation($t: String!) { refreshToken(refreshToken: $t) "
                "{ accessToken refreshToken } }",
                {"t": self.credentials.refresh_token},
            )
        except ClientError:
            return False
        self.credentials.access_token = data["refreshToken"]["accessToken"]
        self.credentials.refresh_token = data["refreshToken"]["refreshToken"]
        if self.on_tokens is not None:
            self.on_tokens(self.credentials)
        return True

    async def subscribe(
        self, query: str, variables: dict[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The ``data`` of each event until the server completes the operation.

        Raises ConnectionFailed when the socket cannot be opened or drops; ClientError
        for an error the server sent (UNAUTHENTICATED: the token was refused)."""
        transport = WebsocketsTransport(
            url=self.ws_url,
            init_payload=self._auth(),
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
            connect_timeout=TIMEOUT_SECONDS,
            ack_timeout=TIMEOUT_SECONDS,
            # The server's (Uvicorn's) WebSocket pings find a dead peer on its side;
            # these find a dead server on ours.
            ping_interval=20,
            pong_timeout=20,
        )
        try:
            async with Client(transport=transport) as session:
                async for data in session.subscribe(
                    GraphQLRequest(query, variable_values=variables or {})
                ):
                    yield data
        except TransportQueryError as error:
            raise _first_error(error) from None
        except TransportServerError as error:
            if error.code == 4403:  # connection_init refused the token
                raise ClientError("The access token was refused.", "UNAUTHENTICATED") from None
            raise ConnectionFailed(f"{self.ws_url}: {error}") from None
        except (
            TransportClosed,
            TransportError,
            ConnectionClosed,
            InvalidHandshake,
            InvalidURI,
            OSError,
            TimeoutError,
        ) as error:
            raise ConnectionFailed(f"{self.ws_url}: {error or type(error).__name__}") from None


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=False)
