"""Experiment YAML -> validated ``Experiment`` -> ordered list of ``Row``s (hybrid batches).

Rows sharing model, dtype, prefill chunk length, decode batch and context form a *group*: the
runner allocates one ``HybridBatch`` per group (prefill KV capacity = the group's longest prefill
KV) and moves through its chunks with ``batch.with_prefill``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from experiments.spec import (GRID_DEFAULTS, MEMORY_FILL_DEFAULTS, MODELS_PATH, SCHEMA_PATH,  # noqa: F401
                              TIMING_DEFAULTS, ExperimentError, grid_with_defaults, model_catalogue, read_document)
from kernels import shapes
from kernels.shapes import BatchSpec, ModelShape

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class MethodSpec:
    label: str            # the CSV 'method' column
    method: str           # registered name in kernels.registry
    options: dict = field(default_factory=dict)


@dataclass
class Experiment:
    name: str
    path: str
    description: str = ""
    plot: str = "generic"
    baseline: str = ""
    dtypes: list = field(default_factory=lambda: ["float16"])
    models: list = field(default_factory=list)         # ModelShape
    grid: dict | None = None
    configs: list = field(default_factory=list)
    methods: list = field(default_factory=list)        # MethodSpec
    timing: dict = field(default_factory=lambda: dict(TIMING_DEFAULTS))
    filter: dict = field(default_factory=dict)
    smoke: bool = False
    raw: dict = field(default_factory=dict)            # the (smoke-merged) YAML document


@dataclass(frozen=True)
class Row:
    """One hybrid batch to run every method on."""

    row_key: str
    group_key: str
    chunk_idx: int
    spec: BatchSpec
    prefill_kv_cap: int = 0   # prefill KV capacity to allocate for the whole group

    def fields(self) -> dict:
        """Workload columns of the raw CSV."""
        s, m = self.spec, self.spec.model
        return {"row_key": self.row_key, "model": m.name, "q_heads": m.q_heads, "kv_heads": m.kv_heads,
                "head_dim": m.head_dim, "dtype": s.dtype, "prefill_len": s.prefill_len,
                "prefill_kv_len": s.prefill_kv_len, "chunk_idx": self.chunk_idx, "decode_batch": s.decode_batch,
                "decode_ctx": s.decode_ctx, "page_size": s.page_size, "group_key": self.group_key}


# ----------------------------------------------------------------------------- models

def _shape(name, q, kv, d, layers, params_gb, tp, where) -> ModelShape:
    if q % tp or kv % tp:
        raise ExperimentError(f"{where}: model {name}: tp={tp} does not divide q_heads={q} and kv_heads={kv}")
    try:
        return ModelShape(name=name, q_heads=q // tp, kv_heads=kv // tp, head_dim=d, layers=layers,
                          params_bytes=float(params_gb) * 1e9, tp=tp)
    except ValueError as e:
        raise ExperimentError(f"{where}: {e}") from None


def resolve_model(model, where: str = "model") -> ModelShape:
    """ModelShape from a catalogue name ('llama-3-8b', 'llama-3-8b-tp2') or an inline dict
    (whole-model heads; ``tp`` divides them and suffixes the name with -tpN)."""
    if isinstance(model, dict):
        tp = int(model.get("tp", 1))
        name = model["name"] + (f"-tp{tp}" if tp > 1 and not model["name"].endswith(f"-tp{tp}") else "")
        return _shape(name, model["q_heads"], model["kv_heads"], model["head_dim"], model.get("layers", 32),
                      model.get("params_gb", 0), tp, where)
    cat = model_catalogue()
    base, tp = model, 1
    if model not in cat:
        m = re.fullmatch(r"(.+)-tp(\d+)", model)
        if m:
            base, tp = m.group(1), int(m.group(2))
    if base not in cat or tp < 1:
        raise ExperimentError(f"{where}: unknown model {model!r}; known: {', '.join(sorted(cat))} "
                              f"(optionally with -tpN), or give an inline dict")
    c = cat[base]
    return _shape(model, c["q_heads"], c["kv_heads"], c["head_dim"], c.get("layers", 32), c.get("params_gb", 0),
                  tp, where)


# ----------------------------------------------------------------------------- loading

def load_experiment(path, smoke: bool = False, check_methods: bool = True) -> Experiment:
    """Read and validate an experiment YAML (with its ``smoke`` overrides when ``smoke``).
    ``check_methods`` also checks every name it uses (registered methods, baseline, filter parts,
    plot module), as the build and the runner do before any GPU work."""
    path = str(path)
    doc = read_document(path, smoke=smoke)
    where = f"{path} (with smoke overrides)" if smoke else path

    dt = doc.get("dtype", "float16")
    dtypes = [dt] if isinstance(dt, str) else list(dt)
    models = [resolve_model(m, f"{path}: models[{i}]") for i, m in enumerate(doc.get("models", []))]
    if "grid" in doc and not models:
        raise ExperimentError(f"{path}: models: a grid needs at least one model")
    methods, labels = [], set()
    for i, m in enumerate(doc["methods"]):
        ms = MethodSpec(m, m, {}) if isinstance(m, str) else MethodSpec(m.get("name", m["method"]), m["method"],
                                                                       dict(m.get("options") or {}))
        if ms.label in labels:
            raise ExperimentError(f"{path}: methods[{i}]: duplicate method label {ms.label!r}")
        labels.add(ms.label)
        methods.append(ms)
    if check_methods:
        _check_methods(doc, methods, where)
    grid = grid_with_defaults(doc["grid"]) if "grid" in doc else None
    return Experiment(name=doc["name"], path=path, description=doc.get("description", ""),
                      plot=doc.get("plot", "generic"), baseline=doc.get("baseline", ""), dtypes=dtypes,
                      models=models, grid=grid, configs=list(doc.get("configs", [])), methods=methods,
                      timing={**TIMING_DEFAULTS, **doc.get("timing", {})}, filter=dict(doc.get("filter", {})),
                      smoke=smoke, raw=doc)


def _check_methods(doc: dict, methods: list, where: str) -> None:
    """Every name the experiment uses must exist before any GPU work: registered methods, the
    baseline, the filter's parts and the plot module."""
    from kernels.catalogue import DEFAULT_BASELINE, DEFAULT_MIN_PART_FRACTION, FILTER_PARTS, available_methods
    from kernels.registry import load_all

    registered = load_all()
    for i, ms in enumerate(methods):
        if ms.method not in registered:
            raise ExperimentError(f"{where}: methods[{i}]: unknown method {ms.method!r}; registered: "
                                  f"{', '.join(sorted(registered))}")
    labels = [ms.label for ms in methods]
    known = available_methods(labels)
    baseline = doc.get("baseline", DEFAULT_BASELINE)
    if baseline not in known:
        raise ExperimentError(f"{where}: baseline: {baseline!r} is neither a method of this experiment nor a sum "
                              f"of its methods; methods: {', '.join(labels)}")
    fraction = (doc.get("filter") or {}).get("min_part_fraction", DEFAULT_MIN_PART_FRACTION)
    missing = [p for p in FILTER_PARTS if p not in labels]
    if fraction > 0 and missing:
        raise ExperimentError(f"{where}: filter.min_part_fraction: {fraction} needs the methods "
                              f"{', '.join(FILTER_PARTS)} (missing {', '.join(missing)}); set it to 0 to keep every row")
    plot = doc.get("plot", "generic")
    if not (HERE.parent / "figures" / f"{plot}.py").exists():
        raise ExperimentError(f"{where}: plot: no module figures/{plot}.py")


