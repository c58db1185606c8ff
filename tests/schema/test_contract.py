"""The exported schema.graphql is current, and the public contract is a subset of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInterfaceType,
    GraphQLObjectType,
    GraphQLSchema,
    GraphQLUnionType,
    build_schema,
)
from strawberry.printer import print_schema

from crunchql.schema.root import schema

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
# Contract extensions (`extend type ...`), one file per feature, copied from
# shared/contract/ as each feature lands. The schema must contain the base and all of them.
EXTENSIONS = sorted((ROOT / "tests" / "contract").glob("*.graphql"))
# graphql-core knows @oneOf; the contract uses it on CalculationInput.
CONTRACT = build_schema(
    "\n".join(p.read_text() for p in [ROOT / "tests" / "contract.graphql", *EXTENSIONS])
)


def live_schema() -> GraphQLSchema:
    return build_schema(print_schema(schema))


def test_schema_file_is_current() -> None:
    exported = (ROOT / "schema.graphql").read_text()
    assert exported == print_schema(schema) + "\n", (
        "schema.graphql is out of date: run `crunchql export-schema -o schema.graphql`"
    )


def test_contract_copy_is_unchanged() -> None:
    shared = SHARED / "api-contract.graphql"
    if shared.exists():
        assert (ROOT / "tests" / "contract.graphql").read_text() == shared.read_text()


@pytest.mark.parametrize("extension", EXTENSIONS, ids=[p.stem for p in EXTENSIONS])
def test_contract_extension_copy_is_unchanged(extension: Path) -> None:
    shared = SHARED / "contract" / extension.name
    if shared.exists():
        assert extension.read_text() == shared.read_text()


def contract_differences(contract: GraphQLSchema, live: GraphQLSchema) -> list[str]:
    problems: list[str] = []
    for name, expected in contract.type_map.items():
        if name.startswith("__"):
            continue
        actual = live.type_map.get(name)
        if actual is None:
            problems.append(f"type {name} is missing")
            continue
        if type(actual) is not type(expected):
            problems.append(f"{name} is a {type(actual).__name__}, not {type(expected).__name__}")
            continue
        if isinstance(expected, GraphQLEnumType):
            missing = set(expected.values) - set(actual.values)  # type: ignore[attr-defined]
            problems += [f"enum value {name}.{value} is missing" for value in sorted(missing)]
        elif isinstance(expected, GraphQLUnionType):
            members = {t.name for t in actual.types}  # type: ignore[attr-defined]
            problems += [
                f"union {name} lacks {t.name}" for t in expected.types if t.name not in members
            ]
        elif isinstance(
            expected, GraphQLObjectType | GraphQLInterfaceType | GraphQLInputObjectType
        ):
            one_of = isinstance(expected, GraphQLInputObjectType) and expected.is_one_of
            if one_of and not actual.is_one_of:  # type: ignore[attr-defined]
                problems.append(f"input {name} is not @oneOf")
            for field_name, field in expected.fields.items():
                live_field = actual.fields.get(field_name)  # type: ignore[attr-defined]
                if live_field is None:
                    problems.append(f"field {name}.{field_name} is missing")
                    continue
                if str(live_field.type) != str(field.type):
                    problems.append(
                        f"{name}.{field_name} is {live_field.type}, contract says {field.type}"
                    )
                for arg_name, arg in getattr(field, "args", {}).items():
                    live_arg = live_field.args.get(arg_name)
                    if live_arg is None:
                        problems.append(f"argument {name}.{field_name}({arg_name}) is missing")
                    elif str(live_arg.type) != str(arg.type):
                        problems.append(
                            f"argument {name}.{field_name}({arg_name}) is {live_arg.type}, "
                            f"contract says {arg.type}"
                        )
                    elif arg.default_value != live_arg.default_value:
                        problems.append(
                            f"argument {name}.{field_name}({arg_name}) defaults to "
                            f"{live_arg.default_value!r}, contract says {arg.default_value!r}"
                        )
    return problems


def test_contract_is_a_subset_of_the_schema() -> None:
    assert contract_differences(CONTRACT, live_schema()) == []


def test_the_check_notices_a_renamed_field() -> None:
    renamed = build_schema(
        (ROOT / "tests" / "contract.graphql").read_text().replace("standardError", "stdError")
    )
    problems = contract_differences(CONTRACT, renamed)
    assert "field MonteCarloPiResult.standardError is missing" in problems


def test_graphiql_default_document_is_valid_against_the_schema() -> None:
    """A newcomer's first click in GraphiQL must not meet a validation error."""
    from graphql import parse, validate

    from crunchql.app.graphiql import DEFAULT_QUERY

    assert validate(live_schema(), parse(DEFAULT_QUERY)) == []
