"""The supervisor's monitoring figures from aggregate rows: agreement, accuracy, turnaround, drift limits."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from core.analytics.quality import accuracy, quality_rows, roll_up_quality, turnaround
from core.domain.results import DayQuality
from ui.wording import hours_within


def day(d: int, shown: int, tumour: int, reviewed: int = 0, agreed: int = 0, p: float = 0.3, **more) -> DayQuality:
    return DayQuality(
        date(2026, 3, 1) + timedelta(days=d),
        shown,
        tumour,
        more.get("flagged", 0),
        more.get("rejected", 0),
        reviewed,
        agreed,
        p * shown,
        (p * p + 0.01) * shown,
    )


def test_a_periods_mean_limits_never_give_back_a_single_scan_count_withheld_alone() -> None:
    """The limits' half-width is 3 sd / sqrt(n): nine days' limits gave each day's count of single scans, and the
    histogram's total minus them the one day's withheld (2 scans beside 30 series)."""
    from dataclasses import replace as changed

    days = [changed(day(k, 20, 6), scored=20) for k in range(9)]
    mixed = changed(day(9, 32, 10), scored=2, probability_sum=0.6, probability_squares=0.2)
    rows, _ = quality_rows([*days, mixed], date(2026, 3, 5))
    assert rows[9].mean_limits is None and rows[9].mean_probability is None  # its 2 scans: withheld
    assert sum(r.mean_limits is None for r in rows[:9]) == 1  # and one other day's with it, as a group


def test_agreement_and_rates_per_period_follow_the_small_count_rule() -> None:
    busy = day(0, 40, 12, reviewed=30, agreed=24, flagged=4, rejected=5)
    rows, _ = quality_rows([busy, day(1, 3, 1, 3, 3), day(2, 30, 9, reviewed=10, agreed=8)], None)
    first, second, third = rows  # the 3s withheld, and with them the next smallest (30 shown, 10 reviewed)
    assert first.agreement == pytest.approx(0.8) and first.agreement_interval[0] < 0.8 < first.agreement_interval[1]
    assert quality_rows([day(0, 40, 12, reviewed=20, agreed=18)], None)[0][0].agreement is None  # two disagreements
    assert first.flagged_rate is None  # four flagged: withheld
    assert first.rejected_rate == pytest.approx(5 / 45)
    assert second.shown is None and second.agreement is None and second.tumour_rate is None
    assert third.shown is None and third.tumour_rate is None and third.rate_limits is None
    assert third.reviewed is None and third.agreement is None and third.agreement_interval is None


def test_a_shift_in_the_tumour_rate_raises_a_drift_alarm_and_a_steady_one_does_not() -> None:
    steady = [day(d, 200, 60) for d in range(10)]
    rows, drift = quality_rows(steady, date(2026, 3, 5))
    assert drift.baseline_rate == pytest.approx(0.3) and not drift.alarms and drift.message is None
    low, high = rows[7].rate_limits
    assert low == pytest.approx(0.3 - 3 * (0.3 * 0.7 / 200) ** 0.5) and high > 0.3
    shifted = steady[:6] + [day(d, 200, 110, p=0.55) for d in range(6, 10)]
    rows, drift = quality_rows(shifted, date(2026, 3, 6))
    assert drift.alarms == tuple(date(2026, 3, 1) + timedelta(days=d) for d in range(6, 10))
    assert rows[8].out_of_control and not rows[2].out_of_control and "Out of control" in drift.message


def test_the_baseline_rate_counts_the_periods_whose_tumours_are_withheld_unless_one_alone_would_come_back() -> None:
    """Days with 1-4 of either kind were left out of the baseline: five days of 5 tumours and 1 other were dropped,
    the one of 5 tumours kept, the baseline read 100 %, its limits shrank to nothing, and every later day of 80 %
    was flagged out of control."""
    quiet = [day(d, 6, 5) for d in range(5)] + [day(5, 5, 5)]
    later = [day(d, 25, 20) for d in range(6, 12)]
    rows, drift = quality_rows([*quiet, *later], date(2026, 3, 6))
    assert drift.baseline_rate == pytest.approx(30 / 35) and not drift.alarms
    assert all(r.tumour_rate == 0.8 and not r.rate_out for r in rows[6:])
    assert all(r.tumour_rate is None for r in rows[:5])  # still withheld, each
    # one withheld in the baseline, its partner (the smallest other tumour count, 8) after it: the baseline's rate
    # would give the 5 back, so that day is left out
    lone = [day(0, 6, 5), *(day(d, 20, 10) for d in range(1, 6)), day(6, 25, 8)]
    rows, drift = quality_rows(lone, date(2026, 3, 6))
    assert rows[0].tumour_rate is None and rows[6].tumour_rate is None and drift.baseline_rate == pytest.approx(0.5)


def test_weeks_sum_their_days() -> None:
    weeks = roll_up_quality([day(d, 10, 3, 2, 1) for d in range(14)], "week")
    assert [(w.day, w.shown, w.reviewed) for w in weeks] == [
        (date(2026, 2, 23), 10, 2),
        (date(2026, 3, 2), 70, 14),
        (date(2026, 3, 9), 60, 12),
    ]


def test_accuracy_against_final_labels() -> None:
    confusion = {
        ("glioma", "glioma"): 40,
        ("notumor", "glioma"): 6,
        ("glioma", "notumor"): 7,
        ("notumor", "notumor"): 47,
        ("meningioma", "glioma"): 5,
    }
    result = accuracy(confusion)
    assert result.reviewed == 105 and result.agreement == pytest.approx(87 / 105)
    assert result.sensitivity == pytest.approx(45 / 51) and result.specificity == pytest.approx(47 / 54)
    assert result.matrix[("notumor", "glioma")] == 6 and accuracy({("glioma", "notumor"): 3}).reviewed is None


def test_turnaround_percentiles_come_from_hour_counts() -> None:
    assert turnaround({0: 3, 2: 3, 5: 3, 48: 1}) == (3.0, 6.0)  # within: the bins' upper edges (5 h 50 is "6 h")
    assert turnaround({720: 5}) == (math.inf, math.inf)  # the last bin is "720 h or more", never "within 721"
    assert turnaround({719: 5}) == (720.0, 720.0)  # the bin below it is "within 720 h", not "720 h or more"
    assert turnaround({719: 5, 720: 5}) == (720.0, math.inf)
    assert (hours_within(720.0), hours_within(math.inf)) == ("within 720 h", "720 h or more")
    assert turnaround({1: 2}) == (None, None)


def test_lists_never_state_a_certainty_the_result_panel_does_not() -> None:
    """The Worklist and History printed P = 0.9996 as 1.000 where the panel says ">99.9%"."""
    from types import SimpleNamespace

    from ui.wording import probability_shown

    shown = [probability_shown(SimpleNamespace(gate="accepted", tumour_probability=p)) for p in (0.9996, 0.0004, 0.5)]
    assert shown == ["0.999", "0.001", "0.500"]
    # cut as the panel cuts it: a scan at 0.0496 (no review) read "0.050", the review band's edge
    assert probability_shown(SimpleNamespace(gate="accepted", tumour_probability=0.0496)) == "0.049"
    import pandas as pd

    from ui.batch import on_screen

    table = on_screen(pd.DataFrame({"tumour_probability": [0.049556, 0.999787, 0.0002]}))
    assert list(table["tumour_probability"]) == [4.9, 99.9, 0.1]  # in percent, as the panel's "4.9%"
    assert probability_shown(SimpleNamespace(gate="rejected", tumour_probability=0.9)) == "—"


def test_counts_that_add_up_to_the_reviewed_total_shown_are_withheld_as_groups() -> None:
    """The confusion cells, the periods' reviewed counts and the versions' reviewed counts each add up to the
    overall reviewed figure the page shows: withholding one alone would give it back as a difference."""
    from core.services.statistics import per_version_accuracy

    cells = accuracy({("glioma", "glioma"): 20, ("notumor", "notumor"): 27, ("glioma", "notumor"): 3})
    assert cells.reviewed == 50 and {c: n for c, n in cells.matrix.items() if n is not None} == {("notumor",) * 2: 27}
    assert len(cells.matrix) == 16  # every cell: an empty one beside withheld ones is withheld too (its 0 told)
    unlabelled = accuracy({("glioma", None): 2, ("glioma", "glioma"): 10})  # a final label lost (an old row)
    assert unlabelled.matrix[("glioma", None)] is None and len(unlabelled.matrix) == 25
    assert cells.sensitivity_interval is None and cells.specificity_interval is None  # they give counts back
    assert cells.sensitivity is None and cells.specificity is None and cells.agreement is None  # so do rates
    apart = accuracy(  # the withheld cells are disagreements on no-tumour finals: agreement and sensitivity stand
        {("glioma", "glioma"): 30, ("notumor", "notumor"): 40, ("glioma", "notumor"): 3, ("pituitary", "notumor"): 4}
    )
    assert apart.matrix[("glioma", "notumor")] is None and apart.matrix[("pituitary", "notumor")] is None
    assert apart.agreement == pytest.approx(70 / 77) and apart.sensitivity == 1.0 and apart.specificity is None
    rows, _ = quality_rows([day(0, 40, 12, reviewed=30, agreed=24), day(1, 40, 12, reviewed=3, agreed=3)], None)
    assert [r.reviewed for r in rows] == [None, None] and [r.shown for r in rows] == [40, 40]
    assert rows[0].agreement is None and rows[0].agreement_interval is None  # 80 % of ? would give the 30 back
    versions = per_version_accuracy({"a": {("glioma", "glioma"): 40}, "b": {("glioma", "glioma"): 3}})
    assert [v.reviewed for v in versions.values()] == [None, None]


def test_no_rate_gives_back_a_withheld_refused_count_or_a_withheld_versions_reviewed_count() -> None:
    """A supervisor's review worked out withheld counts from the board and its CSV: a week's flagged rate, 0.1562
    beside 30 shown, was 5 of 32 (2 refused, withheld); a version whose reviewed count was withheld as a small
    one's partner showed its agreement, 90.5 %: 95 of 105, and the small one 1."""
    from core.services.statistics import per_version_accuracy

    weeks = [day(k, 30, 12, flagged=5, rejected=n) for k, n in enumerate((2, 7, 9))]  # the 2 and its partner
    rows, _ = quality_rows(weeks, None)
    assert [r.rejected_rate is None for r in rows] == [True, True, False]
    assert [r.flagged_rate is None for r in rows] == [True, True, False] and rows[2].flagged_rate == 5 / 39
    versions = per_version_accuracy(
        {"a": {("glioma", "glioma"): 95, ("glioma", "notumor"): 10}, "b": {("glioma", "glioma"): 1}}
    )
    assert [v.reviewed for v in versions.values()] == [None, None]
    assert all(v.agreement is None and v.sensitivity is None for v in versions.values())
    assert versions["a"].tumours_counted is None  # "withheld", never "—" (none), which tells a cell's emptiness


