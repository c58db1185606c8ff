"""Logging: JSON lines in production, readable lines in development, secrets redacted.

Standard-library loggers (ours, Uvicorn's, Dramatiq's) all go through structlog's
formatter, so every line has the same shape and the same redaction.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
from collections.abc import MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

from crunchql.core.settings import Settings

# Request-scoped fields (request id, operation, user, calculation) added to every line.
log_context: ContextVar[dict[str, Any] | None] = ContextVar("crunchql_log_context", default=None)

SECRET_KEY = re.compile(r"pass(word)?|secret|token|authorization|api[_-]?key|dsn", re.I)
BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I)
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+")
URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@")
# GET /graphql?query=...&variables=... can carry anything a client typed: access logs
# keep the path only.
QUERY_STRING = re.compile(r"(\s/[^\s?\"]*)\?[^\s\"]+")
REDACTED = "[redacted]"


# Every pattern above needs one of these: a line without any (nearly all of them, an
# access line among them) is searched once instead of substituted four times.
MAYBE_SECRET = re.compile(r"bearer|eyJ|\?|://", re.I)


def redact_text(text: str) -> str:
    if MAYBE_SECRET.search(text) is None:
        return text
    text = BEARER.sub(r"\1" + REDACTED, text)
    text = JWT.sub(REDACTED, text)
    text = QUERY_STRING.sub(r"\1?" + REDACTED, text)
    return URL_PASSWORD.sub(r"\1" + REDACTED + "@", text)


@functools.lru_cache(maxsize=1024)  # a line's keys are nearly always the same few
def _secret_key(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 5:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            key: REDACTED if isinstance(key, str) and _secret_key(key) else _redact(v, depth + 1)
            for key, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(item, depth + 1) for item in value]
    return value


def redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    redacted: MutableMapping[str, Any] = _redact(dict(event_dict))
    return redacted


def bind_log_context(**values: str) -> None:
    """Add fields (user_id, operation, calculation_id) to every line of this task."""
    log_context.set({**(log_context.get() or {}), **values})


def add_log_context(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in (log_context.get() or {}).items():
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(settings: Settings) -> None:
    shared: list[Any] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_log_context,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "dramatiq"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
