"""The FastAPI application.

uvicorn benchmarks.classic.api:app
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from benchmarks.classic.auth import hash_password, issue_token, user_id_from_token
from benchmarks.classic.celery_app import RUN_CALCULATION, redis_url
from benchmarks.classic.celery_app import app as celery_app
from benchmarks.classic.db import TERMINAL, Calculation, User, async_engine


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = async_engine()
    app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
    app.state.redis = Redis.from_url(redis_url(), decode_responses=True)
    yield
    await app.state.redis.aclose()
    await engine.dispose()


app = FastAPI(title="classic", lifespan=lifespan)
bearer = HTTPBearer()


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def current_user(
    credentials: Annotated[HTTPAuthorizationCredentials, Depends(bearer)], session: SessionDep
) -> User:
    user_id = user_id_from_token(credentials.credentials)
    user = await session.get(User, user_id) if user_id else None
    if user is None or not user.is_active:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or expired token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


CurrentUser = Annotated[User, Depends(current_user)]


class Credentials(BaseModel):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=12, max_length=128)


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 (OAuth2's token type, not a secret)


class MonteCarloPiInput(BaseModel):
    samples: int = Field(ge=1, le=10**10)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)


class CalculationInput(BaseModel):
    monteCarloPi: MonteCarloPiInput  # the JSON field, named as crunchql names it


class CalculationOut(BaseModel):
    id: uuid.UUID
    kind: str
    status: str
    input: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None

    model_config = {"from_attributes": True}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/register", status_code=status.HTTP_201_CREATED)
async def register(body: Credentials, session: SessionDep) -> Token:
    password_hash = await run_in_threadpool(hash_password, body.password)
    user = User(email=body.email, password_hash=password_hash)
    session.add(user)
    try:
        await session.commit()
    except IntegrityError:
        raise HTTPException(status.HTTP_409_CONFLICT, "email already registered") from None
    return Token(access_token=issue_token(user.id))


@app.post("/calculations", status_code=status.HTTP_201_CREATED)
async def submit_calculation(
    body: CalculationInput, user: CurrentUser, session: SessionDep
) -> CalculationOut:
    calculation = Calculation(
        owner_id=user.id, kind="monteCarloPi", input=body.monteCarloPi.model_dump()
    )
    session.add(calculation)
    await session.commit()  # committed before the task is sent: the worker finds the row
    # Kombu publishes to Redis synchronously (one local round trip), called inline as
    # Celery's and FastAPI's users commonly do.
    celery_app.send_task(RUN_CALCULATION, args=[str(calculation.id)])
    return CalculationOut.model_validate(calculation)


@app.get("/calculations/{calculation_id}")
async def get_calculation(
    calculation_id: uuid.UUID, user: CurrentUser, session: SessionDep
) -> CalculationOut:
    calculation = await session.get(Calculation, calculation_id)
    if calculation is None or calculation.owner_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such calculation")
    return CalculationOut.model_validate(calculation)


@app.websocket("/ws/{calculation_id}")
async def watch_calculation(websocket: WebSocket, calculation_id: uuid.UUID, token: str) -> None:
    """The status as it stands, then each published status until a terminal one.

    Subscribes before reading the row, so a status published in between is not lost.
    """
    user_id = user_id_from_token(token)
    if user_id is None:
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION)
        return
    await websocket.accept()
    pubsub = websocket.app.state.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"calculation:{calculation_id}")
    try:
        async with websocket.app.state.sessions() as session:
            calculation = await session.get(Calculation, calculation_id)
        if calculation is None or calculation.owner_id != user_id:
            await websocket.close(code=status.WS_1008_POLICY_VIOLATION)
            return
        current = calculation.status
        await websocket.send_text(
            json.dumps({"id": str(calculation.id), "status": current, "result": calculation.result})
        )
        while current not in TERMINAL:
            message = await pubsub.get_message(timeout=None)
            if message is None:
                continue
            current = json.loads(message["data"])["status"]
            await websocket.send_text(message["data"])
        await websocket.close()
    finally:
        await pubsub.unsubscribe()
        await pubsub.aclose()
