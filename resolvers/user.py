from __future__ import annotations

from crunchql.resolvers.context import GraphQLInfo, current_user
from crunchql.schema.types import AuthPayload, User
from crunchql.services import users
from crunchql.services.sessions import AuthResult


def payload(result: AuthResult) -> AuthPayload:
    return AuthPayload(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        user=User.from_model(result.user),
    )


def _user_agent(info: GraphQLInfo) -> str | None:
    return info.context.connection.headers.get("user-agent")


async def me(info: GraphQLInfo) -> User:
    return User.from_model(await current_user(info))


async def register(info: GraphQLInfo, email: str, password: str) -> AuthPayload:
    context = info.context
    return payload(
        await users.register(
            context.services, email, password, client=context.client, user_agent=_user_agent(info)
        )
    )


async def login(info: GraphQLInfo, email: str, password: str) -> AuthPayload:
    context = info.context
    return payload(
        await users.login(
            context.services, email, password, client=context.client, user_agent=_user_agent(info)
        )
    )


async def refresh_token(info: GraphQLInfo, refresh_token: str) -> AuthPayload:
    context = info.context
    return payload(
        await users.refresh(
            context.services, refresh_token, client=context.client, user_agent=_user_agent(info)
        )
    )
