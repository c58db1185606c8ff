"""The stack crunchql replaces, for side-by-side benchmarks (benchmarks/versus.py).

A plain FastAPI + Celery + Redis + PostgreSQL service doing crunchql's core job, written
the way a competent team would write it from the frameworks' own documentation:

- ``POST /register`` makes a user (bcrypt) and answers a JWT (PyJWT, HS256);
- ``POST /calculations`` (Bearer JWT) inserts the row (SQLAlchemy 2 ORM on asyncpg),
  commits, then sends a Celery task (Redis broker, no result backend);
- the Celery worker (:mod:`benchmarks.classic.worker`) marks the row RUNNING, runs
  crunchql's own numba monteCarloPi kernel, stores SUCCEEDED with the result, and
  publishes each status on the Redis channel ``calculation:<id>``;
- ``GET /calculations/{id}`` reads it back; ``WS /ws/{id}?token=...`` sends the status
  as it stands, then relays each status published on the channel until a terminal one.

Not part of crunchql: it needs the ``bench`` extra (``pip install -e ".[bench]"``).
Settings come from ``CLASSIC_DATABASE_URL`` (postgresql://...), ``CLASSIC_REDIS_URL`` and
``CLASSIC_JWT_SECRET``.
"""
