"""Fixtures shared by the worker tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from crunchql.workers.broker import CrunchRedisBroker, create_broker


@pytest.fixture
def broker(redis_url: str) -> Iterator[CrunchRedisBroker]:
    """A broker on the tests' Redis, its queues (and wake-up lists) empty before and after."""
    broker = create_broker(redis_url)
    broker.flush_all()
    yield broker
    broker.flush_all()
    broker.close()
