"""Cron in IANA zones across daylight-saving changes (Debian cron's rules, as the
contract states them), and what happens to missed fires. Every instant is pinned in
UTC, worked out by hand from the zone's rules for 2026:

  Europe/Berlin     spring 29 Mar 02:00 CET -> 03:00 CEST (01:00Z)
                    autumn 25 Oct 03:00 CEST -> 02:00 CET (01:00Z)
  America/New_York  spring  8 Mar 02:00 EST -> 03:00 EDT (07:00Z)
                    autumn  1 Nov 02:00 EDT -> 01:00 EST (06:00Z)
  Australia/Sydney  autumn  5 Apr 03:00 AEDT -> 02:00 AEST (16:00Z on 4 Apr)
                    spring  4 Oct 02:00 AEST -> 03:00 AEDT (16:00Z on 3 Oct)
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from crunchql.services.recurrence import (
    CronError,
    MisfirePolicy,
    Recurrence,
    normalise_cron,
    plan_fire,
    validate_cron,
    zone,
)


def z(text: str) -> datetime:
    """A UTC instant from 'MM-DD HH:MM' in 2026 (or with seconds)."""
    fmt = "%m-%d %H:%M:%S" if text.count(":") == 2 else "%m-%d %H:%M"
    return datetime.strptime(f"2026-{text}", f"%Y-{fmt}").replace(tzinfo=UTC)


def fires(cron: str, tz: str, after: str, count: int) -> list[datetime]:
    return Recurrence(cron=cron, run_at=None, timezone=tz).upcoming(z(after), count)


# --- daily: a skipped local time fires once at the first instant after the jump; a
# repeated one fires once, at its first occurrence ---------------------------------

DAILY = [
    # zone, cron, iterate after, the expected UTC instants
    ("Europe/Berlin", "30 2 * * *", "03-27 12:00", "03-28 01:30, 03-29 01:00, 03-30 00:30"),
    ("Europe/Berlin", "0 2 * * *", "03-27 12:00", "03-28 01:00, 03-29 01:00, 03-30 00:00"),
    ("Europe/Berlin", "30 2 * * *", "10-23 12:00", "10-24 00:30, 10-25 00:30, 10-26 01:30"),
    ("America/New_York", "30 2 * * *", "03-06 12:00", "03-07 07:30, 03-08 07:00, 03-09 06:30"),
    ("America/New_York", "30 1 * * *", "10-30 12:00", "10-31 05:30, 11-01 05:30, 11-02 06:30"),
    ("Australia/Sydney", "30 2 * * *", "10-02 00:00", "10-02 16:30, 10-03 16:00, 10-04 15:30"),
    ("Australia/Sydney", "30 2 * * *", "04-03 00:00", "04-03 15:30, 04-04 15:30, 04-05 16:30"),
]


@pytest.mark.parametrize(("tz", "cron", "after", "expected"), DAILY)
def test_daily_cron_across_daylight_saving_changes(
    tz: str, cron: str, after: str, expected: str
) -> None:
    assert fires(cron, tz, after, 3) == [z(each) for each in expected.split(", ")]


def test_resuming_inside_the_repeated_hour_does_not_fire_the_daily_job_again() -> None:
    # 01:03Z on 25 Oct is 02:03 CET, the second 02:03 in Berlin; 02:05 fired at 00:05Z.
    assert fires("5 2 * * *", "Europe/Berlin", "10-25 01:03", 1) == [z("10-26 01:05")]
    # And from the first occurrence itself, the next fire is the next day.
    assert fires("30 1 * * *", "America/New_York", "11-01 05:30", 1) == [z("11-02 06:30")]


# --- hourly (the hour field starts with '*'): the wall clock --------------------------

HOURLY = [
    # The skipped hour does not fire: 01:00 CET, then 03:00 CEST.
    ("Europe/Berlin", "03-28 23:30", "03-29 00:00, 03-29 01:00, 03-29 02:00"),
    # The repeated hour fires twice: 02:00 CEST and 02:00 CET.
    ("Europe/Berlin", "10-24 23:30", "10-25 00:00, 10-25 01:00, 10-25 02:00"),
    ("America/New_York", "03-08 05:30", "03-08 06:00, 03-08 07:00, 03-08 08:00"),
    ("America/New_York", "11-01 04:30", "11-01 05:00, 11-01 06:00, 11-01 07:00"),
    ("Australia/Sydney", "10-03 14:30", "10-03 15:00, 10-03 16:00, 10-03 17:00"),
    ("Australia/Sydney", "04-04 14:30", "04-04 15:00, 04-04 16:00, 04-04 17:00"),
]


@pytest.mark.parametrize(("tz", "after", "expected"), HOURLY)
def test_hourly_cron_follows_the_wall_clock(tz: str, after: str, expected: str) -> None:
    assert fires("0 * * * *", tz, after, 3) == [z(each) for each in expected.split(", ")]


@pytest.mark.parametrize(
    ("tz", "spring_day", "autumn_day"),
    [
        ("Europe/Berlin", "03-29", "10-25"),
        ("America/New_York", "03-08", "11-01"),
        ("Australia/Sydney", "10-04", "04-05"),
    ],
)
def test_hourly_fires_23_times_on_the_short_day_and_25_on_the_long_one(
    tz: str, spring_day: str, autumn_day: str
) -> None:
    for day, expected in ((spring_day, 23), (autumn_day, 25)):
        midnight = datetime.strptime(f"2026-{day}", "%Y-%m-%d").replace(tzinfo=zone(tz))
        start = midnight.astimezone(UTC) - timedelta(microseconds=1)
        end = (midnight + timedelta(days=1)).astimezone(UTC)  # the next local midnight
        instants = Recurrence(cron="0 * * * *", run_at=None, timezone=tz).upcoming(start, 30)
        assert len([i for i in instants if i < end]) == expected


def test_a_minute_wildcard_inside_the_changing_hour_follows_the_wall_clock() -> None:
    # "* 2 * * *": every minute of 02:xx. Berlin's 29 March has no 02:xx at all...
    berlin = Recurrence(cron="* 2 * * *", run_at=None, timezone="Europe/Berlin")
    assert berlin.next_after(z("03-28 01:59")) == z("03-30 00:00")
    # ...and 25 October has two of them: 120 fires, 00:00Z-00:59Z and 01:00Z-01:59Z.
    autumn = berlin.upcoming(z("10-24 23:59"), 121)
    assert autumn[:120] == [z("10-25 00:00") + timedelta(minutes=m) for m in range(120)]
    assert autumn[120] == z("10-26 01:00")


# --- every minute: one fire per real minute, whatever the clocks do -----------------


@pytest.mark.parametrize(
    ("tz", "change"),
    [
        ("Europe/Berlin", "03-29 01:00"),
        ("Europe/Berlin", "10-25 01:00"),
        ("America/New_York", "03-08 07:00"),
        ("America/New_York", "11-01 06:00"),
        ("Australia/Sydney", "10-03 16:00"),
        ("Australia/Sydney", "04-04 16:00"),
    ],
)
def test_every_minute_fires_each_real_minute_across_the_change(tz: str, change: str) -> None:
    start = z(change) - timedelta(minutes=30)
    instants = Recurrence(cron="* * * * *", run_at=None, timezone=tz).upcoming(start, 60)
    assert instants == [start + timedelta(minutes=m) for m in range(1, 61)]


# --- bounds, one-off, validation ------------------------------------------------------


def test_starts_at_and_ends_at_bound_the_instants() -> None:
    recurrence = Recurrence(
        cron="0 * * * *",
        run_at=None,
        starts_at=z("05-01 10:00"),
        ends_at=z("05-01 12:00"),
    )
    assert recurrence.upcoming(z("05-01 00:00"), 10) == [
        z("05-01 10:00"),
        z("05-01 11:00"),
        z("05-01 12:00"),
    ]


def test_run_at_fires_once() -> None:
    recurrence = Recurrence(cron=None, run_at=z("05-01 10:00:30"))
    assert recurrence.upcoming(z("05-01 00:00"), 5) == [z("05-01 10:00:30")]
    assert recurrence.next_after(z("05-01 10:00:30")) is None


@pytest.mark.parametrize(
    "cron",
    [
        "* * * *",
        "61 * * * *",
        "* * * * * *",
        "0 0 L * *",
        "0 0 * * MON#1",
        "0 0 ? * *",
        "*/0 * * * *",
        "0 0 30 2 *",
        "@reboot",
        "x" * 300,
        "",
    ],
)
def test_non_debian_or_never_firing_crons_are_refused(cron: str) -> None:
    with pytest.raises(CronError):
        validate_cron(cron, "UTC")


@pytest.mark.parametrize("cron", ["0 0 * * 7", "0 9 * jan-mar mon-fri", "*/15 * * * *", "@daily"])
def test_debian_syntax_is_accepted(cron: str) -> None:
    validate_cron(cron, "Europe/Berlin")


def test_seconds_field_only_when_enabled() -> None:
    assert normalise_cron("*/5 * * * * *", seconds_field=True) == "*/5 * * * * *"
    recurrence = Recurrence(cron="*/5 * * * * *", run_at=None, seconds_field=True)
    assert recurrence.upcoming(z("05-01 10:00:01"), 2) == [
        z("05-01 10:00:05"),
        z("05-01 10:00:10"),
    ]


@pytest.mark.parametrize("name", ["Mars/Olympus", "../../etc/passwd", "", "utc " * 30])
def test_unknown_zones_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="time zone"):
        zone(name)


# --- misfires -------------------------------------------------------------------------

EVERY_MINUTE = Recurrence(cron="* * * * *", run_at=None)
GRACE = timedelta(seconds=30)


def test_a_fire_within_the_grace_is_on_time() -> None:
    plan = plan_fire(
        EVERY_MINUTE, z("05-01 10:00"), z("05-01 10:00:08"), policy=MisfirePolicy.SKIP, grace=GRACE
    )
    assert (plan.fire_at, plan.missed, plan.next_fire_at) == (z("05-01 10:00"), 0, z("05-01 10:01"))


@pytest.mark.parametrize(
    ("policy", "fire_at"),
    [(MisfirePolicy.SKIP, None), (MisfirePolicy.RUN_ONCE, z("05-01 10:04"))],
)
def test_missed_fires_follow_the_policy(policy: MisfirePolicy, fire_at: datetime | None) -> None:
    # Down from 09:59:30 to 10:05:10: 10:00-10:04 missed; 10:05 is 10 s late, on time.
    plan = plan_fire(
        EVERY_MINUTE, z("05-01 10:00"), z("05-01 10:05:10"), policy=policy, grace=GRACE
    )
    assert (plan.fire_at, plan.missed, plan.next_fire_at) == (fire_at, 5, z("05-01 10:05"))
    assert plan.late


def test_run_once_looks_back_24_hours_only() -> None:
    daily = Recurrence(cron="0 9 * * *", run_at=None)
    plan = plan_fire(
        daily, z("04-20 09:00"), z("05-01 10:00"), policy=MisfirePolicy.RUN_ONCE, grace=GRACE
    )
    assert plan.fire_at == z("05-01 09:00")
    assert plan.next_fire_at == z("05-02 09:00")
    one_off = Recurrence(cron=None, run_at=z("04-29 09:00"))
    plan = plan_fire(
        one_off, z("04-29 09:00"), z("05-01 10:00"), policy=MisfirePolicy.RUN_ONCE, grace=GRACE
    )
    assert (plan.fire_at, plan.next_fire_at) == (None, None)
    recent = Recurrence(cron=None, run_at=z("05-01 08:00"))
    plan = plan_fire(
        recent, z("05-01 08:00"), z("05-01 10:00"), policy=MisfirePolicy.RUN_ONCE, grace=GRACE
    )
    assert (plan.fire_at, plan.missed, plan.next_fire_at) == (z("05-01 08:00"), 1, None)
