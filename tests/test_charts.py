"""Figures and the dashboard are pure functions of aggregate rows: check the data they draw."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta

import pytest

from core.analytics.stats import roll_up, safe_rate, wilson_interval
from core.domain.results import DayCount
from core.services.access import Actor
from core.services.statistics import dashboard
from core.services.statistics_export import export_csv
from core.storage.sqlite import SQLiteStore
from tests.test_store import make_record
from ui.charts import (
    CLASS_COLOURS,
    WITHHELD,
    class_mix_figure,
    confidence_figure,
    lesion_volume_figure,
    lesions,
    tumour_rate_figure,
)


def test_the_rate_is_drawn_above_the_counts_with_its_interval() -> None:
    figure = tumour_rate_figure(
        ["2026-03-02", "2026-03-09", "2026-03-16"], [10, None, 0], [0.4, None, None], [(0.17, 0.69), None, None], "week"
    )
    rate = next(trace for trace in figure.data if trace.type == "scatter")
    bars = next(trace for trace in figure.data if trace.type == "bar")
    assert list(rate.y) == [40.0, None, None]
    assert rate.yaxis == "y" and bars.yaxis == "y2"  # two panels: the line is never hidden behind a bar
    assert figure.layout.yaxis.domain[0] > figure.layout.yaxis2.domain[1]  # the rate panel sits above
    assert list(rate.error_y.array) == [29.0, None, None] and list(rate.error_y.arrayminus) == [23.0, None, None]
    assert list(bars.y) == [10, 4, 0] and bars.customdata[1] == WITHHELD  # withheld: hatched, labelled, not zero
    assert list(bars.text) == ["", "withheld", ""] and list(bars.marker.pattern.shape) == ["", "/", ""]
    assert figure.layout.yaxis2.tickformat == ",d" and figure.layout.yaxis2.dtick >= 1  # whole scans only
    assert bars.showlegend is False  # the legend drew its swatch as the first bar: hatched grey when withheld
    assert figure.layout.title.text == "Tumour rate per week (model's calls, scans)"
    studies = tumour_rate_figure(["2026-03-02"], [10], [0.4], [None], "week", "studies")  # not "scans" for studies
    assert studies.layout.yaxis2.title.text == "studies" and "studies" in studies.layout.title.text


def test_class_mix_is_sorted_and_coloured_by_label_with_withheld_classes_last() -> None:
    figure = class_mix_figure(
        {"notumor": 6, "glioma": 7, "pituitary": None}, {"notumor": "No tumour", "glioma": "Glioma"}
    )
    bar = figure.data[0]
    assert list(bar.y) == ["Glioma", "No tumour", "pituitary"] and list(bar.x) == [7, 6, 4]
    assert list(bar.marker.color)[:2] == [CLASS_COLOURS["glioma"], CLASS_COLOURS["notumor"]]
    assert bar.customdata[2] == WITHHELD and list(bar.text) == ["", "", "withheld"]
    assert bar.marker.pattern.shape[2] == "/"


def test_confidence_histogram_starts_where_calls_start() -> None:
    figure = confidence_figure([0] * 10 + [0, 1, 2, None, 4, 5, 6, 7, 8, 9])
    bar = figure.data[0]
    assert list(bar.y)[10:] == [0, 1, 2, 4, 4, 5, 6, 7, 8, 9] and bar.text[13] == "withheld"  # withheld, never blank
    assert abs(bar.x[0] - 0.025) < 1e-9 and figure.layout.xaxis.range == (0.5, 1)
    assert figure.layout.yaxis.tickformat == ",d"


def test_periods_without_scans_are_listed_as_zero() -> None:
    days = [DayCount(date(2026, 3, 2), 7, 2), DayCount(date(2026, 3, 5), 3, 1)]
    periods = roll_up(days, "day", date(2026, 3, 1), date(2026, 3, 6))
    assert [p.start.day for p in periods] == [1, 2, 3, 4, 5, 6]
    assert [p.total for p in periods] == [0, 7, 0, 0, 3, 0]
    weeks = roll_up(days, "week", date(2026, 3, 1), date(2026, 3, 20))
    assert [(p.start.isoformat(), p.total) for p in weeks] == [
        ("2026-02-23", 0),
        ("2026-03-02", 10),
        ("2026-03-09", 0),
        ("2026-03-16", 0),
    ]


def test_rates_that_would_reveal_a_small_count_are_withheld() -> None:
    assert safe_rate(5, 10) == 0.5
    assert safe_rate(0, 12) == 0.0
    assert safe_rate(2, 12) is None  # two tumours
    assert safe_rate(9, 12) is None  # three without
    assert safe_rate(4, 4) is None  # four scans
    low, high = wilson_interval(20, 24)
    assert round(low, 3) == 0.641 and round(high, 3) == 0.933


def test_dashboard_withholds_small_counts_everywhere_and_the_export_names_its_filters(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    labels = ["glioma"] * 6 + ["notumor"] * 6 + ["pituitary"] * 2
    for i, label in enumerate(labels):
        store.add(make_record(i + 1, now - timedelta(days=2, minutes=i), label))
    store.add(make_record(99, now - timedelta(minutes=5), "glioma"))  # one scan today
    supervisor = Actor("boss", "supervisor")
    board = dashboard(
        store,
        supervisor,
        start_day=date(2026, 11, 10),
        end_day=date(2026, 11, 20),
        timezone="UTC",
        period="day",
        now=now,
    )
    assert board.scans == 15 and board.tumour_rate == 9 / 15
    assert board.today is None  # one scan today: withheld, and no change arrow is computed from it
    # pituitary's 2 is withheld, and so is the next smallest class: 15 - 7 - 6 would give it away; and glioma too,
    # the other tumour class: the tumour rate gives 9 tumours, and 9 - 7 would give it away
    # and every class is listed, the empty one withheld with them: meningioma's 0 said every tumour was another
    assert board.per_class == {"glioma": None, "meningioma": None, "notumor": None, "pituitary": None}
    by_day = {row.start.day: row for row in board.periods}
    assert len(board.periods) == 11 and by_day[11].scans == 0  # an empty day stays on the chart
    assert by_day[18].scans is None and by_day[18].rate is None  # 15 - 14 would give day 20's one scan away
    assert by_day[20].scans is None and by_day[20].rate is None and by_day[20].tumours is None
    assert all(n is None or n == 0 or n >= 5 for n in board.histogram)
    text = export_csv(board).decode()
    assert text.startswith("# dates: 2026-11-10 to 2026-11-20 (UTC)") and "model versions: all" in text
    rows = list(csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#")))))
    cell = {(r["table"], r["key"], r["measure"]): r["value"] for r in rows}
    assert cell[("per_period", "2026-11-20", "results")] == "withheld"
    assert cell[("per_period", "2026-11-20", "tumour")] == "withheld"
    assert cell[("per_period", "2026-11-11", "results")] == "0"  # an empty day is zero, a withheld one "withheld"
    empty = next(r for r in rows if (r["key"], r["measure"]) == ("2026-11-11", "tumour_rate"))
    assert (empty["value"], empty["low_95"], empty["high_95"]) == ("none", "none", "none")  # nothing kept back
    assert cell[("per_period", "2026-11-20", "tumour_rate")] == "withheld"
    assert cell[("summary", "", "results")] == "15" and cell[("summary", "", "today")] == "withheld"
    assert (
        cell[("class_mix", "pituitary", "results")] == "withheld"
        and cell[("class_mix", "glioma", "results")] == "withheld"
    )
    assert {r["table"] for r in rows} == {"summary", "per_period", "class_mix", "confidence", "model_version"}
    assert sum(r["table"] == "confidence" for r in rows) == len(board.histogram)


def test_today_and_the_last_seven_days_mean_the_same_per_study_and_per_result_whatever_the_range(tmp_path) -> None:
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    for i in range(6):  # six single scans today, seven on each of the last seven days
        store.add(make_record(i + 1, now - timedelta(minutes=i + 1)))
    for day in range(1, 8):
        for i in range(7):
            store.add(make_record(100 * day + i, now - timedelta(days=day, minutes=i)))
    supervisor = Actor("boss", "supervisor")
    for unit in ("study", "result"):  # a range that ends before today and starts after the week began
        board = dashboard(
            store,
            supervisor,
            start_day=date(2026, 11, 17),
            end_day=date(2026, 11, 18),
            timezone="UTC",
            period="day",
            now=now,
            unit=unit,
        )
        assert (board.today, board.week_mean) == (6, 7.0), unit


def test_today_and_the_week_are_withheld_when_a_recent_day_is_so_neither_gives_it_back(tmp_path) -> None:
    """Days of 20, yesterday 2 and today 5: the chart withholds yesterday (and today with it); a shown 'today' or
    7-day mean would give yesterday's 2 back as the total minus the days shown."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    counts = {0: 5, 1: 2, **{d: 20 for d in range(2, 9)}}
    for d, n in counts.items():
        for i in range(n):
            store.add(make_record(1000 * d + i, now - timedelta(days=d, minutes=i + 1)))
    common = {"start_day": date(2026, 11, 12), "end_day": date(2026, 11, 20), "timezone": "UTC", "now": now}
    board = dashboard(store, Actor("boss", "supervisor"), period="day", **common)
    assert board.scans == 147 and [p.scans for p in board.periods][-2:] == [None, None]
    assert board.today is None and board.week_mean is None
    weekly = dashboard(store, Actor("boss", "supervisor"), period="month", **common)
    assert weekly.periods[0].scans == 147 and weekly.today == 5  # nothing withheld: today is shown


