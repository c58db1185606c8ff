"""Multiplexed subscription events: one GraphQL execution per event per selection set.

When a calculation changes, every subscriber of it receives the same event. Without
sharing, each of N subscribers builds its own ``Calculation`` object and graphql-core
executes the subscription's selection set on it: N executions of the same fields on
the same data. Here (the "multiplexed subscriptions" idea of Hasura):

1. :func:`shared_calculation` hands subscribers whose snapshots are the same state of
   the same calculation one ``Calculation`` object (the snapshots built from one bus
   event share its result dicts, so their identity is part of the key);
2. :class:`SharingExecutionContext` executes a subscription event once per
   (that object, operation, variables, viewer) and gives every other subscriber the
   same ``data``; only the WebSocket write stays per subscriber.

What stays per subscriber: the ownership check (``services.calculations.watch`` reads
and checks the row before any snapshot is yielded), its ``WatchState`` (ordering,
coalescing, re-reads), and errors: a result with errors is never shared, each
subscriber executes its own. Both caches are small, per process, and touched only from
the event loop; entries hold the objects whose identity they are keyed by, so an id
cannot be reused while its entry lives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from graphql import ExecutionResult, OperationType
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext

from crunchql.core.lifecycle import CalculationSnapshot
from crunchql.schema.types import Calculation

CACHE_SIZE = 4096  # distinct (calculation state, selection) pairs kept per process
K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


_calculations: _Lru[tuple[Any, ...], tuple[CalculationSnapshot, Calculation]] = _Lru(CACHE_SIZE)


def shared_calculation(snapshot: CalculationSnapshot) -> Calculation:
    """The ``Calculation`` shown for ``snapshot``: the same object for every subscriber
    whose snapshot is this state of this calculation."""
    key = (
        snapshot.id,
        snapshot.status,
        snapshot.version,
        snapshot.attempts,
        snapshot.progress,
        snapshot.error,
        snapshot.started_at,
        snapshot.finished_at,
        id(snapshot.result),
        id(snapshot.partial_result),
        # Not the input: it never changes after submission.
    )
    hit = _calculations.get(key)
    if hit is not None:
        return hit[1]
    calculation = Calculation.from_model(snapshot)
    _calculations.put(key, (snapshot, calculation))  # the snapshot pins the ids above
    return calculation


@dataclass
class _Shared:
    root: Any  # pins id(root)
    operation: Any  # pins id(operation)
    data: Any


_results: _Lru[tuple[Any, ...], _Shared] = _Lru(CACHE_SIZE)


def clear_caches() -> None:
    _calculations.clear()
    _results.clear()


def _variables_key(variables: dict[str, Any]) -> tuple[Any, ...] | None:
    try:
        key = tuple(sorted(variables.items()))
        hash(key)
    except TypeError:  # a list or an input object: not worth keying, execute
        return None
    return key


class SharingExecutionContext(StrawberryGraphQLCoreExecutionContext):
    """Executes a subscription event once for every subscriber showing the same
    ``Calculation`` object with the same operation, variables and viewer."""

    def execute_operation(self, serially: bool | None = None) -> Any:
        root = self.root_value
        if self.operation.operation is not OperationType.SUBSCRIPTION or not isinstance(
            root, Calculation
        ):
            return super().execute_operation(serially)
        variables = _variables_key(self.variable_values.coerced)
        if variables is None:
            return super().execute_operation(serially)
        claims = getattr(self.context_value, "claims", None)
        viewer = getattr(claims, "user_id", None)
        key = (id(root), id(self.operation), variables, viewer)
        hit = _results.get(key)
        if hit is not None and hit.root is root and hit.operation is self.operation:
            return ExecutionResult(data=hit.data)
        result = super().execute_operation(serially)
        if isinstance(result, Awaitable):
            return self._store_when_done(key, result)
        self._store(key, result)
        return result

    async def _store_when_done(self, key: tuple[Any, ...], pending: Awaitable[Any]) -> Any:
        result = await pending
        self._store(key, result)
        return result

    def _store(self, key: tuple[Any, ...], result: Any) -> None:
        if isinstance(result, ExecutionResult) and not result.errors:
            _results.put(key, _Shared(self.root_value, self.operation, result.data))
