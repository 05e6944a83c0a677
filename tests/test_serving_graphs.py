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
    stats = graphed.run_counters()
    decode_only = [it for it in res_g.iterations if it["prefill_tokens"] == 0]
    assert decode_only and stats["graphed_iterations"] == len(decode_only)
    assert stats["graph_keys"] >= 2            # several (rows, ctx) keys were met
    assert [r.tokens for r in res_e.requests] == [r.tokens for r in res_g.requests]
    assert len(eager.logits_log) == len(graphed.logits_log)
    for a, b in zip(eager.logits_log, graphed.logits_log):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    counters = eager.run_counters()
    assert {k: counters[k] for k in ("decode_graphs", "jit_compiles", "jit_compile_s")} == {
        "decode_graphs": False, "jit_compiles": 0, "jit_compile_s": 0.0}
    if backend == "POD":      # what POD ran on each hybrid iteration, and its plan's timing work
        hybrid = [it for it in res_e.iterations if it["prefill_tokens"] and it["num_decodes"]]
        ran = dict(c.split(":") for c in counters["pod_choices"].split())
        assert hybrid and sum(map(int, ran.values())) == len(hybrid)
        assert counters["plan_measurements"] >= 1 and counters["plan_measure_s"] > 0
        # every bucket's plan timed serial and both fused tilings (no Hopper kernel off a GPU)
        timed = dict(c.split(":") for c in counters["pod_candidates"].split())
        assert set(timed) == {"serial", "fused2", "fused4"} and len(set(timed.values())) == 1, timed
        assert counters["pod_rejected"] == ""


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


def test_latency_model_decode_slots_of_a_graphed_engine():
    from serving.graphs import graph_options
    from serving.simulator import LatencyModel, decode_slots

    g = graph_options({"batch_sizes": [1, 2, 4, 8], "min_context": 1024})
    dec = lambda n, kv, kmax, p=0: {"num_tokens": n + p, "num_seqs": n + (p > 0), "prefill_tokens": p,  # noqa: E731
                                    "prefill_kv": 4 * p, "prefill_pairs": p * p, "num_decodes": n,
                                    "decode_kv": kv, "decode_kv_max": kmax}
    assert decode_slots(dec(3, 3000, 1500), None) == 0.0                 # eager: the column is off
    assert decode_slots(dec(3, 3000, 1500), g) == 4 * 2048               # 4 rows x the 2K bound
    assert decode_slots(dec(1, 500, 500), g) == 1 * 1024                 # at least min_context
    assert decode_slots(dec(9, 9000, 1000), g) == 9000                   # no graph: the keys
    assert decode_slots(dec(3, 3000, 1500, p=64), g) == 3000             # mixed: eager, the keys
    # durations that follow the graph's box are fitted exactly; an eager fit of them is not
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(60):
        n, kmax = int(rng.integers(1, 9)), int(rng.integers(600, 9000))
        kv = int(kmax + rng.integers(0, kmax) * (n - 1))
        f = dec(n, kv, kmax)
        rows.append({**f, "duration": 2e-3 + 5e-4 * n + 3e-8 * decode_slots(f, g)})
    m = LatencyModel.fit(rows, graphs=g)
    assert m.stats["max_abs_rel_err"] < 1e-6
    assert m.stats["max_abs_rel_err"] < LatencyModel.fit(rows).stats["max_abs_rel_err"]
    back = LatencyModel.from_dict(m.to_dict())
    assert back.graphs == g and back.predict_features(rows[0]) == m.predict_features(rows[0])
    assert "graphs" not in LatencyModel.fit(rows).to_dict()


def test_graph_factors_take_each_replayed_keys_measured_cost():
    """A replay whose cost is off the line in slots (its launch geometry) is predicted from its own
    key's rows; a key no row replayed keeps the line; eager fits have no factors."""
    from serving.graphs import graph_options
    from serving.simulator import LatencyModel, decode_slots, graph_key

    g = graph_options({"batch_sizes": [1, 2, 4, 8], "min_context": 1024})
    dec = lambda n, kmax: {"num_tokens": n, "num_seqs": n, "prefill_tokens": 0, "prefill_kv": 0,  # noqa: E731
                           "prefill_pairs": 0, "num_decodes": n, "decode_kv": n * kmax, "decode_kv_max": kmax}
    assert graph_key(dec(3, 3000), g) == "4x4096" and graph_key(dec(3, 3000), None) is None
    assert graph_key(dict(dec(3, 3000), prefill_tokens=5), g) is None and graph_key(dec(9, 100), g) is None
    off = {"4x4096": 1.3, "2x2048": 0.8}           # keys whose replays cost more / less than the line
    line = lambda f: 2e-3 + 5e-4 * f["num_seqs"] + 3e-8 * decode_slots(f, g)  # noqa: E731
    rows = []
    for n in (1, 2, 3, 4, 5, 8):
        for kmax in (900, 1500, 3000, 6000):
            f = dec(n, kmax)
            rows.append({**f, "duration": line(f) * off.get(graph_key(f, g), 1.0)})
    m = LatencyModel.fit(rows, graphs=g)
    for r in rows:
        assert m.predict_features(r) == pytest.approx(r["duration"], rel=0.03)
    assert m.graph_factors["4x4096"] / m.graph_factors["4x8192"] == pytest.approx(1.3, rel=0.02)
    unseen = dec(8, 20000)                          # 8x32768: no row replayed it
    assert graph_key(unseen, g) not in m.graph_factors and m.predict_features(unseen) == m._linear(unseen)
    assert LatencyModel.from_dict(m.to_dict()).graph_factors == m.graph_factors
    assert LatencyModel.fit(rows).graph_factors == {}


def test_graph_options_and_calibration_refuse_mixed_settings(tmp_path):
    import json

    from serving.graphs import graph_options
    from serving.run import _graph_options_of

    assert graph_options(True) == {"batch_sizes": list(DEFAULT_BATCH_SIZES), "min_context": 1024}
    with pytest.raises(ValueError, match="unknown option"):
        graph_options({"min_ctx": 5})
    for rid, dg in (("a", True), ("b", {"min_context": 1024}), ("c", {"min_context": 64})):
        d = tmp_path / "cfg" / "runs" / rid
        d.mkdir(parents=True)
        (d / "done.json").write_text(json.dumps({"run": {"id": rid, "decode_graphs": dg}}))
    assert _graph_options_of(["a", "b"], ["cfg"], tmp_path)["min_context"] == 1024
    with pytest.raises(ValueError, match="2 decode-graph settings"):
        _graph_options_of(["a", "c"], ["cfg"], tmp_path)
