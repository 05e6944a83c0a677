"""Tensor parallelism of the serving engine on the CPU: gloo, the tiny model, float32.

The worker ranks are separate processes; every collective has a short timeout (SERVING_TP_TIMEOUT_S)
and every join a timeout, so a broken rank fails a test instead of hanging it."""
import os
import time

import pandas as pd
import pytest
import torch
import yaml

from serving.engine import Engine
from serving.model import MODELS, LlamaModel, shard_config
from serving.tensor_parallel import COMM_ENV, TPGroup
from serving.trace import make_requests

TINY = MODELS["tiny"]          # 4 q heads, 2 kv heads, intermediate 256
LENGTHS = [(40, 6), (75, 4), (20, 9), (130, 3), (33, 12)]
SARATHI = {"name": "sarathi", "chunk_size": 32, "max_batch_size": 8}
VLLM = {"name": "vllm", "max_tokens": 200, "max_batch_size": 8}
KW = dict(device="cpu", dtype=torch.float32, block_size=16, num_blocks=40, init_range=0.08, prompt="pseudo_random")
TIMEOUT_S = 60


@pytest.fixture(autouse=True)
def _short_timeouts(monkeypatch):
    monkeypatch.setenv("SERVING_TP_TIMEOUT_S", str(TIMEOUT_S))


@pytest.fixture(scope="class")
def tp2():
    os.environ["SERVING_TP_TIMEOUT_S"] = str(TIMEOUT_S)
    group = TPGroup.start(TINY, 2, "cpu", torch.float32, init_range=0.08, block_size=16, num_blocks=40)
    yield group
    group.close(timeout_s=20)
    assert all(p.returncode == 0 for p in group.procs)      # the workers stopped cleanly


def _run(engine, sched, forced=None):
    engine.keep_logits = True
    engine.logits_log = []
    engine.forced_tokens = forced
    return engine.run(make_requests(LENGTHS, [0.0] * len(LENGTHS)), sched)


