"""Small pieces of the HTTP and WebSocket edge's limits: RateLimit headers, the
response size estimate, and the per-socket operation rate."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from graphql import GraphQLError, GraphQLFormattedError

from crunchql.auth.rate_limit import Usage
from crunchql.core.errors import ErrorCode

OPERATION_WINDOW_SECONDS = 60.0


def rate_limit_headers(usages: Iterable[Usage]) -> dict[str, str]:
    """``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-ratelimit-headers,
    structured-field form) for the limits a request consumed: per policy, the state of
    the tightest counter it drew on."""
    tightest: dict[str, Usage] = {}
    for usage in usages:
        seen = tightest.get(usage.policy)
        if seen is None or (usage.remaining, -usage.reset_seconds) < (
            seen.remaining,
            -seen.reset_seconds,
        ):
            tightest[usage.policy] = usage
    if not tightest:
        return {}
    policies = ", ".join(
        f'"{u.policy}";q={u.limit};w={u.window_seconds}' for u in tightest.values()
    )
    states = ", ".join(
        f'"{u.policy}";r={max(u.remaining, 0)};t={max(math.ceil(u.reset_seconds), 0)}'
        for u in tightest.values()
    )
    return {"RateLimit-Policy": policies, "RateLimit": states}


def estimated_json_size(value: Any, limit: int) -> int:
    """The size of ``value`` as JSON, from below (string lengths, a few bytes per item);
    stops counting once past ``limit``, so a huge value costs little to measure."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item) + 2
        elif isinstance(item, Mapping):
            total += 2
            for key, child in item.items():
                total += len(str(key)) + 4
                stack.append(child)
        elif isinstance(item, list | tuple):
            total += 2 + len(item)
            stack.extend(item)
        else:
            total += 8
    return total


def too_large_body(limit: int, extensions: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "data": None,
        "errors": [
            {
                "message": f"The response would be larger than {limit} bytes; ask for less "
                "(fewer fields, smaller pages, one large result at a time).",
                "extensions": {"code": ErrorCode.BAD_USER_INPUT.value, "maxResponseBytes": limit},
            }
        ],
    }
    if extensions:
        body["extensions"] = extensions
    return body


class OperationRate:
    """At most ``per_minute`` operations started on one socket in any 60 s."""

    def __init__(self, per_minute: int, clock: Any = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.started: deque[float] = deque()

    def refusal(self) -> GraphQLFormattedError | None:
        """None when one more operation may start (and counts it), else the error."""
        now = self.clock()
        while self.started and self.started[0] <= now - OPERATION_WINDOW_SECONDS:
            self.started.popleft()
        if len(self.started) < self.per_minute:
            self.started.append(now)
            return None
        retry_after = round(self.started[0] + OPERATION_WINDOW_SECONDS - now, 1)
        return GraphQLError(
            f"Too many operations on this socket (limit {self.per_minute} per minute); "
            f"try again in {math.ceil(retry_after)} seconds.",
            extensions={"code": ErrorCode.RATE_LIMITED.value, "retryAfter": retry_after},
        ).formatted
