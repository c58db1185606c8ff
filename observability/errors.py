"""Optional error reporting to Sentry, when SENTRY_DSN is set (extra: crunchql[sentry])."""

from __future__ import annotations

import importlib
import logging

from crunchql.core.settings import Settings

logger = logging.getLogger("crunchql.sentry")


def init_error_reporting(settings: Settings, *, component: str) -> bool:
    """Start the Sentry SDK for this process; False when not configured or not installed."""
    if not settings.sentry_dsn:
        return False
    try:
        sentry_sdk = importlib.import_module("sentry_sdk")
    except ImportError:
        logger.warning(
            "SENTRY_DSN is set but sentry-sdk is not installed: pip install crunchql[sentry]"
        )
        return False
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment.value,
        send_default_pii=False,  # no emails, addresses or tokens leave the service
        server_name=component,
    )
    return True
