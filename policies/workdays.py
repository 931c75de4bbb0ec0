"""Working-day calendar (工作日): statutory deadlines counted in Chinese working days.

The sharing services give each step a deadline in working days: the center's compliance
review has 2, the provider's answer 5. A working day is a Monday to Friday that is not
a public holiday, or a Saturday or Sunday that the State Council's holiday arrangement
makes a working day to make up for a bridge day (调休). Counting plain weekdays would be
wrong around every Spring Festival and National Day.

**The day of receipt is not counted.** Chinese administrative and procedural practice
does not count the day on which a period starts (期间开始的当日不计算在内): a request
received at 09:00 on a Monday with 2 working days is due by the end of Wednesday.
:meth:`WorkCalendar.deadline` therefore starts counting with the first working day after
the local date of ``start`` (whatever the hour, and whether that date is a working day
or not), and returns the end of the Nth working day as the following midnight in the
calendar's time zone: the first instant that is late, so ``now >= deadline`` means
overdue.

**Where the days come from.** The maintained library ``chinese_calendar`` knows the years
it was released with (2004-2026 in 1.11) and raises NotImplementedError for others. The
arrangement for a year is published only late in the year before, and a library release
and our upgrade come later still, so an operator can give years in a YAML file
(``WorkCalendar.load(path)``). A year listed in the file replaces the library's data for
that year entirely, which also serves to correct the library::

    # dates are YYYY-MM-DD; a range is "YYYY-MM-DD..YYYY-MM-DD"
    years:
      2027:
        holidays: ["2027-01-01", "2027-02-06..2027-02-13"]
        workdays: ["2027-02-14"]      # 调休: weekend days that are working days

In a listed year, Monday to Friday are working days unless listed in ``holidays`` (a
range may include weekend days, which stay rest days), and Saturday and Sunday are rest
days unless listed in ``workdays``. The file is checked strictly: an unknown key, a date
that is not a real ``YYYY-MM-DD`` date, a reversed range, a date outside the year it is
listed under, a weekday listed in ``workdays`` (it works anyway: probably a typo) or a
date that is both a holiday and a working day is a :class:`CalendarError` naming the
file and line. ``2027: {}`` is a known year with no holidays at all.

**Years nobody knows.** For a year in neither the file nor the library the calendar does
not refuse to count: it falls back to Monday to Friday, which may put a deadline a few
days early or late around holidays, and records the year in
:attr:`WorkCalendar.unknown_years`. A service that computes deadlines reports that list
(in its log and status), so the operator learns which year to add to the file;
:meth:`WorkCalendar.known` lets it warn before the year begins.

Each year is turned once into running totals of working days, so a deadline or a count
walks years, not days. A calendar with no working day within 366 days after some date
(a file that makes a whole year a holiday, say) is a :class:`CalendarError` rather than
an endless search. ``working_days`` below 1 is a :class:`ValueError`: the lengths are
the services' constants, so a bad one is a programming error, not the operator's.
"""

from __future__ import annotations

import calendar
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import NoReturn
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import chinese_calendar
import yaml

from exnode.node.base.errors import ConfigError

LIBRARY = "chinese_calendar"
FALLBACK = "Monday-Friday fallback"
_GAP_DAYS = 366  # no working day within this many days: the calendar must be wrong
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_YEAR = re.compile(r"[1-9]\d{3}")
# _parse's fail(node, where, what): the error to raise, with the node's line.
_Fail = Callable[[yaml.Node | None, str, str], "CalendarError"]


class CalendarError(ConfigError):
    """The working-day calendar file is missing, unreadable or invalid, or the calendar
    has no working day where a deadline needs one. The message is one line."""


@dataclass(frozen=True)
class YearRule:
    """One year's exceptions to Monday-Friday: rest weekdays and working weekend days."""

    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()