def test_shards_make_up_the_same_full_model():
    full = LlamaModel(TINY, "cpu", torch.float32, seed=0, init_range=0.08)
    r0, r1 = (LlamaModel(TINY, "cpu", torch.float32, seed=0, init_range=0.08, tp=2, rank=r) for r in (0, 1))
    d, H, Hkv, inter = TINY.head_dim, TINY.q_heads, TINY.kv_heads, TINY.intermediate
    assert r0.local.q_heads == 2 and r0.local.kv_heads == 1 and r0.local.intermediate == inter // 2
    for li in range(TINY.layers):
        F, A, B = full.layers[li], r0.layers[li], r1.layers[li]
        q, k, v = F["qkv"].split([H * d, Hkv * d, Hkv * d])
        for r, L in enumerate((A, B)):     # column-parallel QKV by heads: rank r's q, k, v rows
            lq, lk, lv = L["qkv"].split([H // 2 * d, Hkv // 2 * d, Hkv // 2 * d])
            assert torch.equal(lq, q[r * H // 2 * d:(r + 1) * H // 2 * d])
            assert torch.equal(lk, k[r * d:(r + 1) * d]) and torch.equal(lv, v[r * d:(r + 1) * d])
        assert torch.equal(torch.cat([A["o"], B["o"]], 1), F["o"])          # row-parallel o_proj
        assert torch.equal(torch.cat([A["down"], B["down"]], 1), F["down"])  # row-parallel down
        g, u = F["gate_up"].split(inter)
        assert torch.equal(torch.cat([A["gate_up"][:inter // 2], B["gate_up"][:inter // 2]]), g)
        assert torch.equal(torch.cat([A["gate_up"][inter // 2:], B["gate_up"][inter // 2:]]), u)
    for name in ("embed", "lm_head"):      # replicated
        assert torch.equal(getattr(r0, name), getattr(full, name)) and torch.equal(getattr(r1, name), getattr(full, name))


@pytest.mark.parametrize("tp,field", [(3, "q_heads=4"), (4, "kv_heads=2")])
def test_tp_that_does_not_divide_the_heads_is_a_clear_error(tp, field):
    t0 = time.time()
    for make in (lambda: shard_config(TINY, tp), lambda: Engine(TINY, "FA_Serial", tp=tp, **KW),
                 lambda: TPGroup.start(TINY, tp, "cpu", torch.float32, num_blocks=8)):
        with pytest.raises(ValueError, match=rf"tp={tp} does not divide tiny's .*{field}"):
            make()
    assert time.time() - t0 < 5      # refused before any process starts


class TestOneTP2Group:
    """Tests sharing one started TP2 group (one process group per process: the others come after)."""

    @pytest.mark.parametrize("sched", [SARATHI, VLLM], ids=["sarathi", "vllm"])
    def test_tp2_logits_equal_tp1_through_the_engine_loop(self, tp2, sched):
        """Every sampled logit row of every iteration (prefill chunks, hybrids, decodes) of TP2 equals
        TP1's up to float32 summation order; TP2 is fed TP1's tokens (teacher forcing, as the backend
        check does) so that a greedy flip could not change later inputs. Two backends share the group."""
        for backend in ("FA_Serial", "REF"):
            e1 = Engine(TINY, backend, **KW)
            r1 = _run(e1, sched)
            e2 = Engine(TINY, backend, tp_group=tp2, **KW)
            assert e2.tp == 2 and e2.gpus == 0 and e2.cache is tp2.cache
            r2 = _run(e2, sched, forced={r.rid: r.tokens for r in r1.requests})
            kinds = {it["kind"] for it in r1.iterations}
            assert kinds == ({"prefill", "hybrid", "decode"} if sched is SARATHI else {"prefill", "decode"})
            assert [it["num_tokens"] for it in r1.iterations] == [it["num_tokens"] for it in r2.iterations]
            assert len(e1.logits_log) == len(e2.logits_log) == len(r1.iterations)
            scale = max(float(a.abs().max()) for a in e1.logits_log if a.numel())
            assert scale > 0.5                                  # logits that are not trivially tiny
            for a, b in zip(e1.logits_log, e2.logits_log):
                assert a.shape == b.shape
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-5 * scale), float((a - b).abs().max())
                assert torch.equal(a.argmax(-1), b.argmax(-1))


    def test_tp2_run_differs_from_a_wrong_model(self, tp2):
        """The comparison above can fail: TP1 with another seed's weights is far from TP2."""
        e1 = Engine(TINY, "FA_Serial", seed=1, **KW)
        _run(e1, SARATHI)
        e2 = Engine(TINY, "FA_Serial", tp_group=tp2, **KW)
        _run(e2, SARATHI)
        assert max(float((a - b).abs().max()) for a, b in zip(e1.logits_log, e2.logits_log) if a.numel()) > 0.1


    def test_each_rank_kv_cache_holds_only_its_heads(self, tp2):
        e1 = Engine(TINY, "FA_Serial", **KW)
        _run(e1, SARATHI)
        e2 = Engine(TINY, "FA_Serial", tp_group=tp2, **KW)
        _run(e2, SARATHI)
        kv = tp2.gather_kv()
        assert len(kv) == 2
        shape = (TINY.layers, 40, 16, TINY.kv_heads // 2, TINY.head_dim)
        # the token rows this run wrote (e1's cache is fresh; the group's holds earlier tests' too)
        written = e1.cache.k.abs().sum((0, 3, 4)) > 0
        assert 0 < int(written.sum()) < written.numel()
        for r, (k, v) in enumerate(kv):
            assert tuple(k.shape) == tuple(v.shape) == shape
            assert torch.allclose(k[:, written], e1.cache.k[..., r:r + 1, :][:, written], atol=1e-5)
            assert torch.allclose(v[:, written], e1.cache.v[..., r:r + 1, :][:, written], atol=1e-5)
            assert k.abs().sum() > 0
        assert not torch.allclose(kv[0][0], kv[1][0])
        # the same blocks cost half the bytes per rank: tp times the tokens per GPU memory
        assert tp2.cache.k.numel() * 2 == e1.cache.k.numel() and tp2.cache.capacity_tokens == e1.cache.capacity_tokens


    def test_time_batch_and_breakdown_run_at_tp2(self, tp2):
        e2 = Engine(TINY, "FA_Serial", tp_group=tp2, **KW)
        t = e2.breakdown(16, 64, 4, 64, repeats=1)
        assert {"total", "prefill", "decode"} <= set(t) and t["total"] > 0
        with pytest.raises(MemoryError, match="KV blocks"):
            e2.breakdown(16, 64, 40, 512, repeats=1)
        e2.execute(e2.synthetic_batch(8, 8, 2, 32))        # the group is still in step after the refusal


def test_a_dead_rank_raises_instead_of_hanging():
    e2 = Engine(TINY, "FA_Serial", tp=2, **KW)
    try:
        assert os.environ.get("NCCL_NVLS_ENABLE") == "0"
        assert all(os.environ.get(k) == v for k, v in COMM_ENV.items())
        proc = e2.tp_group.procs[0]
        proc.kill()
        proc.wait(10)
        t0 = time.time()
        with pytest.raises(RuntimeError, match="rank 1 exited"):
            _run(e2, SARATHI)
        assert time.time() - t0 < 10
    finally:
        e2.close()
    assert e2.tp_group.closed


def test_serving_run_tags_rows_with_tp_and_gpus(tmp_path):
    """serving.run with ``tp: 2`` (one group for both runs of the same model) and a TP1 run beside it."""
    from serving.run import main

    doc = {"name": "tpmini",
           "defaults": {"device": "cpu", "dtype": "float32", "model": "tiny", "num_blocks": 64, "block_size": 16,
                        "init_range": 0.05, "warmup_iterations": 1, "backend": "FA_Serial"},
           "runs": [{"kind": "window", "id": "w-tp{tp}", "workload": {"kind": "fixed", "n": 10, "total": 96, "pd_ratio": 5},
                     "skip_completed": 2, "iterations": 6, "scheduler": {"name": "sarathi", "chunk_size": 32},
                     "matrix": {"tp": [1, 2]}},
                    {"kind": "online", "id": "on-tp2", "tp": 2, "scheduler": {"name": "sarathi", "chunk_size": 32},
                     "workload": {"kind": "explicit", "lengths": [[40, 5], [60, 3]], "qps": 30.0}}]}
    cfg = tmp_path / "tpmini.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    assert main([str(cfg), "--out", str(tmp_path / "out"), "--stage", "gpu"]) == 0
    assert not torch.distributed.is_initialized()       # main's engine store stopped its group
    summ = pd.read_csv(tmp_path / "out" / "tpmini" / "summary.csv").set_index("run_id")
    assert summ.loc["w-tp1", "tp"] == 1 and summ.loc["w-tp2", "tp"] == 2 and summ.loc["on-tp2", "tp"] == 2
    assert (summ["gpus"] == 0).all()
    assert summ.loc["w-tp1", "num_blocks"] == summ.loc["w-tp2", "num_blocks"] == 64
    it = pd.read_csv(tmp_path / "out" / "tpmini" / "runs" / "w-tp2" / "iterations.csv.gz")
    assert (it["tp"] == 2).all() and (it["gpus"] == 0).all()
    it1 = pd.read_csv(tmp_path / "out" / "tpmini" / "runs" / "w-tp1" / "iterations.csv.gz")
    assert (it1["tp"] == 1).all() and it1["num_tokens"].tolist() == it["num_tokens"].tolist()   # same schedule
    req = pd.read_csv(tmp_path / "out" / "tpmini" / "runs" / "on-tp2" / "requests.csv")
    assert (req["tp"] == 2).all() and len(req) == 2
