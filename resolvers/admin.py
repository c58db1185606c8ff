"""ADMIN-only fields: users, every calculation, roles, accounts, the audit log."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime

import strawberry

from crunchql.core.errors import BadUserInputError
from crunchql.db.models import AuditAction as ModelAuditAction
from crunchql.db.models import Role as ModelRole
from crunchql.resolvers.calculation import model_status
from crunchql.resolvers.context import GraphQLInfo, client_info, current_admin
from crunchql.schema.types import (
    AuditAction,
    AuditEvent,
    AuditEventConnection,
    AuditEventEdge,
    Calculation,
    CalculationConnection,
    CalculationEdge,
    CalculationStatus,
    PageInfo,
    Role,
    User,
    UserConnection,
    UserEdge,
)
from crunchql.services import admin, audit, calculations


async def users(
    info: GraphQLInfo,
    first: int | None = 20,
    after: str | None = None,
    search: str | None = None,
) -> UserConnection:
    await current_admin(info)
    page = await admin.list_users(
        info.context.services, first=20 if first is None else first, after=after, search=search
    )
    edges = [
        UserEdge(node=User.from_model(row), cursor=admin.encode_user_cursor(row))
        for row in page.items
    ]
    return UserConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
        ),
    )


async def all_calculations(
    info: GraphQLInfo,
    first: int | None = 20,
    after: str | None = None,
    status: CalculationStatus | None = None,
    kind: str | None = None,
    owner_id: strawberry.ID | None = None,
) -> CalculationConnection:
    await current_admin(info)
    page = await admin.list_calculations(
        info.context.services,
        first=20 if first is None else first,
        after=after,
        status=model_status(status),
        kind=kind,
        owner_id=owner_id,
    )
    edges = [
        CalculationEdge(node=Calculation.from_model(row), cursor=calculations.encode_cursor(row))
        for row in page.items
    ]
    return CalculationConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
        ),
    )


def _event_cursor(at: datetime, event_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{event_id}".encode()).decode()


def _decode_event_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, _, raw_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        moment = datetime.fromisoformat(at)
        if moment.tzinfo is None:
            raise ValueError("cursor without offset")
        return moment, uuid.UUID(raw_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadUserInputError("Cursor is not valid.", field="after") from None


async def audit_events(
    info: GraphQLInfo,
    first: int | None = 50,
    after: str | None = None,
    action: AuditAction | None = None,
    actor_id: strawberry.ID | None = None,
    target_user_id: strawberry.ID | None = None,
) -> AuditEventConnection:
    await current_admin(info)
    page = await audit.list_events(
        info.context.services.session_factory,
        first=50 if first is None else first,
        after=_decode_event_cursor(after) if after else None,
        action=ModelAuditAction(action.value) if action is not None else None,
        actor_id=admin.parse_user_id(actor_id, field="actorId") if actor_id else None,
        target_user_id=admin.parse_user_id(target_user_id, field="targetUserId")
        if target_user_id
        else None,
    )
    edges = [
        AuditEventEdge(node=AuditEvent.from_model(row), cursor=_event_cursor(row.at, row.id))
        for row in page.items
    ]
    return AuditEventConnection(
        edges=edges,
        page_info=PageInfo(
            has_next_page=page.has_next_page, end_cursor=edges[-1].cursor if edges else None
        ),
    )


async def set_user_role(info: GraphQLInfo, id: strawberry.ID, role: Role) -> User:
    actor = await current_admin(info)
    user = await admin.set_role(
        info.context.services, actor, id, ModelRole(role.value), client_info(info)
    )
    return User.from_model(user)


async def set_user_active(info: GraphQLInfo, id: strawberry.ID, active: bool) -> User:
    actor = await current_admin(info)
    user = await admin.set_active(info.context.services, actor, id, active, client_info(info))
    return User.from_model(user)