def test_today_is_withheld_when_its_period_minus_it_leaves_a_small_count(tmp_path) -> None:
    """Grouped by week on a Wednesday with 1 result on Monday and 5 today: the week showed 6 beside "Today so far"
    5, Monday's 1 given back by subtraction."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2024, 5, 8, 15, 0, tzinfo=UTC)  # a Wednesday
    store.add(make_record(1, now - timedelta(days=2)))
    for i in range(5):
        store.add(make_record(10 + i, now - timedelta(minutes=i + 1)))
    common = {"start_day": date(2024, 5, 1), "end_day": date(2024, 5, 8), "timezone": "UTC", "now": now}
    for unit in ("study", "result"):
        weekly = dashboard(store, Actor("boss", "supervisor"), period="week", unit=unit, **common)
        assert weekly.periods[-1].scans == 6 and weekly.today is None, unit
    for i in range(4):  # Monday 5: the week minus today is no longer small, and today is shown
        store.add(make_record(20 + i, now - timedelta(days=2, minutes=i + 1)))
    assert dashboard(store, Actor("boss", "supervisor"), period="week", **common).today == 5


def test_today_and_the_week_are_withheld_when_their_period_less_both_leaves_a_small_count(tmp_path) -> None:
    """Grouped by month: 3 results on 5 May, 16 over 13 to 19 May, 6 today (20 May). The month's 25, less "Today so
    far" 6 and the 7-day mean times 7 (16), gave back the 3 of 1 to 12 May, a count never shown."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2025, 5, 20, 15, 0, tzinfo=UTC)
    days = {15: 3, **dict.fromkeys(range(1, 8), 0), 0: 6}
    days.update({d: (3 if d <= 2 else 2) for d in range(1, 8)})  # 16 over the 7 days before today
    for d, n in days.items():
        for i in range(n):
            store.add(make_record(1000 * d + i, now - timedelta(days=d, minutes=i + 1)))
    common = {"start_day": date(2025, 5, 1), "end_day": date(2025, 5, 20), "timezone": "UTC", "now": now}
    monthly = dashboard(store, Actor("boss", "supervisor"), period="month", **common)
    assert monthly.periods[0].scans == 25 and monthly.today is None and monthly.week_mean is None
    store.add(make_record(99_999, now - timedelta(days=15, minutes=30)))  # 4 on 5 May: still small
    assert dashboard(store, Actor("boss", "supervisor"), period="month", **common).week_mean is None
    for i in range(2):  # 6 before the week: no longer small, and both are shown
        store.add(make_record(88_000 + i, now - timedelta(days=15, minutes=40 + i)))
    shown = dashboard(store, Actor("boss", "supervisor"), period="month", **common)
    assert shown.today == 6 and shown.week_mean == pytest.approx(16 / 7)


