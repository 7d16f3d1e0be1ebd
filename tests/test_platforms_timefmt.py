"""Parsing the time formats schedulers print, into UTC-aware datetimes and minutes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from balsam.platforms.schedulers import timefmt as tf

UTC = timezone.utc


@pytest.mark.parametrize(
    "text, minutes",
    [("5:00", 5), ("1:30:00", 90), ("1-00:00:00", 1440), ("2-12", 3600), ("45", 45), ("0:30", 0.5), ("UNLIMITED", tf.UNLIMITED_MIN), ("INVALID", None), ("N/A", None)],
)
def test_slurm_durations(text, minutes):
    assert tf.parse_slurm_duration_minutes(text) == minutes


@pytest.mark.parametrize("text, minutes", [("01:00:00", 60), ("378981:57:19", 378981 * 60 + 57 + 19 / 60), ("4:59:44", 299 + 44 / 60), ("00:30", 30)])
def test_hours_first_durations(text, minutes):
    assert tf.parse_hms_minutes(text) == pytest.approx(minutes)


@pytest.mark.parametrize("text", ["N/A", "-", "", "soon"])
def test_hours_first_durations_not_set(text):
    assert tf.parse_hms_minutes(text) is None


def test_ctime_and_iso_become_utc_in_the_given_zone():
    cst = timezone(timedelta(hours=-6))
    assert tf.parse_ctime("Thu Nov  9 13:05:50 2023", cst) == datetime(2023, 11, 9, 19, 5, 50, tzinfo=UTC)
    assert tf.parse_iso("2026-11-24T09:04:16", UTC) == datetime(2026, 11, 24, 9, 4, 16, tzinfo=UTC)
    assert tf.parse_iso("N/A") is None and tf.parse_ctime("garbage") is None


def test_naive_times_default_to_the_local_zone():
    parsed = tf.parse_iso("2026-11-24T09:04:16")
    assert parsed is not None and parsed.tzinfo is UTC
    assert parsed == datetime(2026, 11, 24, 9, 4, 16).astimezone(UTC)


def test_lsf_times_without_a_year_take_the_poll_year_or_the_one_before():
    now = datetime(2024, 1, 2, 10, 0, tzinfo=UTC)
    assert tf.parse_lsf_time("Jan  2 09:56", now, UTC) == datetime(2024, 1, 2, 9, 56, tzinfo=UTC)
    assert tf.parse_lsf_time("Dec 28 19:56 L", now, UTC) == datetime(2023, 12, 28, 19, 56, tzinfo=UTC)
    assert tf.parse_lsf_time("Dec 28 19:56:02 2018", now, UTC) == datetime(2018, 12, 28, 19, 56, 2, tzinfo=UTC)
    assert tf.parse_lsf_time("", now, UTC) is None


def test_word_durations_and_walltime_formatting():
    assert tf.parse_words_minutes("1 hour 30 minutes 15 seconds") == pytest.approx(90.25)
    assert tf.parse_words_minutes("UNLIMITED") == tf.UNLIMITED_MIN
    assert tf.format_hms(1500) == "25:00:00" and tf.format_hms(59) == "00:59:00"
    with pytest.raises(ValueError):
        tf.format_hms(-1)
