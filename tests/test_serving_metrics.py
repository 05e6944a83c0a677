"""Serving metrics on synthetic timelines (serving/metrics.py)."""
import math

import numpy as np
import pytest

from serving.metrics import request_rows, summarize, window_throughput
from serving.scheduler import Request
from serving.trace import RequestSpec


def _req(rid, arrival, prompt, times, first_scheduled=None, finished=True):
    r = Request(RequestSpec(rid, prompt, len(times) if finished else len(times) + 5, arrival))
    r.token_times = list(times)
    r.first_scheduled = arrival + 0.25 if first_scheduled is None else first_scheduled
    r.finished = finished
    return r


def test_single_request_definitions():
    r = _req(0, 1.0, 100, [2.0, 2.1, 2.4, 3.0])
    row = request_rows([r]).iloc[0]
    assert row.ttft == pytest.approx(1.0)
    assert row.e2el == pytest.approx(2.0) and row.request_latency == pytest.approx(2.0)
    assert row.tpot == pytest.approx(1.0 / 3)
    assert row.tbt_max == pytest.approx(0.6)
    assert row.stalls_200ms == 2 and row.stalls_500ms == 1
    assert row.scheduling_delay == pytest.approx(0.25)


def test_summary_pools_gaps_and_counts_stalls():
    a = _req(0, 0.0, 10, [1.0, 1.1, 1.2, 1.3])            # gaps 0.1 x3, no stall
    b = _req(1, 0.5, 30, [2.0, 2.3, 2.4])                  # gaps 0.3, 0.1: stall > 200 ms only
    c = _req(2, 1.0, 20, [5.0])                            # one token: no gap
    s = summarize([a, b, c])
    gaps = [0.1, 0.1, 0.1, 0.3, 0.1]
    assert s["tbt_p50"] == pytest.approx(np.percentile(gaps, 50))
    assert s["tbt_p99"] == pytest.approx(np.percentile(gaps, 99))
    assert s["itl_p90"] == s["tbt_p90"]
    assert s["ttft_p50"] == pytest.approx(1.5)             # ttfts 1.0, 1.5, 4.0
    assert s["e2el_p50"] == pytest.approx(1.9)             # 1.3, 1.9, 4.0
    assert s["tpot_mean"] == pytest.approx((0.1 + 0.2) / 2)
    assert s["stall_200ms_pct"] == pytest.approx(100 / 3) and s["stall_500ms_pct"] == 0
    # online: duration from the first arrival to the last completion (5.0 - 0.0)
    assert s["duration_s"] == pytest.approx(5.0)
    assert s["request_throughput"] == pytest.approx(3 / 5.0)
    assert s["output_token_throughput"] == pytest.approx(8 / 5.0)
    assert s["total_token_throughput"] == pytest.approx((8 + 60) / 5.0)


def test_offline_requests_per_minute():
    reqs = [_req(i, 0.0, 10, [t]) for i, t in enumerate([10.0, 20.0, 30.0])]
    s = summarize(reqs)
    assert s["requests_per_minute"] == pytest.approx(3 * 60 / 30.0)
    assert s["duration_s"] == 30.0


def test_unfinished_requests_are_left_out_of_latency():
    done = _req(0, 0.0, 10, [1.0, 2.0])
    open_ = _req(1, 0.0, 10, [1.5], finished=False)
    s = summarize([done, open_])
    assert s["completed"] == 1 and s["num_requests"] == 2
    assert s["e2el_p50"] == pytest.approx(2.0)
    rows = request_rows([done, open_])
    assert math.isnan(rows.loc[1, "e2el"])


def test_window_throughput():
    its = [{"measured": False, "duration": 0.0, "prefill_tokens": 999, "num_decodes": 0},
           {"measured": True, "duration": 0.5, "prefill_tokens": 90, "num_decodes": 10},
           {"measured": True, "duration": 0.5, "prefill_tokens": 0, "num_decodes": 100}]
    w = window_throughput(its, prompt_len=151, output_len=50)    # 200 slots per request
    assert w["window_iterations"] == 2
    assert w["window_requests_per_minute"] == pytest.approx(200 / 200 / 1.0 * 60)
