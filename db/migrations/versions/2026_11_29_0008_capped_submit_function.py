"""the submit under a per-user cap of active calculations, in one round trip (PostgreSQL)

Adds the function ``crunchql_submit_capped``: a submission whose owner has a cap on
QUEUED + RUNNING calculations, as one statement. It locks the owner's row (parallel
submits of one owner queue there, across API processes), then inserts the new QUEUED
row only while the owner has fewer than the cap; the count is taken after the lock
(READ COMMITTED: each statement of the function has its own snapshot). It returns the
new row, or nothing when the cap refuses it. Called outside a transaction block, it
commits by itself.

Before, the same was a transaction of four round trips from the API (BEGIN, the owner's
lock, the count-and-insert, COMMIT) on the path of every submission. SQLite has no such
functions: there the count-and-insert is one statement under an in-process lock
(``CalculationRepository.create_within_limit``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The INSERT is the one of db/repositories/calculation.py (_INSERT_UNDER_LIMIT);
# tests/db/test_capped_submit.py checks that both paths give the same row.
SUBMIT_CAPPED = """
CREATE OR REPLACE FUNCTION crunchql_submit_capped(
    p_id uuid,
    p_owner_id uuid,
    p_kind calculations.kind%TYPE,
    p_input calculations.input%TYPE,
    p_status calculations.status%TYPE,
    p_progress calculations.progress%TYPE,
    p_created_at calculations.created_at%TYPE,
    p_attempts integer,
    p_version integer,
    p_max_active integer
) RETURNS SETOF calculations
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = p_owner_id FOR UPDATE;
    RETURN QUERY
    INSERT INTO calculations
        (id, owner_id, kind, input, status, progress, created_at, attempts, version)
    SELECT p_id, p_owner_id, p_kind, p_input, p_status, p_progress, p_created_at,
           p_attempts, p_version
    WHERE (
        SELECT count(*) FROM calculations
        WHERE owner_id = p_owner_id AND status IN ('QUEUED', 'RUNNING')
    ) < p_max_active
    RETURNING *;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(SUBMIT_CAPPED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS crunchql_submit_capped")
