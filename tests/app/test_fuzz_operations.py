"""Property-based: every root field of the schema (queries, mutations, the
subscription), fed generated input of every argument type, hostile strings included
(NUL, lone surrogates, huge numbers, out-of-range cursors), never yields a 5xx or an
INTERNAL_SERVER_ERROR. The operations are read from the schema itself, so a field added
later is covered without touching this file.

Deterministic and bounded: ``derandomize=True``, a fixed number of examples per field,
no example database.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    get_named_type,
    is_leaf_type,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crunchql.resolvers.context import Context
from crunchql.schema.root import schema as exported_schema
from tests.conftest import make_settings, running_app

EXAMPLES_PER_FIELD = 30
SUBSCRIPTIONS_WITHOUT_SNAPSHOT = {"myCalculationUpdates"}
GRAPHQL_SCHEMA = exported_schema._schema


def _cursor(created: str) -> str:
    return base64.urlsafe_b64encode(f"{created}|{uuid.uuid4()}".encode()).decode()


SPECIAL_STRINGS = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "ada@example.com",
    "correct horse battery",
    str(uuid.uuid4()),
    "00000000-0000-0000-0000-000000000000",
    "\u0661\u0662\u0663",
    "9" * 400,
    "-" * 300,
    "' OR 1=1 --",
    "{}",
]
# Well-formed cursors holding dates at the ends of the calendar, and broken ones.
CURSORS = [
    _cursor("0001-01-01T00:00:00+05:00"),
    _cursor("9999-12-31T23:59:59-05:00"),
    _cursor("2026-01-01T00:00:00"),
    base64.urlsafe_b64encode(b"\xff\xfe|x").decode(),
]
TEXT = st.one_of(
    st.sampled_from(SPECIAL_STRINGS),
    st.sampled_from(CURSORS),
    st.sampled_from(CURSORS),
    st.text(max_size=40),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=20),
)
INTS = st.one_of(
    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, -(2**31) - 1, 2**53 + 1, 10**30]),
    st.integers(min_value=-(2**40), max_value=2**40),
)
FLOATS = st.one_of(
    st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324, 1.5]),
    st.floats(allow_nan=False, allow_infinity=False),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | INTS | FLOATS | TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=8,
)
SCALARS: dict[str, st.SearchStrategy[Any]] = {
    "String": TEXT,
    "ID": TEXT,
    "Int": INTS,
    "Float": FLOATS,
    "Boolean": st.booleans(),
    "BigInt": st.one_of(INTS, st.integers(-(10**40), 10**40).map(str), TEXT),
    "DateTime": TEXT,
    "JSON": JSON_VALUES,
}


def value_for(
    graphql_type: GraphQLInputType, mistyped: bool, depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values for a GraphQL input type: hostile but well-typed, or with ``mistyped``
    sometimes of another type altogether."""
    if isinstance(graphql_type, GraphQLNonNull):
        return inner_value(graphql_type.of_type, mistyped, depth)
    return st.one_of(st.none(), inner_value(graphql_type, mistyped, depth))


