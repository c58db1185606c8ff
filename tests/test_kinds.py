"""Every kind of the catalog has all its parts, joined by objects rather than by names:
parameters (plain Python), a kernel module, a GraphQL input and result type, a member of
the result union, a field of CalculationInput and a test against a naive reference."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from graphql import GraphQLInputObjectType, GraphQLUnionType

from crunchql.compute.base import Kind
from crunchql.compute.catalog import KINDS
from crunchql.schema.kinds import BY_KIND, KIND_SCHEMAS
from crunchql.schema.root import schema

ROOT = Path(__file__).resolve().parents[1]
GRAPHQL = schema._schema


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@pytest.fixture(params=sorted(KINDS), ids=str)
def kind(request: pytest.FixtureRequest) -> Kind[Any]:
    return KINDS[request.param]


def test_params_are_a_frozen_dataclass_in_compute_params(kind: Kind[Any]) -> None:
    assert dataclasses.is_dataclass(kind.params)
    assert kind.params.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert kind.params.__module__ == f"crunchql.compute.params.{_snake(kind.name)}"
    assert callable(kind.params.from_input) and callable(kind.params.to_json)


def test_kernel_module_starts_and_warms_up(kind: Kind[Any]) -> None:
    assert kind.kernel == f"crunchql.compute.{_snake(kind.name)}"
    module = importlib.import_module(kind.kernel)
    assert callable(module.start) and callable(module.warm_up)
    assert kind.time_limit_seconds > 0 and kind.description.endswith(".")


def test_graphql_input_result_and_union_member(kind: Kind[Any]) -> None:
    kind_schema = BY_KIND[kind.name]
    assert kind_schema.kind is kind  # the catalog entry itself, not a look-alike
    input_name = kind_schema.input.__strawberry_definition__.name  # type: ignore[attr-defined]
    result_name = kind_schema.result.__strawberry_definition__.name  # type: ignore[attr-defined]
    assert kind_schema.input.__module__ == kind_schema.result.__module__
    assert kind_schema.input.__module__ == f"crunchql.schema.kinds.{_snake(kind.name)}"
    calculation_input = GRAPHQL.get_type("CalculationInput")
    assert isinstance(calculation_input, GraphQLInputObjectType)
    assert calculation_input.fields[kind.name].type.name == input_name  # type: ignore[attr-defined]
    union = GRAPHQL.get_type("CalculationResult")
    assert isinstance(union, GraphQLUnionType)
    assert result_name in {member.name for member in union.types}


def test_naive_reference_test_exists(kind: Kind[Any]) -> None:
    test_module = ROOT / "tests" / "compute" / f"test_{_snake(kind.name)}.py"
    assert test_module.exists(), f"{kind.name} has no {test_module.relative_to(ROOT)}"
    text = test_module.read_text()
    assert re.search(r"^from tests\.compute(\.naive\w* import \w| import naive\b)", text, re.M), (
        f"{test_module.name} imports no naive reference from tests/compute/naive*.py"
    )


def test_the_schema_serves_exactly_the_catalog() -> None:
    assert [s.kind.name for s in KIND_SCHEMAS] == list(KINDS)
    assert all(KINDS[s.kind.name] is s.kind for s in KIND_SCHEMAS)
    union = GRAPHQL.get_type("CalculationResult")
    calculation_input = GRAPHQL.get_type("CalculationInput")
    assert isinstance(union, GraphQLUnionType)
    assert isinstance(calculation_input, GraphQLInputObjectType)
    assert len(union.types) == len(KINDS) and set(calculation_input.fields) == set(KINDS)


def test_an_unknown_stored_kind_is_an_error_not_a_silent_drop() -> None:
    from crunchql.schema.types import result_from_json

    with pytest.raises(KeyError):
        result_from_json("noSuchKind", {"estimate": 3.0})


def test_catalog_and_schema_import_no_kernel_dependencies() -> None:
    """What the API process imports to validate and to build its schema: no NumPy, numba,
    llvmlite or kernel module."""
    code = (
        "import json, sys\n"
        "import crunchql.compute.catalog, crunchql.schema.root\n"
        "from crunchql.compute.catalog import KINDS\n"
        "for kind in KINDS.values(): kind.params\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'numba', 'llvmlite', 'PIL') or m in [k.kernel for k in KINDS.values()])))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout) == []
