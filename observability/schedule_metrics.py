"""Scheduler metrics (in the shared registry of ``observability.metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from crunchql.observability.metrics import REGISTRY

# Seconds from a fire instant to its calculation's row (target p99 <= 1 s).
FIRE_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

SCHEDULE_FIRES = Counter(
    "crunchql_schedule_fires",
    "Schedule fires acted on, by outcome: created (a calculation), skipped_limit (the "
    "owner was at the active-calculation limit), skipped_disabled (the owner is disabled).",
    ["outcome"],
    registry=REGISTRY,
)
SCHEDULE_MISFIRES = Counter(
    "crunchql_schedule_misfires",
    "Fire instants no scheduler acted on in time, by the schedule's misfire policy "
    "(SKIP drops them; RUN_ONCE folds those of the last 24 hours into one calculation).",
    ["policy"],
    registry=REGISTRY,
)
SCHEDULE_FIRE_LAG = Histogram(
    "crunchql_schedule_fire_lag_seconds",
    "Calculation created minus fire instant, for fires acted on in time.",
    buckets=FIRE_LAG_BUCKETS,
    registry=REGISTRY,
)
SCHEDULER_LEADER = Gauge(
    "crunchql_scheduler_leader",
    "1 while this process is the scheduler leader (summed: how many leaders; should be 1).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)


def record_fires(outcomes: dict[str, int], misfires: dict[str, int], lags: list[float]) -> None:
    for outcome, count in outcomes.items():
        SCHEDULE_FIRES.labels(outcome=outcome.lower()).inc(count)
    for policy, count in misfires.items():
        SCHEDULE_MISFIRES.labels(policy=policy).inc(count)
    for lag in lags:
        SCHEDULE_FIRE_LAG.observe(max(lag, 0.0))


def set_leader(leading: bool) -> None:
    SCHEDULER_LEADER.set(1 if leading else 0)
