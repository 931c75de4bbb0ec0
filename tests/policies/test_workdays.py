"""Working-day deadlines: the real 2026 holidays of chinese_calendar, an operator file for
2027, the Monday-Friday fallback and the file's one-line errors."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import chinese_calendar
import pytest

from exnode.node.base.errors import ConfigError
from exnode.policies.workdays import CalendarError, WorkCalendar

SH = ZoneInfo("Asia/Shanghai")

# The operator's 2027 (made up for the test: New Year's Day on Friday 1 January plus
# Monday 4 January off, made up on Saturday 9 January).
FILE_2027 = """\
# dates are YYYY-MM-DD; a range is "YYYY-MM-DD..YYYY-MM-DD"
years:
  2027:
    holidays: ["2027-01-01..2027-01-04", "2027-02-06..2027-02-13"]
    workdays: ["2027-01-09", 2027-02-14]      # 调休, quoted or not
"""


def at(*args: int) -> float:
    """Epoch seconds of a Shanghai wall-clock time."""
    return datetime(*args, tzinfo=SH).timestamp()  # type: ignore[misc]


def local(t: float) -> datetime:
    return datetime.fromtimestamp(t, SH)


def midnight(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=SH)


@pytest.fixture
def cal() -> WorkCalendar:
    return WorkCalendar.load(None)


@pytest.fixture
def cal2027(tmp_path: Path) -> WorkCalendar:
    p = tmp_path / "workdays.yaml"
    p.write_text(FILE_2027, encoding="utf-8")
    return WorkCalendar.load(p)


def test_library_data_this_test_relies_on() -> None:
    # The 2026 arrangement as chinese_calendar 1.11 has it; the tests below count on it.
    hol, work = chinese_calendar.holidays, chinese_calendar.workdays
    for d in ["2026-09-25", "2026-09-27", "2026-10-01", "2026-10-07", "2026-02-15",
              "2026-02-23"]:
        assert date.fromisoformat(d) in hol, d
    for d in ["2026-09-20", "2026-10-10", "2026-02-14", "2026-02-28"]:
        assert date.fromisoformat(d) in work, d
    with pytest.raises(NotImplementedError):
        chinese_calendar.is_workday(date(2027, 1, 4))


# -- deadlines on the library's 2026 -------------------------------------------------------


def test_national_day_with_its_make_up_saturday(cal: WorkCalendar) -> None:
    # Received Wed 30 Sep: 1-7 Oct off, then Thu 8, Fri 9, Sat 10 (调休), Mon 12, Tue 13.
    assert local(cal.deadline(at(2026, 9, 30, 10), 5)) == midnight(2026, 10, 14)
    # Monday-Friday alone would end at the holiday's end, and without Sat 10 a day later.
    assert local(cal.deadline(at(2026, 9, 30, 10), 2)) == midnight(2026, 10, 10)


def test_mid_autumn_and_the_make_up_sunday_before_it(cal: WorkCalendar) -> None:
    # Fri 18 Sep: Sun 20 Sep is a working day (调休 for National Day), then Mon 21.
    assert local(cal.deadline(at(2026, 9, 18, 9), 2)) == midnight(2026, 9, 22)
    # Thu 24 Sep: 25-27 Sep is the Mid-Autumn holiday, then Mon 28, Tue 29.
    assert local(cal.deadline(at(2026, 9, 24, 9), 2)) == midnight(2026, 9, 30)


def test_spring_festival(cal: WorkCalendar) -> None:
    # Fri 13 Feb: Sat 14 Feb works (调休), 15-23 Feb off, then Tue 24 .. Fri 27.
    assert local(cal.deadline(at(2026, 2, 13, 16), 5)) == midnight(2026, 2, 28)
    assert local(cal.deadline(at(2026, 2, 13, 16), 1)) == midnight(2026, 2, 15)


def test_deadline_ending_on_a_make_up_saturday(cal: WorkCalendar) -> None:
    # Thu 26 Feb + 2: Fri 27, Sat 28 (调休): due by the end of that Saturday.
    assert local(cal.deadline(at(2026, 2, 26, 11), 2)) == midnight(2026, 3, 1)
    assert local(cal.deadline(at(2026, 10, 8, 11), 2)) == midnight(2026, 10, 11)


def test_receipt_on_a_holiday(cal: WorkCalendar) -> None:
    # Received on National Day itself: counting starts with the first working day after.
    assert local(cal.deadline(at(2026, 10, 1, 9), 1)) == midnight(2026, 10, 9)
    # Received on Mon 5 Oct, a holiday weekday.
    assert local(cal.deadline(at(2026, 10, 5, 9), 5)) == midnight(2026, 10, 14)


def test_receipt_on_a_friday_evening(cal: WorkCalendar) -> None:
    # The day of receipt is not counted even though little of it is left; Sat and Sun rest.
    assert local(cal.deadline(at(2026, 3, 6, 23, 59), 2)) == midnight(2026, 3, 11)
    assert local(cal.deadline(at(2026, 3, 6, 0, 0), 2)) == midnight(2026, 3, 11)


def test_the_local_date_counts_not_utc() -> None:
    # Mon 9 Mar 07:00 in Shanghai is still Sunday in UTC.
    t = at(2026, 3, 9, 7)
    assert local(WorkCalendar.load(None).deadline(t, 1)) == midnight(2026, 3, 11)
    utc = WorkCalendar.load(None, tz="UTC")
    assert datetime.fromtimestamp(utc.deadline(t, 1), ZoneInfo("UTC")) == datetime(
        2026, 3, 10, tzinfo=ZoneInfo("UTC"))


def test_deadline_returns_the_first_late_instant(cal: WorkCalendar) -> None:
    due = cal.deadline(at(2026, 3, 9, 10), 2)  # Wed 11 Mar ends
    assert local(due - 1) == datetime(2026, 3, 11, 23, 59, 59, tzinfo=SH)
    assert cal.working_days_between(due - 1, due) == 1


def test_deadlines_agree_with_the_librarys_own_stepper(cal: WorkCalendar) -> None:
    # find_workday(n - 1, next day) is the library's nth working day after a date.
    d = date(2004, 1, 1)
    while d < date(2025, 12, 1):
        for n in (1, 2, 5, 15):
            due = chinese_calendar.find_workday(n - 1, d + timedelta(days=1))
            got = local(cal.deadline(at(d.year, d.month, d.day, 12), n))
            assert got == midnight(due.year, due.month, due.day) + timedelta(days=1), (d, n)
        d += timedelta(days=9)  # 9 = 2 mod 7: every weekday in turn
    assert cal.unknown_years == []


def test_is_workday_agrees_with_the_library_for_every_known_day(cal: WorkCalendar) -> None:
    d = date(2004, 1, 1)
    while d.year <= 2026:
        assert cal.is_workday(d) is chinese_calendar.is_workday(d), d
        d += timedelta(days=1)


def test_working_days_must_be_a_positive_integer(cal: WorkCalendar) -> None:
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="working_days must be an integer >= 1"):
            cal.deadline(at(2026, 3, 9), bad)  # type: ignore[arg-type]


def test_a_long_period_walks_years_not_days(cal: WorkCalendar) -> None:
    start = at(2004, 1, 1, 9)
    n = len(chinese_calendar.get_workdays(date(2004, 1, 2), date(2026, 9, 30)))
    assert local(cal.deadline(start, n)) == midnight(2026, 10, 1)
    assert local(cal.deadline(start, n + 1)) == midnight(2026, 10, 9)  # after the holiday
    assert cal.unknown_years == []


# -- the operator's file -------------------------------------------------------------------


def test_file_year_used_across_new_year(cal2027: WorkCalendar) -> None:
    # Wed 30 Dec 2026: Thu 31 (library), then 2027 from the file: 1-4 Jan off,
    # Tue 5 .. Fri 8, Sat 9 (调休), Mon 11.
    assert local(cal2027.deadline(at(2026, 12, 30, 15), 7)) == midnight(2027, 1, 12)
    assert cal2027.is_workday(date(2027, 1, 9)) and not cal2027.is_workday(date(2027, 1, 4))
    assert cal2027.is_workday(date(2027, 2, 14)) and not cal2027.is_workday(date(2027, 2, 8))
    assert cal2027.known(2027) and cal2027.unknown_years == []
    # Without the file the same period is counted Monday to Friday, and it is recorded.
    bare = WorkCalendar.load(None)
    assert local(bare.deadline(at(2026, 12, 30, 15), 7)) == midnight(2027, 1, 9)
    assert bare.unknown_years == [2027]


def test_file_year_overrides_the_library(tmp_path: Path) -> None:
    p = tmp_path / "cal.yaml"
    p.write_text("years:\n  2026: {}\n", encoding="utf-8")
    cal = WorkCalendar.load(p)
    assert cal.is_workday(date(2026, 10, 1))  # National Day, but not in this file
    assert not cal.is_workday(date(2026, 10, 10))  # a library 调休 Saturday
    assert local(cal.deadline(at(2026, 9, 30, 10), 5)) == midnight(2026, 10, 8)
    assert cal.source_of(2026) == str(p) and cal.source_of(2025) == "chinese_calendar"


def test_empty_file_and_empty_years_are_no_years(tmp_path: Path) -> None:
    for text in ["", "# nothing yet\n", "years:\n", "years: {}\n"]:
        p = tmp_path / "cal.yaml"
        p.write_text(text, encoding="utf-8")
        cal = WorkCalendar.load(p)
        assert not cal.known(2027)
        assert cal.is_workday(date(2027, 1, 1))  # a Friday, by the fallback


def test_working_days_between(cal: WorkCalendar, cal2027: WorkCalendar) -> None:
    assert cal.working_days_between(at(2026, 9, 30, 10), at(2026, 10, 13, 9)) == 5
    assert cal.working_days_between(at(2026, 9, 30, 10), at(2026, 10, 7, 23)) == 0
    assert cal.working_days_between(at(2026, 10, 13, 9), at(2026, 9, 30, 10)) == 0
    assert cal.working_days_between(at(2026, 3, 9, 8), at(2026, 3, 9, 20)) == 0
    assert cal.working_days_between(at(2026, 3, 9, 8), at(2026, 3, 9, 8)) == 0
    # Overdue: a deadline due by the end of Tue 13 Oct, checked on Fri 16 Oct.
    due = cal.deadline(at(2026, 9, 30, 10), 5)
    assert cal.working_days_between(due - 1, at(2026, 10, 16, 9)) == 3
    # Across the years of the file, and over many years against the library.
    assert cal2027.working_days_between(at(2026, 12, 30, 15), at(2027, 1, 11, 8)) == 7
    n = len(chinese_calendar.get_workdays(date(2004, 1, 2), date(2026, 12, 31)))
    assert cal.working_days_between(at(2004, 1, 1, 12), at(2026, 12, 31, 12)) == n


def test_working_days_between_inverts_deadline(cal2027: WorkCalendar) -> None:
    for start in (at(2026, 9, 17, 8), at(2026, 12, 24, 18), at(2027, 2, 5, 9)):
        for n in (1, 2, 5, 10, 30):
            assert cal2027.working_days_between(start, cal2027.deadline(start, n) - 1) == n


# -- years nobody knows --------------------------------------------------------------------


def test_unknown_years_fall_back_to_monday_to_friday_and_are_recorded() -> None:
    cal = WorkCalendar.load(None)
    assert cal.unknown_years == []
    assert not cal.known(2030) and not cal.known(2003) and cal.known(2004)
    assert cal.unknown_years == []  # asking known() is not using the year
    # Tue 1 Jan 2030 + 3: Wed 2, Thu 3, Fri 4 (no New Year's holiday is known).
    assert local(cal.deadline(at(2030, 1, 1, 9), 3)) == midnight(2030, 1, 5)
    # Fri 4 Jan 2030 + 1: Sat and Sun rest.
    assert local(cal.deadline(at(2030, 1, 4, 9), 1)) == midnight(2030, 1, 8)
    assert not cal.is_workday(date(2003, 12, 27)) and cal.is_workday(date(2003, 12, 26))
    assert cal.unknown_years == [2003, 2030]
    assert cal.source_of(2030) == "Monday-Friday fallback"


def test_a_receipt_on_the_last_day_of_a_year_does_not_use_that_year() -> None:
    cal = WorkCalendar.load(None)
    assert local(cal.deadline(at(2003, 12, 31, 9), 1)) == midnight(2004, 1, 3)
    assert cal.unknown_years == []


def test_no_working_day_within_366_days(tmp_path: Path) -> None:
    p = tmp_path / "cal.yaml"
    p.write_text('years:\n  2027:\n    holidays: ["2027-01-01..2027-12-31"]\n',
                 encoding="utf-8")
    cal = WorkCalendar.load(p)
    assert local(cal.deadline(at(2026, 12, 30, 9), 1)) == midnight(2027, 1, 1)
    with pytest.raises(CalendarError, match="no working day within 366 days after "
                       "2026-12-31") as e:
        cal.deadline(at(2026, 12, 30, 9), 2)
    assert "\n" not in str(e.value)


def test_bad_time_zone() -> None:
    with pytest.raises(CalendarError, match="unknown time zone 'Asia/Shanghia'"):
        WorkCalendar.load(None, tz="Asia/Shanghia")


# -- malformed files -----------------------------------------------------------------------

BAD = [
    ("year:\n  2027: {}\n", 1, "unknown setting"),
    ("years:\n  2027:\n    holiday: []\n", 3, "years.2027.'holiday': unknown setting"),
    ('years:\n  2027:\n    holidays: ["2027-02-30"]\n', 3, "'2027-02-30' is not a date"),
    ('years:\n  2027:\n    holidays: ["2027-1-1"]\n', 3, "'2027-1-1' is not a date"),
    ("years:\n  2027:\n    holidays: [20270101]\n", 3, "'20270101' is not a date"),
    ('years:\n  2027:\n    holidays:\n      - "2027-01-01"\n      - "2028-01-01"\n', 5,
     "years.2027.holidays[1]: 2028-01-01 is not in 2027"),
    ('years:\n  2027:\n    holidays: ["2027-12-30..2028-01-02"]\n', 3,
     "2028-01-02 is not in 2027"),
    ('years:\n  2027:\n    holidays: ["2027-02-13..2027-02-06"]\n', 3,
     "ends before it starts"),
    ('years:\n  2027:\n    holidays: ["2027-02-06..2027-02-10..2027-02-13"]\n', 3,
     "is not a date or a range"),
    ('years:\n  2027:\n    holidays: ["2027-02-06..2027-02-13"]\n'
     '    workdays: ["2027-02-13"]\n', 4,
     "years.2027.workdays: 2027-02-13 is also listed in 'holidays' (line 3)"),
    ('years:\n  2027:\n    workdays: ["2027-02-15"]\n', 3, "2027-02-15 is a Monday"),
    ('years:\n  2027:\n    holidays: "2027-01-01"\n', 3, "must be a list"),
    ("years:\n  2027:\n    holidays: [{from: 2027-01-01}]\n", 3, "must be a date"),
    ("years:\n  2027:\n    holidays: [~]\n", 3, "must be a date"),
    ("years:\n  27: {}\n", 2, "a year must be four digits"),
    ("years:\n  next: {}\n", 2, "a year must be four digits"),
    ("years:\n  2027:\n", 2, "years.2027: is empty"),
    ("years:\n  2027: {}\n  2027: {}\n", 3, "'2027' is given twice"),
    ("years: [2027]\n", 1, "years: must be a mapping"),
    ("- 2027\n", 1, "(top): must be a mapping"),
    ("years:\n  2027:\n    holidays: [\n", 4, "invalid YAML"),
    ('years:\n  2027: {holidays: ["a\\nb"]}\n', 2, "'a\\nb' is not a date"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_malformed_file(tmp_path: Path, text: str, line: int, message: str) -> None:
    p = tmp_path / "workdays.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(CalendarError) as e:
        WorkCalendar.load(p)
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and e.value.exit_code == 2
    assert "\n" not in msg
    assert msg.startswith(f"{p}:{line}: "), msg
    assert message in msg, msg


def test_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CalendarError) as e:
        WorkCalendar.load(missing)
    assert str(e.value) == f"{missing}: cannot read the working-day calendar: " \
        "No such file or directory"
    with pytest.raises(CalendarError, match="cannot read the working-day calendar"):
        WorkCalendar.load(tmp_path)  # a folder
    binary = tmp_path / "gbk.yaml"
    binary.write_bytes("years:\n  2027: {}  # 调休\n".encode("gbk"))
    with pytest.raises(CalendarError, match="cannot read the working-day calendar") as e:
        WorkCalendar.load(binary)
    assert "\n" not in str(e.value)