@pytest.mark.parametrize("unit", ["result", "study"])
def test_today_and_the_week_are_withheld_when_the_range_begins_or_ends_inside_the_week(tmp_path, unit) -> None:
    """2 results on 13 May, 5 on the 17th and 18th, 2 on the 19th, 10 today (20 May), the range 17 to 20 May: the
    7-day mean times 7 (14) less the range's days before today (12) gave back the 2 of 13 May, whatever the
    grouping; a range ending on 18 May gave back the 19th's 2 the same way (14 less 12)."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2025, 5, 20, 15, 0, tzinfo=UTC)
    for d, n in {7: 2, 3: 5, 2: 5, 1: 2, 0: 10}.items():
        for i in range(n):
            store.add(make_record(1000 * d + i, now - timedelta(days=d, minutes=i + 1)))
    supervisor = Actor("boss", "supervisor")
    for period in ("day", "week", "month"):
        board = dashboard(
            store, supervisor, start_day=date(2025, 5, 17), end_day=date(2025, 5, 20), timezone="UTC", period=period,
            now=now, unit=unit,
        )  # fmt: skip
        assert board.week_mean is None, period
        # today's count is withheld where it gives one back, never where it is its own bar on the board
        assert board.today == (10 if period == "day" else None), period
    ended = dashboard(
        store, supervisor, start_day=date(2025, 5, 10), end_day=date(2025, 5, 18), timezone="UTC", period="day",
        now=now, unit=unit,
    )  # fmt: skip
    assert ended.week_mean is None


def test_lesion_volume_counts_per_period_are_withheld_as_a_group_under_their_total() -> None:
    from core.domain.results import LesionPeriod
    from core.services.statistics import _lesion_rows as lesion_rows

    class Volumes:
        def lesion_volumes(self, filters, timezone, period):
            return [
                LesionPeriod(date(2026, 9, 1), 12, (1.0, 2.0, 3.0, 4.0, 5.0)),
                LesionPeriod(date(2026, 10, 1), 3, (1.0, 1.0, 1.0, 1.0, 1.0)),
            ]

    total, rows = lesion_rows(Volumes(), None, "UTC", "month", date(2026, 9, 1), date(2026, 10, 31))
    assert total == 15 and [r.studies for r in rows] == [None, None]


def test_counts_that_add_up_to_a_shown_total_are_withheld_so_that_none_is_a_difference() -> None:
    from core.analytics.stats import suppress_group

    assert suppress_group([7, 6, 2]) == (7, None, None)  # 2 withheld: the next smallest with it
    assert suppress_group([7, 6, 2, 3]) == (7, 6, None, None)  # two withheld already: their split is unknown
    assert suppress_group([9, 0, 3, 0]) == (None, 0, None, 0)  # zeros are facts, never the complement
    assert suppress_group([12, 0, 8]) == (12, 0, 8) and suppress_group([]) == ()


def test_a_supervisors_tumour_rate_per_study_counts_a_study_once_however_many_series_it_has(tmp_path) -> None:
    from dataclasses import replace

    from tests.test_store import make_series, series_sections

    store = SQLiteStore(tmp_path / "results.sqlite3")
    day = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    scans = [make_record(i + 1, day + timedelta(minutes=i), "glioma" if i < 3 else "notumor") for i in range(6)]
    for record in scans:  # six single scans, three of them tumour
        store.add(record)
    for study in range(5):  # five studies of three series each; in studies 0 to 2 one series is tumour
        for k in range(3):
            label = "glioma" if study < 3 and k == 0 else "notumor"
            record = make_series(100 + 10 * study + k, day + timedelta(hours=1, minutes=k), label, study=study + 1)
            if label == "glioma":  # a series' score under its own rule (at 0.30): not how sure the call is
                record = replace(record, tumour_probability=0.31)
            store.add_series(record, series_sections())
    supervisor = Actor("boss", "supervisor")
    common = {"start_day": date(2026, 11, 18), "end_day": date(2026, 11, 18), "timezone": "UTC", "period": "day"}
    studies = dashboard(store, supervisor, unit="study", **common)
    results = dashboard(store, supervisor, unit="result", **common)
    assert (studies.scans, studies.tumour_rate) == (11, 6 / 11)  # 6 scans + 5 studies; 3 + 3 tumour
    assert (results.scans, results.tumour_rate) == (21, 6 / 21)  # every scan and series once
    assert studies.periods[0].scans == 11 and "counted per study" in export_csv(studies).decode()
    assert studies.per_class == results.per_class  # the class mix always counts results
    # a tumour series at 0.31 read as "31 % sure" in the confidence: single scans only
    assert sum(results.histogram) == 6 and results.mean_confidence == pytest.approx(
        sum(r.confidence for r in scans) / 6
    )
    assert results.models[0].mean_confidence == pytest.approx(results.mean_confidence)
    assert ",mean_confidence_single_scans," in export_csv(results).decode()
    with pytest.raises(ValueError):
        dashboard(store, supervisor, unit="section", **common)


def test_one_day_of_data_gets_a_whole_day_on_the_time_axis_not_milliseconds() -> None:
    figure = tumour_rate_figure(["2026-03-02"], [12], [0.5], [(0.25, 0.75)], "day")
    low, high = (datetime.fromisoformat(v) for v in figure.layout.xaxis2.range)
    assert high - low >= timedelta(days=1) and figure.layout.xaxis2.dtick == 86_400_000
    assert low <= datetime(2026, 3, 2) < high
    # most periods' rates withheld: said on the chart (an almost empty line read as a chart that failed)
    hidden = tumour_rate_figure(
        ["2026-03-01", "2026-03-02", "2026-03-03"], [8, 8, 0], [None, 0.5, None], [None] * 3, "day"
    )
    assert not hidden.layout.annotations  # one of two days with results withheld (the empty day is no rate)
    few = tumour_rate_figure(
        ["2026-03-01", "2026-03-02", "2026-03-03"], [8, 8, 12], [None, None, 0.5], [None] * 3, "day"
    )
    (note,) = few.layout.annotations
    assert note.text.startswith("2 of 3 days' rates withheld") and "A longer period adds them up" in note.text
    assert note.y > 0.9 and note.yanchor == "top"  # along the top: in the panel's middle it lay over the points
    # each point and bar drawn across its period: centred on the period's first day, a month's bar stood mostly
    # over the month before it, a week's over the week before
    months = tumour_rate_figure(["2026-10-01", "2026-11-01"], [12, 182], [0.5, 0.4], [None, None], "month")
    assert {(t.xperiod, t.xperiod0, t.xperiodalignment) for t in months.data} == {("M1", "2000-01-01", "middle")}
    assert list(months.layout.xaxis2.range) == ["2026-10-01 00:00:00", "2026-12-01 00:00:00"]  # November's end
    assert months.layout.xaxis2.dtick == "M1"
    weeks = tumour_rate_figure(["2026-11-16", "2026-11-23"], [12, 18], [0.5, 0.4], [None, None], "week")
    assert {(t.xperiod, t.xperiod0) for t in weeks.data} == {(7 * 86_400_000, "2000-01-03")}  # from a Monday
    assert weeks.layout.xaxis2.dtick == 7 * 86_400_000 and weeks.layout.xaxis2.tick0 == "2000-01-03"


def test_a_patients_timeline_within_one_day_spans_its_results_with_room_not_milliseconds() -> None:
    """Results at one moment spanned milliseconds; then a whole day, where results saved minutes apart sat on one
    another, and the legend below the plot covered its first tick labels."""
    from ui.viewer_figures import timeline_figure

    figure = timeline_figure(
        ["2026-03-02 10:00", "2026-03-02 10:00"], [0.2, 0.999], ["notumor", "glioma"], ["scan", "series"], {}
    )
    low, high = (datetime.fromisoformat(v) for v in figure.layout.xaxis.range)
    assert high - low == timedelta(hours=1) and low < datetime(2026, 3, 2, 10) < high
    assert [list(t.customdata) for t in figure.data] == [["0.20"], [">0.99"]]  # hovered as titles write it: no 1.00
    # a series' value is named its score, as every other place names it, not a probability (it read "P(tumour)")
    assert ["P(tumour)" in t.hovertemplate for t in figure.data] == [True, False]
    assert "series score" in figure.data[1].hovertemplate
    apart = timeline_figure(
        ["2026-03-02 10:00", "2026-03-02 10:03"], [0.2, 0.9], ["notumor", "glioma"], ["scan"] * 2, {}
    )
    low, high = (datetime.fromisoformat(v) for v in apart.layout.xaxis.range)
    assert timedelta(minutes=3) / (high - low) > 0.04  # three minutes apart: a twentieth of the axis, not 0.2 %
    assert apart.layout.legend.yanchor == "bottom" and apart.layout.legend.y == 1.0  # above the plot


def test_a_patients_timeline_colours_a_reviewed_result_by_the_radiologists_final_label() -> None:
    """A no-tumour call a radiologist overrode to glioma was still drawn green."""
    from ui.viewer import LABEL_NAMES
    from ui.viewer_figures import timeline_figure

    figure = timeline_figure(
        ["2026-03-02 10:00", "2026-03-09 10:00"],
        [0.2, 0.3],
        ["glioma", "notumor"],  # the first: the model said no tumour, the final label is glioma
        ["scan", "scan"],
        LABEL_NAMES,
        reviewed=[True, False],
    )
    tumour, clear = figure.data
    assert (tumour.marker.color, clear.marker.color) == ("#d32f2f", "#2e7d32")
    assert tumour.text[0].endswith("(radiologist)") and clear.text[0].endswith("(model)")
    # not by colour alone (a reader who cannot tell red from green could not tell them apart) and named
    assert (tumour.marker.symbol, clear.marker.symbol) == ("circle", "circle-open")
    assert (tumour.name, clear.name) == ("scan: tumour", "scan: no tumour")


def test_a_new_result_reaches_the_live_board_within_the_promised_30_seconds() -> None:
    """The board refreshed every 30 s through a 30 s cache: a result could wait 58 s. Refresh + cache <= 30."""
    import ast
    from pathlib import Path

    source = (Path(__file__).resolve().parents[1] / "pages" / "statistics.py").read_text()
    tree = ast.parse(source)
    assigned = [n for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)]
    constants = {t.id: n.value.value for n in assigned for t in n.targets if isinstance(t, ast.Name)}
    assert constants["REFRESH_SECONDS"] + constants["CACHE_SECONDS"] <= constants["LIVE_WITHIN_SECONDS"] == 30
    assert "ttl=REFRESH_SECONDS" not in source and source.count("ttl=CACHE_SECONDS") == 3


def test_lesion_volumes_are_a_box_per_period_above_the_studies_with_small_periods_withheld() -> None:
    figure = lesion_volume_figure(
        ["2026-03-02", "2026-03-09", "2026-03-16"],
        [7, None, 0],
        [(1.0, 2.0, 3.5, 6.0, 9.0), None, None],
        "week",
    )
    box = next(trace for trace in figure.data if trace.type == "box")
    bars = next(trace for trace in figure.data if trace.type == "bar")
    assert list(box.x) == ["2026-03-02"]  # only periods of 5 studies or more get a box
    assert (box.lowerfence[0], box.q1[0], box.median[0], box.q3[0], box.upperfence[0]) == (1.0, 2.0, 3.5, 6.0, 9.0)
    assert box.yaxis == "y" and bars.yaxis == "y2" and figure.layout.yaxis.domain[0] > figure.layout.yaxis2.domain[1]
    assert list(bars.y) == [7, 4, 0] and list(bars.text) == ["", "withheld", ""] and bars.customdata[1] == WITHHELD
    assert figure.layout.title.text == "Lesion volume of tumour studies per week"
    assert not figure.layout.annotations  # a box is drawn: nothing to explain
    empty = lesion_volume_figure(["2026-03-02", "2026-03-09"], [7, None], [None, None], "week")
    (note,) = empty.layout.annotations  # no box anywhere: an empty axis from 0 to 4 read as volumes of 0-4 mL
    assert note.text.startswith("No box: no week has 10 tumour studies") and empty.layout.yaxis.showticklabels is False


def test_the_dashboard_gives_lesion_volumes_per_period_under_the_small_count_rule_and_exports_them(tmp_path) -> None:
    from dataclasses import replace

    from tests.test_store import make_series, series_sections

    store = SQLiteStore(tmp_path / "results.sqlite3")
    monday = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    # ten studies in the first week, two in the second, five in the third: the two withheld, and with them the five
    # (the smallest other count), or the total minus the shown weeks would give the two back; quantiles from ten
    volumes = {
        0: [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0],
        7: [3.0, 5.0],
        14: [1.0, 1.5, 2.0, 2.5, 3.0],
    }
    for offset, values in volumes.items():
        for k, ml in enumerate(values):
            series = make_series(
                300 + 10 * offset + k, monday + timedelta(days=offset, hours=k), study=300 + 10 * offset + k
            )
            store.add_series(replace(series, lesion_px=int(ml * 100), lesion_ml=ml), series_sections())
    supervisor = Actor("boss", "supervisor")
    board = dashboard(
        store, supervisor, start_day=date(2026, 11, 2), end_day=date(2026, 11, 29), timezone="UTC", period="week"
    )
    assert board.lesion_studies == 17
    assert [(row.start, row.studies) for row in board.lesions] == [
        (date(2026, 11, 2), 10),
        (date(2026, 11, 9), None),  # two studies: withheld, and no box
        (date(2026, 11, 16), None),  # five, withheld with them
        (date(2026, 11, 23), 0),
    ]
    assert board.lesions[0].quantiles == pytest.approx((3.8, 6.5, 11.0, 15.5, 18.2))
    assert all(row.quantiles is None for row in board.lesions[1:])
    text = export_csv(board).decode()
    rows = list(csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#")))))
    cell = {(r["table"], r["key"], r["measure"]): r["value"] for r in rows}
    assert cell[("lesion_volume", "", "tumour_studies_with_volume")] == "17"
    assert cell[("lesion_volume_per_period", "2026-11-02", "median_ml")] == "11.0"
    assert cell[("lesion_volume_per_period", "2026-11-02", "p90_ml")] == "18.2"
    assert cell[("lesion_volume_per_period", "2026-11-09", "tumour_studies_with_volume")] == "withheld"
    assert cell[("lesion_volume_per_period", "2026-11-09", "median_ml")] == "withheld"  # withheld, never a number
    assert cell[("lesion_volume_per_period", "2026-11-16", "tumour_studies_with_volume")] == "withheld"
    assert cell[("lesion_volume_per_period", "2026-11-23", "tumour_studies_with_volume")] == "0"
    assert ("lesion_volume_per_period", "2026-11-23", "median_ml") not in cell  # no study: no quantiles
    hostile = replace(board, models=[replace(board.models[0], model='=HYPERLINK("http://x")')])  # a card's name
    keys = [
        r["key"] for r in csv.DictReader(line for line in export_csv(hostile).decode().splitlines() if line[:1] != "#")
    ]
    assert '\'=HYPERLINK("http://x")' in keys and not any(k.startswith(("=", "+", "-", "@")) for k in keys)
    assert "lesion volumes count tumour studies" in text
    figure = lesions(board)  # the page's figure of this board: one box (the withheld week has none)
    assert [t.type for t in figure.data] == ["box", "bar"] and len(figure.data[0].x) == 1


@pytest.mark.pages
@pytest.mark.pages
def test_the_statistics_page_draws_the_lesion_volumes_of_tumour_studies(tmp_path, tiny_card, monkeypatch) -> None:
    import json
    from dataclasses import replace
    from pathlib import Path

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from tests.test_store import make_series, series_sections

    monkeypatch.setenv("BTD_MODEL", str(tiny_card))
    monkeypatch.setenv("BTD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MONGODB_URI", raising=False)
    st.cache_data.clear()
    st.cache_resource.clear()
    store = SQLiteStore(tmp_path / "data" / "results.sqlite3")
    now = datetime.now(UTC)
    for k, ml in enumerate([1.5, 2.5, 4.0, 7.0, 11.0, 20.0, 3.0, 5.0, 6.0, 9.0]):
        series = make_series(400 + k, now - timedelta(seconds=1 + k), study=400 + k)
        store.add_series(replace(series, lesion_px=int(ml * 100), lesion_ml=ml), series_sections())
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "statistics.py"), default_timeout=60)
    app.session_state["actor"] = Actor("test-supervisor", "supervisor")
    app.run()
    assert not app.exception
    specs = [json.loads(c.proto.spec) for c in app.get("plotly_chart")]
    figure = next(s for s in specs if s["layout"]["title"]["text"] == "Lesion volume of tumour studies per day")
    box = next(t for t in figure["data"] if t["type"] == "box")
    assert box["median"] == [pytest.approx(5.5)] and len(box["x"]) == 1  # today's ten studies; other days: none
    assert any("Tumour studies with a lesion volume: 10." in c.value for c in app.caption)
    st.cache_data.clear()
    st.cache_resource.clear()


def test_a_withheld_tumour_class_or_period_cannot_be_worked_out_from_the_tumour_rate(tmp_path) -> None:
    """Glioma 3 was withheld with no tumour 45 as its partner: the rate gave 53 tumours, minus meningioma's 50. And a
    day's withheld tumours, the only ones of the range, were the rate times the total."""
    from core.analytics.stats import suppress_classes

    assert suppress_classes(["glioma", "meningioma", "notumor"], [3, 50, 45], "notumor") == (None, None, None)
    assert suppress_classes(["glioma", "meningioma", "notumor"], [30, 50, 45], "notumor") == (30, 50, 45)
    labels = ["glioma", "meningioma", "notumor", "pituitary"]  # two tumour classes withheld: neither can be found
    assert suppress_classes(labels, [30, 50, 40, 2], "notumor") == (None, 50, 40, None)
    store = SQLiteStore(tmp_path / "results.sqlite3")
    first = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    n = 0
    for day, (scans, tumours) in enumerate([(10, 7), (20, 0), (20, 0)]):
        for k in range(scans):
            n += 1
            store.add(make_record(n, first + timedelta(days=day, minutes=k), "glioma" if k < tumours else "notumor"))
    board = dashboard(
        store,
        Actor("boss", "supervisor"),
        start_day=date(2026, 11, 2),
        end_day=date(2026, 11, 4),
        timezone="UTC",
        period="day",
        now=datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert board.scans == 50 and board.periods[0].tumours is None  # 7 tumours beside 3 without: withheld
    assert board.tumour_rate is None and board.tumour_interval is None  # 0.14 x 50 would give the 7 back


def test_a_version_of_few_scans_hides_its_dates_and_a_crafted_version_name_opens_no_cell(tmp_path) -> None:
    """A version used for one scan showed first = last = that day; and the export's comment line wrote version
    names raw, so a name with a comma and '=' opened a formula cell in a spreadsheet."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    for i in range(8):
        store.add(make_record(i + 1, now - timedelta(days=1, minutes=i), "glioma" if i % 2 else "notumor"))
    odd = '1,=HYPERLINK("http://x.example")'
    store.add(make_record(50, now - timedelta(days=3), "glioma", odd))
    board = dashboard(
        store, Actor("boss", "supervisor"), start_day=date(2026, 11, 10), end_day=date(2026, 11, 20),
        timezone="UTC", period="day", now=now, versions=(make_record(1, now).model_version, odd),
    )  # fmt: skip
    rare = next(m for m in board.models if odd in m.model)
    assert rare.scans is None and rare.first is None and rare.last is None
    text = export_csv(board).decode()
    header = text.splitlines()[1]
    assert header.startswith("# group by") and header.count(",") == 0  # one cell, starting with '#': never a formula
    from core.errors import AccessDenied
    from core.services.statistics_export import record_export

    with pytest.raises(AccessDenied):  # the export's audit event is written for those who may export only
        record_export(store, Actor("dr-a", "radiologist"), board)


def test_periods_cut_by_the_range_or_still_going_on_are_named_partial() -> None:
    """A Thursday-to-Wednesday range by week drew its first and last weeks as whole weeks: short bars read as a fall."""
    from core.services.statistics import Dashboard, PeriodRow, partial_periods

    def board(start: date, end: date, period: str, starts: list[date]) -> Dashboard:
        rows = tuple(PeriodRow(s, 10, 5, 0.5, None) for s in starts)
        fields = {f: None for f in Dashboard.__dataclass_fields__}
        return Dashboard(**fields | {"start_day": start, "end_day": end, "period": period, "periods": rows})

    weeks = board(
        date(2026, 11, 5), date(2026, 11, 18), "week", [date(2026, 11, 2), date(2026, 11, 9), date(2026, 11, 16)]
    )
    said = partial_periods(weeks, today=date(2026, 12, 1))
    assert "the first (2026-11-02) starts before the range" in said and "ends with the range, on 2026-11-18" in said
    running = board(date(2026, 11, 1), date(2026, 11, 30), "month", [date(2026, 11, 1)])
    assert "still going on" in partial_periods(running, today=date(2026, 11, 20))
    assert partial_periods(running, today=date(2026, 12, 2)) is None  # a whole month, over
    assert (
        partial_periods(board(date(2026, 11, 5), date(2026, 11, 5), "day", [date(2026, 11, 5)]), date(2026, 12, 1))
        is None
    )
    tomorrow = board(date(2026, 11, 4), date(2026, 11, 5), "day", [date(2026, 11, 4), date(2026, 11, 5)])
    assert partial_periods(tomorrow, date(2026, 11, 4)) == "1 day of the range after today: no results yet."


def test_count_axes_have_at_most_six_steps_and_one_periods_quality_charts_span_their_period() -> None:
    """A tallest bar of 61 to 99 got a tick at every count (62 to 100 labels); the agreement and drift charts of a
    single day zoomed into a millisecond, which the rate chart's axis was made to stop."""
    from ui.charts import agreement_figure, count_ticks, drift_figure

    for top in (1, 6, 7, 60, 61, 65, 99, 100, 650, 999, 6500, 123_456):
        step = count_ticks(top)["dtick"]
        assert top / step <= 6 and (step == 1 or top / step > 1), top
    day = ["2026-03-01"]
    charts = (
        agreement_figure(day, [0.9], [(0.8, 0.95)], [0.1], [0.0], "day"),
        drift_figure(day, [0.4], [(0.2, 0.6)], [0.5], [(0.2, 0.6)], ([False], [False]), None, "day"),
    )
    for figure in charts:
        assert list(figure.layout.xaxis.range) == ["2026-03-01 00:00:00", "2026-03-02 00:00:00"]
    assert charts[1].layout.yaxis.rangemode == charts[1].layout.yaxis2.rangemode == "nonnegative"  # no -1 % rate
    # a control limit is a step across its period, from its start to its end; the points sit in their periods'
    # middle (limits shifted with them ran from one period's middle to the next's); the baseline's line at the end
    # of its last period (at its start, that period's point read as after the baseline)
    weeks = ["2026-02-23", "2026-03-02"]
    drift = drift_figure(
        weeks,
        [0.4, 0.5],
        [(0.2, 0.6)] * 2,
        [0.5, 0.5],
        [(0.2, 0.6)] * 2,
        ([False] * 2, [False] * 2),
        "2026-03-01",
        "week",
    )
    limits = [t for t in drift.data if t.legendgroup == "limits"]
    edges = ["2026-02-23", "2026-03-02", None, "2026-03-02", "2026-03-09 00:00:00", None]
    assert len(limits) == 4 and all(list(t.x) == edges for t in limits)
    assert all(t.xperiodalignment is None for t in limits) and list(limits[0].y) == [20.0, 20.0, None] * 2
    quiet = drift_figure(  # a period without limits (too few results) after one with them: its own still drawn
        weeks,
        [0.4, None],
        [(0.2, 0.6), None],
        [0.5, None],
        [(0.2, 0.6), None],
        ([False] * 2, [False] * 2),
        None,
        "week",
    )
    assert list(next(t for t in quiet.data if t.legendgroup == "limits").y) == [20.0, 20.0, None, None, None, None]
    assert {t.xperiodalignment for t in drift.data if t.legendgroup != "limits"} == {"middle"}
    assert drift.layout.shapes[0].x0 == "2026-03-02 00:00:00"


def test_an_agreement_chart_with_every_period_withheld_says_why_it_is_empty() -> None:
    """Forty-six reviews over a month of days, each day's fewer than 5: an empty chart, flat lines, no word."""
    from ui.charts import agreement_figure

    days = ["2026-03-01", "2026-03-02"]
    empty = agreement_figure(days, [None, None], [None, None], [0.0, 0.0], [0.0, 0.0], "day")
    (note,) = empty.layout.annotations
    assert note.text.startswith("No day's agreement to draw:<br>none reviewed, or fewer than 5 (withheld)")
    assert not agreement_figure(days, [0.9, None], [None, None], [0.0, 0.0], [0.0, 0.0], "day").layout.annotations


def test_a_period_out_of_control_stands_out_without_colour() -> None:
    """Alarmed periods differed only by marker colour, two of nearly the same luminance: the same in greyscale."""
    from ui.charts import drift_figure

    starts = ["2026-11-02", "2026-11-09", "2026-11-16"]
    limits = [(0.2, 0.6)] * 3
    alarms = ([False, False, True], [False, False, True])
    figure = drift_figure(starts, [0.4, 0.41, 0.9], limits, [0.5, 0.5, 0.8], limits, alarms, None)
    observed = [trace for trace in figure.data if trace.name == "observed"]
    assert observed and all(list(t.marker.symbol) == ["circle", "circle", "x"] for t in observed)
    assert all(list(t.text) == ["", "", "out of control"] for t in observed)


def test_each_drift_panel_marks_its_own_measure_out_of_control() -> None:
    """The tumour rate held at 50 % inside its limits while the mean probability left its own: both panels drew the
    rate's point as an out-of-control cross, and the CSV had one flag for both."""
    from core.analytics.quality import quality_rows
    from core.domain.results import DayQuality

    def day(k: int, mean: float) -> DayQuality:  # 40 verdicts, 20 tumours: a rate of 50 % each day
        return DayQuality(date(2026, 2, 10 + k), 40, 20, 0, 0, 0, 0, 40 * mean, 40 * (mean**2 + 0.01), 40)

    rows, drift = quality_rows([day(0, 0.5), day(1, 0.52), day(2, 0.48), day(3, 0.9)], date(2026, 2, 12))
    last = rows[-1]
    assert last.tumour_rate == 0.5 and not last.rate_out and last.mean_out and last.out_of_control
    from core.services.statistics import QualityBoard
    from ui.charts import drift as drift_chart

    figure = drift_chart(QualityBoard(tuple(rows), drift, None, {}, None, None, None), "day")
    rate_panel, mean_panel = (t for t in figure.data if t.name == "observed")
    assert list(rate_panel.marker.symbol)[-1] == "circle" and list(mean_panel.marker.symbol)[-1] == "x"
    # one legend entry for both limits, named for both (it read "lower limit", the upper one's dashes too)
    assert [t.name for t in figure.data if t.showlegend and t.legendgroup == "limits"] == ["control limits (3 sd)"]


def test_a_versions_withheld_rate_or_agreement_cannot_be_had_by_subtraction(tmp_path) -> None:
    """Version B's 3 tumours of 50 were withheld, but the headline (43 of 150) less version A's rate times its
    count (40 of 100) gave them back; so did a version's agreement against the overall one, and a period's
    refused rate against the headline's refused total."""
    from core.analytics.quality import quality_rows
    from core.domain.results import DayQuality
    from core.services.statistics import per_version_accuracy

    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    for i in range(150):
        version, tumour = ("1.0.0", i < 40) if i < 100 else ("2.0.0", i < 103)
        store.add(make_record(i + 1, now - timedelta(hours=2, minutes=i), "glioma" if tumour else "notumor", version))
    board = dashboard(
        store, Actor("boss", "supervisor"), start_day=date(2026, 11, 20), end_day=date(2026, 11, 20),
        timezone="UTC", period="day", now=now,
    )  # fmt: skip
    assert board.tumour_rate == pytest.approx(43 / 150)
    assert sorted((m.scans, m.tumour_rate) for m in board.models) == [(50, None), (100, None)]  # withheld together
    glioma, clear = ("glioma", "glioma"), ("notumor", "notumor")
    versions = per_version_accuracy(
        {"a": {glioma: 30, clear: 40}, "b": {glioma: 20, clear: 30}, "c": {glioma: 2, clear: 30}}
    )
    assert versions["c"].agreement is None and versions["b"].agreement is None  # the smallest other goes with it
    assert versions["a"].agreement == 1.0 and versions["a"].matrix[glioma] == 30
    rollout = per_version_accuracy({"new": {clear: 10}, "main": {glioma: 200, clear: 300}})
    assert rollout["new"].sensitivity is None  # no reviewed tumour yet: nothing withheld, so nothing to pair
    assert rollout["main"].agreement == 1.0 and rollout["main"].sensitivity == 1.0
    day = date(2026, 11, 20)
    periods = [DayQuality(day + timedelta(days=k), 50, 10, 6, rejected, 0, 0, 10.0, 3.0) for k, rejected in
               enumerate((2, 8, 9))]  # fmt: skip
    rows, _ = quality_rows(periods, None)
    assert [r.rejected_rate is None for r in rows] == [True, True, False]  # 2 alone: the total less 8 and 9


def test_no_cell_opens_a_formula_in_a_spreadsheet_whose_list_separator_is_a_semicolon(tmp_path) -> None:
    """A model version "1;=HYPERLINK(...)" was written unquoted (no comma in it): a spreadsheet set to ";" as its
    list separator (much of Europe) opened a formula cell."""
    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    crafted = '1;=HYPERLINK("http://x.example");\t@SUM(1)'
    for i in range(8):
        store.add(make_record(i + 1, now - timedelta(hours=1, minutes=i), "glioma" if i % 2 else "notumor", crafted))

    def exported() -> str:
        board = dashboard(
            store, Actor("boss", "supervisor"), start_day=date(2026, 11, 20), end_day=date(2026, 11, 20),
            timezone="UTC", period="day", now=now,
        )  # fmt: skip
        return export_csv(board).decode()

    text = exported()
    assert "HYPERLINK" in text
    for delimiter in (";", "\t", ","):
        cells = [c.strip() for row in csv.reader(io.StringIO(text), delimiter=delimiter) for c in row]
        assert not [c for c in cells if c.startswith(("=", "+", "@")) or (c.startswith("-") and c[1:2].isalpha())]
    # a line break in a version: a ";" spreadsheet takes a quote in mid-field as text, and the break ends the row
    store.add(make_record(20, now - timedelta(hours=2), "glioma", "1.0\n=cmd|' /C calc'!A0"))
    text = exported()
    assert "calc" in text
    cells = [c.strip().strip('"') for line in text.splitlines() for c in line.split(";")]
    assert not [c for c in cells if c.startswith(("=", "+", "@"))]


def test_two_models_that_share_a_version_string_are_named_together_in_the_version_filter(tmp_path) -> None:
    """The filter and the quality board select by version: btd-cnn 1.0.0 and btd-resnet 1.0.0 read as one model's
    "1.0.0" row while the dashboard's version table kept them apart."""
    from dataclasses import replace

    from core.domain.results import record_id
    from core.services.statistics import model_versions

    store = SQLiteStore(tmp_path / "results.sqlite3")
    day = datetime(2026, 5, 1, 9, tzinfo=UTC)
    store.add(make_record(1, day, version="1.0.0"))
    other = make_record(2, day, version="1.0.0")
    store.add(replace(other, model_name="btd-resnet", id=record_id(other.image_sha256, "btd-resnet", "1.0.0")))
    store.add(make_record(3, day, version="2.1.0"))
    labels = model_versions(store, Actor("boss", "supervisor"))
    name = make_record(1, day).model_name
    assert labels == {
        "1.0.0": f"1.0.0 ({' and '.join(sorted([name, 'btd-resnet']))}, counted together)",
        "2.1.0": f"2.1.0 ({name})",
    }


def test_a_range_of_refused_scans_only_is_not_called_empty(tmp_path) -> None:
    """Three refused scans (a withheld refusal count) hid the whole board under "No saved results"."""
    from dataclasses import replace

    store = SQLiteStore(tmp_path / "results.sqlite3")
    now = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    for i in range(3):
        store.add(replace(make_record(i + 1, now - timedelta(hours=i), "glioma"), gate="rejected"))

    def board_of(first: date, last: date):
        return dashboard(
            store, Actor("boss", "supervisor"), start_day=first, end_day=last, timezone="UTC", period="day", now=now
        )

    board = board_of(date(2026, 11, 20), date(2026, 11, 20))
    assert board.scans == 0 and board.rejected is None and not board.empty
    assert board_of(date(2026, 11, 1), date(2026, 11, 2)).empty


def test_the_curves_legend_sits_above_the_plot_never_over_the_sections_near_1() -> None:
    """At y 1.15 with a 10 px top margin the legend lay over the plot's top band and hid the deciding sections
    (P(tumour) near 1) of every tumour series."""
    from ui.viewer_figures import curve_figure

    figure = curve_figure([0.2, 0.99, 1.0, 0.98], 0.5, 2)
    layout = figure["layout"]
    legend, top = layout["legend"], layout["margin"]["t"]
    assert legend["yanchor"] == "bottom" and legend["y"] >= 1.0 and top >= 30  # in the margin, above the axes


def test_a_csv_figure_is_the_same_from_either_database() -> None:
    """SQLite's sum / n and MongoDB's $avg of the same confidences differ in the last bits: 0.72075 and
    0.7207499999999999 were written 0.7208 and 0.7207."""
    from core.services.statistics_export import _cell

    assert _cell(0.72075, 4) == _cell(0.7207499999999999, 4) == "0.7208"
    assert _cell(0.123456789012, 4) == "0.1235" and _cell(3, 2) == "3"