class WorkCalendar:
    """Working days from an operator file, then ``chinese_calendar``, then Monday-Friday."""

    def __init__(self, years: Mapping[int, YearRule] | None = None,
                 tz: str = "Asia/Shanghai", source: str = "<memory>") -> None:
        """``years`` are the operator's years (they override the library); ``source``
        names where they came from, for messages."""
        try:
            self.tz = ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise CalendarError(f"unknown time zone {tz!r} for the working-day calendar"
                                ) from None
        self.source = source
        self._years: dict[int, YearRule] = dict(years or {})
        # cum[k] = working days among the year's first k days; cum[0] == 0.
        self._cum: dict[int, list[int]] = {}
        self._unknown: set[int] = set()

    @classmethod
    def load(cls, path: Path | None, tz: str = "Asia/Shanghai") -> WorkCalendar:
        """The calendar with the years of the file at ``path`` (none when ``path`` is None)."""
        if path is None:
            return cls(tz=tz)
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise CalendarError(f"{name}: cannot read the working-day calendar: {why}"
                                ) from None
        return cls(_parse(text, name), tz=tz, source=name)

    # -- days ---------------------------------------------------------------------------

    def known(self, year: int) -> bool:
        """True when the file or the library gives ``year``'s holidays (no fallback)."""
        return year in self._years or _library_knows(year)

    @property
    def unknown_years(self) -> list[int]:
        """Years asked about so far that neither source knows (counted Monday-Friday)."""
        return sorted(self._unknown)

    def source_of(self, year: int) -> str:
        """Where ``year``'s days come from: the file's name, the library or the fallback."""
        if year in self._years:
            return self.source
        return LIBRARY if _library_knows(year) else FALLBACK

    def is_workday(self, d: date) -> bool:
        """True when ``d`` is a working day (工作日)."""
        cum = self._year(d.year)
        k = _doy(d)
        return cum[k] > cum[k - 1]

    # -- deadlines ----------------------------------------------------------------------

    def deadline(self, start: float, working_days: int) -> float:
        """The first late instant (epoch seconds) of a period of ``working_days`` working
        days that starts at ``start`` (epoch seconds): midnight after the Nth working day
        after ``start``'s local date, which itself is not counted."""
        if isinstance(working_days, bool) or not isinstance(working_days, int) \
                or working_days < 1:
            raise ValueError(f"working_days must be an integer >= 1, not {working_days!r}")
        first = self._local_date(start)
        last = first  # the last working day found so far (or the day of receipt)
        year, after, remaining = first.year, _doy(first), working_days
        while True:
            if year > date.max.year:
                raise ValueError(f"{working_days} working days after {first} end after "
                                 f"year {date.max.year}")
            if after < _year_len(year):
                cum = self._year(year)
                done = cum[after]
                if cum[-1] > done:
                    nxt = _day(year, bisect_left(cum, done + 1))
                    if (nxt - last).days > _GAP_DAYS:
                        self._no_workday(last, nxt.year)
                    if remaining <= cum[-1] - done:
                        due = _day(year, bisect_left(cum, done + remaining))
                        return self._midnight(due + timedelta(days=1))
                    remaining -= cum[-1] - done
                    last = _day(year, bisect_left(cum, cum[-1]))
                elif (date(year, 12, 31) - last).days >= _GAP_DAYS:
                    self._no_workday(last, year)
            year, after = year + 1, 0

    def working_days_between(self, a: float, b: float) -> int:
        """Working days after ``a``'s local date up to and including ``b``'s (0 when ``b``
        is not after ``a``). ``working_days_between(start, deadline(start, n) - 1) == n``;
        for a deadline ``d`` that has passed, ``working_days_between(d - 1, now)`` is how
        many working days it is overdue by, the current one included."""
        if b <= a:
            return 0
        da, db = self._local_date(a), self._local_date(b)
        if db <= da:
            return 0
        n = 0
        for year in range(da.year, db.year + 1):
            lo = _doy(da) if year == da.year else 0
            hi = _doy(db) if year == db.year else _year_len(year)
            if hi > lo:
                cum = self._year(year)
                n += cum[hi] - cum[lo]
        return n

    # -- inside -------------------------------------------------------------------------

    def _local_date(self, t: float) -> date:
        return datetime.fromtimestamp(t, self.tz).date()

    def _midnight(self, d: date) -> float:
        return datetime.combine(d, time(), tzinfo=self.tz).timestamp()

    def _no_workday(self, last: date, year: int) -> NoReturn:
        raise CalendarError(f"{self.source_of(year)}: no working day within {_GAP_DAYS} days "
                            f"after {last.isoformat()} (check the holidays of {year})")

    def _year(self, year: int) -> list[int]:
        cum = self._cum.get(year)
        if cum is None:
            rule = self._years.get(year)
            if rule is None:
                if _library_knows(year):
                    rule = YearRule(
                        frozenset(d for d in chinese_calendar.holidays if d.year == year),
                        frozenset(d for d in chinese_calendar.workdays if d.year == year))
                else:
                    rule = YearRule()
                    self._unknown.add(year)
            cum = [0]
            d = date(year, 1, 1)
            for _ in range(_year_len(year)):
                # The library's rule too: a listed working day works even at a weekend.
                works = d in rule.workdays or (d.weekday() < 5 and d not in rule.holidays)
                cum.append(cum[-1] + works)
                d += timedelta(days=1)
            self._cum[year] = cum
        return cum


def _library_knows(year: int) -> bool:
    try:
        chinese_calendar.is_workday(date(year, 1, 1))
    except NotImplementedError:
        return False
    return True


