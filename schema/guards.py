"""Limits an operation must pass before anything of it runs.

- one authentication mutation per operation: fifty aliased ``login`` fields must not
  cost fifty bcrypt runs in one request;
- a cost budget: every field costs 1, a field with a ``first`` argument multiplies what
  it selects by the page size asked for (the schema's default when not given), other
  list fields by ``DEFAULT_LIST_SIZE``, and large results by their size class
  (``FIELD_WEIGHTS``, ``SCALAR_WEIGHTS``). An operation over the budget is refused
  before execution; the cost of every operation is reported in the response's
  ``extensions.cost``;
- input hygiene, one rule for every string that reaches a resolver (arguments, input
  fields at any depth, variables): a NUL character or an unpaired surrogate is
  BAD_USER_INPUT naming the argument, never a database error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    NullValueNode,
    ObjectValueNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    StringValueNode,
    ValidationContext,
    ValidationRule,
    ValueNode,
    VariableNode,
    get_named_type,
)
from strawberry.types import ExecutionContext

from crunchql.core.errors import BadUserInputError

# Mutations that run bcrypt or rotate credentials: at most one per operation.
AUTH_MUTATIONS = frozenset({"register", "login", "refreshToken", "changePassword"})

DEFAULT_LIST_SIZE = 10
# Size classes of large results, in cost units (a plain field is 1).
FIELD_WEIGHTS: Mapping[tuple[str, str], int] = {
    # A PNG of up to 4096 x 4096 pixels: up to ~17 MiB base64.
    ("MandelbrotResult", "png"): 2000,
    # Up to 256 x 64 coordinates: ~0.3 MiB.
    ("KMeansResult", "centroids"): 50,
}
SCALAR_WEIGHTS: Mapping[str, int] = {"JSON": 10}  # a calculation's input: up to kilobytes

_UNSAFE = re.compile("[\x00\ud800-\udfff]")
MAX_ECHO = 100


def _root_fields(
    selection_set: SelectionSetNode,
    fragments: Mapping[str, FragmentDefinitionNode],
    visiting: frozenset[str] = frozenset(),
) -> Iterator[FieldNode]:
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            yield selection
        elif isinstance(selection, InlineFragmentNode):
            yield from _root_fields(selection.selection_set, fragments, visiting)
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is not None and name not in visiting:
                yield from _root_fields(fragment.selection_set, fragments, visiting | {name})


def _fragments(document: Any) -> dict[str, FragmentDefinitionNode]:
    return {
        definition.name.value: definition
        for definition in document.definitions
        if isinstance(definition, FragmentDefinitionNode)
    }


class SingleAuthMutationRule(ValidationRule):
    """Refuses a mutation with more than one of ``AUTH_MUTATIONS`` (aliases and
    fragments included): each costs a bcrypt run or rotates a credential."""

    def __init__(self, context: ValidationContext) -> None:
        super().__init__(context)
        self.fragments = _fragments(context.document)

    def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
        if node.operation is not OperationType.MUTATION:
            return
        found = [
            field.name.value
            for field in _root_fields(node.selection_set, self.fragments)
            if field.name.value in AUTH_MUTATIONS
        ]
        if len(found) > 1:
            self.report_error(
                GraphQLError(
                    f"At most one authentication mutation ({', '.join(sorted(AUTH_MUTATIONS))}) "
                    f"per operation; this one has {len(found)}.",
                    node,
                )
            )


@dataclass
class _Walk:
    schema: GraphQLSchema
    fragments: Mapping[str, FragmentDefinitionNode]
    variables: Mapping[str, Any]

    def value(self, node: ValueNode) -> Any:
        if isinstance(node, VariableNode):
            return self.variables.get(node.name.value)
        if isinstance(node, IntValueNode):
            return int(node.value)
        if isinstance(node, NullValueNode):
            return None
        return getattr(node, "value", None)

    # ---- cost -------------------------------------------------------------------------

    def multiplier(self, field: FieldNode, definition: GraphQLField | None) -> int:
        if definition is None:
            return 1
        if "first" in definition.args:
            first: Any = None
            for argument in field.arguments or ():
                if argument.name.value == "first":
                    first = self.value(argument.value)
            if first is None:
                first = definition.args["first"].default_value
            return max(first, 1) if isinstance(first, int) and first >= 0 else DEFAULT_LIST_SIZE
        field_type = definition.type
        if isinstance(field_type, GraphQLNonNull):
            field_type = field_type.of_type
        # The edges of a connection are already counted by the connection's page size.
        if isinstance(field_type, GraphQLList) and field.name.value != "edges":
            return DEFAULT_LIST_SIZE
        return 1

    def cost(
        self,
        selection_set: SelectionSetNode | None,
        parent: GraphQLNamedType | None,
        visiting: frozenset[str] = frozenset(),
    ) -> int:
        if selection_set is None:
            return 0
        total = 0
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                total += self.field_cost(selection, parent, visiting)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                target = self.schema.get_type(condition.name.value) if condition else parent
                total += self.cost(selection.selection_set, target, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in visiting:
                    target = self.schema.get_type(fragment.type_condition.name.value)
                    total += self.cost(fragment.selection_set, target, visiting | {name})
        return total

    def field_cost(
        self, field: FieldNode, parent: GraphQLNamedType | None, visiting: frozenset[str]
    ) -> int:
        name = field.name.value
        if name.startswith("__"):
            return 1  # introspection: off in production, bounded by depth and tokens
        definition = None
        if isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            definition = parent.fields.get(name)
        if definition is None:
            return 1
        named = get_named_type(definition.type)
        weight = FIELD_WEIGHTS.get((parent.name if parent else "", name)) or SCALAR_WEIGHTS.get(
            named.name, 1
        )
        children = self.cost(field.selection_set, named, visiting)
        return weight + self.multiplier(field, definition) * children

    # ---- input hygiene ----------------------------------------------------------------

    def check_inputs(
        self, selection_set: SelectionSetNode | None, visiting: frozenset[str] = frozenset()
    ) -> None:
        if selection_set is None:
            return
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                for argument in selection.arguments or ():
                    self.check_value(argument.value, argument.name.value)
                self.check_inputs(selection.selection_set, visiting)
            elif isinstance(selection, InlineFragmentNode):
                self.check_inputs(selection.selection_set, visiting)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = self.fragments.get(name)
                if fragment is not None and name not in visiting:
                    self.check_inputs(fragment.selection_set, visiting | {name})

    def check_value(self, node: ValueNode, path: str) -> None:
        if isinstance(node, VariableNode):
            check_plain_value(self.variables.get(node.name.value), path)
        elif isinstance(node, StringValueNode):
            check_plain_value(node.value, path)
        elif isinstance(node, ListValueNode):
            for item in node.values:
                self.check_value(item, path)
        elif isinstance(node, ObjectValueNode):
            for field in node.fields:
                self.check_value(field.value, f"{path}.{field.name.value}")


def check_plain_value(value: Any, path: str) -> None:
    """Refuse NUL characters and unpaired surrogates anywhere in a (JSON) value."""
    if isinstance(value, str):
        if _UNSAFE.search(value):
            raise BadUserInputError(
                f"{path} contains a NUL character or an unpaired surrogate.", field=path
            )
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_plain_value(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            check_plain_value(item, path)


def _operation(document: Any, name: str | None) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((op for op in operations if op.name and op.name.value == name), None)


def checked_cost(context: ExecutionContext) -> int | None:
    """The cost of the operation about to run, its input checked first (variables are
    known by then, so ``first: $n`` is priced at the page size asked for); None when
    there is no operation to price. BadUserInputError for an unsafe string."""
    document = context.graphql_document
    operation = _operation(document, context.operation_name) if document else None
    if document is None or operation is None:
        return None
    schema = context.schema._schema
    walk = _Walk(schema, _fragments(document), context.variables or {})
    walk.check_inputs(operation.selection_set)
    return walk.cost(operation.selection_set, schema.get_root_type(operation.operation))


def over_budget(cost: int, max_cost: int) -> BadUserInputError:
    return BadUserInputError(
        f"This operation costs {cost}; the limit is {max_cost}. Select "
        "fewer fields, smaller pages or fewer large results (a png costs "
        f"{FIELD_WEIGHTS[('MandelbrotResult', 'png')]})."
    )


_SUGGESTION = re.compile(r"\s*Did you mean\b[^?]*\?")
_QUOTED = re.compile(f"'[^']{{{MAX_ECHO + 1},}}'|\"[^\"]{{{MAX_ECHO + 1},}}\"")
_LONG_WORD = re.compile(rf"\S{{{MAX_ECHO + 1},}}")


def clip_echoes(message: str) -> str:
    """At most ``MAX_ECHO`` characters of any one value the client sent (messages of
    graphql-core quote the offending value, a 5,000-digit number included)."""
    if len(message) <= MAX_ECHO:
        return message
    message = _QUOTED.sub(lambda m: m.group()[: MAX_ECHO - 5] + "…" + m.group()[-1], message)
    return _LONG_WORD.sub(lambda m: m.group()[:MAX_ECHO] + "…", message)


def clean_messages(result: object, *, suggestions: bool) -> None:
    """The last word on every error message of ``result``: at most ``MAX_ECHO``
    characters of any one input echoed, and, with ``suggestions=False`` (introspection
    off), no "Did you mean ...?" of any kind (types, fields, arguments, enum values,
    input fields, directives): it would reveal the schema one guess at a time."""
    for error in getattr(result, "errors", None) or ():
        message = error.message
        if not suggestions and "Did you mean" in message:
            message = _SUGGESTION.sub("", message)
        error.message = clip_echoes(message)
