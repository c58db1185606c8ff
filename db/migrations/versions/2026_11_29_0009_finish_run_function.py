"""a run's finish and the wake-up of its owner's parked calculations, in one round trip

Adds the function ``crunchql_finish_run``: under a per-user running cap, the worker's
conditional finish of a run it owns (SUCCEEDED or FAILED, with its result or error) and
the release of up to ``p_wake`` of the owner's oldest parked calculations (``parked_at``
cleared; the worker sends each again), as one statement. It returns the finished row
(if the run was still this worker's) followed by the released rows, QUEUED. Without a
cap the worker runs the plain conditional UPDATE instead.

It locks the owner's row first, as ``crunchql_claim_capped`` (0007) does
for a claim: a claim of the owner's calculations then either committed its park before
the lock (and the release below sees it), or waits for this commit (and then counts this
run as ended, and claims instead of parking). Without the lock, a park committed between
the release's snapshot and this commit would wait for the sweeper.

Before, the same was two round trips from the worker after every run (the finish, then
the release, each committed by itself). SQLite has no such functions: there the two
statements run in turn (``CalculationRepository.finish_and_wake``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The UPDATEs are the ones of db/repositories/calculation.py (_finish_statement and
# _unpark_statement(False)); tests/db/test_finish_run.py checks that both paths agree.
FINISH_RUN = """
CREATE OR REPLACE FUNCTION crunchql_finish_run(
    p_id uuid,
    p_worker calculations.worker_id%TYPE,
    p_owner uuid,
    p_status calculations.status%TYPE,
    p_now timestamptz,
    p_result calculations.result%TYPE,
    p_error calculations.error%TYPE,
    p_version integer,
    p_succeeded boolean,
    p_wake integer
) RETURNS SETOF calculations
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = p_owner FOR UPDATE;
    RETURN QUERY
    UPDATE calculations AS c SET
        status = p_status,
        finished_at = p_now,
        result = p_result,
        error = p_error,
        heartbeat_at = p_now,
        version = p_version,
        progress = CASE WHEN p_succeeded THEN 1.0 ELSE c.progress END,
        partial_result = CASE WHEN p_succeeded THEN NULL ELSE c.partial_result END
    WHERE c.id = p_id AND c.status = 'RUNNING' AND c.worker_id = p_worker
    RETURNING c.*;
    RETURN QUERY
    UPDATE calculations AS c SET parked_at = NULL
    WHERE c.id IN (
            SELECT id FROM calculations
            WHERE owner_id = p_owner AND status = 'QUEUED' AND parked_at IS NOT NULL
            ORDER BY created_at, id
            LIMIT p_wake
        )
      AND c.status = 'QUEUED' AND c.parked_at IS NOT NULL
    RETURNING c.*;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FINISH_RUN)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS crunchql_finish_run")
