"""The Statistics page's export: every figure the page shows as one tidy CSV, and its audit event. The figures are
:mod:`core.services.statistics`' (already under the small-count rule); this module only writes them."""

from __future__ import annotations

import csv
import io

from core.analytics.quality import Accuracy
from core.domain.results import LESION_QUANTILES
from core.domain.times import local_day
from core.services import audit
from core.services.access import STATISTICS, Actor, require
from core.services.exports import spreadsheet_safe
from core.services.statistics import WITHHELD, Dashboard, QualityBoard, partial_periods
from core.storage.protocol import AuditTrail


def record_export(store: AuditTrail, actor: Actor, board: Dashboard) -> None:
    """An export of the aggregates is an audit event naming its filters (those who may see statistics), the time zone
    and the unit counted with them: the same dates in two zones, or per study and per result, are other files."""
    require(actor, STATISTICS)
    audit.record(
        store,
        actor,
        "statistics_export",
        None,
        start=board.start_day.isoformat(),
        end=board.end_day.isoformat(),
        period=board.period,
        versions=list(board.versions),
        timezone=board.timezone,
        unit=board.unit,
    )


# said on the page and in the export when series are counted per study with no key to keep their study by
UNGROUPED = (
    "No patient-reference key is configured ([identity] hmac_key): series are saved without their study, so per "
    "study each series counts as a study of its own"
)
UNUSABLE_KEY = (
    "The patient-reference key cannot be read now (its setting, or the database it is checked against; the "
    "sidebar says which to administrators, the Scan page to radiologists): series saved meanwhile keep no study, so "
    "per study each of them counts as a study of its own"
)