# ----------------------------------------------------------------------------- expansion

def dtype_bytes(dtype: str) -> int:
    return shapes.dtype_bytes(dtype)


def memory_fill_batches(model: ModelShape, dtype: str, context: int, fractions, memory_fraction: float,
                        gpu_memory_bytes: float) -> list:
    """Decode batch sizes [int(f * m) for f in fractions] where m requests of ``context`` tokens fill
    ``memory_fraction`` of the GPU memory left by this GPU's share of the weights (KV of all layers).
    Duplicates and zeros are dropped (tiny m)."""
    per_request = model.kv_heads * model.head_dim * 2 * dtype_bytes(dtype) * model.layers * context
    m = int(memory_fraction * (gpu_memory_bytes - model.params_bytes / model.tp) // per_request)
    out = []
    for f in fractions:
        b = m if f == 1 else int(f * m)
        if b > 0 and b not in out:
            out.append(b)
    return out


def sm_fill_batches(model: ModelShape, ctas_per_sm: int, extra, sm_count: int) -> list:
    """Decode batch sizes whose decode CTAs (one per request and KV head, no split, as FlashAttention
    launches them) fill exactly ``ctas_per_sm`` CTAs on every SM, plus each of ``extra`` requests
    (e.g. [0, 1]: no wave quantization, then one more request's CTAs spilling into a new wave)."""
    full = ctas_per_sm * sm_count // model.kv_heads
    return [full + e for e in extra if full + e > 0]


def device_sm_count() -> int | None:
    """Streaming multiprocessors of the visible CUDA device 0, or None without CUDA."""
    import torch
    if torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(0).multi_processor_count)
    return None


