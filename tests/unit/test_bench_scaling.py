"""The bench's pure helpers: the line through time against rows, and the summary of one path's runs."""

from __future__ import annotations

import numpy as np
import pytest

from scoring.tools.bench import WorkerPeak, _scaling, _summary, fit_line


def test_the_line_through_two_sizes_gives_the_fixed_seconds_and_the_seconds_per_row():
    fixed_s, per_row_s = fit_line([1_000_000, 10_000_000], [3.0, 21.0])
    assert fixed_s == pytest.approx(1.0)
    assert per_row_s == pytest.approx(2e-6)


def test_the_line_through_noisy_sizes_is_the_least_squares_fit():
    rows = [1_000, 10_000, 100_000, 1_000_000]
    seconds = [1.3, 1.2, 1.6, 4.1]
    per_row_s, fixed_s = np.polyfit(rows, seconds, 1)
    assert fit_line(rows, seconds) == pytest.approx((fixed_s, per_row_s))


@pytest.mark.parametrize(("rows", "seconds"), [([1_000], [1.0]), ([1_000, 1_000], [1.0, 1.2]), ([1, 2], [1.0])])
def test_a_line_needs_two_distinct_sizes_with_a_time_each(rows, seconds):
    with pytest.raises(ValueError, match="two distinct sizes"):
        fit_line(rows, seconds)


def test_a_path_summary_holds_the_median_the_spread_and_the_workers_peaks():
    peaks = [WorkerPeak(100.0, 180.0, 2), WorkerPeak(120.0, 150.0, 2), WorkerPeak(90.0, 90.0, 1)]
    summary = _summary(1_000_000, [2.0, 4.0, 2.5], peaks)
    assert (summary["median_s"], summary["min_s"], summary["max_s"]) == (2.5, 2.0, 4.0)
    assert (summary["rows_per_s"], summary["rows_per_s_min"], summary["rows_per_s_max"]) == (400_000, 250_000, 500_000)
    assert summary["workers"] == {"peak_rss_mb_one": 120.0, "peak_rss_mb_total": 180.0, "workers": 2}


def test_the_scaling_table_takes_the_line_through_each_paths_medians():
    peak = [WorkerPeak(100.0, 200.0, 2)]
    sizes = [{"rows": n, "paths": {"jvm-copy": _summary(n, [1.0 + n * 1e-6], peak)}} for n in (1_000_000, 10_000_000)]
    line = _scaling(sizes)["jvm-copy"]
    assert line["fixed_s"] == pytest.approx(1.0)
    assert line["per_row_us"] == pytest.approx(1.0)
    assert line["marginal_rows_per_s"] == 1_000_000
    assert line["rows_per_s"] == {"1000000": 500_000, "10000000": 909_091}
    assert line["peak_rss_mb_one"] == {"1000000": 100.0, "10000000": 100.0}
