"""Experiment YAML loading, validation messages and grid expansion."""
import functools
import re
import textwrap

import pytest

from experiments import grid as G

# Expansion tests use a placeholder method name; the name checks have tests of their own below.
load = functools.partial(G.load_experiment, check_methods=False)

FIG11 = "experiments/figure11.yaml"


def write(tmp_path, text, name=None):
    """Write an experiment YAML named after its ``name:`` field (the loader requires it)."""
    text = textwrap.dedent(text)
    if name is None:
        m = re.search(r"^name:\s*(\S+)\s*$", text, re.M)
        name = f"{m.group(1) if m else 'exp'}.yaml"
    p = tmp_path / name
    p.write_text(text)
    return str(p)


MINIMAL = """\
name: t
models: [llama-3-8b]
grid: {chunk_size: [512], context_len: [1024], decode_batch: [4]}
methods: [A]
"""


def test_figure11_counts():
    exp = load(FIG11)
    rows = G.expand(exp, gpu_memory_bytes=80e9)
    assert len(G.groups(rows)) == 315
    assert len(rows) == 4410
    assert len({r.row_key for r in rows}) == 4410
    assert exp.baseline == "FA_Serial" and exp.plot == "figure11"
    assert exp.timing == {"warmup": 1, "repeats": 3, "calls": 3, "l2_flush": False, "cuda_graph": False,
                          "interleave": True, "queue_ahead": True}
    assert exp.filter == {"min_part_fraction": 0.2}
    labels = [m.label for m in exp.methods]
    assert labels[-1] == "POD" and len(set(labels)) == len(labels)
    assert {"FA_prefill", "FA_decode", "FA_BackToBack", "FA_Streams", "FI_prefill_auto", "FI_prefill_fa2",
            "FI_decode", "FI_Batched_fa2", "FI_Batched_auto", "FI_POD", "OURS_Serial", "OURS_Streams",
            "OURS_CTA"} <= set(labels)
    # groups are contiguous and each allocates the context as prefill KV capacity
    for gk, grows in G.groups(rows):
        s = grows[0].spec
        assert [r.chunk_idx for r in grows] == list(range(s.decode_ctx // s.prefill_len))
        assert [r.spec.prefill_kv_len for r in grows] == [(i + 1) * s.prefill_len for i in range(len(grows))]
        assert all(r.prefill_kv_cap == s.decode_ctx for r in grows)


def test_memory_fill_hand_computed():
    m = G.resolve_model("llama-3-8b-tp2")
    assert (m.q_heads, m.kv_heads, m.head_dim, m.tp, m.params_bytes) == (16, 4, 128, 2, 16e9)
    # per request: 4 kv heads * 128 * 2 (K,V) * 2 B * 32 layers * 12288 = 805306368 B;
    # m = int(0.9 * (80e9 - 16e9 / 2) // 805306368) = int(64.8e9 // 805306368) = 80
    assert G.memory_fill_batches(m, "float16", 12288, [0.9, 0.95, 1.0], 0.9, 80e9) == [72, 76, 80]
    rows = G.expand(load(FIG11), gpu_memory_bytes=80e9)
    got = sorted({r.spec.decode_batch for r in rows if r.spec.model.name == "llama-3-8b-tp2"
                  and r.spec.decode_ctx == 12288})
    assert got == [72, 76, 80]
    k = next(r for r in rows if r.spec.model.name == "llama-3-8b-tp2" and r.spec.prefill_len == 512
             and r.spec.prefill_kv_len == 1024 and r.spec.decode_batch == 76 and r.spec.decode_ctx == 12288)
    assert k.row_key == "llama-3-8b-tp2|float16|p512@1024|d76x12288|ps16"
    assert k.group_key == "llama-3-8b-tp2|float16|p512|d76x12288|ps16" and k.chunk_idx == 1


def test_memory_fill_needs_memory(monkeypatch):
    monkeypatch.setattr(G, "device_memory_bytes", lambda: None)
    with pytest.raises(G.ExperimentError, match="--gpu-memory-gb"):
        G.expand(load(FIG11))


def test_memory_fill_drops_duplicates_and_pins(tmp_path):
    p = write(tmp_path, """\
        name: t
        models: [{name: tiny, q_heads: 4, kv_heads: 2, head_dim: 64, layers: 1}]
        grid:
          chunk_size: [16]
          context_len: [32]
          decode_batch: {memory_fill: {fractions: [0.9, 0.95, 1.0], memory_fraction: 1.0, gpu_memory_gb: 0.0000328}}
        methods: [A]
    """)
    # 32800 B / (2*64*2*2*1*32 = 16384 B) -> m = 2 -> [int(1.8), int(1.9), 2] = [1, 2]
    rows = G.expand(load(p))
    assert sorted({r.spec.decode_batch for r in rows}) == [1, 2]


@pytest.mark.parametrize("snippet, where", [
    ("grid: {chunk_size: [512, abc], context_len: [1024], decode_batch: [4]}", "grid.chunk_size[1]"),
    ("grid: {chunk_size: [512], context_len: [1024], decode_batch: [4], bogus: 1}", "grid"),
    ("grid: {chunk_size: [512], context_len: [1024], decode_batch: {memory_fill: {fractions: [2]}}}",
     "grid.decode_batch.memory_fill.fractions[0]"),
    ("grid: {chunk_size: [512], context_len: [1024], decode_batch: [-1]}", "grid.decode_batch[0]"),
    ("grid: {chunk_size: [512], context_len: [1024]}", "grid"),
])
def test_yaml_errors_name_file_and_field(tmp_path, snippet, where):
    p = write(tmp_path, f"name: t\nmodels: [llama-3-8b]\nmethods: [A]\n{snippet}\n")
    with pytest.raises(G.ExperimentError) as e:
        load(p)
    assert str(e.value).startswith(f"{p}: {where}: "), str(e.value)


def test_yaml_error_messages(tmp_path):
    p = write(tmp_path, MINIMAL + "colour: red\n")
    with pytest.raises(G.ExperimentError, match=r"\(top level\): Additional properties.*'colour'"):
        load(p)
    p = write(tmp_path, MINIMAL + "timing: {repeats: 0}\n")
    with pytest.raises(G.ExperimentError, match=r"timing\.repeats: 0 is less than the minimum of 1"):
        load(p)
    p = write(tmp_path, MINIMAL + "smoke: {timing: {calls: x}}\n")
    with pytest.raises(G.ExperimentError, match=r"smoke\.timing\.calls: 'x' is not of type 'integer'"):
        load(p)
    p = write(tmp_path, MINIMAL + "dtype: float8\n")
    with pytest.raises(G.ExperimentError, match="dtype"):
        load(p)
    p = write(tmp_path, "name: t\nmethods: [A]\nmodels: [llama-3-8b]\n")
    with pytest.raises(G.ExperimentError, match="grid"):
        load(p)
    with pytest.raises(G.ExperimentError, match="not found"):
        load(str(tmp_path / "missing.yaml"))
    p = write(tmp_path, "name: [unclosed\n")
    with pytest.raises(G.ExperimentError, match="invalid YAML"):
        load(p)


def test_models():
    assert G.resolve_model("yi-6b-tp4").q_heads == 8 and G.resolve_model("yi-6b-tp4").kv_heads == 1
    assert G.resolve_model("llama-2-7b").group_size == 1
    with pytest.raises(G.ExperimentError, match="tp=3 does not divide"):
        G.resolve_model("llama-3-8b-tp3")
    with pytest.raises(G.ExperimentError, match="unknown model 'gpt-5'"):
        G.resolve_model("gpt-5")
    m = G.resolve_model({"name": "x", "q_heads": 8, "kv_heads": 4, "head_dim": 64, "tp": 2})
    assert (m.name, m.q_heads, m.kv_heads) == ("x-tp2", 4, 2)


def test_methods_and_duplicates(tmp_path):
    p = write(tmp_path, MINIMAL.replace("methods: [A]", "methods: [A, {name: B, method: A, options: {x: 1}}]"))
    exp = load(p)
    assert [(m.label, m.method, m.options) for m in exp.methods] == [("A", "A", {}), ("B", "A", {"x": 1})]
    p = write(tmp_path, MINIMAL.replace("methods: [A]", "methods: [A, {method: A}]"))
    with pytest.raises(G.ExperimentError, match=r"methods\[1\]: duplicate method label 'A'"):
        load(p)


def test_smoke_expansion():
    exp = load(FIG11, smoke=True)
    assert exp.smoke and [m.name for m in exp.models] == ["tiny-gqa2", "tiny-gqa3"]
    assert exp.timing == {"warmup": 0, "repeats": 2, "calls": 1, "l2_flush": False, "cuda_graph": False,
                          "interleave": True, "queue_ahead": True}
    assert exp.grid["skip_context_below_chunk"] is True and exp.grid["page_size"] == 16
    assert [m.label for m in exp.methods][-1] == "POD" and len(exp.methods) == 8
    rows = G.expand(exp)  # a plain list of batch sizes needs no GPU
    # per model and batch size: cs16 -> 3 + 4 chunks, cs32 -> 1 + 2 chunks
    assert len(rows) == 2 * 2 * 10 and len(G.groups(rows)) == 2 * 2 * 2 * 2
    assert rows[0].row_key == "tiny-gqa2|float16|p16@16|d2x48|ps16"


def test_configs_and_chunk_index(tmp_path):
    p = write(tmp_path, """\
        name: t
        dtype: [float16, bfloat16]
        models: [llama-3-8b-tp2]
        grid: {chunk_size: [512, full], context_len: [16384], decode_batch: [64], chunk_index: [28, 29, -1, 99]}
        configs:
          - {prefill_len: 1024, prefill_kv_len: 12288, decode_batch: 80, decode_ctx: 12288}
          - {model: llama-2-7b, dtype: float16, prefill_len: 0, decode_batch: 8, decode_ctx: 4096}
          - {prefill_len: 1024, prefill_kv_len: 4096, decode_batch: 80, decode_ctx: 12288}
        methods: [A]
    """)
    rows = G.expand(load(p))
    keys = [r.row_key for r in rows]
    grid_part = [k for k in keys if "@16384" in k or "p512" in k]
    assert grid_part[:3] == ["llama-3-8b-tp2|float16|p512@14848|d64x16384|ps16",
                             "llama-3-8b-tp2|float16|p512@15360|d64x16384|ps16",
                             "llama-3-8b-tp2|float16|p512@16384|d64x16384|ps16"]
    assert "llama-3-8b-tp2|float16|p16384@16384|d64x16384|ps16" in keys
    assert "llama-2-7b|float16|p0@0|d8x4096|ps16" in keys
    # the two float16 1024-chunks with the same decodes share one group (capacity 12288), contiguously
    g = [r for r in rows if r.group_key == "llama-3-8b-tp2|float16|p1024|d80x12288|ps16"]
    assert [r.chunk_idx for r in g] == [11, 3] and {r.prefill_kv_cap for r in g} == {12288}
    idx = [i for i, r in enumerate(rows) if r in g]
    assert idx == list(range(idx[0], idx[0] + 2))
    assert len(rows) == 2 * (3 + 1) + 2 * 2 + 1


def test_duplicate_rows_rejected(tmp_path):
    p = write(tmp_path, """\
        name: t
        models: [yi-6b]
        configs:
          - {prefill_len: 16, decode_batch: 0}
          - {prefill_len: 16, decode_batch: 0}
        methods: [A]
    """)
    with pytest.raises(G.ExperimentError, match="appears twice"):
        G.expand(load(p))


def test_sm_fill_batches_follow_the_sm_count(tmp_path, monkeypatch):
    p = write(tmp_path, """\
        name: t
        models: [yi-6b]
        grid: {chunk_size: [512], context_len: [16384], chunk_index: [0], decode_batch: {sm_fill: {ctas_per_sm: 2, extra: [0, 1]}}}
        methods: [A]
    """)
    exp = load(p)
    # yi-6b: 4 KV heads; the paper's 54 and 55 decodes on 108 SMs, 66 and 67 on 132
    assert sorted({r.spec.decode_batch for r in G.expand(exp, sm_count=108)}) == [54, 55]
    assert sorted({r.spec.decode_batch for r in G.expand(exp, sm_count=132)}) == [66, 67]
    monkeypatch.setattr(G, "device_sm_count", lambda: None)
    with pytest.raises(G.ExperimentError, match="sm_fill.sm_count"):
        G.expand(exp)
    pinned = write(tmp_path, open(p).read().replace("extra: [0, 1]}", "extra: [0], sm_count: 80}"))
    assert {r.spec.decode_batch for r in G.expand(load(pinned))} == {40}
    assert {r.spec.decode_batch for r in G.expand(load(pinned), sm_count=132)} == {66}   # an argument wins
    assert G.pinned_resources(load(pinned)) == {"sm_count"} and G.pinned_resources(exp) == set()
    bad = write(tmp_path, open(p).read().replace("ctas_per_sm: 2", "ctas_per_sm: 0"))
    with pytest.raises(G.ExperimentError, match="sm_fill.ctas_per_sm"):
        load(bad)


def test_every_shipped_experiment_loads():
    import glob

    for path in sorted(glob.glob("experiments/*.yaml") + glob.glob("experiments/studies/*.yaml")):
        if path.endswith("models.yaml"):
            continue
        for smoke in (False, True):
            exp = G.load_experiment(path, smoke=smoke)   # every check, the smoke section's too
            assert G.expand(exp, gpu_memory_bytes=80e9, sm_count=132), path


# ------------------------------------------------------------------------------------------
# complete validation before any GPU work (names, baseline, filter, plot, smoke section)
# ------------------------------------------------------------------------------------------
CHECKED = """\
name: checked
models: [{name: m, q_heads: 4, kv_heads: 2, head_dim: 64, layers: 1}]
grid: {chunk_size: [16], context_len: [32], decode_batch: [2]}
methods: [TEST_correct, TEST_wrong]
baseline: TEST_correct
filter: {min_part_fraction: 0}
smoke: {timing: {repeats: 1}}
"""


def test_a_valid_experiment_passes_every_check(tmp_path):
    exp = G.load_experiment(write(tmp_path, CHECKED), smoke=True)
    assert [m.label for m in exp.methods] == ["TEST_correct", "TEST_wrong"] and exp.timing["repeats"] == 1


@pytest.mark.parametrize("change,message", [
    (("name: checked", "name: other"), r"checked\.yaml: name: 'other' must equal the file name 'checked'"),
    (("methods: [TEST_correct, TEST_wrong]", "methods: [TEST_correct, NOPE]"),
     r"methods\[1\]: unknown method 'NOPE'; registered: .*TEST_correct"),
    (("baseline: TEST_correct", "baseline: FA_Serial"),
     r"baseline: 'FA_Serial' is neither a method of this experiment nor a sum of its methods"),
    (("baseline: TEST_correct\n", ""), r"baseline: 'FA_Serial' is neither"),   # the default baseline
    (("filter: {min_part_fraction: 0}", "filter: {min_part_fraction: 0.2}"),
     r"filter\.min_part_fraction: 0\.2 needs the methods FA_prefill, FA_decode"),
    (("filter: {min_part_fraction: 0}\n", ""), r"filter\.min_part_fraction: 0\.2 needs"),  # the default filter
    (("methods: [", "plot: no_such_plot\nmethods: ["), r"plot: no module figures/no_such_plot\.py"),
])
def test_names_are_checked_before_any_gpu_work(tmp_path, change, message):
    text = CHECKED.replace(*change)
    path = write(tmp_path, text, name="checked.yaml")
    with pytest.raises(G.ExperimentError, match=message):
        G.load_experiment(path)


def test_smoke_needs_a_smoke_section_and_checks_its_methods(tmp_path):
    path = write(tmp_path, CHECKED.replace("smoke: {timing: {repeats: 1}}\n", ""))
    G.load_experiment(path)
    with pytest.raises(G.ExperimentError, match=r"checked\.yaml: smoke: section missing"):
        G.load_experiment(path, smoke=True)
    # the smoke section's own methods must still contain the baseline
    path = write(tmp_path, CHECKED.replace("smoke: {timing: {repeats: 1}}", "smoke: {methods: [TEST_wrong]}"))
    G.load_experiment(path)
    with pytest.raises(G.ExperimentError, match=r"\(with smoke overrides\): baseline: 'TEST_correct'"):
        G.load_experiment(path, smoke=True)


def test_context_not_a_multiple_of_the_chunk_ends_in_a_shorter_chunk(tmp_path):
    """9000 tokens in 768-token chunks: 11 full chunks and a last one of 552, every token prefilled."""
    p = write(tmp_path, CHECKED.replace("grid: {chunk_size: [16], context_len: [32], decode_batch: [2]}",
                                        "grid: {chunk_size: [768], context_len: [9000], decode_batch: [2]}"))
    rows = G.expand(G.load_experiment(p))
    assert [r.chunk_idx for r in rows] == list(range(12))
    assert [r.spec.prefill_len for r in rows] == [768] * 11 + [552]
    assert [r.spec.prefill_kv_len for r in rows] == [768 * (i + 1) for i in range(11)] + [9000]
    assert sum(r.spec.prefill_len for r in rows) == 9000
    # negative chunk indices count from the real last chunk
    p = write(tmp_path, open(p).read().replace("chunk_size: [768]", "chunk_size: [768], chunk_index: [-1]"))
    (last,) = G.expand(G.load_experiment(p))
    assert (last.chunk_idx, last.spec.prefill_len, last.spec.prefill_kv_len) == (11, 552, 9000)


def test_two_chunk_sizes_reaching_one_batch_time_it_once(tmp_path):
    p = write(tmp_path, CHECKED.replace("chunk_size: [16], context_len: [32]", "chunk_size: [16, 32], context_len: [48]"))
    keys = [r.row_key for r in G.expand(G.load_experiment(p))]
    assert len(keys) == len(set(keys)) == 4   # 16@16, 16@32, 16@48 (also 32-chunk's tail), 32@32


def test_extends_overrides_a_base_key_by_key(tmp_path):
    """A study that extends figure 11 keeps its grid and timing, with its own memory and methods."""
    exp = load("experiments/studies/figure11_h100_batches.yaml")
    base = load(FIG11)
    # the timing merges key by key: the base's, less the queue_ahead that the H100 rows lacked
    assert exp.name == "figure11_h100_batches" and exp.timing == {**base.timing, "queue_ahead": False}
    assert exp.grid["chunk_size"] == base.grid["chunk_size"]
    assert exp.grid["decode_batch"]["memory_fill"]["gpu_memory_gb"] == 85.0
    assert "HFuse" not in [m.label for m in exp.methods] and "POD" in [m.label for m in exp.methods]
    # the pinned 85.0e9 B are what figure 11 gives at --gpu-memory-gb 85, whatever GPU is present
    # (the runner leaves a pinned size alone: filled from the device, the H200 ran its own batches)
    assert G.pinned_resources(exp) == {"memory"} and G.pinned_resources(base) == set()
    assert [r.row_key for r in G.expand(exp, sm_count=132)] == [r.row_key for r in G.expand(base, 85e9, 132)]
    # a smoke run of the child takes the base's smoke overrides
    assert G.load_experiment("experiments/studies/figure11_h100_batches.yaml", smoke=True,
                             check_methods=False).models == G.load_experiment(FIG11, smoke=True,
                                                                              check_methods=False).models


def test_extends_errors_name_the_field(tmp_path):
    child = write(tmp_path, "name: c\nextends: no_such_experiment\n")
    with pytest.raises(G.ExperimentError, match=r"c\.yaml: extends: no experiment 'no_such_experiment'"):
        load(child)
    # a typo in the child is caught on the merged document, named by the child's path
    child = write(tmp_path, "name: c\nextends: figure11\ncolour: red\n")
    with pytest.raises(G.ExperimentError, match=r"c\.yaml: .*colour"):
        load(child)


def test_extends_cycle_is_an_error(tmp_path, monkeypatch):
    from experiments import spec
    monkeypatch.setattr(spec, "HERE", tmp_path)
    write(tmp_path, "name: a\nextends: b\n")
    write(tmp_path, "name: b\nextends: a\n")
    with pytest.raises(G.ExperimentError, match="cycle"):
        load(str(tmp_path / "a.yaml"))


def test_device_sizes_leave_a_pin_alone(monkeypatch):
    """Every runner sizes batches with device_sizes: the device's memory and SM count, except what
    the experiment pins (on the H200, figure11_h100_batches ran the H200's own batches before this)."""
    import types

    import torch
    props = types.SimpleNamespace(total_memory=150e9, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    pinned = load("experiments/studies/figure11_h100_batches.yaml")
    assert G.device_sizes(pinned, "cuda") == (None, 132)
    assert G.device_sizes(load(FIG11), "cuda") == (150e9, 132)
    keys = {r.row_key for r in G.expand(pinned, *G.device_sizes(pinned, "cuda"))}
    assert keys == {r.row_key for r in G.expand(load(FIG11), 85e9, 132)}