def test_a_periods_withheld_tumours_or_agreements_are_not_given_back_by_the_other_periods_rates() -> None:
    """Days of 10/7, 10/5 and 20/10 tumours: the first day's 7 was withheld (3 without) but the second day's rate,
    0.5, was shown, so 22 - 5 - 10 gave the 7 back; agreements the same way beside the overall agreement."""
    periods = [day(0, 10, 7, reviewed=10, agreed=7), day(1, 10, 5, reviewed=20, agreed=20), day(2, 20, 10, 20, 10)]
    rows, drift = quality_rows(periods, date(2026, 3, 3))
    assert [r.tumour_rate for r in rows] == [None, None, pytest.approx(0.5)]  # the 7 and its partner, the 5
    assert [r.agreement for r in rows] == [None, pytest.approx(1.0), None]  # the 7 and its partner, the 10
    assert drift.baseline_rate == pytest.approx(0.55)  # the 7 and the 5 come back as their sum only, as the
    # headline's 22 of 40 gives it: neither alone
    steady = [day(0, 10, 5), day(1, 10, 5), day(2, 20, 10)]
    assert quality_rows(steady, date(2026, 3, 3))[1].baseline_rate == pytest.approx(0.5)


def test_the_overall_agreement_is_withheld_when_it_would_give_back_the_one_period_withheld(tmp_path) -> None:
    """Day one: 10 reviewed, 7 agreed (3 disagreements: withheld); day two: 10 reviewed, none agreed. The overall
    agreement, 7 of 20, gave day one's 7 back."""
    from datetime import UTC, datetime

    from core.services.access import Actor
    from core.services.reviews import review_result
    from core.services.statistics import quality_board
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store = SQLiteStore(tmp_path / "results.sqlite3")
    doctor = Actor("dr-a", "radiologist")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    for n in range(20):
        record = make_record(n + 1, start + timedelta(days=n // 10, minutes=n), "glioma")
        store.add(record)
        agrees = n < 7
        final, reasons = ("glioma", []) if agrees else ("notumor", ["false_alarm"])
        review_result(store, doctor, record.id, final, reasons, "", now=record.created_at + timedelta(hours=1))
    board = quality_board(
        store, Actor("boss", "supervisor"), start_day=date(2026, 11, 2), end_day=date(2026, 11, 3), timezone="UTC",
        period="day",
    )  # fmt: skip
    assert board.rows[0].agreement is None and board.rows[1].agreement == 0.0
    assert board.overall.agreement is None and board.overall.reviewed == 20
    assert all(n is None for n in board.overall.matrix.values())  # 20 minus the disagreements would give it back
    assert all(v.agreement is None for v in board.per_version.values())  # one version: the same figure
    assert board.overall.sensitivity is None  # 7 found of 7 tumours (with its interval) gave the 7 back too
    from core.services.statistics import dashboard
    from core.services.statistics_export import export_csv

    figures = dashboard(
        store, Actor("boss", "supervisor"), start_day=date(2026, 11, 2), end_day=date(2026, 11, 3), timezone="UTC",
        period="day",
    )  # fmt: skip
    lines = export_csv(figures, board).decode().splitlines()  # everything the page draws, withheld as drawn
    version = next(iter(board.per_version))
    # a count has no interval: its interval cells are empty, not "withheld" (counting those overcounted)
    assert "confusion,glioma -> glioma,reviewed,withheld,," in lines
    assert f"accuracy,{version},reviewed,20,," in lines
    assert f"accuracy,{version},sensitivity,withheld,withheld,withheld" in lines  # a rate's interval: with it
    assert "drift,baseline,start,2026-11-02,," in lines
    assert "drift,baseline,tumour_rate,1.0,," in lines
    assert "quality_per_period,2026-11-02,flagged_rate,0.0,," in lines
    assert "quality_per_period,2026-11-03,refused_rate,0.0,," in lines
    # control limits are rows of their own, never in the 95 % interval columns
    limits = [line for line in lines if line.startswith("quality_per_period,2026-11-03,tumour_rate")]
    assert [line.split(",")[2] for line in limits] == [
        "tumour_rate",
        "tumour_rate_lower_control_limit",
        "tumour_rate_upper_control_limit",
        "tumour_rate_out_of_control",  # which measure left its limits, each said apart
    ]
    assert limits[0].endswith(",,") and any("not 95 % intervals" in line for line in lines)


def test_every_period_of_the_range_is_listed_and_the_default_baseline_is_the_ranges_first_half() -> None:
    """Only periods with data were listed: an outage was a line drawn across, and with data only in the last ten
    days of a 90-day range the 'first half' baseline ended in the middle of those ten days."""
    days = [day(80 + k, 20, 5) for k in range(10)]  # 2026-05-20 .. 05-29 of a range from 2026-03-01
    periods = roll_up_quality(days, "day", date(2026, 3, 1), date(2026, 5, 29))
    assert len(periods) == 90 and periods[0].shown == 0 and periods[-1].shown == 20
    _, drift = quality_rows(periods, None)
    assert drift.baseline_end == date(2026, 4, 14)  # the middle of the range, not of the ten days with data
    # that baseline holds nothing: no limits anywhere, and it is said (the chart showed none, the page said
    # nothing and the export read "out_of_control: false" for every period)
    assert "Not checked for drift: the tumour rate" in drift.unchecked
    assert "nor the mean tumour probability" in drift.unchecked and "2026-03-01 to 2026-04-14" in drift.unchecked
    _, checked = quality_rows(periods, date(2026, 5, 24))
    assert checked.baseline_rate is not None and checked.unchecked is None
    # a site reading series only (the PACS watch's) has no single scans: no mean to check, nothing to warn of
    series_only = [replace(p, probability_sum=0.0, probability_squares=0.0, scored=0) for p in periods]
    _, drift = quality_rows(series_only, date(2026, 5, 24))
    assert drift.baseline_rate is not None and drift.baseline_mean is None and drift.unchecked is None
    _, drift = quality_rows(series_only, None)  # the rate alone is said
    assert "the tumour rate" in drift.unchecked and "single scans" not in drift.unchecked


def test_the_export_says_unchecked_where_the_baseline_held_too_few_never_in_control(tmp_path) -> None:
    from core.services.access import Actor
    from core.services.statistics import dashboard, quality_board
    from core.services.statistics_export import export_csv
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store = SQLiteStore(tmp_path / "results.sqlite3")
    start = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    for n in range(20):  # the last two days of a 20-day range: its default baseline (the first half) is empty
        store.add(make_record(n + 1, start + timedelta(days=n % 2, minutes=n), "glioma"))
    common = {"start_day": date(2026, 11, 2), "end_day": date(2026, 11, 21), "timezone": "UTC", "period": "day"}
    boss = Actor("boss", "supervisor")
    text = export_csv(dashboard(store, boss, **common), quality_board(store, boss, **common)).decode()
    assert "# Not checked for drift: the tumour rate" in text
    assert "quality_per_period,2026-11-20,out_of_control,unchecked,," in text.splitlines()
    assert "quality_per_period,2026-11-21,tumour_rate_out_of_control,unchecked,," in text.splitlines()
    assert ",false," not in text  # no period reads as checked and in control
    # an empty baseline has no rate, mean or limits to keep back: "none" ("withheld" is a small count kept back)
    lines = text.splitlines()
    assert "drift,baseline,tumour_rate,none,," in lines and "drift,baseline,mean_tumour_probability,none,," in lines
    assert "quality_per_period,2026-11-20,tumour_rate_upper_control_limit,none,," in lines


def test_an_empty_periods_rates_and_limits_are_none_in_the_export_never_withheld(tmp_path) -> None:
    """A day with nothing saved after a baseline that holds: its tumour rate read "none", but its mean probability,
    both control limits and its flagged and refused rates read "withheld", a few results kept back where there
    were none."""
    from core.services.access import Actor
    from core.services.statistics import dashboard, quality_board
    from core.services.statistics_export import export_csv
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store = SQLiteStore(tmp_path / "results.sqlite3")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    for n in range(20):  # ten a day on the first two days of four: the default baseline, then two empty days
        store.add(make_record(n + 1, start + timedelta(days=n % 2, minutes=n), "glioma" if n % 3 else "notumor"))
    common = {"start_day": date(2026, 11, 2), "end_day": date(2026, 11, 5), "timezone": "UTC", "period": "day"}
    boss = Actor("boss", "supervisor")
    board = quality_board(store, boss, **common)
    assert board.drift.baseline_rate is not None and board.drift.baseline_mean is not None
    lines = export_csv(dashboard(store, boss, **common), board).decode().splitlines()
    empty = [
        line for line in lines if line.startswith("quality_per_period,2026-11-05,") and "out_of_control" not in line
    ]
    assert "quality_per_period,2026-11-05,reviewed,0,," in empty
    rates = [line for line in empty if ",reviewed," not in line]
    assert len(rates) == 9 and all(",none," in line for line in rates)  # agreement, 2 x (measure, 2 limits),
    assert not any("withheld" in line for line in empty)  # flagged and refused rates


def test_when_one_period_alone_is_withheld_no_other_figure_sums_it_back(tmp_path) -> None:
    """Day one 20 scans, 18 tumours (2 without: withheld); day two 30, no tumour. The headline rate was withheld,
    but the tumour classes (10 glioma + 8 meningioma) and the one version's tumour rate gave the 18 back."""
    from datetime import UTC, datetime

    from core.services.access import Actor
    from core.services.statistics import dashboard
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store = SQLiteStore(tmp_path / "results.sqlite3")
    start, n = datetime(2026, 11, 2, 9, 0, tzinfo=UTC), 0
    for when, labels in ((0, ["glioma"] * 10 + ["meningioma"] * 8 + ["notumor"] * 2), (1, ["notumor"] * 30)):
        for label in labels:
            n += 1
            store.add(make_record(n, start + timedelta(days=when, minutes=n), label))
    board = dashboard(
        store, Actor("boss", "supervisor"), start_day=date(2026, 11, 2), end_day=date(2026, 11, 3), timezone="UTC",
        period="day", unit="result", now=datetime(2026, 12, 1, tzinfo=UTC),
    )  # fmt: skip
    assert board.periods[0].tumours is None and board.tumour_rate is None
    assert board.per_class["glioma"] is None and board.per_class["meningioma"] is None
    assert all(m.tumour_rate is None for m in board.models)


def test_a_board_reads_one_state_of_the_database_while_results_are_saved(tmp_path) -> None:
    """Each aggregate was its own read: results saved between them gave a board whose classes did not add up to
    its count (2 boards in 40 beside a steady writer)."""
    from datetime import UTC, datetime

    from core.services.access import Actor
    from core.services.statistics import dashboard
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store, writer = SQLiteStore(tmp_path / "results.sqlite3"), SQLiteStore(tmp_path / "results.sqlite3")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    for n in range(40):
        store.add(make_record(n + 1, start + timedelta(minutes=n), ["glioma", "notumor"][n % 2]))

    class Busy:
        written = 0

        def __getattr__(self, name):
            method = getattr(store, name)
            if name == "snapshot":
                return method

            def read(*args, **kwargs):
                found = method(*args, **kwargs)
                for k in range(12):  # another reader's uploads land between two of the board's queries
                    Busy.written += 1
                    writer.add(make_record(100 + Busy.written, start + timedelta(minutes=50 + k), "meningioma"))
                return found

            return read

    board = dashboard(
        Busy(), Actor("boss", "supervisor"), start_day=date(2026, 11, 2), end_day=date(2026, 11, 3), timezone="UTC",
        period="day", unit="result", now=datetime(2026, 12, 1, tzinfo=UTC),
    )  # fmt: skip
    assert Busy.written > 0 and board.scans == sum(v for v in board.per_class.values() if v is not None) == 40
    assert sum(p.scans for p in board.periods if p.scans is not None) == 40


def test_the_mean_tumour_probability_and_its_drift_alarm_read_single_scans_only(tmp_path) -> None:
    """A series' score is the lowest of its best window under its own threshold, not a probability on a single
    scan's scale: mixed into the mean, a day of many studies moved the x-bar chart and raised a drift alarm."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from core.services.access import Actor
    from core.services.statistics import quality_board
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record, make_series, series_sections

    store = SQLiteStore(tmp_path / "results.sqlite3")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    for d in range(4):
        for n in range(20):  # single scans at P(tumour) 0.8 every day
            record = make_record(100 * d + n + 1, start + timedelta(days=d, minutes=n), "glioma")
            store.add(replace(record, tumour_probability=0.8))
    for n in range(20):  # the last day also 20 series scored 0.3 (their rule's scale)
        series = make_series(1000 + n, start + timedelta(days=3, hours=2, minutes=n), "glioma", study=n + 1)
        store.add_series(replace(series, tumour_probability=0.3), series_sections())
    board = quality_board(
        store, Actor("boss", "supervisor"), start_day=date(2026, 11, 2), end_day=date(2026, 11, 5), timezone="UTC",
        period="day", baseline_end=date(2026, 11, 3),
    )  # fmt: skip
    assert [row.mean_probability for row in board.rows] == pytest.approx([0.8] * 4)
    assert board.rows[3].shown == 40 and not board.drift.alarms  # the series count as results, not in the mean
    steady = roll_up_quality([day(1, 40, 12), replace(day(2, 40, 12), scored=0)], "week")  # one week
    assert steady[0].scored == 40 and steady[0].shown == 80


def test_a_quiet_weekend_does_not_switch_the_rate_alarm_off_and_a_withheld_period_raises_none() -> None:
    """Weekdays of 30 series whose tumour rate goes from 20 % to 60 %, weekend days of 3: each weekend's withheld
    count voided the baseline, so no limits were drawn and no alarm raised, unsaid."""
    periods = [day(d, 3, 1, p=0.3) if d % 7 in (5, 6) else day(d, 30, 6 if d < 14 else 18, p=0.3) for d in range(28)]
    rows, drift = quality_rows(periods, date(2026, 3, 14))
    assert drift.baseline_rate == pytest.approx(0.2)
    assert len(drift.alarms) == 10 and all(r.shown is not None for r in rows if r.start in drift.alarms)
    withheld = [r.start for r in rows if r.shown is None]
    assert withheld and not set(withheld) & set(drift.alarms)


def test_the_export_says_none_where_nothing_was_counted_as_the_page_does(tmp_path) -> None:
    """Twenty refused scans and nothing reviewed: the page showed dashes (nothing counted), the CSV 'withheld' for
    the tumour rate, the agreement and the turnaround, as if figures were kept back."""
    from core.services.access import Actor
    from core.services.statistics import dashboard, quality_board
    from core.services.statistics_export import export_csv
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store = SQLiteStore(tmp_path / "results.sqlite3")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    for n in range(20):
        store.add(replace(make_record(n + 1, start + timedelta(minutes=n), "glioma"), gate="rejected"))
    common = {"start_day": date(2026, 11, 2), "end_day": date(2026, 11, 3), "timezone": "UTC", "period": "day"}
    supervisor = Actor("boss", "supervisor")
    lines = export_csv(dashboard(store, supervisor, **common), quality_board(store, supervisor, **common))
    lines = lines.decode().splitlines()
    assert not any("could not be read" in line for line in lines)
    assert any(line.startswith("# today and mean_per_day_last_7_days: today so far") for line in lines)  # live
    weekly = dashboard(store, supervisor, **(common | {"period": "week"}))  # a Monday-Tuesday range of a week
    made = export_csv(weekly).decode()
    assert "# Partial weeks: the last (2026-11-02) ends with the range, on 2026-11-03." in made
    assert "# the quality board (accuracy, confusion, review, drift) could not be read" in made
    for expected in (
        "summary,,tumour_rate,none,none,none",
        "accuracy,all versions,agreement,none,,",
        "review,,turnaround_median_h,none,,",
    ):
        assert expected in lines, (expected, [line for line in lines if expected.split(",")[2] in line])


def test_a_mean_confidence_of_no_single_scans_is_none_and_one_of_a_few_is_withheld(tmp_path) -> None:
    """A version that read only series had "withheld" for its single scans' mean confidence in the CSV (and the
    page a dash for both): a figure seemed kept back where nothing was counted, and a small count looked like none."""
    from core.services.access import Actor
    from core.services.statistics import dashboard
    from core.services.statistics_export import export_csv
    from core.storage.sqlite import SQLiteStore
    from tests.test_store import make_record

    store = SQLiteStore(tmp_path / "results.sqlite3")
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    for n in range(12):  # version 1: series only; version 2: six series and three single scans
        version = "1.0.0" if n < 6 else "2.0.0"
        store.add(replace(make_record(n + 1, start + timedelta(minutes=n), "glioma", version), section_count=20))
    for n in range(3):
        store.add(make_record(100 + n, start + timedelta(minutes=30 + n), "glioma", "2.0.0", 0.8))
    common = {"start_day": date(2026, 11, 2), "end_day": date(2026, 11, 3), "timezone": "UTC", "period": "day"}
    board = dashboard(store, Actor("boss", "supervisor"), **common)
    assert (board.mean_confidence, board.single_scans) == (None, None)  # three single scans: withheld
    versions = {row.model: (row.mean_confidence, row.single_scans) for row in board.models}
    assert versions == {"btd-cnn 1.0.0": (None, 0), "btd-cnn 2.0.0": (None, None)}
    lines = export_csv(board).decode().splitlines()
    assert "summary,,mean_confidence_single_scans,withheld,," in lines
    assert "model_version,btd-cnn 1.0.0,mean_confidence_single_scans,none,," in lines
    assert "model_version,btd-cnn 2.0.0,mean_confidence_single_scans,withheld,," in lines
    for n in range(3):  # six single scans of version 2: its mean and the headline's are shown
        store.add(make_record(200 + n, start + timedelta(minutes=40 + n), "glioma", "2.0.0", 0.9))
    board = dashboard(store, Actor("boss", "supervisor"), **common)
    assert board.single_scans == 6 and board.mean_confidence == pytest.approx(0.85)
    only_series = dashboard(store, Actor("boss", "supervisor"), **(common | {"versions": ["btd-cnn 1.0.0"]}))
    assert (only_series.mean_confidence, only_series.single_scans) == (None, 0)
