"""Capture schedules: every, cron (local time) and continuous."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from exnode.node.base.config import CaptureSpec, ScheduleSpec
from exnode.policies.schedule import Schedule


@pytest.fixture
def shanghai(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run in UTC+8 (no daylight saving), so that local time is not UTC."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def local(*args: int) -> float:
    return datetime(*args).timestamp()  # type: ignore[arg-type]


def test_every() -> None:
    s = Schedule.from_spec(ScheduleSpec(every="90s"))
    assert not s.is_continuous
    assert s.next_run(1000.0) == 1090.0
    assert Schedule.from_spec(ScheduleSpec(every="5m")).next_run(0.0) == 300.0
    assert Schedule.from_spec(ScheduleSpec(every="500ms")).next_run(10.0) == 10.5
    assert s.describe() == "every 90s"


def test_default_is_every_minute() -> None:
    assert Schedule.from_spec(ScheduleSpec()).next_run(100.0) == 160.0
    assert Schedule.from_spec(CaptureSpec().schedule).next_run(100.0) == 160.0


def test_cron_in_local_time(shanghai: None) -> None:
    s = Schedule.from_spec(ScheduleSpec(cron="*/5 * * * *"))
    assert not s.is_continuous
    assert s.next_run(local(2024, 3, 1, 12, 3, 10)) == local(2024, 3, 1, 12, 5)
    assert s.next_run(local(2024, 3, 1, 12, 5)) == local(2024, 3, 1, 12, 10)  # strictly after
    nightly = Schedule.from_spec(ScheduleSpec(cron="0 2 * * *"))
    assert nightly.next_run(local(2024, 3, 1, 1, 0)) == local(2024, 3, 1, 2, 0)
    assert nightly.next_run(local(2024, 3, 1, 3, 0)) == local(2024, 3, 2, 2, 0)
    # 02:00 in Shanghai is 18:00 UTC the day before: the expression is not read as UTC.
    t = nightly.next_run(local(2024, 3, 1, 3, 0))
    assert time.gmtime(t)[:4] == (2024, 3, 1, 18)
    assert s.describe() == "cron */5 * * * *"


def test_continuous() -> None:
    s = Schedule.from_spec(ScheduleSpec(continuous=True))
    assert s.is_continuous
    assert s.next_run(1234.5) == 1234.5
    assert s.describe() == "continuous"


def test_bad_specs_are_refused_by_the_config() -> None:
    with pytest.raises(ValueError, match="one of"):
        ScheduleSpec(every="1m", cron="* * * * *")
    with pytest.raises(ValueError, match="cron"):
        ScheduleSpec(cron="every five minutes")


# --- zero-update reports: rate-limited -------------------------------------------------------

def test_zero_interval_defaults():
    from exnode.policies.schedule import zero_interval

    assert zero_interval(None) == 60.0  # no freshness: one a minute
    assert zero_interval(3600.0) == 900.0  # a quarter of the freshness
    assert zero_interval(120.0) == 60.0  # never more than one a minute...
    assert zero_interval(2.0) == 1.0  # ...unless the freshness needs it: two per period
    assert zero_interval(3600.0, 10.0) == 10.0  # what the operator set


def test_zero_every_is_a_duration():
    import pytest
    from pydantic import ValidationError

    assert CaptureSpec(zero_every="5m").zero_every == "5m"
    with pytest.raises(ValidationError):
        CaptureSpec(zero_every="soon")
