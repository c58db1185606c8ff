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
   same ``data``;
3. :class:`DirectSink` (graphql-transport-ws only) serialises that ``data`` once per
   event and sends every later event of a subscriber as a pre-encoded ``next`` frame
   (its operation id spliced in), from the subscription's own task, without
   Strawberry's per-result work (graphql-core's event mapping, the extensions' result
   hooks, one ``json.dumps`` per message). The frames are byte-identical to what
   Strawberry would send (tests/app/test_subscription_sharing.py).

What stays per subscriber: the ownership check (``services.calculations.watch`` reads
and checks the row before any snapshot is yielded), its ``WatchState`` (ordering,
coalescing, re-reads), and errors: a result with errors is never shared, each
subscriber executes its own. Both caches are small, per process, and touched only from
the event loop; entries hold the objects whose identity they are keyed by, so an id
cannot be reused while its entry lives.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
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
    encoded: str | None = None  # the data as JSON, made once for direct frames


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
        sink = _sink.get()
        if sink is not None and sink.executor is None and sink.context is self.context_value:
            sink.executor = self  # later events of this operation may skip the pipeline
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


# ---- Direct frames: one serialised payload per event, written straight to sockets ----

# Stands for the data in a message encoded once per subscriber, to find where the
# shared payload goes. Control characters never appear in a GraphQL name or an
# operation id's encoding, so this cannot clash with the rest of the message.
_DATA_MARK = "\x00crunchql-shared-data\x00"


class DirectSink:
    """Where a graphql-transport-ws subscription's events are written as pre-encoded
    ``next`` frames, bypassing Strawberry's per-result work for the shared case.

    The transport handler makes one per operation (``use_direct_sink``); the resolver
    (``calculationUpdates``) asks :meth:`deliver` to send each update after the first
    and yields it the normal way when that declines. :meth:`deliver` declines until
    the handler has sent one ``next`` the normal way (so the ownership check, the
    snapshot and the operation's ``extensions`` went through Strawberry), when the
    event's execution has errors (errors are never shared: the normal path executes
    and formats them for this subscriber), and when the variables cannot be keyed.

    The frame is byte for byte what Strawberry's ``send_next`` would send: the same
    encoder, the same key order; only the data part is encoded once per event per
    (calculation state, operation, variables, viewer) and spliced in.
    """

    __slots__ = (
        "_encode",
        "_operation_id",
        "_prefix",
        "_send",
        "_suffix",
        "_variables",
        "context",
        "executor",
    )

    def __init__(
        self,
        operation_id: str,
        context: Any,
        encode: Callable[[object], str | bytes],
        send: Callable[[str], Awaitable[None]],
    ) -> None:
        self.context = context
        self.executor: SharingExecutionContext | None = None  # set on the first event
        self._encode = encode
        self._send = send
        self._prefix: str | None = None
        self._suffix = ""
        self._variables: tuple[Any, ...] | None = None
        self._operation_id = operation_id

    def sent_normally(self, extensions: dict[str, Any] | None) -> None:
        """The handler sent a ``next`` the normal way: frames now follow that form."""
        executor = self.executor
        if executor is None:
            return
        variables = _variables_key(executor.variable_values.coerced)
        if variables is None:
            return
        message: dict[str, Any] = {"data": _DATA_MARK}
        if extensions:
            message["extensions"] = extensions
        encoded = _as_text(
            self._encode({"id": self._operation_id, "type": "next", "payload": message})
        )
        mark = _as_text(self._encode(_DATA_MARK))
        prefix, found, suffix = encoded.partition(mark)
        if not found or mark in suffix:
            return
        self._variables = variables
        self._prefix, self._suffix = prefix, suffix

    async def deliver(self, calculation: Calculation) -> bool:
        """Sends ``calculation`` as this operation's next event; False: not sent, yield
        it to the normal path."""
        prefix = self._prefix
        executor = self.executor
        if prefix is None or executor is None:
            return False
        payload = await self._shared_payload(executor, calculation)
        if payload is None:
            return False
        await self._send(prefix + payload + self._suffix)
        return True

    async def _shared_payload(
        self, executor: SharingExecutionContext, calculation: Calculation
    ) -> str | None:
        viewer = getattr(getattr(self.context, "claims", None), "user_id", None)
        key = (id(calculation), id(executor.operation), self._variables, viewer)
        hit = _results.get(key)
        if hit is None or hit.root is not calculation or hit.operation is not executor.operation:
            result = executor.build_per_event_executor(calculation).execute_operation(False)
            if isinstance(result, Awaitable):
                result = await result
            if not isinstance(result, ExecutionResult) or result.errors:
                return None
            hit = _results.get(key)
            if hit is None or hit.root is not calculation:
                return None  # not stored (evicted at once): the normal path will do
        if hit.encoded is None:
            hit.encoded = _as_text(self._encode(hit.data))
        return hit.encoded


def _as_text(encoded: str | bytes) -> str:
    return encoded.decode() if isinstance(encoded, bytes) else encoded


_sink: ContextVar[DirectSink | None] = ContextVar("crunchql_direct_sink", default=None)


def use_direct_sink(sink: DirectSink) -> None:
    """Makes ``sink`` the current operation's (call it in the operation's own task)."""
    _sink.set(sink)


def direct_sink() -> DirectSink | None:
    """The current subscription's direct sink, None when its events take the normal path
    (another transport, or direct frames switched off)."""
    return _sink.get()
