"""Sessions and account security: the caller's own sessions and password."""

from __future__ import annotations

import strawberry

from crunchql.resolvers.context import GraphQLInfo, client_info, current_claims, current_user
from crunchql.resolvers.user import payload
from crunchql.schema.types import AuthPayload, Session
from crunchql.services import sessions


async def my_sessions(info: GraphQLInfo) -> list[Session]:
    user = await current_user(info)
    current = current_claims(info).session_id
    rows = await sessions.list_live(info.context.services, user)
    return [Session.from_model(row, current) for row in rows]


async def logout(info: GraphQLInfo, refresh_token: str) -> bool:
    return await sessions.logout(info.context.services, refresh_token, client_info(info))


async def logout_everywhere(info: GraphQLInfo) -> bool:
    user = await current_user(info)
    return await sessions.logout_everywhere(info.context.services, user, client_info(info))


async def revoke_session(info: GraphQLInfo, id: strawberry.ID) -> bool:
    user = await current_user(info)
    return await sessions.revoke(info.context.services, user, id, client_info(info))


async def change_password(
    info: GraphQLInfo, current_password: str, new_password: str
) -> AuthPayload:
    user = await current_user(info)
    result = await sessions.change_password(
        info.context.services, user, current_password, new_password, client_info(info)
    )
    return payload(result)
