"""Nsight Compute output parsing, per-call reduction and the join into the aggregated table."""
import pandas as pd
import pytest

from analysis.aggregate import ncu_columns
from experiments.profile import TIME_METRIC, parse_ncu_csv, reduce_metrics

HEADER = ('"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
          '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"')


def _line(kid, kernel, metric, unit, value):
    return (f'"{kid}","1","python3","h","{kernel}","1","7","(128, 1, 1)","(264, 1, 1)","0","9.0",'
            f'"Command line profiler metrics","{metric}","{unit}","{value}"')


LOG = "\n".join([
    "==PROF== Connected to process 1",  # ncu's own lines come before the CSV header
    HEADER,
    _line(0, "prefill_kernel", TIME_METRIC, "ns", "3,000"),
    _line(0, "prefill_kernel", "sm__throughput.avg.pct_of_peak_sustained_elapsed", "%", "80"),
    _line(0, "prefill_kernel", "dram__throughput.avg.pct_of_peak_sustained_elapsed", "%", "10"),
    _line(1, "combine_kernel", TIME_METRIC, "ns", "1000"),
    _line(1, "combine_kernel", "sm__throughput.avg.pct_of_peak_sustained_elapsed", "%", "20"),
    _line(1, "combine_kernel", "dram__throughput.avg.pct_of_peak_sustained_elapsed", "%", "n/a"),
])


def test_reduce_weights_percentages_by_kernel_time():
    rows = parse_ncu_csv(LOG)
    assert len(rows) == 6
    values, kernels = reduce_metrics(rows, ["sm__throughput.avg.pct_of_peak_sustained_elapsed",
                                            "dram__throughput.avg.pct_of_peak_sustained_elapsed",
                                            "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed"])
    assert kernels == 2
    assert values["ncu_time_ms"] == pytest.approx(4e-3)
    assert values["sm__throughput.avg.pct_of_peak_sustained_elapsed"] == pytest.approx((3000 * 80 + 1000 * 20) / 4000)
    # "n/a" on one kernel: the mean is over the kernels that report it
    assert values["dram__throughput.avg.pct_of_peak_sustained_elapsed"] == pytest.approx(10)
    assert "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed" not in values


def test_no_header_means_no_rows():
    assert parse_ncu_csv("==ERROR== the application returned an error code (1)") == []
    assert reduce_metrics([], ["x__y"]) == ({}, 0)


def test_ncu_columns_join():
    long = pd.DataFrame([
        {"row_key": "r1", "method": "POD", "metric": "sm__throughput.avg.pct_of_peak_sustained_elapsed", "value": 70.0, "status": "ok"},
        {"row_key": "r1", "method": "POD", "metric": "ncu_time_ms", "value": 1.5, "status": "ok"},
        {"row_key": "r1", "method": "FA_decode", "metric": None, "value": None, "status": "unavailable"},
        {"row_key": "r2", "method": "POD", "metric": None, "value": None, "status": "error"},
    ])
    wide = ncu_columns(long)
    assert wide.loc["r1", "ncu_sm__throughput_POD"] == 70.0
    assert wide.loc["r1", "ncu_time_ms_POD"] == 1.5
    assert pd.isna(wide.loc["r2", "ncu_sm__throughput_POD"])
    assert wide.loc["r2", "ncu_status_POD"] == "error" and wide.loc["r1", "ncu_status_FA_decode"] == "unavailable"
