from __future__ import annotations

from crunchql.resolvers.context import GraphQLInfo, current_user
from crunchql.schema.types import AuthPayload, User
from crunchql.services import users
from crunchql.services.users import AuthResult


def _payload(result: AuthResult) -> AuthPayload:
    return AuthPayload(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        user=User.from_model(result.user),
    )


async def me(info: GraphQLInfo) -> User:
    return User.from_model(await current_user(info))


async def register(info: GraphQLInfo, email: str, password: str) -> AuthPayload:
    context = info.context
    return _payload(await users.register(context.services, email, password, client=context.client))


async def login(info: GraphQLInfo, email: str, password: str) -> AuthPayload:
    context = info.context
    return _payload(await users.login(context.services, email, password, client=context.client))


async def refresh_token(info: GraphQLInfo, refresh_token: str) -> AuthPayload:
    return _payload(await users.refresh(info.context.services, refresh_token))