def _doy(d: date) -> int:
    return d.timetuple().tm_yday


def _day(year: int, doy: int) -> date:
    return date(year, 1, 1) + timedelta(days=doy - 1)


def _year_len(year: int) -> int:
    return 366 if calendar.isleap(year) else 365


# -- the operator's file ----------------------------------------------------------------


def _parse(text: str, name: str) -> dict[int, YearRule]:
    """The years of a calendar file; CalendarError('FILE:LINE: where: what') if bad."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        raise CalendarError(f"{name}:{line}: invalid YAML: {_one_line(e.problem or e)}"
                            ) from None
    except yaml.YAMLError as e:  # a reader error: a character YAML does not allow
        raise CalendarError(f"{name}:1: invalid YAML: {_one_line(e)}") from None

    def fail(node: yaml.Node | None, where: str, what: str) -> CalendarError:
        line = node.start_mark.line + 1 if node is not None else 1
        return CalendarError(f"{name}:{line}: {where}: {what}")

    def mapping(node: yaml.Node, where: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise fail(node, where, "must be a mapping")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise fail(k, where, "a key must be plain text, not a list or a map")
            if k.value in out:
                raise fail(k, where, f"{_show(k.value)} is given twice")
            out[k.value] = (k, v)
        return out

    if root is None or _is_null(root):
        return {}
    top = mapping(root, "(top)")
    for key, (k, _) in top.items():
        if key != "years":
            raise fail(k, _show(key), "unknown setting (the file has only 'years')")
    if "years" not in top or _is_null(top["years"][1]):
        return {}
    years: dict[int, YearRule] = {}
    for key, (k, v) in mapping(top["years"][1], "years").items():
        if not _YEAR.fullmatch(key):
            raise fail(k, f"years.{_show(key)}", "a year must be four digits, like 2027")
        year, where = int(key), f"years.{key}"
        if _is_null(v):
            raise fail(v, where, "is empty (write '{}' for a year with no holidays)")
        lists: dict[str, dict[date, yaml.Node]] = {"holidays": {}, "workdays": {}}
        for field, (fk, fv) in mapping(v, where).items():
            if field not in lists:
                raise fail(fk, f"{where}.{_show(field)}",
                           "unknown setting (a year has 'holidays' and 'workdays')")
            if not isinstance(fv, yaml.SequenceNode):
                raise fail(fv, f"{where}.{field}", "must be a list of dates or ranges")
            for i, item in enumerate(fv.value):
                at = f"{where}.{field}[{i}]"
                for d in _dates(item, at, year, fail):
                    lists[field].setdefault(d, item)
        for d, item in lists["workdays"].items():
            if d.weekday() < 5:
                raise fail(item, f"{where}.workdays", f"{d.isoformat()} is a "
                           f"{d.strftime('%A')}; 'workdays' lists weekend days that are "
                           "working days (调休)")
            if d in lists["holidays"]:
                raise fail(item, f"{where}.workdays", f"{d.isoformat()} is also "
                           f"listed in 'holidays' (line {_line(lists['holidays'][d])})")
        years[year] = YearRule(frozenset(lists["holidays"]), frozenset(lists["workdays"]))
    return years


def _dates(item: yaml.Node, at: str, year: int, fail: _Fail) -> list[date]:
    """The dates a list item names: one date or an inclusive range, all within ``year``."""
    if not isinstance(item, yaml.ScalarNode) or _is_null(item):
        raise fail(item, at, "must be a date YYYY-MM-DD or a range YYYY-MM-DD..YYYY-MM-DD")
    text = item.value.strip()
    parts = text.split("..")
    if len(parts) > 2:
        raise fail(item, at, f"{_show(text)} is not a date or a range YYYY-MM-DD..YYYY-MM-DD")
    ends = []
    for part in parts:
        part = part.strip()
        try:
            if not _DATE.fullmatch(part):
                raise ValueError
            d = date.fromisoformat(part)
        except ValueError:
            raise fail(item, at, f"{_show(part)} is not a date YYYY-MM-DD") from None
        if d.year != year:
            raise fail(item, at, f"{d.isoformat()} is not in {year}")
        ends.append(d)
    lo, hi = ends[0], ends[-1]
    if hi < lo:
        raise fail(item, at, f"the range {_show(text)} ends before it starts")
    return [lo + timedelta(days=i) for i in range((hi - lo).days + 1)]


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _show(value: object) -> str:
    """A value quoted for a one-line message (line breaks escaped, long text cut)."""
    text = repr(str(value))
    return text if len(text) <= 60 else text[:57] + "...'"


def _one_line(e: object) -> str:
    lines = str(e).splitlines()
    return lines[0] if lines else type(e).__name__
