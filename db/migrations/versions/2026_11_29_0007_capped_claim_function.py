"""the claim under a per-user running cap, in one round trip (PostgreSQL)

Adds the function ``crunchql_claim_capped``: a worker's claim of a calculation whose
owner has a running cap, as one statement. It locks the owner's row (claims of one
owner's calculations queue there, so two workers cannot both count the same free slot),
then runs the conditional UPDATE, whose count of the owner's live runs is taken after
the lock (READ COMMITTED: each statement of the function has its own snapshot; one
statement holding both would count with a snapshot from before its wait). A claim the
cap refuses marks the row parked instead. It returns the claimed row (RUNNING), the
parked row (QUEUED), or nothing (finished, cancelled, or alive on another worker).

Before, the same was a transaction of four round trips from the worker (BEGIN, the
owner's lock, the UPDATE, COMMIT, and a fifth statement to park). SQLite has no such
functions and needs none: it has one writer, and its UPDATE decides alone
(``CalculationRepository.claim_or_park``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The UPDATE is the one of db/repositories/calculation.py (_claim_statement(True)),
# followed by _PARK; tests/db/test_capped_claim.py checks that both paths agree.
CLAIM_CAPPED = """
CREATE OR REPLACE FUNCTION crunchql_claim_capped(
    p_id uuid,
    p_worker varchar,
    p_now timestamptz,
    p_stale_before timestamptz,
    p_alive_after timestamptz,
    p_max_running integer,
    p_device varchar
) RETURNS SETOF calculations
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM users
    WHERE id = (SELECT owner_id FROM calculations WHERE id = p_id)
    FOR UPDATE;
    RETURN QUERY
    UPDATE calculations AS c SET
        status = 'RUNNING',
        started_at = p_now,
        attempts = c.attempts + 1,
        worker_id = p_worker,
        heartbeat_at = p_now,
        version = c.version + 1,
        error = NULL,
        parked_at = NULL,
        device = CASE WHEN c.shards > 1 THEN c.device ELSE p_device END
    WHERE c.id = p_id
      AND (
        c.status = 'QUEUED'
        OR (c.status = 'RUNNING'
            AND (c.heartbeat_at IS NULL OR c.heartbeat_at < p_stale_before))
      )
      AND (
        SELECT count(*) FROM calculations AS other
        WHERE other.owner_id = c.owner_id
          AND other.id <> c.id
          AND other.status = 'RUNNING'
          AND other.heartbeat_at >= p_alive_after
      ) < p_max_running
    RETURNING c.*;
    IF NOT FOUND THEN
        RETURN QUERY
        UPDATE calculations AS c SET parked_at = p_now
        WHERE c.id = p_id AND c.status = 'QUEUED'
        RETURNING c.*;
    END IF;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM_CAPPED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS crunchql_claim_capped")
