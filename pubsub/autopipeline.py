"""Automatic pipelining: the Redis commands a process issues in one turn of its event
loop leave together, as one pipeline (one write, one read), whoever issued them.

A submit sends its job (Dramatiq's enqueue script and the consumers' wake-up) and
publishes its "created" event; a worker publishes the terminal events of the runs it
finishes. Each was its own round trip: a pooled connection checked out, a command
packed, a write and a read system call, a reply parsed. Under load many requests reach
that point in the same turn, and each paid all of it. Here the first command of a turn
schedules one flush at the end of the turn (``call_soon``), and every command issued
before it runs joins the same pipeline: one round trip for all, never a wait longer
than the turn. This is what ioredis calls auto-pipelining (``enableAutoPipelining``),
for redis-py, which has nothing like it.

Semantics are those of a non-transactional pipeline, which is what the callers used:
commands run in the order issued, each caller gets its own commands' replies in order
(an error reply as the exception object, as ``execute(raise_on_error=False)`` gives it),
and a failure of the connection itself fails every caller of that batch (redis-py's
retry policy of the client, reconnecting, applies to the whole pipeline first).
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from redis.asyncio import Redis

Command = tuple[Any, ...]
Batch = list[tuple[tuple[Command, ...], "asyncio.Future[list[Any]]"]]


class AutoPipeline:
    """Batches ``execute`` calls of one event loop into one pipeline per turn."""

    def __init__(self, redis: Redis) -> None:
        # Weakly: the registry below maps each client to its pipeline, and a pipeline
        # holding its client would keep every client ever used alive.
        self._redis = weakref.ref(redis)
        self._batch: Batch = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0  # pipelines sent (for tests and benchmarks)

    async def execute(self, *commands: Command) -> list[Any]:
        """The replies to ``commands`` (each a tuple such as ``("PUBLISH", channel,
        data)``), in order, sent with every other command of this turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush)
        self._batch.append((commands, future))
        return await future

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        batch = [(commands, future) for commands, future in batch if not future.cancelled()]
        if batch:
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: Batch) -> None:
        try:
            redis = self._redis()
            if redis is None:  # every user of the client is gone; so are the callers'
                raise RuntimeError("the Redis client of this pipeline was closed")
            async with redis.pipeline(transaction=False) as pipe:
                for commands, _ in batch:
                    for command in commands:
                        pipe.execute_command(*command)
                self.round_trips += 1
                replies = await pipe.execute(raise_on_error=False)
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    if isinstance(error, Exception):
                        future.set_exception(error)
                    else:  # cancelled with the loop's shutdown
                        future.cancel()
            if not isinstance(error, Exception):
                raise
            return
        start = 0
        for commands, future in batch:
            if not future.done():
                future.set_result(replies[start : start + len(commands)])
            start += len(commands)


_PIPELINES: weakref.WeakKeyDictionary[Redis, AutoPipeline] = weakref.WeakKeyDictionary()


def autopipeline(redis: Redis) -> AutoPipeline:
    """The one AutoPipeline of ``redis`` (a client lives on one event loop), so that
    everything sharing the client shares its batches: the job queue and the event bus."""
    pipeline = _PIPELINES.get(redis)
    if pipeline is None:
        pipeline = _PIPELINES[redis] = AutoPipeline(redis)
    return pipeline


def raise_errors(replies: list[Any]) -> list[Any]:
    """``replies``, unless one is an error reply: then that error, raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
