"""Schedulers, KV block accounting and the serving loop (serving/scheduler.py)."""
import pytest

from serving.scheduler import (BlockPool, Request, SarathiScheduler, VLLMScheduler, make_scheduler,
                               serve_loop)
from serving.trace import RequestSpec


def _decoding(pool, rid, prompt=100, out=50):
    """A running request whose prefill is done (first token out)."""
    r = Request(RequestSpec(rid, prompt, out))
    pool.allocate(rid, r.spec.total_len)
    r.prefilled, r.generated = prompt, 1
    return r


def test_57_decodes_leave_a_967_token_chunk():
    pool = BlockPool(100_000, 16)
    s = SarathiScheduler(pool, max_batch_size=999, chunk_size=1024)
    s.running = [_decoding(pool, i) for i in range(57)]
    s.add(Request(RequestSpec(1000, 16_000, 10)))
    b = s.schedule()
    assert len(b.decodes) == 57 and len(b.prefills) == 1
    assert b.prefills[0].q_len == 967 and b.prefills[0].start == 0
    assert b.num_tokens == 1024 and b.kind == "hybrid"
    # decode rows attend to prompt + generated tokens, their new token at the end
    assert all(w.q_len == 1 and w.kv_len == 101 and w.samples for w in b.decodes)


def test_sarathi_one_prefill_per_batch_and_chunks_continue():
    pool = BlockPool(10_000, 16)
    s = SarathiScheduler(pool, max_batch_size=999, chunk_size=512)
    s.add(Request(RequestSpec(0, 1100, 4)))
    s.add(Request(RequestSpec(1, 300, 4)))
    chunks = []
    for _ in range(3):
        b = s.schedule()
        assert len(b.prefills) == 1
        chunks.append((b.prefills[0].req.rid, b.prefills[0].start, b.prefills[0].q_len, b.prefills[0].samples))
        s.complete(b, 0.0, 1.0)
    # the last chunk of request 0 is 76 tokens and the batch stays that small: one prefill per batch
    assert chunks == [(0, 0, 512, False), (0, 512, 512, False), (0, 1024, 76, True)]
    b = s.schedule()
    assert [w.req.rid for w in b.decodes] == [0]
    assert b.prefills[0].req.rid == 1 and b.prefills[0].q_len == 300 and b.num_tokens == 301


def test_sarathi_decodes_fill_the_budget_no_prefill():
    pool = BlockPool(100_000, 16)
    s = SarathiScheduler(pool, max_batch_size=999, chunk_size=8)
    s.running = [_decoding(pool, i) for i in range(8)]
    s.add(Request(RequestSpec(99, 100, 2)))
    b = s.schedule()
    assert len(b.decodes) == 8 and not b.prefills and s.waiting


def test_admission_limited_by_batch_size_and_memory():
    pool = BlockPool(20, 16)   # 320 tokens
    s = SarathiScheduler(pool, max_batch_size=2, chunk_size=1000)
    for i in range(3):
        s.add(Request(RequestSpec(i, 100, 60)))   # 160 tokens = 10 blocks each
    b = s.schedule()
    s.complete(b, 0, 1)
    b = s.schedule()
    s.complete(b, 1, 2)
    assert [r.rid for r in s.running] == [0, 1] and pool.free_blocks == 0
    b = s.schedule()
    assert not b.prefills and len(b.decodes) == 2     # request 2 must wait

    pool = BlockPool(25, 16)
    s = SarathiScheduler(pool, max_batch_size=1, chunk_size=1000)
    for i in range(2):
        s.add(Request(RequestSpec(i, 100, 60)))
    s.complete(s.schedule(), 0, 1)
    assert len(s.running) == 1 and len(s.waiting) == 1   # room for it, but max_batch_size 1


def test_request_larger_than_cache_is_refused():
    s = SarathiScheduler(BlockPool(4, 16), 10, 64)
    with pytest.raises(ValueError, match="exceeds the whole KV cache"):
        s.add(Request(RequestSpec(0, 60, 10)))


def test_block_pool_contiguous_first_fit_and_merge():
    p = BlockPool(10, 4)
    assert p.allocate(0, 9) == 0          # 3 blocks
    assert p.allocate(1, 8) == 3          # 2 blocks
    assert p.allocate(2, 16) == 5         # 4 blocks
    p.free(1)
    assert not p.can_allocate(13)         # 2 + 1 free blocks, not contiguous
    assert p.allocate(3, 4) == 3          # first fit in the hole
    p.free(0)
    p.free(3)
    p.free(2)
    assert p._free == [[0, 10]] and p.free_blocks == 10


