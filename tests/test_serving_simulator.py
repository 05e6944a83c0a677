"""The simulator: latency-model fit, replay of recorded durations, capacity."""
import math
import random

import pytest

from serving.metrics import summarize
from serving.scheduler import Batch, Request, Work
from serving.simulator import LatencyModel, ReplayLatency, capacity_qps, simulate
from serving.trace import RequestSpec, make_requests, poisson_arrivals

SARATHI = {"name": "sarathi", "chunk_size": 512, "max_batch_size": 64}


def _truth(f):
    """A made-up 'GPU': linear parts plus overlapping prefill and decode attention."""
    pa, da = 2e-9 * f["prefill_pairs"], 4e-8 * f["decode_kv"]
    return 3e-3 + 2e-5 * f["num_tokens"] + 1e-5 * f["num_seqs"] + pa + da - 0.5 * min(pa, da)


def _batch(p_q, p_start, decodes):
    pre = [Work(Request(RequestSpec(0, p_start + p_q, 2)), p_start, p_q, True, False)] if p_q else []
    dec = [Work(Request(RequestSpec(i + 1, kv, 2)), kv - 1, 1, False, True) for i, kv in enumerate(decodes)]
    return Batch(pre, dec)


def test_fit_recovers_a_linear_model_with_overlap():
    rng = random.Random(0)
    rows = []
    for _ in range(300):
        b = _batch(rng.choice([0, 256, 512]), rng.randrange(0, 16000, 512),
                   [rng.randrange(1000, 16000) for _ in range(rng.randrange(0, 60))])
        if b.empty:
            continue
        f = b.features()
        rows.append({**f, "duration": _truth(f)})
    m = LatencyModel.fit(rows)
    assert m.stats["mape"] < 0.02
    assert m.coef.get("overlap", 0) < 0          # it found the overlap
    assert LatencyModel.from_dict(m.to_dict()).predict_features(rows[0]) == pytest.approx(m.predict_features(rows[0]))
    m_no = LatencyModel.fit(rows, overlap=False)
    assert m_no.stats["mape"] > m.stats["mape"]


def test_replay_reproduces_a_run_exactly_and_detects_divergence():
    specs = make_requests([(900 + 37 * i, 5 + i % 13) for i in range(20)], poisson_arrivals(20, 3.0))
    rng = random.Random(1)
    durs = {}

    def noisy(b, i):
        durs[i] = 0.01 + 1e-5 * b.num_tokens + rng.random() * 0.02
        return durs[i]

    ref = simulate(specs, SARATHI, 500, 16, noisy)
    rep = simulate(specs, SARATHI, 500, 16, ReplayLatency(ref.iterations))
    assert summarize(rep.requests) == summarize(ref.requests)
    assert [r.token_times for r in rep.requests] == [r.token_times for r in ref.requests]
    bad = [dict(it) for it in ref.iterations]
    bad[3]["num_decodes"] += 1
    with pytest.raises(AssertionError, match="iteration 3"):
        simulate(specs, SARATHI, 500, 16, ReplayLatency(bad))


def test_capacity_is_the_saturating_load():
    lengths = [(2000, 100)] * 40
    lat = lambda b, i: 0.02 + 2e-5 * b.num_tokens
    q = capacity_qps(make_requests(lengths), SARATHI, 2000, 16, lat)
    offline = simulate(make_requests(lengths), SARATHI, 2000, 16, lat)
    assert q == pytest.approx(40 / offline.clock * (1 - math.exp(-3)))
    # well below capacity the queue stays short; well above it TTFT grows with the request index
    low = summarize(simulate(make_requests(lengths, poisson_arrivals(40, 0.3 * q)), SARATHI, 2000, 16, lat).requests)
    high = summarize(simulate(make_requests(lengths, poisson_arrivals(40, 3 * q)), SARATHI, 2000, 16, lat).requests)
    assert high["ttft_p50"] > 3 * low["ttft_p50"]


def test_fit_finds_the_gemm_knee_and_keeps_relative_errors_small():
    """Below the knee the weight GEMMs cost the same for any token count; a straight line in tokens
    would overestimate small decode batches by the intercept it needs for large prefills."""
    def truth(f):
        return 4e-3 + 3e-5 * max(f["num_tokens"], 256) + 5e-9 * f["decode_kv"]

    rng = random.Random(1)
    rows = []
    for _ in range(200):
        b = _batch(rng.choice([0, 0, 64, 512, 1024]), rng.randrange(0, 8000, 512),
                   [rng.randrange(100, 8000) for _ in range(rng.choice([0, 1, 2, 8, 32, 128]))])
        if not b.empty:
            rows.append({**b.features(), "duration": truth(b.features())})
    m = LatencyModel.fit(rows)
    assert m.coef["knee"] == 256
    assert m.stats["max_abs_rel_err"] < 1e-6
    small = [r for r in rows if r["num_tokens"] <= 8]
    assert small and all(abs(m.predict_features(r) / r["duration"] - 1) < 1e-6 for r in small)
    # without the knee (a model saved before it existed) the same rows fit worse
    old = LatencyModel.from_dict({"coef": {k: v for k, v in m.coef.items() if k != "knee"}})
    assert max(abs(old.predict_features(r) / r["duration"] - 1) for r in small) > 0.05


