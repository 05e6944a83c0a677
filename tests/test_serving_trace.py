"""Workloads: the arXiv sample, fixed P:D requests, the private-trace stand-in, Poisson arrivals."""
import math

import numpy as np
import pandas as pd
import pytest

from serving.trace import (ARXIV_CSV, arxiv_lengths, build_workload, clip_to_max_tokens, offered_rate,
                           poisson_arrivals, split_by_pd_ratio, standin_internal_lengths)


def test_trace_is_in_the_repository():
    assert ARXIV_CSV.exists() and ARXIV_CSV.stat().st_size < 2 * 2 ** 20
    assert len(pd.read_csv(ARXIV_CSV)) == 2895


def test_arxiv_sample_matches_the_artifact():
    lengths = arxiv_lengths()
    p = np.array([x for x, _ in lengths])
    d = np.array([y for _, y in lengths])
    assert len(lengths) == 2048
    assert round(p.mean(), 1) == 10027.6 and round(d.mean(), 1) == 470.2
    assert (p + d).max() <= 32768 and p.min() > 2048
    assert arxiv_lengths()[:5] == lengths[:5]           # deterministic
    assert arxiv_lengths(seed=1)[:5] != lengths[:5]


def test_clip_takes_excess_in_proportion():
    df = pd.DataFrame({"num_prefill_tokens": [30506.0, 100.0], "num_decode_tokens": [3250.0, 5.0]})
    out = clip_to_max_tokens(df, 32768)
    # excess 988: ceil(988 * 30506/33756) = 893 off prefill, ceil(988 * 3250/33756) = 96 off decode
    assert out["num_prefill_tokens"].tolist() == [29613, 100]
    assert out["num_decode_tokens"].tolist() == [3154, 5]


@pytest.mark.parametrize("ratio,expected", [(8, (14563, 1821)), (17, (15473, 911)), (64, (16131, 253))])
def test_figure12_requests(ratio, expected):
    assert split_by_pd_ratio(16384, ratio) == expected


def test_figure15_example_from_the_paper():
    assert split_by_pd_ratio(16500, 10) == (15000, 1500)


def test_standin_matches_published_statistics():
    lengths = standin_internal_lengths()
    p = np.array([x for x, _ in lengths])
    d = np.array([y for _, y in lengths])
    assert len(lengths) == 2048
    assert abs(d.mean() - 331) < 2
    assert abs((p + d).mean() - 10_500) < 150
    assert (p / d).max() <= 40.0 + 1e-9 and d.min() >= 1


def test_poisson_arrivals_capped_at_3_over_qps():
    qps = 0.85
    a = poisson_arrivals(200_000, qps, seed=42)
    gaps = np.diff([0.0] + a)
    assert gaps.max() <= 3 / qps + 1e-6 and gaps.min() > 0  # times are sums: 1e-6 of rounding
    # about e^-3 = 4.98% of the gaps are capped; the mean gap is (1 - e^-3) / qps
    assert abs((gaps >= 3 / qps - 1e-6).mean() - math.exp(-3)) < 0.003
    assert abs(gaps.mean() * qps - (1 - math.exp(-3))) < 0.005
    assert abs(offered_rate(qps) - qps / 0.9502) < 1e-4
    assert poisson_arrivals(5, qps, seed=42) == a[:5]
    assert poisson_arrivals(5, qps, seed=7) != a[:5]


def test_build_workload():
    reqs = build_workload({"kind": "fixed", "n": 3, "total": 16384, "pd_ratio": 17})
    assert [(r.prompt_len, r.output_len, r.arrival) for r in reqs] == [(15473, 911, 0.0)] * 3
    reqs = build_workload({"kind": "arxiv", "n": 4, "qps": 2.0})
    assert [r.arrival for r in reqs] == poisson_arrivals(4, 2.0, seed=42)
    assert [(r.prompt_len, r.output_len) for r in reqs] == arxiv_lengths()[:4]
    with pytest.raises(ValueError):
        build_workload({"kind": "nope"})
