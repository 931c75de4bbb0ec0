"""Capture schedules (采集计划): when a resource's capture runs next.

``every: 30s`` runs at a fixed interval after the previous run, ``cron: '*/5 * * * *'``
at the times a cron expression names in the machine's local time, and
``continuous: true`` again as soon as a cycle ends (trigger capture on PostgreSQL then
sleeps in ``wait`` until a NOTIFY). A schedule with none of them runs every 60 s, like
the default of ``CaptureSpec.schedule``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from croniter import croniter

from exnode.node.base.config import ScheduleSpec, parse_duration

DEFAULT_EVERY_S = 60.0


@dataclass(frozen=True)
class Schedule:
    """One of: an interval in seconds, a cron expression, or continuous."""

    every_s: float | None = None
    cron: str | None = None
    continuous: bool = False

    @classmethod
    def from_spec(cls, spec: ScheduleSpec) -> Schedule:
        """The schedule a resource's ``capture.schedule`` describes."""
        if spec.continuous:
            return cls(continuous=True)
        if spec.cron is not None:
            return cls(cron=spec.cron)
        if spec.every is not None:
            return cls(every_s=parse_duration(spec.every))
        return cls(every_s=DEFAULT_EVERY_S)

    @property
    def is_continuous(self) -> bool:
        """True when a cycle should start as soon as the previous one ends."""
        return self.continuous

    def next_run(self, after: float) -> float:
        """The Unix time of the next run after ``after`` (the last run's time)."""
        if self.continuous:
            return after
        if self.cron is not None:
            # Naive local datetimes in and out: .timestamp() then applies the local
            # zone (and its daylight-saving rules) for the moment it names.
            start = datetime.fromtimestamp(after)
            nxt = croniter(self.cron, start).get_next(datetime)
            return float(nxt.timestamp())
        assert self.every_s is not None
        return after + self.every_s

    def describe(self) -> str:
        """Short text for status listings: 'every 30s', 'cron */5 * * * *', ..."""
        if self.continuous:
            return "continuous"
        if self.cron is not None:
            return f"cron {self.cron}"
        return f"every {self.every_s:g}s"


def zero_interval(freshness_s: float | None, zero_every_s: float | None = None) -> float:
    """Seconds between zero-update reports while nothing changes: ``zero_every`` when it
    is set; else a quarter of the freshness, at most one a minute unless the freshness
    needs more (then two per freshness period); 60 s when no freshness is set."""
    if zero_every_s is not None:
        return zero_every_s
    if not freshness_s:
        return 60.0
    return max(freshness_s / 4, min(60.0, freshness_s / 2))