def export_csv(board: Dashboard, quality: QualityBoard | None = None, ungrouped: str | None = None) -> bytes:
    """Everything the Statistics page shows, as one tidy CSV (``table, key, measure, value, low_95, high_95``):
    the headline figures, the rate per period, the class mix, the confidence histogram, the per-version table, the
    lesion volumes of tumour studies per period (when there are any) and, when given, the agreement, accuracy and
    drift board; comment lines first name the filters. Withheld small
    counts (those a total would give away with them, and rates that would reveal one) read ``withheld``, never 0 or
    empty. ``ungrouped``: why series may be saved without their study (:data:`UNGROUPED`), said when counted per
    study."""
    buffer = io.StringIO()
    _comments(buffer, board)
    if ungrouped and board.unit == "study":
        buffer.write(f"# {ungrouped}\n")
    today = local_day(None, board.timezone)
    if partial := partial_periods(board, today):  # as the page says it under its chart: a short bar is no fall
        buffer.write(f"# {partial}\n")
    buffer.write(  # live figures under a header of dates they do not belong to
        f"# today and mean_per_day_last_7_days: today so far and the 7 whole days before it ({today.isoformat()}, "
        f"{board.timezone}), whatever the dates above\n"
    )
    if quality is None:
        buffer.write(
            "# the quality board (accuracy, confusion, review, drift) could not be read: its rows are missing\n"
        )
    elif quality.drift.unchecked:  # its flags then read "unchecked", never "false"
        buffer.write(f"# {quality.drift.unchecked}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["table", "key", "measure", "value", "low_95", "high_95"])
    unit = "studies" if board.unit == "study" else "results"

    def row(
        table: str,
        key: str,
        measure: str,
        value: object,
        interval: tuple[float, float] | bool | None = False,
        digits: int | None = None,
        counted: int | None = None,
    ) -> None:
        """``interval`` False: the measure has none (its cells empty; every count's read "withheld", and counting
        those cells overcounted what was withheld); None: withheld with the value. ``counted`` 0: a rate of nothing
        counted, "none" (it read "withheld", as if a figure were kept back)."""
        low, high = ("", "") if interval is False else (_cell(v, 4) for v in (interval or (None, None)))
        cells = [_cell(value, digits), low, high]
        if value is None and counted == 0:
            cells = [NONE, *(NONE if cell else "" for cell in cells[1:])]
        writer.writerow([table, _cell(key), measure, *cells])

    row("summary", "", unit, board.scans)
    row("summary", "", "tumour_rate", board.tumour_rate, board.tumour_interval, 4, board.scans)
    row("summary", "", "mean_confidence_single_scans", board.mean_confidence, digits=4, counted=board.single_scans)
    row("summary", "", "today", board.today)
    row("summary", "", "mean_per_day_last_7_days", board.week_mean, digits=2)
    row("summary", "", "flagged_results", board.flagged)  # results whatever the unit: named so beside "studies"
    row("summary", "", "refused_results_by_gate", board.rejected)
    for period in board.periods:
        row("per_period", period.start.isoformat(), unit, period.scans)
        row("per_period", period.start.isoformat(), "tumour", period.tumours)
        row("per_period", period.start.isoformat(), "tumour_rate", period.rate, period.interval, 4, period.scans)
    for label, count in board.per_class.items():
        row("class_mix", label, "results", count)
    bins = len(board.histogram)
    for k, count in enumerate(board.histogram):
        row("confidence", f"{k / bins:.2f}-{(k + 1) / bins:.2f}", "single_scans", count)
    for version in board.models:
        row("model_version", version.model, "results", version.scans)
        row("model_version", version.model, "tumour_rate", version.tumour_rate, digits=4, counted=version.scans)
        confidence, singles = version.mean_confidence, version.single_scans
        row("model_version", version.model, "mean_confidence_single_scans", confidence, digits=4, counted=singles)
        row("model_version", version.model, "first_day", version.first.isoformat() if version.first else WITHHELD)
        row("model_version", version.model, "last_day", version.last.isoformat() if version.last else WITHHELD)
    _lesion_export(row, board)
    if quality is not None:
        _quality_export(row, quality)
    return buffer.getvalue().encode("utf-8")


NONE = "none"  # nothing counted: no figure, none kept back
QUANTILE_NAMES = {0.1: "p10", 0.25: "p25", 0.5: "median", 0.75: "p75", 0.9: "p90"}


def _lesion_export(row, board: Dashboard) -> None:
    """The lesion volumes of tumour studies per period (count, then quantiles in mL), when the range has any."""
    if board.lesion_studies == 0:
        return
    row("lesion_volume", "", "tumour_studies_with_volume", board.lesion_studies)
    for period in board.lesions:
        key = period.start.isoformat()
        row("lesion_volume_per_period", key, "tumour_studies_with_volume", period.studies)
        if period.studies != 0:  # an empty period has no quantiles; a withheld one reads "withheld"
            for q, value in zip(LESION_QUANTILES, period.quantiles or (None,) * len(LESION_QUANTILES), strict=True):
                row("lesion_volume_per_period", key, f"{QUANTILE_NAMES[q]}_ml", value, digits=3)


def _cell(value: object, digits: int | None = None) -> str:
    """A CSV cell: ``withheld`` for a withheld figure (None), the value otherwise (text a spreadsheet would run, such as
    a model version starting with ``=``, neutralised; on one line: a spreadsheet whose list separator is ``;``
    ignores the quotes around a line break in mid-field, so a version "1.0\\n=cmd|..." began a row with a formula)."""
    if value is None:
        return WITHHELD
    if digits is not None and isinstance(value, int | float):  # to 9 places first: SQLite's sum / n and MongoDB's
        return str(round(round(value, 9), digits))  # $avg differ in the last bits (0.72075 against 0.72074999...)
    return spreadsheet_safe(" ".join(value.split())) if isinstance(value, str) else str(value)


def _comments(buffer: io.StringIO, board: Dashboard) -> None:
    """The comment lines that name the filters. Written as text, not through the CSV writer: a version name's own
    commas, line breaks or leading '=' would open cells (a formula among them) in a spreadsheet."""
    buffer.write(f"# dates: {board.start_day.isoformat()} to {board.end_day.isoformat()} ({board.timezone})\n")
    versions = "; ".join(spreadsheet_safe(" ".join(v.replace(",", " ").split())) for v in board.versions) or "all"
    buffer.write(f"# group by: {board.period}; model versions: {versions}\n")
    buffer.write(
        f"# counted per {board.unit}"
        + (
            ": a study counts once for each model version that read it, tumour when any of its series is, not "
            "counted when none is and one could not be read (no verdict); a single scan is a study of its own\n"
            if board.unit == "study"
            else ": each scan or series once\n"
        )
    )
    buffer.write(
        "# verdicts shown to users only (scans refused by the input gate are counted apart); counts from 1 to "
        "4, counts that the total would give away beside one, and rates that would reveal one, read 'withheld'; "
        "the class mix and versions count results, the confidence single scans only (a series' score is not the "
        "probability that its call is right); lesion volumes count tumour studies (quantiles withheld below 10)\n"
    )
    buffer.write(
        "# tumour rate and class mix: the model's calls (overrides do not change them); the quality board (accuracy, "
        "confusion, drift, quality_per_period) counts each scan or series against its final label, whatever the "
        "unit above; control limits are 3-sigma limits around the drift baseline, not 95 % intervals; turnaround: "
        "hours to the first review, the upper edge of its whole-hour bin ('inf': 720 h or more)\n"
    )


def _rates(row, version: str, board: Accuracy) -> None:
    """A board's sensitivity and specificity, "none" where no reviewed result had such a final label."""
    row("accuracy", version, "sensitivity", board.sensitivity, board.sensitivity_interval, 4, board.tumours_counted)
    row("accuracy", version, "specificity", board.specificity, board.specificity_interval, 4, board.clear_counted)


def _quality_export(row, quality: QualityBoard) -> None:
    """The agreement, accuracy, review and drift board."""
    overall = quality.overall
    row("accuracy", "all versions", "reviewed", overall.reviewed)
    # nothing reviewed: "none", as the page's dash says, not "withheld" (a figure kept back)
    row("accuracy", "all versions", "agreement", overall.agreement, digits=4, counted=overall.reviewed)
    _rates(row, "all versions", overall)
    for (label, final), n in sorted(overall.matrix.items()):  # the page's matrix: model verdict against final label
        row("confusion", f"{label} -> {final}", "reviewed", n)
    for version, board in quality.per_version.items():
        row("accuracy", version, "reviewed", board.reviewed)
        row("accuracy", version, "agreement", board.agreement, digits=4, counted=board.reviewed)
        _rates(row, version, board)
    drift = quality.drift
    row("drift", "baseline", "start", drift.baseline_start.isoformat() if drift.baseline_start else NONE)  # no
    row("drift", "baseline", "end", drift.baseline_end.isoformat() if drift.baseline_end else NONE)  # period in it
    # too few results in the baseline: no figure to keep back, "none" (they read "withheld", as did every control
    # limit worked out from them)
    row("drift", "baseline", "tumour_rate", drift.baseline_rate, digits=4, counted=0)
    row("drift", "baseline", "mean_tumour_probability", drift.baseline_mean, digits=4, counted=0)
    row("review", "", "backlog_saved_in_range", quality.backlog)  # not older results waiting
    row("review", "", "turnaround_median_h", quality.turnaround_median_h, digits=2, counted=overall.reviewed)
    row("review", "", "turnaround_p90_h", quality.turnaround_p90_h, digits=2, counted=overall.reviewed)
    for q in quality.rows:
        key = q.start.isoformat()
        row("quality_per_period", key, "reviewed", q.reviewed)
        row("quality_per_period", key, "agreement", q.agreement, q.agreement_interval, 4, q.reviewed)
        # control limits are measures of their own: in the interval columns they read as a 95 % interval
        for measure, value, limits in (
            ("tumour_rate", q.tumour_rate, q.rate_limits),
            ("mean_tumour_probability", q.mean_probability, q.mean_limits),
        ):
            counted = q.shown if measure == "tumour_rate" else q.scored  # an empty period's: "none" (not withheld)
            row("quality_per_period", key, measure, value, digits=4, counted=counted)
            low, high = limits if limits else (None, None)
            base = drift.baseline_rate if measure == "tumour_rate" else drift.baseline_mean
            for side, limit in (("lower", low), ("upper", high)):  # no baseline, no limit: "none"
                row(
                    "quality_per_period",
                    key,
                    f"{measure}_{side}_control_limit",
                    limit,
                    digits=4,
                    counted=0 if base is None else counted,
                )
        row("quality_per_period", key, "flagged_rate", q.flagged_rate, digits=4, counted=0 if q.empty else None)
        row("quality_per_period", key, "refused_rate", q.rejected_rate, digits=4, counted=0 if q.empty else None)
        # no limits: "unchecked" (it read "false", checked and in control, with a baseline holding too few)
        flags = (
            (q.out_of_control, q.rate_limits or q.mean_limits),
            (q.rate_out, q.rate_limits),
            (q.mean_out, q.mean_limits),
        )
        for name, (out, limits) in zip(
            ("out_of_control", "tumour_rate_out_of_control", "mean_probability_out_of_control"), flags, strict=True
        ):
            row("quality_per_period", key, name, str(out).lower() if limits else "unchecked")
