"""The calls of a hot statement made in one event-loop turn, sent as one round trip.

Under load, many submits reach their INSERT in the same turn of the API's event loop
(requests read in the same poll of the loop run up to their first round trip together),
and many quick runs reach their finish in the same turn of a worker's loop. Each was
its own statement: its own round trip, its own transaction and commit, and asyncpg's and the
server's cost per statement each time (a run of ``benchmarks.service --only jobs`` on
2026-11-29, its one-at-a-time phase included: 64-68 % of the submits and 48 % of the
quick finishes shared their turn with others, up to 20 and 8 of them).

:meth:`BatchedStatement.fetch_one` queues a call; at the end of the turn (as
``pubsub.autopipeline`` does for Redis) the calls queued for one engine go out on one
pooled connection, pipelined (asyncpg's ``fetchmany``) in one transaction. A call alone
in its turn runs as before, one statement. What each caller sees is what its own
statement would have given:

- The statement returns at most one row per call, the one whose ``key`` column holds
  the value of the call's ``key`` parameter (the new row's id, the finished row's id);
  each caller gets its row or None.
- Calls with the same key in one turn go in successive round trips, in the order they
  were made (a duplicate message finishing the same calculation twice sees the first
  one's effect, as it would have).
- ``order``: the calls of a batch run sorted by it. The submit sorts by owner: its
  statement locks the owner's row, and two batches that locked owners in different
  orders could deadlock each other; in one order they queue instead.
- All or nothing, then one by one: a batch that fails for its statement (a constraint,
  a deadlock, a cancelled query, a value that does not encode) was rolled back whole,
  so each of its calls runs again alone, and only the one that fails gets the error;
  a call's error never reaches the calls of later round trips.
- A lost connection fails every call of the batch with SQLAlchemy's invalidated
  ``OperationalError`` (``db.driver``), as it would have failed each of them.
- A caller cancelled before the end of its turn sends nothing; one cancelled while its
  batch is out does not stop the batch (its row may stand, as when a caller is
  cancelled while its own statement commits).

Only on asyncpg (the production path); callers take the ordinary path elsewhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from crunchql.db.driver import DriverStatement

Row = Mapping[str, Any]


@dataclass(slots=True)
class _Call:
    values: Mapping[str, Any]
    future: asyncio.Future[Row | None]


class BatchedStatement:
    """``statement``, its calls of one turn on one engine run as one round trip."""

    def __init__(
        self,
        statement: DriverStatement,
        *,
        key: tuple[str, str],
        order: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> None:
        self.statement = statement
        self._param, self._column = key
        self._order = order
        self._pending: dict[AsyncEngine, list[_Call]] = {}
        self._batches: set[asyncio.Task[None]] = set()  # held: a loop keeps tasks weakly

    async def fetch_one(self, engine: AsyncEngine, values: Mapping[str, Any]) -> Row | None:
        """The row the statement returns for ``values`` (by its key), or None."""
        loop = asyncio.get_running_loop()
        calls = self._pending.get(engine)
        if calls is None:
            calls = self._pending[engine] = []
            loop.call_soon(self._flush, engine)
        future: asyncio.Future[Row | None] = loop.create_future()
        calls.append(_Call(values, future))
        return await future

    def _flush(self, engine: AsyncEngine) -> None:
        calls = [call for call in self._pending.pop(engine, ()) if not call.future.done()]
        if calls:
            batch = asyncio.ensure_future(self._run(engine, calls))
            self._batches.add(batch)
            batch.add_done_callback(self._batches.discard)

    def _rounds(self, calls: list[_Call]) -> list[list[_Call]]:
        """The calls in ``order``, in as few round trips as leave each key once in each."""
        if self._order is not None:
            order = self._order
            calls = sorted(calls, key=lambda call: order(call.values))
        rounds: list[list[_Call]] = []
        keys_of: list[set[Any]] = []  # the keys in each round
        for call in calls:
            key = call.values[self._param]
            index = next((i for i, keys in enumerate(keys_of) if key not in keys), len(rounds))
            if index == len(rounds):
                rounds.append([])
                keys_of.append(set())
            rounds[index].append(call)
            keys_of[index].add(key)
        return rounds

    async def _run(self, engine: AsyncEngine, calls: list[_Call]) -> None:
        try:
            async with engine.connect() as connection:
                for round_ in self._rounds(calls):
                    try:
                        await self._run_round(connection, round_)
                    except Exception as error:
                        if _lost(error):
                            raise
                        for call in round_:  # not the later rounds' calls
                            _settle(call, error)
        except Exception as error:  # a lost connection, or none to be had
            for call in calls:
                _settle(call, error)
        except BaseException:  # the loop is stopping: so are the callers
            for call in calls:
                call.future.cancel()  # nothing for one already settled
            raise

    async def _run_round(self, connection: AsyncConnection, calls: list[_Call]) -> None:
        """Settle every call of ``calls``."""
        if len(calls) > 1:
            try:
                rows = await self.statement.fetch_many(connection, [c.values for c in calls])
            except exc.StatementError as error:
                if _lost(error):
                    raise
                # Refused by the server, so rolled back whole, or never sent (a value
                # that would not bind): each on its own, so that only the one at fault
                # fails. Anything else may have come after the commit: not run again.
            else:
                by_key = self._by_key(rows)
                for call in calls:
                    _settle(call, by_key.get(call.values[self._param]))
                return
        for call in calls:
            try:
                alone = await self.statement.fetch(connection, call.values)
            except Exception as error:
                if _lost(error):
                    raise
                _settle(call, error)
            else:
                _settle(call, self._by_key(alone).get(call.values[self._param]))

    def _by_key(self, rows: Sequence[Row]) -> dict[Any, Row]:
        return {row[self._column]: row for row in rows}


def _lost(error: Exception) -> bool:
    """Whether ``error`` took the connection with it (the batch's other calls too)."""
    return isinstance(error, exc.DBAPIError) and bool(error.connection_invalidated)


def _settle(call: _Call, outcome: Row | BaseException | None) -> None:
    if call.future.done():  # its caller was cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        call.future.set_exception(outcome)
    else:
        call.future.set_result(outcome)