def inner_value(
    graphql_type: GraphQLInputType, mistyped: bool, depth: int
) -> st.SearchStrategy[Any]:
    wrong = st.one_of(TEXT, INTS, st.booleans(), st.just({}), st.just([]))

    def maybe_wrong(typed: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(typed, wrong) if mistyped else typed

    if isinstance(graphql_type, GraphQLList):
        return maybe_wrong(
            st.lists(value_for(graphql_type.of_type, mistyped, depth + 1), max_size=3)
        )
    if isinstance(graphql_type, GraphQLEnumType):
        return maybe_wrong(st.sampled_from(sorted(graphql_type.values)))
    if isinstance(graphql_type, GraphQLScalarType):
        return maybe_wrong(SCALARS.get(graphql_type.name, TEXT))
    assert isinstance(graphql_type, GraphQLInputObjectType), graphql_type
    if depth > 3:
        return st.just({})
    fields = {
        name: value_for(field.type, mistyped, depth + 1)
        for name, field in graphql_type.fields.items()
    }
    if graphql_type.is_one_of:
        one = st.sampled_from(sorted(fields)).flatmap(
            lambda name: fields[name].filter(lambda v: v is not None).map(lambda v: {name: v})
        )
        return maybe_wrong(one)
    required = {
        name: strategy
        for name, strategy in fields.items()
        if isinstance(graphql_type.fields[name].type, GraphQLNonNull)
    }
    optional = {name: strategy for name, strategy in fields.items() if name not in required}
    return maybe_wrong(st.fixed_dictionaries(required, optional=optional))


def selection(field: GraphQLField) -> str:
    named = get_named_type(field.type)
    if is_leaf_type(named):
        return ""
    leaves = ["__typename"]
    if isinstance(named, GraphQLObjectType):
        leaves += [
            name
            for name, child in named.fields.items()
            if is_leaf_type(get_named_type(child.type)) and not child.args
        ]
    return "{ " + " ".join(leaves) + " }"


def operations() -> Iterator[tuple[str, str, GraphQLField]]:
    for kind, root in (
        ("query", GRAPHQL_SCHEMA.query_type),
        ("mutation", GRAPHQL_SCHEMA.mutation_type),
        ("subscription", GRAPHQL_SCHEMA.subscription_type),
    ):
        assert root is not None
        for name, field in root.fields.items():
            yield kind, name, field


def document(kind: str, name: str, field: GraphQLField) -> str:
    if not field.args:
        return f"{kind} {{ {name} {selection(field)} }}"
    declared = ", ".join(f"${arg}: {spec.type}" for arg, spec in field.args.items())
    passed = ", ".join(f"{arg}: ${arg}" for arg in field.args)
    return f"{kind} Fuzz({declared}) {{ {name}({passed}) {selection(field)} }}"


def variables_for(field: GraphQLField) -> st.SearchStrategy[dict[str, Any]]:
    """Every argument, each possibly null (an absent variable is a null one). Mostly
    well-typed, so that hostile values get past coercion to the resolvers."""

    def arguments(mistyped: bool) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {arg: value_for(spec.type, mistyped) for arg, spec in field.args.items()}
        )

    return st.one_of(arguments(False), arguments(False), arguments(True))


class NoQueue:
    """Submitted calculations stay QUEUED: the fuzzer must not run kernels."""

    async def enqueue(self, calculation_id: uuid.UUID, work: object = None) -> None:
        return None


OPERATIONS = sorted(operations(), key=lambda op: (op[0], op[1]))


@pytest.mark.parametrize(("kind", "name", "field"), OPERATIONS, ids=[op[1] for op in OPERATIONS])
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_no_generated_input_crashes_an_operation(
    kind: str, name: str, field: GraphQLField, backend: str, request: pytest.FixtureRequest
) -> None:
    database_url: str = request.getfixturevalue(f"{backend}_url")
    query = document(kind, name, field)
    loop = asyncio.new_event_loop()
    stack = AsyncExitStack()
    try:
        app, client = loop.run_until_complete(
            stack.enter_async_context(
                running_app(make_settings(database_url=database_url, max_active_calculations=10**6))
            )
        )
        services = app.state.runtime.services
        services.queue = NoQueue()
        payload = loop.run_until_complete(client.register())
        token = payload["accessToken"]
        claims = services.tokens.decode_access_token(token)

        async def over_http(variables: dict[str, Any]) -> None:
            body = json.dumps({"query": query, "variables": variables})  # \\u-escapes surrogates
            response = await client.http.post(
                "/graphql",
                content=body.encode(),
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            )
            assert response.status_code < 500, response.text
            check(response.json())

        # A list view's subscription sends nothing until something changes; bad input
        # still fails at once.
        quiet = name in SUBSCRIPTIONS_WITHOUT_SNAPSHOT

        async def over_subscription(variables: dict[str, Any]) -> None:
            context = Context(services=services, connection=None, client="fuzz", claims=claims)  # type: ignore[arg-type]
            results = await app.state.graphql.schema.subscribe(
                query, variable_values=variables, context_value=context
            )
            if hasattr(results, "__aiter__"):
                try:
                    first = await asyncio.wait_for(anext(results), 0.2 if quiet else 10)
                except TimeoutError:
                    if not quiet:
                        raise
                    return  # listening, as the contract says: no first event to check
                finally:
                    await results.aclose()
            else:
                first = results
            check({"errors": [e.formatted for e in first.errors or []]})

        @settings(
            max_examples=EXAMPLES_PER_FIELD,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(variables=variables_for(field))
        def run(variables: dict[str, Any]) -> None:
            runner = over_subscription if kind == "subscription" else over_http
            loop.run_until_complete(runner(variables))

        run()
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


def check(body: dict[str, Any]) -> None:
    for error in body.get("errors") or []:
        code = (error.get("extensions") or {}).get("code")
        assert code and code != "INTERNAL_SERVER_ERROR", error
