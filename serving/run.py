"""The one command of the end-to-end experiments:

    python -m serving.run CONFIG.yaml [CONFIG.yaml ...] --out DIR [--smoke] [--stage build|gpu|cpu|all]
                          [--time-budget SECONDS] [--only ID_SUBSTRING]

A config (experiments/serving/<target>.yaml) lists ``runs``; each has a ``kind``:
  GPU stage (the engine):  check      whole-model outputs of each backend against the REF backend
                           window     steady-state window of an offline run (fast-forwarded schedule)
                           online     a whole online run (arrivals over time)
                           breakdown  iteration time split into attention parts (figure 4)
                           profile    iterations built over a grid of batch shapes (calibration)
  CPU stage (no GPU):      calibrate  latency models fitted to GPU iterations (-> calibration.json)
                           simulate   the discrete-event simulator driven by a calibration
                           validate   replay and calibrated-model checks against online GPU runs
A run entry may carry ``matrix: {key: [values, ...]}`` (the product of the values, in order, the
last key varying fastest: put ``backend`` last to interleave backends against drift; keys
starting with ``each`` take dicts that set several keys together; a run's ``chunk_size`` fills a
Sarathi scheduler that has none) and an ``id``
template like "{model}-{scheduler[name]}-{backend}". ``defaults:`` apply to every run; ``--smoke``
deep-merges the config's ``smoke:`` section over it (tiny model, CPU).

Outputs under DIR/<config name>/: runs/<id>/{iterations.csv.gz, requests.csv, summary.csv,
done.json} (a run with done.json is skipped: rerunning the command resumes), calibration.json,
calibration_fit.csv, validation.csv, steadiness.csv, and summary.csv (all runs' summaries, rebuilt
at the end of every invocation).
Every row carries the provenance columns of experiments/provenance.py.
"""
from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import math
import random
import sys
import time
import traceback
from pathlib import Path

import pandas as pd
import yaml

GPU_KINDS = ("check", "window", "online", "breakdown", "profile")
CPU_KINDS = ("calibrate", "simulate", "validate")


# ---------------------------------------------------------------- config handling
def deep_merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load_config(path: str | Path, smoke: bool = False) -> dict:
    doc = yaml.safe_load(Path(path).read_text()) or {}
    smoke_doc = doc.pop("smoke", None) or {}
    if smoke:
        doc = deep_merge(doc, smoke_doc)
    doc.setdefault("name", Path(path).stem)
    return doc


class _Fmt(dict):
    def __missing__(self, key):
        raise KeyError(f"id template names {key!r}, which the run does not set")


def expand_runs(doc: dict) -> list[dict]:
    """The config's runs with defaults applied and matrices expanded, in order."""
    defaults = doc.get("defaults", {}) or {}
    out = []
    for entry in doc.get("runs", []):
        entry = deep_merge(defaults, entry)
        matrix = entry.pop("matrix", None) or {}
        keys = list(matrix)
        for values in itertools.product(*(matrix[k] for k in keys)) if keys else [()]:
            run = copy.deepcopy(entry)
            for k, v in zip(keys, values):
                if k.startswith("each"):  # each, each_system, ...: a dict of several keys set together
                    run = deep_merge(run, v)
                else:
                    run[k] = deep_merge(run[k], v) if isinstance(run.get(k), dict) and isinstance(v, dict) else v
            sched = run.get("scheduler")
            if isinstance(sched, dict) and sched.get("name") == "sarathi" and "chunk_size" not in sched \
                    and "chunk_size" in run:
                sched["chunk_size"] = run["chunk_size"]     # a model's chunk size for the Sarathi systems
            template = run.get("id", run["kind"])
            run["id"] = template.format_map(_Fmt(run)).replace("/", "_").replace(" ", "")
            out.append(run)
    ids = [r["id"] for r in out]
    dup = {i for i in ids if ids.count(i) > 1}
    if dup:
        raise ValueError(f"duplicate run ids: {sorted(dup)}")
    return out


# ---------------------------------------------------------------- output helpers
def _provenance(device):
    from experiments.provenance import provenance

    return provenance(device)


def _with_prov(df: pd.DataFrame, prov: dict, extra: dict) -> pd.DataFrame:
    from experiments.provenance import stamp

    cols = {**extra, **stamp(prov)}
    for k, v in cols.items():
        df[k] = [v] * len(df) if len(df) else []
    return df


def _clock_now(device) -> dict:
    """SM and memory clocks now (empty off the GPU)."""
    import torch

    if torch.device(device).type != "cuda":
        return {}
    try:
        from experiments.provenance import _nvml_info

        info = _nvml_info(torch.device(device))
        return {"sm_clock_mhz_end": info.get("sm_clock_mhz", ""), "mem_clock_mhz_end": info.get("mem_clock_mhz", "")}
    except Exception:
        return {}