def device_memory_bytes() -> float | None:
    """Total memory of the visible CUDA device 0, or None without CUDA."""
    import torch
    if torch.cuda.is_available():
        return float(torch.cuda.get_device_properties(0).total_memory)
    return None


def row_key(spec: BatchSpec) -> str:
    return (f"{spec.model.name}|{spec.dtype}|p{spec.prefill_len}@{spec.prefill_kv_len}"
            f"|d{spec.decode_batch}x{spec.decode_ctx}|ps{spec.page_size}")


def group_key(spec: BatchSpec) -> str:
    return (f"{spec.model.name}|{spec.dtype}|p{spec.prefill_len}"
            f"|d{spec.decode_batch}x{spec.decode_ctx}|ps{spec.page_size}")


def _grid_specs(exp: Experiment, gpu_memory_bytes, sm_count):
    g = exp.grid
    fill = g["decode_batch"].get("memory_fill") if isinstance(g["decode_batch"], dict) else None
    sm_fill = g["decode_batch"].get("sm_fill") if isinstance(g["decode_batch"], dict) else None
    if sm_fill is not None:
        sm_count = sm_count or sm_fill.get("sm_count") or device_sm_count()   # as memory: argument, pin, device
        if sm_count is None:
            raise ExperimentError(f"{exp.path}: grid.decode_batch.sm_fill needs the SM count: no CUDA device "
                                  f"here; set grid.decode_batch.sm_fill.sm_count (e.g. 132 for an H100 SXM)")
    mem = None
    if fill is not None:
        mem = gpu_memory_bytes
        if mem is None and fill.get("gpu_memory_gb") is not None:
            mem = fill["gpu_memory_gb"] * 1e9
        if mem is None:
            mem = device_memory_bytes()
        if mem is None:
            raise ExperimentError(f"{exp.path}: grid.decode_batch.memory_fill needs the GPU memory size: no CUDA "
                                  f"device here; pass --gpu-memory-gb (e.g. 80) or set memory_fill.gpu_memory_gb")
    for model in exp.models:
        for dtype in exp.dtypes:
            for chunk in g["chunk_size"]:
                for ctx in g["context_len"]:
                    cs = ctx if chunk == "full" else chunk
                    if ctx < cs:
                        if g["skip_context_below_chunk"]:
                            continue
                        cs = ctx  # one chunk holding the whole (short) context
                    if fill is not None:
                        batches = memory_fill_batches(model, dtype, ctx, fill["fractions"], fill["memory_fraction"],
                                                      mem)
                        if not batches:
                            raise ExperimentError(f"{exp.path}: model {model.name} ({dtype}) leaves no memory for "
                                                  f"decodes of context {ctx} with {mem / 1e9:.1f} GB")
                    elif sm_fill is not None:
                        batches = sm_fill_batches(model, sm_fill["ctas_per_sm"], sm_fill["extra"], sm_count)
                    else:
                        batches = list(dict.fromkeys(g["decode_batch"]))
                    # A context that is not a multiple of the chunk ends in a shorter chunk, as in a
                    # serving system: every token of the prompt is prefilled.
                    n = -(-ctx // cs)
                    idx = range(n) if g["chunk_index"] == "all" else \
                        [i + n if i < 0 else i for i in g["chunk_index"] if -n <= i < n]
                    for bs in batches:
                        for ci in idx:
                            end = min((ci + 1) * cs, ctx)
                            yield ci, BatchSpec(model=model, dtype=dtype, prefill_len=end - ci * cs,
                                                prefill_kv_len=end, decode_batch=bs, decode_ctx=ctx,
                                                page_size=g["page_size"])


def _config_specs(exp: Experiment):
    for i, c in enumerate(exp.configs):
        where = f"{exp.path}: configs[{i}]"
        models = [resolve_model(c["model"], where)] if "model" in c else exp.models
        if not models:
            raise ExperimentError(f"{where}: no model (set configs[{i}].model or models)")
        dts = exp.dtypes if "dtype" not in c else ([c["dtype"]] if isinstance(c["dtype"], str) else c["dtype"])
        lq = c["prefill_len"]
        kv = c.get("prefill_kv_len", lq)
        ci = c.get("chunk_idx", (kv - 1) // lq if lq else 0)
        for model in models:
            for dtype in dts:
                try:
                    spec = BatchSpec(model=model, dtype=dtype, prefill_len=lq, prefill_kv_len=kv if lq else 0,
                                     decode_batch=c["decode_batch"], decode_ctx=c.get("decode_ctx", 0),
                                     page_size=c.get("page_size", 16))
                except ValueError as e:
                    raise ExperimentError(f"{where}: {e}") from None
                yield ci, spec


def pinned_resources(exp: Experiment) -> set:
    """Which of "memory" and "sm_count" the experiment's grid pins itself (memory_fill.gpu_memory_gb,
    sm_fill.sm_count): a runner must not fill those from its device, or the pin is lost."""
    db = (exp.grid or {}).get("decode_batch")
    if not isinstance(db, dict):
        return set()
    pins = set()
    if (db.get("memory_fill") or {}).get("gpu_memory_gb") is not None:
        pins.add("memory")
    if (db.get("sm_fill") or {}).get("sm_count") is not None:
        pins.add("sm_count")
    return pins


def device_sizes(exp: Experiment, device) -> tuple:
    """(memory in bytes, SM count) of the CUDA ``device`` for ``expand``, each None where the
    experiment pins its own (``pinned_resources``), so that the pin sizes the batches."""
    import torch

    props = torch.cuda.get_device_properties(device)
    pins = pinned_resources(exp)
    return (None if "memory" in pins else float(props.total_memory),
            None if "sm_count" in pins else int(props.multi_processor_count))


def expand(exp: Experiment, gpu_memory_bytes: float | None = None, sm_count: int | None = None) -> list:
    """All rows of the experiment (grid first, then configs), group-contiguous, deterministic order.
    ``gpu_memory_bytes`` sizes memory-filling decode batches and ``sm_count`` SM-filling ones
    (default for both: the YAML's pin, else the CUDA device)."""
    items, seen = [], set()
    if exp.grid is not None:
        # Two chunk sizes can reach the same hybrid batch (the 16-token tail of a 48-token context
        # in 32-token chunks is also a 16-token chunk): it is one workload, timed once.
        for ci, spec in _grid_specs(exp, gpu_memory_bytes, sm_count):
            if row_key(spec) not in seen:
                seen.add(row_key(spec))
                items.append((ci, spec))
    for ci, spec in _config_specs(exp):
        rk = row_key(spec)
        if rk in seen:
            raise ExperimentError(f"{exp.path}: hybrid batch {rk} appears twice")
        seen.add(rk)
        items.append((ci, spec))
    by_group: dict = {}
    for ci, spec in items:
        by_group.setdefault(group_key(spec), []).append((ci, spec))
    rows = []
    for gk, members in by_group.items():
        cap = max(s.prefill_kv_len for _, s in members)
        rows += [Row(row_key(spec), gk, ci, spec, cap) for ci, spec in members]
    return rows


def groups(rows) -> list:
    """[(group_key, [rows])] in order of first appearance."""
    out: dict = {}
    for r in rows:
        out.setdefault(r.group_key, []).append(r)
    return list(out.items())


def select_methods(exp: Experiment, methods) -> list | None:
    """The method labels named by ``methods`` (a comma-separated string or a list; None or empty:
    all of the experiment's, returned as None); a label the experiment lacks is bad input."""
    if not methods:
        return None
    labels = [m.strip() for m in (methods.split(",") if isinstance(methods, str) else methods) if m.strip()]
    unknown = sorted(set(labels) - {m.label for m in exp.methods})
    if unknown:
        raise ExperimentError(f"--methods: {', '.join(unknown)} not in {exp.path} "
                              f"(has {', '.join(m.label for m in exp.methods)})")
    return labels


def parse_shard(text: str) -> tuple:
    """'I/N' (0 <= I < N) -> (I, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not int(m.group(2)) or int(m.group(1)) >= int(m.group(2)):
        raise ExperimentError(f"bad shard {text!r}: use I/N with 0 <= I < N, e.g. 0/4")
    return int(m.group(1)), int(m.group(2))


def shard(rows, i: int, n: int) -> list:
    """Rows of shard i of n: whole groups, dealt round-robin in order (disjoint and complete)."""
    if n < 1 or not 0 <= i < n:
        raise ExperimentError(f"bad shard {i}/{n}: use 0 <= I < N")
    keys = {gk: j for j, (gk, _) in enumerate(groups(rows))}
    return [r for r in rows if keys[r.group_key] % n == i]