def test_fit_gives_iterations_with_a_prefill_their_own_intercept():
    """A backend whose iterations with a prefill start more launches (a fused kernel) than its
    decode-only ones: the has_prefill term takes the difference, so the small decode-only
    iterations are not charged the prefill path's fixed cost."""
    rows = []
    for nd in (1, 2, 4, 8, 16, 32, 64, 96, 192, 256):   # decode-only batches on both sides of the knee
        for ctx in (2048, 8192):
            rows.append({"num_tokens": nd, "num_seqs": nd, "prefill_pairs": 0, "prefill_kv": 0, "decode_kv": nd * ctx})
            for chunk, keys in ((256, 2048), (1024, 6144), (512, 12288)):
                rows.append({"num_tokens": nd + chunk, "num_seqs": nd + 1, "prefill_pairs": chunk * keys,
                             "prefill_kv": keys, "decode_kv": nd * ctx})
    for r in rows:
        r["duration"] = (0.008 + 2e-5 * max(r["num_tokens"], 128) + 1e-10 * r["prefill_pairs"] + 5e-9 * r["decode_kv"]
                         + (0.004 if r["prefill_pairs"] else 0.0))
    m = LatencyModel.fit(rows, overlap=False)
    assert m.coef["has_prefill"] == pytest.approx(0.004, rel=1e-3) and m.stats["max_abs_rel_err"] < 1e-6
    # a model saved without the term (older calibration.json) still predicts, with no such cost
    old = LatencyModel.from_dict({"coef": {k: v for k, v in m.coef.items() if k != "has_prefill"}})
    decode_only = [r for r in rows if not r["prefill_pairs"]]
    assert all(old.predict_features(r) == pytest.approx(m.predict_features(r)) for r in decode_only)


def test_fit_weighs_each_kind_of_iteration_alike():
    """Repeating every decode-only iteration five times changes nothing: the fit weighs the kinds
    (decode-only, prefill-only, both), not the rows, so a kind the runs hold few of (whole prompts)
    is not fitted away. The truth here has a cost the model cannot express (a quadratic in decodes),
    so the fit must trade the kinds off."""
    from serving.simulator import kind_weights

    def truth(f):
        return 5e-3 + 2e-5 * max(f["num_tokens"], 256) + 2e-9 * f["prefill_pairs"] + 1e-5 * f["num_seqs"] ** 2

    rows = []
    for nd in (1, 3, 8, 20, 40):
        rows.append({"num_tokens": nd, "num_seqs": nd, "prefill_pairs": 0, "prefill_kv": 0, "decode_kv": nd * 4096})
        rows.append({"num_tokens": nd + 512, "num_seqs": nd + 1, "prefill_pairs": 512 * 4096, "prefill_kv": 4096,
                     "decode_kv": nd * 4096})
    for n in (2048, 8192, 16384):
        rows.append({"num_tokens": n, "num_seqs": 1, "prefill_pairs": n * n // 2, "prefill_kv": n, "decode_kv": 0})
    for r in rows:
        r["duration"] = truth(r)
    w = kind_weights(rows)
    assert w.mean() == pytest.approx(1.0)
    assert w[-3:].sum() == pytest.approx(w[0:10:2].sum()) == pytest.approx(w[1:10:2].sum())
    more = rows + [dict(r) for r in rows if not r["prefill_pairs"] for _ in range(4)]
    a, b = LatencyModel.fit(rows), LatencyModel.fit(more)
    for r in rows:
        assert b.predict_features(r) == pytest.approx(a.predict_features(r), rel=1e-9)
    # rows that sample a run (a window) keep their mix: there, five times the decodes pull harder
    sampled = [dict(r, kind="window") for r in rows]
    assert (kind_weights(sampled) == 1).all()
    c = LatencyModel.fit(sampled + [dict(r, kind="window") for r in rows if not r["prefill_pairs"] for _ in range(4)])
    assert any(abs(c.predict_features(r) / a.predict_features(r) - 1) > 1e-3 for r in rows)
    # mixed: the window rows weigh 1 each, the profile rows share their total by kind
    w = kind_weights(sampled[:4] + rows[4:])
    assert (w[:4] == w[0]).all() and w.mean() == pytest.approx(1.0)
