"""The GraphQL edge: contract error codes, masking, and limits checked before execution."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import MaskErrors, ParserCache, SchemaExtension
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError

from crunchql.core.errors import CrunchError, ErrorCode
from crunchql.core.logging import bind_log_context

logger = logging.getLogger("crunchql.graphql")

MASKED_MESSAGE = "Internal server error."
MAX_VALIDATION_ERRORS = 10


# Strawberry's own refusals of a request before execution (an unknown operation name,
# an operation type the transport does not allow, no query).
_REFUSALS = CannotGetOperationTypeError | InvalidOperationTypeError | MissingQueryError


def _code_of(error: GraphQLError) -> ErrorCode | None:
    """The contract code of an error, None for an unexpected one (to be masked)."""
    original = error.original_error
    if isinstance(original, CrunchError):
        return original.code
    if original is None or isinstance(original, GraphQLError | _REFUSALS):
        # GraphQL's own refusals: syntax, validation, limits, unknown operation.
        return ErrorCode.BAD_USER_INPUT
    if error.path is None and error.nodes:
        # A value in the document or its variables that a scalar refused (ValueError,
        # TypeError from parse_value): located in the request, so the client's.
        return ErrorCode.BAD_USER_INPUT
    # Anything else, raised in a resolver or while streaming a subscription (Strawberry
    # gives those no path): unexpected.
    return None


class ContractErrors(MaskErrors):
    """The one place where errors get their ``extensions.code`` from the contract, for
    every operation over HTTP and WebSocket (queries, mutations, each subscription
    event). Errors we raised on purpose keep their message; anything unexpected becomes
    INTERNAL_SERVER_ERROR with no detail, and the detail goes to the log with the
    request id. (Faults of the HTTP view itself, outside GraphQL, are answered by the
    view as a bare 500 INTERNAL_SERVER_ERROR.)"""

    def __init__(self) -> None:
        super().__init__(should_mask_error=lambda error: _code_of(error) is None)

    def anonymise_error(self, error: GraphQLError) -> GraphQLError:
        request_id = getattr(self.execution_context.context, "request_id", "")
        logger.error(
            "unexpected error in %s (request %s)",
            ".".join(str(p) for p in error.path or ()),
            request_id,
            exc_info=error.original_error,
        )
        return GraphQLError(
            MASKED_MESSAGE,
            nodes=error.nodes,
            path=error.path,
            extensions={"code": ErrorCode.INTERNAL_SERVER_ERROR.value, "requestId": request_id},
        )

    def _process_errors(self, errors: list[GraphQLError]) -> list[GraphQLError]:
        processed: list[GraphQLError] = []
        seen: set[str] = set()
        for error in super()._process_errors(errors):
            if error.path is None:
                # Identical pre-execution errors (ten `@aa` on one field) are one error,
                # and a flood of distinct ones is capped.
                if error.message in seen:
                    continue
                seen.add(error.message)
                if len(seen) > MAX_VALIDATION_ERRORS:
                    break
            code = (error.extensions or {}).get("code") or _code_of(error)
            extensions = dict(error.extensions or {})
            original = error.original_error
            if isinstance(original, CrunchError):
                extensions.update(original.extensions)
            extensions["code"] = code.value if isinstance(code, ErrorCode) else code
            error.extensions = extensions
            processed.append(error)
        return processed


def _depth(
    selection_set: SelectionSetNode | None,
    fragments: dict[str, FragmentDefinitionNode],
    visiting: frozenset[str],
    level: int,
) -> int:
    if selection_set is None:
        return level
    deepest = level
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            deepest = max(deepest, _depth(selection.selection_set, fragments, visiting, level + 1))
        elif isinstance(selection, InlineFragmentNode):
            deepest = max(deepest, _depth(selection.selection_set, fragments, visiting, level))
        elif isinstance(selection, FragmentSpreadNode):
            name = selection.name.value
            fragment = fragments.get(name)
            if fragment is None or name in visiting:
                continue  # unknown or cyclic fragments are reported by the standard rules
            deepest = max(
                deepest, _depth(fragment.selection_set, fragments, visiting | {name}, level)
            )
    return deepest


def depth_limit_rule(max_depth: int) -> type[ValidationRule]:
    """Refuses operations nested deeper than ``max_depth`` fields, counting introspection
    fields too (Strawberry's QueryDepthLimiter skips everything under ``__``)."""

    class DepthLimitRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.fragments = {
                definition.name.value: definition
                for definition in context.document.definitions
                if isinstance(definition, FragmentDefinitionNode)
            }

        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            depth = _depth(node.selection_set, self.fragments, frozenset(), 0)
            if depth > max_depth:
                name = node.name.value if node.name else "anonymous"
                self.report_error(
                    GraphQLError(
                        f"Operation '{name}' is {depth} levels deep; the limit is {max_depth}.",
                        node,
                    )
                )

    return DepthLimitRule


class ContractParserCache(ParserCache):
    """ParserCache parses in ``on_parse``, outside Strawberry's own error handling, so
    syntax and token-limit errors would skip ContractErrors and carry no code. On a
    failure leave the document unset: Strawberry parses again inside its handler."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        try:
            context.graphql_document = self.cached_parse_document(
                context.query, **context.parse_options
            )
        except GraphQLError:
            context.graphql_document = None
        yield


class OperationName(SchemaExtension):
    """Puts the operation name on every log line of the operation."""

    def on_execute(self) -> Iterator[None]:
        name = self.execution_context.operation_name
        if name:
            bind_log_context(operation=name)
        yield
