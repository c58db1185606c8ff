"""The GraphQL edge: contract error codes, masking, and limits checked before execution."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
    parse,
)
from graphql import ExecutionResult as GraphQLExecutionResult
from strawberry.exceptions import MissingQueryError
from strawberry.extensions import MaskErrors
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.schema.schema import validate_document
from strawberry.types import ExecutionResult as StrawberryExecutionResult
from strawberry.types.graphql import OperationType as StrawberryOperationType

from crunchql.core.errors import BadUserInputError, CrunchError, ErrorCode
from crunchql.core.logging import bind_log_context
from crunchql.schema.guards import checked_cost, clean_messages, over_budget

logger = logging.getLogger("crunchql.graphql")

MASKED_MESSAGE = "Internal server error."
MAX_VALIDATION_ERRORS = 10
CACHED_DOCUMENTS = 1024  # distinct query texts whose parse and validation are kept

# Per process, shared by every operation: what ParserCache and ValidationCache keep.
_parse = lru_cache(maxsize=CACHED_DOCUMENTS)(parse)
_validate = lru_cache(maxsize=CACHED_DOCUMENTS)(validate_document)


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


class ContractPipeline(ContractErrors):
    """Every rule of the GraphQL edge as ONE extension, each in its place in the
    pipeline. Strawberry wraps each hook of each extension in a fresh context manager
    for every operation; as separate extensions these rules cost a quarter of an
    authenticated ``{ me }`` request's time (docs/benchmarks.md), for work that is a
    few attribute reads when the operation is fine. In order:

    - operation start: the token limit for the parser, the extra validation rules;
    - then the parse, from the process's parse cache (as ``ParserCache``; on a failure
      the document is left unset so Strawberry parses again inside its own error
      handling: syntax and token-limit errors would otherwise skip the codes below), and
      the validation, from the process's validation cache (as ``ValidationCache``);
    - execute: the operation name on every log line of the operation, then the input
      hygiene and cost guard (``guards.checked_cost``): an operation over budget is
      answered BAD_USER_INPUT without executing (a subscription's refusal is raised,
      Strawberry answers it), and every answer reports ``extensions.cost``;
    - operation end (and each streamed result): the contract's error codes and masking
      (:class:`ContractErrors`), then the messages' clean-up (``guards.clean_messages``).
    """

    def __init__(
        self,
        *,
        validation_rules: tuple[type[ASTValidationRule], ...],
        max_tokens: int,
        max_cost: int,
        suggestions: bool,
    ) -> None:
        super().__init__()
        self.validation_rules = validation_rules
        self.max_tokens = max_tokens
        self.max_cost = max_cost
        self.suggestions = suggestions
        self.cost: int | None = None

    def on_operation(self) -> Iterator[None]:
        context = self.execution_context
        context.parse_options["max_tokens"] = self.max_tokens
        context.validation_rules = context.validation_rules + self.validation_rules
        self._stream_result_processed = False
        if context.query and context.graphql_document is None:
            # Parsed and validated here, from the caches, rather than in on_parse and
            # on_validate: two fewer hooks for Strawberry to wrap. Strawberry skips its
            # own parse when the document is set and its own validation when the errors
            # are, and still checks the operation type in between, as before.
            try:
                context.graphql_document = _parse(context.query, **context.parse_options)
            except GraphQLError:
                pass  # Strawberry parses again inside its own handler: errors get codes
            else:
                context.pre_execution_errors = _validate(
                    context.schema._schema, context.graphql_document, context.validation_rules
                )
        yield
        result = context.result
        if self._stream_result_processed or not (
            getattr(result, "errors", None) or getattr(result, "initial_result", None)
        ):
            return  # streamed results were handled one by one; nothing to do
        if isinstance(result, GraphQLExecutionResult | StrawberryExecutionResult):
            self._process_result(result)
        elif initial_result := getattr(result, "initial_result", None):
            self._process_result(initial_result)
        clean_messages(result, suggestions=self.suggestions)

    def on_execute(self) -> Iterator[None]:
        context = self.execution_context
        name = context.operation_name
        if name:
            bind_log_context(operation=name)
        try:
            self.cost = checked_cost(context)
            if self.cost is not None and self.cost > self.max_cost:
                raise over_budget(self.cost, self.max_cost)
        except BadUserInputError as error:
            if context.operation_type is StrawberryOperationType.SUBSCRIPTION:
                raise  # Strawberry answers an on_execute error of a subscription itself
            # A result set here means: do not execute; answer this instead.
            context.result = GraphQLExecutionResult(
                data=None, errors=[GraphQLError(error.message, original_error=error)]
            )
        yield

    def on_stream_result(self, result: Any) -> Iterator[None]:
        clean_messages(result, suggestions=self.suggestions)
        self._stream_result_processed = True
        self._process_stream_result(result)
        yield

    def get_results(self) -> dict[str, Any]:
        if self.cost is None:
            return {}
        return {"cost": {"requested": self.cost, "maximum": self.max_cost}}
