"""The root types, wiring contract fields to resolvers, and the Schema factory."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

import strawberry
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from strawberry.extensions import MaxAliasesLimiter, SchemaExtension
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from crunchql.observability.metrics import GraphQLMetrics
from crunchql.resolvers import account as account_resolvers
from crunchql.resolvers import admin as admin_resolvers
from crunchql.resolvers import calculation as calculation_resolvers
from crunchql.resolvers import schedule as schedule_resolvers
from crunchql.resolvers import user as user_resolvers
from crunchql.resolvers.context import GraphQLInfo
from crunchql.schema.extensions import ContractPipeline, depth_limit_rule
from crunchql.schema.guards import SingleAuthMutationRule
from crunchql.schema.scalars import SCALAR_MAP
from crunchql.schema.schedule import Schedule, ScheduleConnection
from crunchql.schema.sharing import SharingExecutionContext
from crunchql.schema.types import (
    AuditEventConnection,
    AuthPayload,
    Calculation,
    CalculationConnection,
    CalculationKind,
    CalculationStatus,
    Session,
    User,
    UserConnection,
)


@strawberry.type
class Query:
    me: User = strawberry.field(resolver=user_resolvers.me, description="The caller.")
    calculation: Calculation | None = strawberry.field(
        resolver=calculation_resolvers.calculation,
        description="Null when absent or not the caller's.",
    )
    calculations: CalculationConnection = strawberry.field(
        resolver=calculation_resolvers.calculations_page,
        description="The caller's calculations, newest first.",
    )
    calculation_kinds: list[CalculationKind] = strawberry.field(
        resolver=calculation_resolvers.calculation_kinds
    )
    sessions: list[Session] = strawberry.field(
        resolver=account_resolvers.my_sessions, description="The caller's live sessions."
    )
    users: UserConnection = strawberry.field(
        resolver=admin_resolvers.users,
        description="ADMIN. Every account by e-mail; `search` is an e-mail prefix.",
    )
    all_calculations: CalculationConnection = strawberry.field(
        resolver=admin_resolvers.all_calculations,
        description="ADMIN. Every owner's calculations, newest first.",
    )
    audit_events: AuditEventConnection = strawberry.field(
        resolver=admin_resolvers.audit_events, description="ADMIN. Newest first."
    )
    calculation_count: int = strawberry.field(
        resolver=calculation_resolvers.calculation_count,
        description="How many of the caller's calculations match.",
    )
    schedule: Schedule | None = strawberry.field(
        resolver=schedule_resolvers.schedule, description="Null when absent or not the caller's."
    )
    schedules: ScheduleConnection = strawberry.field(
        resolver=schedule_resolvers.schedules_page,
        description="The caller's schedules, newest first.",
    )


@strawberry.type
class Mutation:
    register: AuthPayload = strawberry.mutation(resolver=user_resolvers.register)
    login: AuthPayload = strawberry.mutation(resolver=user_resolvers.login)
    refresh_token: AuthPayload = strawberry.mutation(
        resolver=user_resolvers.refresh_token,
        description="Rotate a refresh token: the one given stops working.",
    )
    submit_calculation: Calculation = strawberry.mutation(
        resolver=calculation_resolvers.submit_calculation
    )
    cancel_calculation: Calculation = strawberry.mutation(
        resolver=calculation_resolvers.cancel_calculation
    )
    logout: bool = strawberry.mutation(
        resolver=account_resolvers.logout,
        description="Ends the session of this refresh token; false when none was live.",
    )
    logout_everywhere: bool = strawberry.mutation(
        resolver=account_resolvers.logout_everywhere,
        description="Ends every session of the caller, this one included.",
    )
    revoke_session: bool = strawberry.mutation(
        resolver=account_resolvers.revoke_session,
        description="Ends one of the caller's sessions; false when it had already ended.",
    )
    change_password: AuthPayload = strawberry.mutation(
        resolver=account_resolvers.change_password,
        description="A new session; every other session ends.",
    )
    set_user_role: User = strawberry.mutation(
        resolver=admin_resolvers.set_user_role,
        description="ADMIN. Ends every session of that user.",
    )
    set_user_active: User = strawberry.mutation(
        resolver=admin_resolvers.set_user_active,
        description="ADMIN. Disabling ends every session of that user.",
    )
    resubmit_calculation: Calculation = strawberry.mutation(
        resolver=calculation_resolvers.resubmit_calculation,
        description="A new calculation with exactly the stored input of that one (seed "
        "included), so it reproduces the result; the same limits as submitCalculation.",
    )
    create_schedule: Schedule = strawberry.mutation(resolver=schedule_resolvers.create_schedule)
    pause_schedule: Schedule = strawberry.mutation(resolver=schedule_resolvers.pause_schedule)
    resume_schedule: Schedule = strawberry.mutation(
        resolver=schedule_resolvers.resume_schedule,
        description="Fires resume from the next instant after now.",
    )
    delete_schedule: bool = strawberry.mutation(
        resolver=schedule_resolvers.delete_schedule, description="Its calculations stay."
    )


@strawberry.type
class Subscription:
    @strawberry.subscription(  # type: ignore[untyped-decorator]
        description="First event: the calculation as it stands now. Then one event per "
        "change (status, progress). Completes after the terminal event."
    )
    async def calculation_updates(
        self,
        info: GraphQLInfo,
        id: strawberry.ID,
    ) -> AsyncGenerator[Calculation, None]:
        async for update in calculation_resolvers.calculation_updates(info, id):
            yield update

    @strawberry.subscription(  # type: ignore[untyped-decorator]
        description="The caller's calculation on every change to any of the caller's "
        "calculations (created, status, progress, result); no snapshot, never completes. "
        "Subscribe first, then query `calculations`."
    )
    async def my_calculation_updates(
        self,
        info: GraphQLInfo,
        kind: str | None = None,
        status: CalculationStatus | None = None,
    ) -> AsyncGenerator[Calculation, None]:
        async for update in calculation_resolvers.my_calculation_updates(info, kind, status):
            yield update


class CrunchSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Expected errors (bad input, auth) are answers, not incidents: nothing to log.
        # Unexpected ones were logged with their traceback where they were masked.
        return None


@dataclass(frozen=True)
class SchemaOptions:
    max_depth: int = 15
    max_aliases: int = 50
    max_tokens: int = 450
    introspection: bool = True
    field_suggestions: bool = True
    metrics: bool = False
    # One execution per subscription event per selection set (schema.sharing).
    share_subscription_results: bool = True
    max_cost: int = 5000


def build_schema(options: SchemaOptions | None = None) -> strawberry.Schema:
    options = options or SchemaOptions()
    # The rule classes are made once: the validation cache is keyed by them, and
    # MaxAliasesLimiter makes a new class each time it is constructed.
    rules = [
        depth_limit_rule(options.max_depth),
        SingleAuthMutationRule,
        *MaxAliasesLimiter(max_alias_count=options.max_aliases).validation_rules,
    ]
    if not options.introspection:
        rules.append(NoSchemaIntrospectionCustomRule)
    validation_rules = tuple(rules)
    # A factory: a fresh extension per operation (the parse and validation caches live
    # at module level, shared by every operation).
    extensions: list[type[SchemaExtension] | Callable[[], SchemaExtension]] = [
        lambda: ContractPipeline(
            validation_rules=validation_rules,
            max_tokens=options.max_tokens,
            max_cost=options.max_cost,
            suggestions=options.field_suggestions,
        )
    ]
    if options.metrics:
        # Outside ContractPipeline, so it sees the final error codes.
        extensions.insert(0, GraphQLMetrics)
    return CrunchSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(
            disable_field_suggestions=not options.field_suggestions, scalar_map=SCALAR_MAP
        ),
        execution_context_class=SharingExecutionContext
        if options.share_subscription_results
        else None,
    )


# The schema as exported to schema.graphql (defaults; limits do not change the SDL).
schema = build_schema()