def test_vllm_prefill_first_whole_prompts_within_token_limit():
    pool = BlockPool(10_000, 16)
    s = VLLMScheduler(pool, max_batch_size=999, max_tokens=1000)
    for i, p in enumerate([400, 500, 300]):
        s.add(Request(RequestSpec(i, p, 3)))
    b = s.schedule()
    assert b.kind == "prefill" and [(w.req.rid, w.q_len) for w in b.prefills] == [(0, 400), (1, 500)]
    assert all(w.samples for w in b.prefills)
    s.complete(b, 0, 1)
    b = s.schedule()                       # the waiting prompt goes before the running decodes
    assert b.kind == "prefill" and [w.req.rid for w in b.prefills] == [2]
    s.complete(b, 1, 2)
    b = s.schedule()
    assert b.kind == "decode" and [w.req.rid for w in b.decodes] == [0, 1, 2]
    with pytest.raises(ValueError, match="token limit"):
        s.add(Request(RequestSpec(9, 1001, 3)))


def test_loop_token_accounting_and_times():
    """One request, prompt 2048, 3 output tokens, chunk 1024, 1 s per iteration: two prefill
    chunks (first token at t=2), then two decode iterations (t=3, 4)."""
    pool = BlockPool(1000, 16)
    s = make_scheduler({"name": "sarathi", "chunk_size": 1024, "max_batch_size": 8}, pool)
    res = serve_loop([RequestSpec(0, 2048, 3, 0.5)], s, lambda b, i: 1.0)
    r = res.requests[0]
    # nothing before the arrival at 0.5: the clock jumps there
    assert r.token_times == [2.5, 3.5, 4.5] and r.first_scheduled == 0.5 and r.finished
    assert [it["kind"] for it in res.iterations] == ["prefill", "prefill", "decode", "decode"]
    assert [it["decode_kv"] for it in res.iterations] == [0, 0, 2049, 2050]
    assert pool.free_blocks == 1000


@pytest.mark.parametrize("sched", [{"name": "sarathi", "chunk_size": 256, "max_batch_size": 5},
                                   {"name": "vllm", "max_tokens": 2000, "max_batch_size": 5}])
def test_offline_run_processes_every_token(sched):
    specs = [RequestSpec(i, 300 + 97 * i, 1 + (7 * i) % 40) for i in range(12)]
    pool = BlockPool(400, 16)
    res = serve_loop(specs, make_scheduler(sched, pool), lambda b, i: 0.01 + 1e-5 * b.num_tokens)
    its = res.iterations
    assert sum(it["prefill_tokens"] for it in its) == sum(s.prompt_len for s in specs)
    assert sum(it["num_decodes"] for it in its) == sum(s.output_len - 1 for s in specs)
    assert all(len(r.token_times) == r.spec.output_len and r.finished for r in res.requests)
    assert max(it["num_seqs"] for it in its) <= 5
    if sched["name"] == "vllm":
        assert all(it["kind"] != "hybrid" for it in its)
    else:
        assert all(it["num_prefills"] <= 1 and it["num_tokens"] <= 256 for it in its)


def test_strided_selection_executes_only_selected_iterations():
    specs = [RequestSpec(i, 300, 20) for i in range(6)]
    cfg = {"name": "vllm", "max_tokens": 1000, "max_batch_size": 999}
    ran = []
    res = serve_loop(specs, make_scheduler(cfg, BlockPool(100, 16)), lambda b, i: ran.append(i) or 1.0,
                     select=lambda fin, i: i >= 5 and (i - 5) % 4 == 0, max_iterations=6)
    assert ran == [5, 9, 13, 17, 21, 25]
    assert [it["iteration"] for it in res.iterations if it["measured"]] == ran
    assert all(it["duration"] == 0.0 for it in res.iterations if not it["measured"])


def test_fast_forward_is_exact_offline():
    """Skipping the first iterations (no execution) leaves the later schedule unchanged."""
    specs = [RequestSpec(i, 700, 40) for i in range(10)]
    cfg = {"name": "sarathi", "chunk_size": 128, "max_batch_size": 999}
    full = serve_loop(specs, make_scheduler(cfg, BlockPool(200, 16)), lambda b, i: 1.0)
    ff = serve_loop(specs, make_scheduler(cfg, BlockPool(200, 16)), lambda b, i: 1.0,
                    select=lambda fin, i: len(fin) >= 3, max_iterations=20)
    k = next(i for i, it in enumerate(ff.iterations) if it["measured"])
    assert k > 0 and sum(it["measured"] for it in ff.iterations) == 20
    keys = ("num_tokens", "num_decodes", "prefill_kv", "decode_kv", "prefill_rids")
    assert [[it[x] for x in keys] for it in ff.iterations] == [[it[x] for x in keys] for it in full.iterations[:k + 20]]