def _write_run(run_dir: Path, run: dict, prov: dict, summary: dict, iterations=None, requests=None, extra_csv=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    tags = {"run_id": run["id"], "kind": run["kind"], "model": run.get("model", ""), "backend": run.get("backend", ""),
            "scheduler": (run.get("scheduler") or {}).get("name", ""),
            "chunk_size": (run.get("scheduler") or {}).get("chunk_size", ""),
            "workload": json.dumps(run.get("workload", {}), sort_keys=True),
            "tp": int(run.get("tp", 1)), "gpus": run.get("gpus", ""),
            "decode_graphs": bool(run.get("decode_graphs", False))}
    if iterations is not None:
        _with_prov(pd.DataFrame(iterations), prov, tags).to_csv(run_dir / "iterations.csv.gz", index=False)
    if requests is not None:
        _with_prov(requests, prov, tags).to_csv(run_dir / "requests.csv", index=False)
    if extra_csv is not None:
        name, df = extra_csv
        # the run's tags fill columns the table lacks (a breakdown's backend) and never overwrite
        # its own (a check's per-row backend)
        _with_prov(df, prov, {k: v for k, v in tags.items() if k not in df.columns}).to_csv(run_dir / name,
                                                                                          index=False)
    _with_prov(pd.DataFrame([summary]), prov, tags).to_csv(run_dir / "summary.csv", index=False)
    (run_dir / "done.json").write_text(json.dumps({"run": run, "finished": time.time()}, indent=1, default=str))


def read_exact(path) -> pd.DataFrame:
    """A CSV with every float read back bit for bit (pandas 3 parses so by default; pandas 2
    needs the round-trip parser): replay validation compares metrics exactly."""
    if int(pd.__version__.split(".")[0]) < 3:
        return pd.read_csv(path, float_precision="round_trip")
    return pd.read_csv(path)


def read_iterations(target_dir: Path, kinds=("window", "online")) -> pd.DataFrame:
    frames = []
    for f in sorted(target_dir.glob("runs/*/iterations.csv.gz")):
        df = pd.read_csv(f)
        if len(df) and df["kind"].iloc[0] in kinds:
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---------------------------------------------------------------- GPU stage
class _EngineCache:
    """One model and KV cache per (model, dtype, block size, tp), reused by runs of other backends;
    at ``tp`` > 1 a tensor-parallel group (serving/tensor_parallel.py) whose rank 0 is this process."""

    def __init__(self):
        self.key, self.model, self.cache, self.group = None, None, None, None

    def __del__(self):
        # main's store goes out of scope: stop the tensor-parallel workers now, not at exit
        if getattr(self, "group", None) is not None:
            try:
                self.group.close()
            except Exception:
                pass

    def get(self, run: dict, device):
        import torch

        from .kv_cache import KVCache
        from .model import LlamaModel, model_config
        from kernels.workload import dtype_of

        cfg = model_config(run["model"])
        dtype = dtype_of(run.get("dtype", "float16"))
        tp = int(run.get("tp", 1))
        key = (cfg, str(dtype), int(run.get("block_size", 16)), run.get("num_blocks"), str(device),
               run.get("ops", "auto"), float(run.get("init_range", 1e-3)), tp)
        if key != self.key or (self.group is not None and self.group.closed):   # closed: aborted by a failure
            self.model = self.cache = None
            if self.group is not None:
                self.group.close()
                self.group = None
            gc.collect()
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
            if tp > 1:
                from .tensor_parallel import TPGroup

                self.key = None     # set below only once the group is up
                self.group = TPGroup.start(
                    cfg, tp, device, dtype, seed=int(run.get("seed", 0)), init_range=float(run.get("init_range", 1e-3)),
                    ops=run.get("ops", "auto"), block_size=int(run.get("block_size", 16)),
                    num_blocks=int(run["num_blocks"]) if run.get("num_blocks") else None,
                    kv_fraction=float(run.get("kv_fraction", 0.9)), kv_headroom_gb=float(run.get("kv_headroom_gb", 8.0)))
                self.key, self.model, self.cache = key, self.group.model, self.group.cache
                return cfg, dtype, self.model, self.cache
            model = LlamaModel(cfg, device, dtype, seed=int(run.get("seed", 0)), init_range=float(run.get("init_range", 1e-3)),
                               ops=run.get("ops", "auto"))
            if run.get("num_blocks"):
                cache = KVCache(cfg, int(run["num_blocks"]), int(run.get("block_size", 16)), dtype, device)
            else:
                cache = KVCache.for_gpu(cfg, int(run.get("block_size", 16)), dtype, torch.device(device),
                                        float(run.get("kv_fraction", 0.9)), float(run.get("kv_headroom_gb", 8.0)))
            self.key, self.model, self.cache = key, model, cache
        return cfg, dtype, self.model, self.cache


def _engine(run: dict, cache_store: _EngineCache, device):
    from .engine import Engine

    cfg, dtype, model, cache = cache_store.get(run, device)
    engine = Engine(cfg, run["backend"], device, dtype, block_size=cache.block_size, model=model, cache=cache,
                    prompt=run.get("prompt", "repeated"), backend_options=run.get("backend_options") or {},
                    tp_group=cache_store.group, decode_graphs=run.get("decode_graphs", False))
    run["tp"], run["gpus"] = engine.tp, engine.gpus     # tags of every row this run writes (_write_run)
    return engine


def _kv_info(engine) -> dict:
    c = engine.cache
    # the blocks requests can hold (decode graphs keep the cache's last one as their scratch), so
    # that a replay in the simulator admits exactly as the engine did
    blocks = c.pool.num_blocks
    return {"num_blocks": blocks, "cache_blocks": c.num_blocks, "block_size": c.block_size,
            "kv_capacity_tokens": blocks * c.block_size,
            "backend_impl": engine.backend.info().get("impl", ""), "ops_impl": engine.model.impl,
            "tp": engine.tp, "gpus": engine.gpus, **engine.run_counters()}


def run_window(run, out_dir, prov, store, device):
    from .metrics import window_throughput
    from .trace import build_workload

    engine = _engine(run, store, device)
    specs = build_workload(run["workload"])
    if any(s.arrival for s in specs):
        raise ValueError(f"{run['id']}: a window fast-forwards the schedule, exact only for offline workloads")
    engine.warmup(run["scheduler"])
    plan = window_plan(run, specs, engine.cache.num_blocks, engine.cache.block_size)
    chosen = set(plan["window"]) | set(plan["warmup"])
    t0 = time.time()
    res = engine.run(specs, run["scheduler"], max_iterations=len(chosen), select=lambda fin, i: i in chosen)
    measured = [it for it in res.iterations if it["measured"]]
    warm_set = set(plan["warmup"])
    for it in res.iterations:
        it["warmup"] = it["iteration"] in warm_set
        it["weight"] = plan["weights"].get(it["iteration"], 0)
    for it in res.iterations:
        it.setdefault("warmup", False)
    timed = [it for it in measured if not it["warmup"]]
    p, d = specs[0].prompt_len, specs[0].output_len
    summary = {**window_throughput(timed, p, d, plan["cycle_slots"]), **_kv_info(engine), "prompt_len": p, "output_len": d,
               "fast_forward_iterations": len(res.iterations) - len(measured), "wall_s": time.time() - t0,
               **{k: v for k, v in plan.items() if k not in ("window", "warmup", "weights")},
               "window_first": plan["window"][0], "window_last": plan["window"][-1],
               **_clock_now(device)}
    _write_run(out_dir, run, prov, summary, iterations=res.iterations)
    return summary


def window_plan(run: dict, specs, num_blocks: int, block_size: int) -> dict:
    """Which iterations of an offline run's exact schedule a window executes.

    Both schedulers oscillate with the period of a request's lifetime, because memory-bound
    admission lets requests in in waves (vLLM: c whole prompts, then about output_len decode
    iterations; Sarathi: phases of decode-only batches while no request can be admitted), c = the
    requests that fit in the KV cache at once. A consecutive window of 150 Sarathi iterations was
    up to 22% off the full run's rate (in simulation), and a window spilling past one vLLM cycle
    20%. So the schedule is dry-run (no compute, time-independent) to find one cycle exactly: from
    the iteration after ``skip_completed`` (auto: 2c) requests finished to the one after c more
    finished; about ``iterations`` of its iterations are measured (a stratified sample, below), after
    ``warmup_iterations`` executed just before it."""
    from .scheduler import BlockPool, make_scheduler as _mk, serve_loop

    c = max(1, min(int(run["scheduler"].get("max_batch_size", 999)),
                   num_blocks // -(-specs[0].total_len // block_size)))
    skip = run.get("skip_completed", "auto")
    skip = 2 * c if skip == "auto" else int(skip)
    skip = min(skip, max(0, len(specs) - c - 1))
    end_at = min(len(specs), skip + c)
    dry = serve_loop(specs, _mk(run["scheduler"], BlockPool(num_blocks, block_size)), lambda b, i: 0.0,
                     stop=lambda fin, i: len(fin) >= end_at)
    done, first, last = 0, None, len(dry.iterations)
    for it in dry.iterations:
        done += it["finished"]
        if first is None and done >= skip:
            first = it["iteration"] + 1
        if done >= end_at:
            last = it["iteration"] + 1
            break
    first = min(first if first is not None else 0, last - 1)
    n, warm = int(run["iterations"]), int(run.get("warmup_iterations", 10))
    span = last - first
    # Stratified random sample (seeded): the cycle's iterations are grouped by batch kind (prefill,
    # decode, hybrid: very different costs), each kind gets samples in proportion to its count but
    # at least 5 (or all), drawn one per equal slice of that kind's iterations in time order and
    # weighted by the slice's size. Evenly spaced picks alias with the schedule's own period and
    # were 18% off in a test; kind-blind strata missed vLLM's short burst of prefill batches.
    rng = random.Random(int(run.get("seed", 0)))
    cycle = dry.iterations[first:last]
    by_kind: dict = {}
    for it in cycle:
        by_kind.setdefault(it["kind"], []).append(it["iteration"])
    window, weights = [], {}
    for kind, idx in sorted(by_kind.items()):
        k = min(len(idx), max(5, round(n * len(idx) / span)))
        bounds = [(j * len(idx)) // k for j in range(k + 1)]
        for lo, hi in zip(bounds, bounds[1:]):
            i = idx[rng.randrange(lo, hi)]
            window.append(i)
            weights[i] = hi - lo
    window.sort()
    warmup = list(range(max(0, first - warm), first))
    return {"skip_completed": skip, "concurrency": c, "cycle_start": first, "cycle_iterations": span,
            "cycle_slots": sum(it["prefill_tokens"] + it["num_decodes"] for it in cycle),
            "window": window, "weights": weights, "warmup": warmup}


def _resolve_qps(run, target_root: Path):
    """``qps`` as a number, or {capacity_fraction, calibration: <config name> (default: the run's),
    backend, scheduler}: that fraction of the saturating load of the workload's requests, simulated
    with that backend's calibrated latency model. Returns (qps, what the summary records)."""
    from .simulator import capacity_qps
    from .trace import build_workload

    q = run["workload"].get("qps")
    if not isinstance(q, dict):
        return q, {}
    name = q.get("calibration") or run["calibration"]
    if not (target_root / name / "calibration.json").exists():
        # an online run before its CPU stage: fit it now from that config's GPU runs (the CPU stage
        # refits it the same way)
        run_calibrate({"sources": [name]}, target_root / name, target_root)
    lat, kv = _load_calibration(dict(run, backend=q.get("backend", "FA_Serial"), calibration=name), target_root)
    specs = build_workload({k: v for k, v in run["workload"].items() if k != "qps"})
    cap = capacity_qps(specs, q.get("scheduler", run["scheduler"]), kv["num_blocks"], kv["block_size"], lat)
    return cap * float(q["capacity_fraction"]), {"capacity_qps": cap, "capacity_fraction": float(q["capacity_fraction"])}


def _same_load(run, config_dir: Path):
    """The QPS the same online run ran at under ``config_dir`` (its runs/<id>/summary.csv), so that
    a repeat on another machine or after a code change meets the same arrivals."""
    f = Path(config_dir) / "runs" / run["id"] / "summary.csv"
    if not f.exists():
        raise FileNotFoundError(f"--same-load-as: no {f} to take {run['id']}'s load from")
    s = pd.read_csv(f).iloc[0]
    return float(s["qps"]), {"qps_from": str(f), **{k: float(s[k]) for k in ("capacity_qps", "capacity_fraction")
                                                     if k in s and pd.notna(s[k])}}


def run_online(run, out_dir, prov, store, device, target_root, same_load_as=None):
    """One measured online run; ``same_load_as``: a config folder whose run of the same id sets the
    QPS (``_same_load``), else the run's own ``qps``."""
    from .engine import host_steal_ticks
    from .metrics import request_rows, summarize
    from .trace import build_workload

    if same_load_as is not None:
        qps, qinfo = _same_load(run, same_load_as)
    else:
        qps, qinfo = _resolve_qps(run, target_root)
    wl = dict(run["workload"], qps=qps)
    engine = _engine(run, store, device)
    specs = build_workload(wl)
    engine.warmup(run["scheduler"])
    t0, steal0 = time.time(), host_steal_ticks()
    res = engine.run(specs, run["scheduler"], max_iterations=run.get("max_iterations"))
    summary = {**summarize(res.requests), "qps": qps, **qinfo, **_kv_info(engine), "iterations": len(res.iterations),
               "wall_s": time.time() - t0, **_clock_now(device), **host_shares(res.iterations, steal0)}
    for it in res.iterations:
        it["warmup"] = False
    _write_run(out_dir, run, prov, summary, iterations=res.iterations, requests=request_rows(res.requests))
    return summary


def host_shares(iterations: list[dict], steal0: tuple[int, int] | None) -> dict:
    """How the host ran a run, in % of its iterations' wall time: the engine thread's CPU time and its
    wait for a CPU (where recorded; a decode graph's one-time capture counts in them but not in the
    wall time), and the machine's steal time since ``steal0`` (host_steal_ticks)."""
    from .engine import host_steal_ticks

    wall = sum(it["duration"] for it in iterations if it.get("measured", True))
    out = {}
    for key, name in (("host_cpu_s", "host_cpu_pct"), ("host_runqueue_s", "host_runqueue_pct")):
        vals = [it[key] for it in iterations if key in it]
        if vals and wall > 0:
            out[name] = 100.0 * sum(vals) / wall
    steal1 = host_steal_ticks()
    if steal0 is not None and steal1 is not None and steal1[1] > steal0[1]:
        out["host_steal_pct"] = 100.0 * (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
    return out


def run_breakdown(run, out_dir, prov, store, device):
    engine = _engine(run, store, device)
    engine.warmup({"name": "sarathi", "chunk_size": int(run["prefill_tokens"]), "max_batch_size": 999})
    rows = []
    for ctx in run["contexts"]:
        try:
            t = engine.breakdown(int(run["prefill_tokens"]), int(ctx), int(run["num_decodes"]), int(ctx),
                                 repeats=int(run.get("repeats", 5)))
        except MemoryError as e:   # recorded, not hidden: the batch does not fit this GPU's KV cache
            rows.append({"context": int(ctx), "prefill_tokens": int(run["prefill_tokens"]),
                         "num_decodes": int(run["num_decodes"]), "note": str(e)})
            continue
        attn = sum(v for k, v in t.items() if k != "total")
        rows.append({"context": int(ctx), "prefill_tokens": int(run["prefill_tokens"]),
                     "num_decodes": int(run["num_decodes"]), "total_s": t["total"],
                     "prefill_attention_s": t.get("prefill", float("nan")),
                     "decode_attention_s": t.get("decode", float("nan")),
                     "fused_attention_s": t.get("attention", float("nan")),
                     "attention_s": attn, "other_s": t["total"] - attn})
    df = pd.DataFrame(rows)
    summary = {**_kv_info(engine), "contexts": len(rows), **_clock_now(device)}
    _write_run(out_dir, run, prov, summary, extra_csv=("breakdown.csv", df))
    return summary


# ok: teacher-forced logits within this fraction of REF's largest |logit| (fp16 noise, measured on an
# H200, is ~1e-3; a wrong layout is O(1)) and every sequence's attention within the kernel
# benchmarks' tolerance of its dtype (kernels/reference.py TOLERANCES, a few ulps)
LOGIT_REL_TOL = 2e-2


def _seq_rel_err(out, ref, meta) -> float:
    """Largest ||out - ref|| / ||ref|| over the iteration's sequences (each prefill chunk, each
    decode row), so an error in one decode is not averaged away by a long prefill chunk."""
    import torch

    T = out.shape[0]
    seg = torch.empty(T, dtype=torch.int64)
    for i, (off, n, _, _) in enumerate(meta.prefills):
        seg[off:off + n] = i
    p = len(meta.prefills)
    seg[meta.prefill_tokens:] = torch.arange(p, p + meta.num_decodes)
    seg = seg.to(out.device)
    n_seq = p + meta.num_decodes
    err = torch.zeros(n_seq, device=out.device).index_add_(0, seg, (out.float() - ref).pow(2).flatten(1).sum(1))
    nrm = torch.zeros(n_seq, device=out.device).index_add_(0, seg, ref.pow(2).flatten(1).sum(1))
    return float((err / nrm.clamp_min(1e-30)).sqrt().max())


def check_backends(model_cfg, backends_list, device, dtype, workload, scheduler, num_blocks=None, block_size=16,
                   init_range=0.02, backend_options=None, teacher_forcing=True, decode_graphs=False) -> pd.DataFrame:
    """Run one offline workload (pseudo-random prompts) through the engine with each backend and
    compare it with the REF backend (float32 attention, one sequence at a time).

    REF runs greedy on its own tokens; every other backend is teacher-forced (``teacher_forcing``):
    fed REF's sampled tokens instead of its own argmax, so its iterations see REF's inputs (the
    offline schedule does not depend on tokens) and one greedy flip between two logits closer than
    fp16 noise cannot cascade into different prompts for every later iteration. Columns:
      max_abs_logit_diff   max over every sampled row of |logits - REF's logits|
      ref_max_abs_logit    REF's largest |logit| (the scale); logit_rel_err = their ratio
      attn_max_rel_err     per layer and iteration, the backend's attention output against REF's
                           float32 attention on the same q and KV cache (the backend's own run):
                           max over sequences of ||o - o_ref|| / ||o_ref||
      tokens_equal         sampled rows whose argmax equals REF's token (of tokens_total); a row
                           that differs is a flip within the logit error: REF's margin there,
                           its token's logit minus that of the backend's choice, is at most
                           2 * max_abs_logit_diff (flip_max_ref_margin: the largest such margin)
      ok                   logit_rel_err <= LOGIT_REL_TOL and attn_max_rel_err <= the dtype's
                           kernel tolerance; token flips alone do not fail a backend
    Without teacher forcing (free-running greedy, as before) a flip changes everything after it,
    and ``ok`` also needs every token equal. ``decode_graphs``: the backends that support it run
    their decode-only iterations as graph replays (serving/graphs.py; column ``decode_graphs``);
    attn_max_rel_err then covers the eager iterations only, the logits cover all."""
    import torch

    from kernels.reference import TOLERANCES
    from .backends import Reference
    from .engine import Engine
    from .model import LlamaModel
    from .kv_cache import KVCache
    from .trace import build_workload

    specs = build_workload(workload)
    if any(s.arrival for s in specs):
        raise ValueError("check needs an offline workload (identical schedules)")
    model = LlamaModel(model_cfg, device, dtype, seed=0, init_range=init_range)
    if num_blocks is None:
        num_blocks = -(-sum(s.total_len for s in specs) // block_size) + len(specs)
    cache = KVCache(model_cfg, num_blocks, block_size, dtype, device)
    attn_tol = TOLERANCES[str(dtype).removeprefix("torch.")]
    results = {}
    rows = []
    for name in ["REF"] + [b for b in backends_list if b != "REF"]:
        try:
            from .backends import registered

            graphs = bool(decode_graphs) and getattr(registered().get(name), "supports_decode_graphs", False)
            eng = Engine(model_cfg, name, device, dtype, block_size=block_size, model=model, cache=cache,
                         prompt="pseudo_random", backend_options=(backend_options or {}).get(name, {}),
                         decode_graphs=decode_graphs if graphs else False)
            eng.keep_logits = True
            attn_errs = []
            if name != "REF":
                if teacher_forcing:
                    if "REF" not in results:
                        raise RuntimeError("REF failed: nothing to force or compare")
                    eng.forced_tokens = dict(enumerate(results["REF"][1]))
                _shadow_reference(eng, Reference(model_cfg, cache), attn_errs)
            res = eng.run(specs, scheduler)
            results[name] = (eng.logits_log, [r.tokens for r in res.requests], eng.backend.info().get("impl", ""),
                             attn_errs, graphs)
        except Exception as e:
            rows.append({"backend": name, "ok": False, "error": f"{type(e).__name__}: {e}"})
            continue
    ref = results.get("REF")
    for name, (logits, tokens, impl, attn_errs, graphs) in results.items():
        if name == "REF" or ref is None:
            continue
        if len(logits) != len(ref[0]) or any(a.shape != b.shape for a, b in zip(ref[0], logits)):
            rows.append({"backend": name, "impl": impl, "ok": False, "error": "schedule differs from REF's"})
            continue
        diffs = [float((a - b).abs().max()) for a, b in zip(ref[0], logits) if a.numel()]
        scale = max(float(a.abs().max()) for a in ref[0] if a.numel())
        max_diff = max(diffs) if diffs else 0.0
        same = total = 0
        margin = 0.0
        for a, b in zip(ref[0], logits):
            if not a.numel():
                continue
            ra, rb = a.argmax(-1), b.argmax(-1)
            same += int((ra == rb).sum())
            total += len(ra)
            flips = (ra != rb).nonzero().flatten()
            if len(flips):
                m = a[flips, ra[flips]] - a[flips, rb[flips]]
                margin = max(margin, float(m.max()))
        attn_err = max(attn_errs, default=0.0)
        ok = max_diff <= LOGIT_REL_TOL * scale and attn_err <= attn_tol
        if not teacher_forcing:    # free-running: tokens after a flip are other prompts
            ok = ok and same == total
        rows.append({"backend": name, "impl": impl, "iterations": len(logits), "max_abs_logit_diff": max_diff,
                     "ref_max_abs_logit": scale, "logit_rel_err": max_diff / scale if scale else 0.0,
                     "attn_max_rel_err": attn_err, "attn_tol": attn_tol, "decode_graphs": graphs, "tokens_equal": same,
                     "tokens_total": total, "flip_max_ref_margin": margin, "teacher_forced": bool(teacher_forcing),
                     "ok": bool(ok), "error": ""})
    return pd.DataFrame(rows)


def _shadow_reference(eng, ref, errs: list) -> None:
    """Make ``eng``'s backend also compute REF's float32 attention on the same inputs each layer and
    append the largest per-sequence relative error to ``errs``."""
    import torch

    backend, forward = eng.backend, eng.backend.forward

    def checked(li, q, meta, timer=None):
        out = forward(li, q, meta, timer)
        if not meta.static:        # a decode graph's batch: REF reads host lengths it does not hold
            errs.append(_seq_rel_err(out, ref.forward(li, q, meta, out_dtype=torch.float32), meta))
        return out

    backend.forward = checked


def run_check(run, out_dir, prov, device):
    from kernels.workload import dtype_of
    from .model import LlamaConfig, model_config

    if int(run.get("tp", 1)) != 1:
        raise ValueError(f"{run['id']}: tp: {run['tp']} — the backend check runs at TP1 only (tests/test_serving_tp.py "
                         "checks TP against TP1)")
    cfg = model_config(run["model"])
    if run.get("layers"):
        cfg = LlamaConfig(**{**cfg.__dict__, "name": f"{cfg.name}-{run['layers']}l", "layers": int(run["layers"])})
    df = check_backends(cfg, run["backends"], device, dtype_of(run.get("dtype", "float16")), run["workload"],
                        run["scheduler"], run.get("num_blocks"), int(run.get("block_size", 16)),
                        float(run.get("init_range", 0.02)), run.get("backend_options"),
                        decode_graphs=run.get("decode_graphs", False))
    summary = {"backends": len(df), "failed": int((~df["ok"]).sum()) if len(df) else 0}
    print(df.to_string(index=False))
    _write_run(out_dir, run, prov, summary, extra_csv=("check.csv", df))
    return summary


def run_profile(run, out_dir, prov, store, device):
    """Iterations built directly over a grid (every ``prefill`` (tokens, keys) chunk with every
    ``decodes`` (count, keys[, shortest]) set, plus the (tokens, keys, count, keys[, shortest])
    ``points``; with ``shortest`` the decodes' lengths spread evenly from it to keys), each timed
    like a serving iteration: the latency model's calibration then sees small and large batches
    alike, which the steady-state windows alone (nearly constant batch sizes) cannot separate.
    ``passes`` > 1 times the whole grid that many times in turn (``repeats`` runs of a point per
    pass) and keeps the median over all of them: a slow spell of the host lands on every point a
    little instead of on a few points entirely."""
    import numpy as np

    engine = _engine(run, store, device)
    engine.warmup({"name": "sarathi", "chunk_size": 256, "max_batch_size": 999})
    repeats, passes = int(run.get("repeats", 3)), int(run.get("passes", 1))
    if repeats < 1 or passes < 1:
        raise ValueError(f"{run['id']}: repeats and passes must be >= 1, got {repeats} and {passes}")
    grid = [(*p, *d) for p, d in itertools.product(run.get("prefill", []), run.get("decodes", []))]
    points, skipped = [], 0
    for point in grid + [tuple(x) for x in run.get("points", [])]:
        if len(point) not in (4, 5):
            raise ValueError(f"{run['id']}: a profile point is (prefill tokens, prefill keys, decodes, decode keys"
                             f"[, shortest decode]), got {list(point)}")
        pt, pkv, nd, dctx = map(int, point[:4])
        shortest = int(point[4]) if len(point) == 5 else None
        if not pt and not nd:
            continue
        try:
            engine.synthetic_batch(pt, pkv, nd, dctx, shortest)
        except MemoryError:          # does not fit this GPU's KV cache: not a point of this profile
            skipped += 1
            continue
        points.append((pt, pkv, nd, dctx, shortest))
    times: dict = {p: [] for p in points}
    features: dict = {}
    for _ in range(passes):
        for p in points:
            # built again each time: a synthetic batch owns a fresh block pool
            batch = engine.synthetic_batch(*p)
            features[p] = batch.features()
            times[p] += [s["total"] for s in engine.time_batch(batch, repeats)]
    rows = [{"iteration": i, "duration": float(np.median(times[p])), "duration_min": min(times[p]),
             "duration_max": max(times[p]), "repeats": repeats * passes, "measured": True, "warmup": False,
             **features[p]} for i, p in enumerate(points)]
    summary = {"points": len(rows), "passes": passes, "skipped_not_fitting": skipped, **_kv_info(engine),
               **_clock_now(device)}
    _write_run(out_dir, run, prov, summary, iterations=rows)
    return summary


def gpu_runs(configs: list[str], smoke: bool = False):
    """(run, one rank's model config, dtype, backend names) of every GPU run of the configs: what
    their build step compiles (here, and FlashInfer's modules ahead of time)."""
    from .model import model_config, shard_config

    for path in configs:
        for run in expand_runs(load_config(path, smoke)):
            if run["kind"] in GPU_KINDS:
                cfg = shard_config(model_config(run["model"]), int(run.get("tp", 1)))   # one rank's heads
                yield run, cfg, run.get("dtype", "float16"), run.get("backends") or [run["backend"]]


def build_kernels(configs: list[str], root: Path, smoke: bool = False, device: str | None = None,
                  flashinfer_modules: str | None = None) -> int:
    """The build step: JIT-compile (FlashInfer) and compile (Triton) every kernel the configs' GPU
    runs call, in parallel, before anything is timed. Writes <root>/build/serving_kernels.yaml (a
    kernel experiment: the runs' model shapes x the backends' ``kernel_methods``) and runs
    ``experiments.build`` on it; the marker is <root>/build/serving_kernels.json."""
    import torch

    from experiments import build as kernel_build

    from .backends import registered

    shapes, methods = {}, []
    for run, cfg, dtype, backends in gpu_runs(configs, smoke):
        shapes[(cfg.q_heads, cfg.kv_heads, cfg.head_dim, dtype)] = run["model"] \
            if isinstance(run["model"], str) else "custom"
        for b in backends:
            for m in getattr(registered().get(b), "kernel_methods", ()):
                if m not in methods:
                    methods.append(m)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = root / "build"
    out.mkdir(parents=True, exist_ok=True)
    if torch.device(device).type != "cuda" or not methods:
        note = f"nothing to compile on {device} (the serving backends run PyTorch code there)"
        print(f"build: {note}")
        (out / "serving_kernels.json").write_text(json.dumps({"device": device, "methods": {}, "note": note}) + "\n")
        return 0
    doc = {"name": "serving_kernels",
           "description": "generated by serving.run --stage build: the kernels of the serving configs' GPU runs",
           "plot": "generic", "baseline": methods[0], "methods": methods,
           "configs": [{"model": {"name": f"{name}-shape", "q_heads": q, "kv_heads": kv, "head_dim": hd},
                        "dtype": dt, "prefill_len": 64, "prefill_kv_len": 192, "decode_batch": 4, "decode_ctx": 100}
                       for (q, kv, hd, dt), name in shapes.items()]}
    (out / "serving_kernels.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    prebuilt = ["--flashinfer-modules", flashinfer_modules] if flashinfer_modules else []
    return kernel_build.main([str(out / "serving_kernels.yaml"), "--out", str(out / "serving_kernels.json"),
                              "--device", device] + prebuilt)


# ---------------------------------------------------------------- CPU stage
def calibration_key(model: str, backend: str | None = None, tp=1, graphs=False) -> str:
    """Key of a latency model (model, backend) or of a KV size (model) in calibration.json: TP1
    keeps the plain names, TP>1 adds ``tpN`` (its iterations and per-GPU cache differ); a backend
    whose decode-only iterations ran as CUDA graphs (``decode_graphs``) adds ``graphs`` (they cost
    a fraction of the eager ones)."""
    tp = 1 if tp is None or (isinstance(tp, float) and math.isnan(tp)) else int(tp)
    parts = [str(model)] + ([f"tp{tp}"] if tp != 1 else []) + ([str(backend)] if backend is not None else [])
    if backend is not None and _flag(graphs):
        parts.append("graphs")
    return "|".join(parts)


def _flag(v) -> bool:
    """A boolean tag read back from a CSV or JSON (missing or NaN in runs written before it: False)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return False
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def run_calibrate(run, target_dir: Path, target_root: Path):
    """Fit one latency model per (model, backend, tp, decode graphs) to the measured, non-warm-up iterations of the
    ``sources`` configs' GPU runs (``kinds``: windows and profiles by default, so online runs stay
    out of the fit and can validate it). Writes <target>/calibration.json."""
    from .simulator import LatencyModel, min_fit_rows, save_models

    frames = [read_iterations(target_root / s, tuple(run.get("kinds", ["window", "profile"]))) for s in run["sources"]]
    df = pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else pd.DataFrame()
    if df.empty:
        raise FileNotFoundError(f"calibrate: no GPU iterations under {[str(target_root / s) for s in run['sources']]}")
    df = df[(df["measured"]) & (~df["warmup"])]
    models, kv, stats = {}, {}, []
    outlier = float(run.get("outlier_rel", 1.0))
    if "tp" not in df:
        df = df.assign(tp=1)
    df = df.assign(decode_graphs=[_flag(v) for v in df.get("decode_graphs", pd.Series(False, index=df.index))])
    for (model, backend, tp, graphs), g in df.fillna({"tp": 1}).groupby(["model", "backend", "tp", "decode_graphs"]):
        rows = g.to_dict("records")
        if len(rows) < min_fit_rows(graphs):     # too few to fit: recorded, the others still fit
            stats.append({"model": model, "backend": backend, "tp": int(tp), "decode_graphs": bool(graphs),
                          "note": f"not fitted: {len(rows)} iterations, {min_fit_rows(graphs)} needed"})
            continue
        gopts = _graph_options_of(g["run_id"].unique(), run["sources"], target_root) if graphs else None
        m = LatencyModel.fit(rows, graphs=gopts)
        # one robust pass: leave out iterations far off the fit (a JIT compile, a clock dip), refit
        keep = [r for r in rows if abs(m.predict_features(r) / float(r["duration"]) - 1) <= outlier]
        dropped = len(rows) - len(keep)
        if dropped and len(keep) >= 10:
            m = LatencyModel.fit(keep, graphs=gopts)
        gpus = ", ".join(sorted(map(str, g["gpu_name"].dropna().unique()))) if "gpu_name" in g else ""
        models[calibration_key(model, backend, tp, graphs)] = {**m.to_dict(), "dropped_outliers": dropped, "gpu_name": gpus}
        stats.append({"model": model, "backend": backend, "tp": int(tp), "decode_graphs": bool(graphs), **m.stats,
                      "dropped_outliers": dropped})
    for f in sorted(itertools.chain.from_iterable((target_root / s).glob("runs/*/summary.csv") for s in run["sources"])):
        s = pd.read_csv(f)
        if "num_blocks" in s and len(s) and s["kind"].iloc[0] in ("window", "online", "profile"):
            r = s.iloc[0]
            kv.setdefault(calibration_key(r["model"], tp=r.get("tp", 1)),
                          {"num_blocks": int(r["num_blocks"]), "block_size": int(r["block_size"])})
    if not models:
        raise ValueError(f"calibrate: no (model, backend) of {run['sources']} has enough iterations to fit: {stats}")
    target_dir.mkdir(parents=True, exist_ok=True)
    save_models(target_dir / "calibration.json", {"models": models, "kv": kv, "sources": run["sources"]})
    pd.DataFrame(stats).to_csv(target_dir / "calibration_fit.csv", index=False)
    return {"fitted": len(models)}


def _graph_options_of(run_ids, sources, target_root: Path) -> dict:
    """The one set of decode-graph options (serving/graphs.py) the runs ``run_ids`` of the
    ``sources`` configs used (from their done.json); raises if they differ, since one latency model
    cannot describe two graph geometries."""
    from .graphs import graph_options

    found = {}
    for s in sources:
        for rid in run_ids:
            done = target_root / s / "runs" / str(rid) / "done.json"
            if done.exists():
                found[rid] = graph_options(json.loads(done.read_text())["run"].get("decode_graphs") or {})
    distinct = {json.dumps(v, sort_keys=True) for v in found.values()}
    if len(distinct) != 1:
        raise ValueError(f"calibrate: runs {sorted(map(str, run_ids))} used {len(distinct)} decode-graph settings "
                         f"({sorted(distinct)}); fit them apart")
    return json.loads(distinct.pop())


def _load_calibration(run, target_root):
    from .simulator import LatencyModel, load_models

    cal = load_models(target_root / run["calibration"] / "calibration.json")
    key = calibration_key(run["model"], run["backend"], run.get("tp", 1), run.get("decode_graphs", False))
    if key not in cal["models"]:
        raise KeyError(f"no calibration for {key} in {run['calibration']}/calibration.json "
                       f"(have: {', '.join(sorted(cal['models']))})")
    kv = run.get("kv") or cal["kv"][calibration_key(run["model"], tp=run.get("tp", 1))]
    run["_calibrated_on"] = cal["models"][key].get("gpu_name", "")
    return LatencyModel.from_dict(cal["models"][key]), kv


def run_simulate(run, out_dir, prov, target_root):
    from .metrics import request_rows, summarize
    from .simulator import simulate
    from .trace import build_workload

    lat, kv = _load_calibration(run, target_root)
    qps, qinfo = _resolve_qps(run, target_root)
    wl = dict(run["workload"], qps=qps) if "qps" in run["workload"] else dict(run["workload"])
    specs = build_workload(wl)
    t0 = time.time()
    res = simulate(specs, run["scheduler"], kv["num_blocks"], kv["block_size"], lat)
    summary = {**summarize(res.requests), "qps": wl.get("qps", 0.0) or 0.0, **qinfo, "iterations": len(res.iterations),
               "num_blocks": kv["num_blocks"], "block_size": kv["block_size"], "sim_wall_s": time.time() - t0,
               "latency_source": f"calibration:{run['calibration']}", "calibrated_on": run.get("_calibrated_on", ""),
               "label": run.get("label", "")}
    for it in res.iterations:
        it["warmup"] = False
    # per-iteration rows of a simulated 2,000-request run are ~36K lines: written on request only
    _write_run(out_dir, run, prov, summary, iterations=res.iterations if run.get("write_iterations", False) else None,
               requests=request_rows(res.requests))
    return summary


VALIDATION_METRICS = ("request_throughput", "ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99", "e2el_p50", "e2el_p99")
LIMITS = {"request_throughput": 0.05, "p50": 0.10, "p99": 0.20}


def run_validate(run, target_dir: Path, target_root: Path):
    """For each online GPU run of ``runs_from`` (config name): (1) replay: simulate its requests
    with its own recorded iteration durations -> every metric must be equal; (2) model: simulate
    with the calibration -> throughput within 5%, P50s within 10%, P99s within 20%; (3) with
    ``repeats_from`` (folders under the output root holding other runs of the same ids): the same
    limits between two measured runs (check ``repeat:<folder>``; the ``simulated`` column then holds
    the repeat's value), the engine's own reproducibility, which bounds what any model can match;
    and the model against each repeat, simulated at the repeat's own load (check
    ``calibrated_model@<folder>``), so that every measured run of a configuration validates it."""
    from .metrics import summarize
    from .simulator import LatencyModel, ReplayLatency, load_models, simulate
    from .trace import build_workload

    rows, steadiness = [], []
    src = target_root / run["runs_from"]
    cal = load_models(target_root / run["calibration"] / "calibration.json")
    for done in sorted(src.glob("runs/*/done.json")):
        meta = json.loads(done.read_text())["run"]
        if meta["kind"] != "online":
            continue
        rd = done.parent
        summ = read_exact(rd / "summary.csv").iloc[0]
        its = read_exact(rd / "iterations.csv.gz").to_dict("records")
        steadiness.append({"run_id": meta["id"], "folder": run["runs_from"], **decode_steadiness(its)})
        wl = dict(meta["workload"], qps=float(summ["qps"]))
        specs = build_workload(wl)
        measured = {k: v for k, v in summ.to_dict().items()}
        nb, bs = int(summ["num_blocks"]), int(summ["block_size"])
        rep = summarize(simulate(specs, meta["scheduler"], nb, bs, ReplayLatency(its)).requests)
        exact = all(_same(rep.get(k), measured.get(k)) for k in measured if k in rep)
        rows.append({"run_id": meta["id"], "check": "replay", "metric": "all", "measured": float("nan"),
                     "simulated": float("nan"), "rel_err": 0.0 if exact else float("nan"), "limit": 0.0, "pass": exact})
        key = calibration_key(meta["model"], meta["backend"], meta.get("tp", 1), meta.get("decode_graphs", False))
        lat = LatencyModel.from_dict(cal["models"][key]) if key in cal["models"] else None

        def modelled(summary: dict) -> dict:
            """The model's metrics for a measured run: its arrivals (its QPS) and its KV blocks."""
            run_specs = build_workload(dict(meta["workload"], qps=float(summary["qps"])))
            return summarize(simulate(run_specs, meta["scheduler"], int(summary["num_blocks"]),
                                      int(summary["block_size"]), lat).requests)

        compared = []   # (check, measured metrics, metrics compared with them)
        if lat is not None:
            compared.append(("calibrated_model", measured, modelled(measured)))
        repeats = run.get("repeats_from") or []
        for folder in [repeats] if isinstance(repeats, str) else repeats:
            repeat = target_root / folder / "runs" / meta["id"] / "summary.csv"
            if repeat.exists():
                other = read_exact(repeat).iloc[0].to_dict()
                steadiness.append({"run_id": meta["id"], "folder": folder, **decode_steadiness(
                    read_exact(repeat.parent / "iterations.csv.gz").to_dict("records"))})
                compared.append((f"repeat:{folder}", measured, other))
                if lat is not None:
                    compared.append((f"calibrated_model@{folder}", other, modelled(other)))
        for check, base, other in compared:
            for m in VALIDATION_METRICS:
                limit = LIMITS["request_throughput"] if m == "request_throughput" else LIMITS[m.rsplit("_", 1)[1]]
                a, b = base[m], other[m]
                err = b / a - 1 if a else float("nan")
                rows.append({"run_id": meta["id"], "check": check, "metric": m, "measured": a, "simulated": b,
                             "rel_err": err, "limit": limit, "pass": bool(abs(err) <= limit)})
    df = pd.DataFrame(rows)
    target_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(target_dir / "validation.csv", index=False)
    pd.DataFrame(steadiness).to_csv(target_dir / "steadiness.csv", index=False)
    return {"checks": len(df), "failed": int((~df["pass"]).sum()) if len(df) else 0}


def decode_steadiness(iterations: list[dict], slow: float = 1.3) -> dict:
    """How steady a measured run's decode-only iterations were, each against the others of its batch
    size (the same work): the p90 / median of their durations, averaged over batch sizes weighted by
    their iterations, and the share of them over ``slow`` x their batch size's median. A run whose
    iterations of the same work spread widely was slowed by something outside the work (on an eager
    engine: the host), which no latency model of the work can reproduce."""
    d = pd.DataFrame(iterations)
    if d.empty or "num_prefills" not in d:
        return {"decode_iterations": 0}
    d = d[(d["num_prefills"] == 0) & d.get("measured", True)]
    if d.empty:
        return {"decode_iterations": 0}
    by = d.groupby("num_decodes")["duration"]
    ratio = by.quantile(0.9) / by.median()
    return {"decode_iterations": len(d), "p90_over_median": float((ratio * by.size()).sum() / len(d)),
            f"share_over_{slow:g}x_median": float((d["duration"] > slow * by.transform("median")).mean())}


def _same(a, b) -> bool:
    try:
        if math.isnan(float(a)) and math.isnan(float(b)):
            return True
    except (TypeError, ValueError):
        pass
    return a == b


# ---------------------------------------------------------------- driver
def aggregate(target_dir: Path) -> Path | None:
    frames = [pd.read_csv(f) for f in sorted(target_dir.glob("runs/*/summary.csv")) + sorted(target_dir.glob("sim/*/summary.csv"))]
    if not frames:
        return None
    out = target_dir / "summary.csv"
    pd.concat(frames, ignore_index=True).to_csv(out, index=False)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m serving.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("configs", nargs="+")
    ap.add_argument("--out", required=True, help="output root; each config writes DIR/<config name>/")
    ap.add_argument("--smoke", action="store_true", help="apply each config's smoke: section (tiny model, CPU)")
    ap.add_argument("--stage", choices=("build", "gpu", "cpu", "all"), default="all",
                    help="build: compile the GPU runs' kernels (once per machine, before gpu); gpu: the "
                         "engine's runs; cpu: calibration, simulator, validation; all: gpu then cpu")
    ap.add_argument("--device", default=None, help="override the runs' device (cuda, cuda:1, cpu)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="start no new run after this many seconds (rerun the command to resume)")
    ap.add_argument("--only", default=None, help="run only ids containing this substring")
    ap.add_argument("--force", action="store_true", help="rerun runs that are already done")
    ap.add_argument("--same-load-as", default=None, metavar="DIR",
                    help="online runs take the QPS their namesakes under DIR/<config>/runs/ ran at (a repeat "
                         "at the same load) instead of resolving it from the calibration")
    ap.add_argument("--flashinfer-modules", default=None, metavar="DIR",
                    help="--stage build: FlashInfer modules compiled ahead of time (experiments/flashinfer_modules.py)")
    args = ap.parse_args(argv)

    t_start = time.time()
    root = Path(args.out)
    if args.stage == "build":
        return build_kernels(args.configs, root, args.smoke, args.device, args.flashinfer_modules)
    store = _EngineCache()
    prov_cache: dict = {}
    failed, left, unavailable = [], [], []
    for cfg_path in args.configs:
        doc = load_config(cfg_path, args.smoke)
        target_dir = root / doc["name"]
        for run in expand_runs(doc):
            kind = run["kind"]
            if kind not in GPU_KINDS + CPU_KINDS:
                raise ValueError(f"{run['id']}: unknown kind {kind!r}")
            stage = "gpu" if kind in GPU_KINDS else "cpu"
            if args.stage not in ("all", stage) or (args.only and args.only not in run["id"]):
                continue
            # measured runs under runs/, the CPU stage's simulations under sim/ (derived: rebuilt from runs/)
            run_dir = target_dir / ("runs" if kind in GPU_KINDS else "sim") / run["id"]
            if kind not in ("calibrate", "validate") and (run_dir / "done.json").exists() and not args.force:
                print(f"[skip] {doc['name']}/{run['id']} (done)")
                continue
            if args.time_budget is not None and time.time() - t_start > args.time_budget:
                left.append(f"{doc['name']}/{run['id']}")
                continue
            device = args.device or run.get("device", "cuda" if stage == "gpu" else "cpu")
            if stage == "cpu":
                device = "cpu"
            if device not in prov_cache:
                prov_cache[device] = _provenance(device)
            prov = prov_cache[device]
            t0 = time.time()
            print(f"[run ] {doc['name']}/{run['id']} ({kind}, {device})", flush=True)
            try:
                if kind == "check":
                    s = run_check(run, run_dir, prov, device)
                elif kind == "window":
                    s = run_window(run, run_dir, prov, store, device)
                elif kind == "online":
                    s = run_online(run, run_dir, prov, store, device, root,
                                   Path(args.same_load_as) / doc["name"] if args.same_load_as else None)
                elif kind == "breakdown":
                    s = run_breakdown(run, run_dir, prov, store, device)
                elif kind == "profile":
                    s = run_profile(run, run_dir, prov, store, device)
                elif kind == "calibrate":
                    s = run_calibrate(run, target_dir, root)
                elif kind == "simulate":
                    s = run_simulate(run, run_dir, prov, root)
                else:
                    s = run_validate(run, target_dir, root)
            except Exception as e:  # one failed configuration must not stop the others
                from .backends import BackendUnavailable

                if isinstance(e, BackendUnavailable):   # e.g. no flashinfer here: said, not an error
                    print(f"[n/a ] {doc['name']}/{run['id']}: {e}", flush=True)
                    unavailable.append(f"{doc['name']}/{run['id']}")
                    continue
                traceback.print_exc()
                failed.append(f"{doc['name']}/{run['id']}: {type(e).__name__}: {e}")
                continue
            brief = {k: s[k] for k in list(s)[:6]}
            print(f"[done] {doc['name']}/{run['id']} in {time.time() - t0:.1f}s {brief}", flush=True)
        aggregate(target_dir)
    if left:
        print(f"[left] time budget reached; {len(left)} runs not started (rerun the same command): "
              + ", ".join(left[:10]) + (" ..." if len(left) > 10 else ""))
    if unavailable:
        print(f"[n/a ] {len(unavailable)} runs need a backend this machine lacks: " + ", ".join(unavailable))
    if failed:
        print("[fail] " + "\n[fail] ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
