"""The hottest statements, run on the pooled asyncpg connection itself.

SQLAlchemy's ``execute`` costs about 0.3 ms of CPU per statement on top of asyncpg's
own work: a greenlet hop, an execution context, the cursor adapter and the result
object (the submit's INSERT: 672 µs of the API's CPU through Core, 356 µs this way,
medians of three rounds of 1,500 on 2026-11-29). A statement that runs on every calculation (the
submit's INSERT, a subscription's first read, the worker's claim and finish) is
therefore compiled ONCE by SQLAlchemy for asyncpg and run on the driver's connection:

- the SQL is the one SQLAlchemy would send (its placeholders and casts), and parameters
  and rows pass through the column types' own processors, so values are exactly those
  of the Core path (tests/db/test_driver_statements.py compares both, row by row);
- the connection is the engine's, checked out of its pool (the checkout's liveness
  check and its invalidation apply), in whatever transaction it is in;
- errors come out as SQLAlchemy's: a lost connection is invalidated and raised as an
  ``OperationalError`` with ``connection_invalidated`` set, a refused statement as a
  ``DBAPIError`` (``IntegrityError`` for a constraint), so callers cannot tell the paths
  apart.

Any other dialect (SQLite, the embedded mode) runs the statement through Core.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg
from sqlalchemy import Table, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

Processor = Callable[[Any], Any]
_REQUIRED = object()  # a parameter the caller gives (others are the statement's literals)


@dataclass(slots=True)
class _Compiled:
    sql: str
    # Per placeholder ($1, $2, ...): the parameter's name, its bind processor, and the
    # processed value of a literal of the statement (_REQUIRED for the caller's own).
    params: tuple[tuple[str, Processor | None, Any], ...]
    # Per result column: its result processor, known once the server has described the
    # row (a processor may depend on the column's PostgreSQL type, as SQLAlchemy's do).
    columns: dict[str, Processor | None] | None = field(default=None)


class DriverStatement:
    """``statement`` (Core, its result columns those of ``table``), run by
    :meth:`fetch` on asyncpg directly, or through Core on any other driver."""

    def __init__(self, statement: Executable, table: Table) -> None:
        self.statement = statement
        self._table = table
        self._compiled: dict[type[Dialect], _Compiled] = {}

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled = cast(SQLCompiler, cast(ClauseElement, self.statement).compile(dialect=dialect))
        if "POSTCOMPILE" in compiled.string or not compiled.positional:
            # An expanding IN (rendered per execution) has no fixed SQL to reuse.
            raise ValueError(f"not a fixed positional statement: {compiled.string[:80]}")
        # Columns the statement does not set whose default Core computes per execution
        # (an INSERT's ``default=``): a constant is a literal here, anything else has
        # no fixed value to send.
        defaults = {}
        for column in (*compiled.insert_prefetch, *compiled.update_prefetch):
            default = column.default if compiled.isinsert else column.onupdate
            if default is None or not default.is_scalar:
                raise ValueError(f"column {column.key} has a default computed per execution")
            defaults[column.key] = cast(Any, default).arg
        params = []
        for name in compiled.positiontup or ():
            bind = compiled.binds[name]
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            literal: Any = _REQUIRED
            if name in defaults or not bind.required:
                value = defaults.get(name, bind.effective_value)
                literal = process(value) if process else value
            params.append((name, process, literal))
        return _Compiled(compiled.string, tuple(params))

    def _describe(self, dialect: Dialect, attributes: Sequence[Any]) -> dict[str, Any]:
        columns = {}
        for attribute in attributes:
            column_type = self._table.c[attribute.name].type.dialect_impl(dialect)
            columns[attribute.name] = column_type.result_processor(dialect, attribute.type.oid)
        return columns

    def _prepared(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(type(dialect))
        if compiled is None:
            compiled = self._compiled[type(dialect)] = self._compile(dialect)
        return compiled

    @staticmethod
    def _args(compiled: _Compiled, values: Mapping[str, Any]) -> list[Any]:
        """The statement's arguments for ``values``; a value its column type cannot take
        is a ``StatementError``, raised before anything is sent (as Core raises it)."""
        try:
            return [
                (process(values[name]) if process else values[name])
                if literal is _REQUIRED
                else literal
                for name, process, literal in compiled.params
            ]
        except Exception as error:
            raise exc.StatementError(str(error), compiled.sql, None, error) from error

    @staticmethod
    def _rows(compiled: _Compiled, records: Sequence[Any]) -> list[dict[str, Any]]:
        columns = compiled.columns
        assert columns is not None
        return [
            {
                name: (process(value) if (process := columns[name]) else value)
                for name, value in record.items()
            }
            for record in records
        ]

    async def fetch(
        self, connection: AsyncConnection, values: Mapping[str, Any]
    ) -> Sequence[Mapping[str, Any]]:
        """The statement's rows, as mappings by column name."""
        dialect = connection.dialect
        if dialect.driver != "asyncpg":
            result = await connection.execute(self.statement, dict(values))
            return [dict(row) for row in result.mappings()]
        compiled = self._prepared(dialect)
        args = self._args(compiled, values)
        raw = cast(Any, (await connection.get_raw_connection()).driver_connection)
        try:
            if compiled.columns is None:
                prepared = await raw.prepare(compiled.sql)
                records = await prepared.fetch(*args)
                compiled.columns = self._describe(dialect, prepared.get_attributes())
            else:
                records = await raw.fetch(compiled.sql, *args)
        except Exception as error:
            raise await _translated(connection, raw, compiled.sql, error) from error
        return self._rows(compiled, records)

    async def fetch_many(
        self, connection: AsyncConnection, many: Sequence[Mapping[str, Any]]
    ) -> Sequence[Mapping[str, Any]]:
        """The rows of the statement run once for each of ``many``, all of them, in one
        round trip and one transaction (asyncpg's ``fetchmany``: all or nothing, like
        one statement). On any other driver the runs go one by one (each commits by
        itself on an autocommit connection)."""
        dialect = connection.dialect
        if dialect.driver != "asyncpg":
            return [row for values in many for row in await self.fetch(connection, values)]
        compiled = self._prepared(dialect)
        args = [self._args(compiled, values) for values in many]
        raw = cast(Any, (await connection.get_raw_connection()).driver_connection)
        try:
            if compiled.columns is None:  # the row's description, once per process
                prepared = await raw.prepare(compiled.sql)
                compiled.columns = self._describe(dialect, prepared.get_attributes())
            records = await raw.fetchmany(compiled.sql, args)
        except Exception as error:
            raise await _translated(connection, raw, compiled.sql, error) from error
        return self._rows(compiled, records)


async def _translated(
    connection: AsyncConnection, raw: Any, sql: str, error: Exception
) -> exc.DBAPIError:
    """``error`` as SQLAlchemy would have raised it from ``execute``."""
    if raw.is_closed() or isinstance(error, OSError | asyncpg.InterfaceError):
        # The connection is gone (server restart, terminated backend, network): out of
        # the pool, as SQLAlchemy does on a disconnect.
        await connection.invalidate(error)
        return exc.OperationalError(sql, None, error, connection_invalidated=True)
    if isinstance(error, asyncpg.IntegrityConstraintViolationError):
        return exc.IntegrityError(sql, None, error)
    return exc.DBAPIError(sql, None, error)
