"""Decode graphs (serving/graphs.py) on the CPU: the padded, static decode path (what a CUDA graph
captures) gives the eager path's logits for every backend that supports it; keys, padding, the
scratch block and the serving loop's untimed seconds."""
import numpy as np
import pytest
import torch

from serving.backends import registered
from serving.engine import Engine
from serving.graphs import DEFAULT_BATCH_SIZES, DecodeGraphs
from serving.kv_cache import KVCache
from serving.model import MODELS, LlamaModel
from serving.run import check_backends
from serving.scheduler import BlockPool, make_scheduler, serve_loop
from serving.trace import RequestSpec

TINY = MODELS["tiny"]
# decode lengths off every page (16) and tile, more decodes than the smallest batch sizes
LENGTHS = [(40, 9), (75, 7), (20, 11), (130, 5), (33, 12), (3, 10)]
SARATHI = {"name": "sarathi", "chunk_size": 32, "max_batch_size": 8}


def _run(backend, graphs, options=None):
    model = LlamaModel(TINY, "cpu", torch.float32, seed=0, init_range=0.08)
    cache = KVCache(TINY, 64, 16, torch.float32, "cpu")
    eng = Engine(TINY, backend, "cpu", torch.float32, model=model, cache=cache, prompt="pseudo_random",
                 backend_options=options or {}, decode_graphs=graphs)
    eng.keep_logits = True
    res = eng.run([RequestSpec(i, p, d) for i, (p, d) in enumerate(LENGTHS)], SARATHI)
    return eng, res


@pytest.mark.parametrize("backend,options", [("FA_Serial", {}), ("POD", {"decode_split": 3})],
                         ids=["FA_Serial", "POD-split3"])
def test_static_decode_path_equals_eager(backend, options):
    eager, res_e = _run(backend, False, options)
    graphed, res_g = _run(backend, {"batch_sizes": [1, 2, 4, 8], "min_context": 16}, options)
    stats = graphed.graph_stats()
    decode_only = [it for it in res_g.iterations if it["prefill_tokens"] == 0]
    assert decode_only and stats["graphed_iterations"] == len(decode_only)
    assert stats["graph_keys"] >= 2            # several (rows, ctx) keys were met
    assert [r.tokens for r in res_e.requests] == [r.tokens for r in res_g.requests]
    assert len(eager.logits_log) == len(graphed.logits_log)
    for a, b in zip(eager.logits_log, graphed.logits_log):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert eager.graph_stats() == {"decode_graphs": False}


def test_check_backends_reports_graphed_rows():
    df = check_backends(TINY, ["FA_Serial"], "cpu", torch.float32, {"kind": "explicit", "lengths": LENGTHS},
                        SARATHI, init_range=0.08, decode_graphs={"batch_sizes": [2, 4, 8], "min_context": 16})
    row = df.set_index("backend").loc["FA_Serial"]
    assert row["ok"] and bool(row["decode_graphs"]), df.to_string()
    assert row["tokens_equal"] == row["tokens_total"]


def test_a_wrong_padding_is_caught(monkeypatch):
    """Padding rows given a real request's keys and slot overwrite its cache: the logits move."""
    from serving import graphs

    orig = graphs.DecodeGraphs._fill

    def bad_fill(self, g, arrays):
        orig(self, g, arrays)
        if g.rows > len(arrays["decode_kv"]):
            g.meta.slots[len(arrays["decode_kv"]):] = int(arrays["slots"][0])

    eager, _ = _run("FA_Serial", False)
    monkeypatch.setattr(graphs.DecodeGraphs, "_fill", bad_fill)
    bad, _ = _run("FA_Serial", {"batch_sizes": [8], "min_context": 16})
    assert any(not torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(eager.logits_log, bad.logits_log))


def test_keys_padding_and_scratch_block():
    model = LlamaModel(TINY, "cpu", torch.float32, seed=0)
    cache = KVCache(TINY, 10, 16, torch.float32, "cpu")
    eng = Engine(TINY, "FA_Serial", "cpu", torch.float32, model=model, cache=cache, decode_graphs=True)
    g = eng.graphs
    assert g.sizes == list(DEFAULT_BATCH_SIZES) and g.scratch_row == 9 * 16
    assert eng.fresh_pool().num_blocks == 9          # the scratch block is never handed out
    arrays = lambda kv: {"prefills": [], "decode_kv": kv}  # noqa: E731
    assert g.key(arrays([5])) == (1, 1024)
    assert g.key(arrays([5, 1025, 7])) == (4, 2048)
    assert g.key(arrays([3] * 9)) == (16, 1024)
    assert g.key(arrays([3] * 300)) is None              # past the largest size: eager
    assert g.key({"prefills": [(0, 4, 0, 4)], "decode_kv": [5]}) is None
    assert g.key(arrays([])) is None
    with pytest.raises(ValueError, match="positive"):
        DecodeGraphs(eng, batch_sizes=[0, 4])


def test_backends_that_plan_on_the_host_are_refused():
    assert registered()["FA_Serial"].supports_decode_graphs and registered()["POD"].supports_decode_graphs
    assert not any(registered()[n].supports_decode_graphs for n in ("REF", "FI_Serial", "FI_Batched", "FI_POD"))
    cache = KVCache(TINY, 10, 16, torch.float32, "cpu")
    with pytest.raises(ValueError, match="REF backend plans on the host"):
        Engine(TINY, "REF", "cpu", torch.float32, cache=cache, decode_graphs=True)


def test_serve_loop_leaves_untimed_seconds_out():
    clock = iter(np.arange(0.0, 100.0, 1.0))      # every wall-clock read advances 1 s

    def execute(batch, index):
        return 0.25 if index == 0 else 0.0

    res = serve_loop([RequestSpec(0, 8, 3)], make_scheduler({"name": "vllm", "max_tokens": 64}, BlockPool(8, 16)),
                     execute, wall_clock=lambda: float(next(clock)))
    assert [it["duration"] for it in res.iterations] == [0.75, 1.0, 1.0]


def test_calibration_keeps_graphed_runs_apart():
    from serving.run import _flag, calibration_key

    assert calibration_key("llama-3-8b", "POD") == "llama-3-8b|POD"
    assert calibration_key("llama-3-8b", "POD", 1, True) == "llama-3-8b|POD|graphs"
    assert calibration_key("llama-3-8b", "POD", 2, "True") == "llama-3-8b|tp2|POD|graphs"
    assert calibration_key("llama-3-8b", None, 1, True) == "llama-3-8b"       # the KV size is shared
    assert not _flag(float("nan")) and not _flag(None) and not _flag("False") and _flag("true")
