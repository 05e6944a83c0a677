"""The serving engine: model + KV cache + attention backend, driven by the shared serving loop.

Each iteration the scheduler's batch becomes an ``IterationMeta`` (token ids, positions, KV slots,
per-sequence key ranges), the backend plans, the model runs, the sampling rows' logits are argmaxed
and copied to the host (a real synchronization, as every engine does to stream tokens). The
iteration's duration is wall time from before scheduling to after that copy, so scheduling, input
preparation, planning and launch overheads all count. The engine's clock is the sum of those
durations; when nothing can run it jumps to the next arrival instead of sleeping (equivalent to
real time, since arrivals do not depend on the engine, and it spends no GPU time idling).

Tensor parallelism (``tp > 1``, serving/tensor_parallel.py): this process is rank 0. It schedules
and builds the iteration's host arrays (``batch_arrays``) as at TP1, broadcasts them to the other
ranks, and every rank runs the same forward on its heads; tokens are sampled from rank 0's logits.
The iteration's duration is still rank 0's wall time to the sampled tokens on the host.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

from . import backends as backends_mod
from .backends import IterationMeta
from .kv_cache import KVCache
from .model import LlamaConfig, LlamaModel
from .scheduler import Batch, BlockPool, LoopResult, Request, Work, make_scheduler, serve_loop
from .trace import RequestSpec


def host_counters() -> dict:
    """This thread's CPU time and, where Linux reports it (/proc/thread-self/schedstat), its time
    waiting on a run queue for a CPU, cumulative, in seconds. Per iteration (serve_loop's
    ``host_probe``) they tell a host-bound eager iteration that was slow because the host ran it
    slowly (CPU time up) from one that waited for a CPU (run-queue time up) or for the GPU (neither)."""
    out = {"host_cpu_s": time.thread_time()}
    try:
        with open("/proc/thread-self/schedstat") as f:
            out["host_runqueue_s"] = int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        pass
    return out


def host_steal_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the whole machine since boot (/proc/stat), None where unreadable:
    on a virtual machine, the time its CPUs were runnable but the hypervisor ran something else."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (ticks[7] if len(ticks) > 7 else 0), sum(ticks[:8])


class EventTimer:
    """Collects ``label`` marks ("<part>:begin"/"<part>:end") as CUDA events (or host times on the
    CPU) and sums each part's time in seconds after a synchronize."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def __call__(self, label: str) -> None:
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            self.marks.append((label, e))
        else:
            self.marks.append((label, time.perf_counter()))

    def totals(self) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        out, open_ = {}, {}
        for label, m in self.marks:
            part, what = label.rsplit(":", 1)
            if what == "begin":
                open_[part] = m
            else:
                b = open_.pop(part)
                dt = b.elapsed_time(m) / 1e3 if self.cuda else m - b
                out[part] = out.get(part, 0.0) + dt
        self.marks.clear()
        return out


class CompileClock:
    """Seconds spent in Triton JIT compiles (a kernel specialization's first use in the process)
    while ``measuring``: from Triton's ``jit_cache_hook`` (called before a compile) to its
    ``jit_post_compile_hook`` (after), hooks already set being chained. A production engine warms
    its kernels up before serving; a compile that the warm-up missed stalls one iteration by seconds
    (table 5's first POD runs: 1.6-2.0 s at iteration 22, not in the same lease's repeat), so the
    engine leaves it out of the iteration as it does a graph capture, and counts it."""

    def __init__(self):
        self.seconds = 0.0
        self.compiles = 0

    @contextmanager
    def measuring(self):
        try:
            from triton import knobs
        except ImportError:          # no Triton: nothing can compile
            yield self
            return
        rt = knobs.runtime
        prev_pre, prev_post = rt.jit_cache_hook, rt.jit_post_compile_hook
        started: list = []

        def pre(**kw):
            started.append(time.perf_counter())
            return prev_pre(**kw) if prev_pre else None

        def post(**kw):
            if started:
                self.seconds += time.perf_counter() - started.pop()
                self.compiles += 1
            return prev_post(**kw) if prev_post else None

        rt.jit_cache_hook, rt.jit_post_compile_hook = pre, post
        try:
            yield self
        finally:
            rt.jit_cache_hook, rt.jit_post_compile_hook = prev_pre, prev_post

    def stats(self) -> dict:
        return {"jit_compiles": self.compiles, "jit_compile_s": self.seconds}


def meta_from_arrays(a: dict, device) -> IterationMeta:
    """``Engine.batch_arrays``' host data -> the ``IterationMeta`` on ``device`` (every rank)."""
    dev = torch.device(device)
    t = lambda x, dt: torch.from_numpy(np.ascontiguousarray(x)).to(device=dev, dtype=dt)  # noqa: E731
    prefills = [tuple(int(v) for v in p) for p in a["prefills"]]
    dbase, dkv = [int(v) for v in a["decode_base"]], [int(v) for v in a["decode_kv"]]
    meta = IterationMeta(
        num_tokens=len(a["input_ids"]), input_ids=t(a["input_ids"], torch.int64),
        positions=t(a["positions"], torch.int32), slots=t(a["slots"], torch.int64),
        sample_rows=t(a["sample_rows"], torch.int64), prefills=prefills,
        decode_base=dbase, decode_kv=dkv, block_size=int(a["block_size"]), device=dev)
    if dkv:
        meta.decode_base_t = t(np.asarray(dbase), torch.int32)
        meta.decode_kv_t = t(np.asarray(dkv), torch.int32)
    return meta


class Engine:
    def __init__(self, cfg: LlamaConfig, backend: str, device="cpu", dtype=torch.float16, block_size: int = 16,
                 num_blocks: int | None = None, kv_fraction: float = 0.9, kv_headroom_gb: float = 8.0,
                 seed: int = 0, init_range: float = 1e-3, ops: str = "auto", prompt: str = "repeated",
                 backend_options: dict | None = None, model: LlamaModel | None = None, cache: KVCache | None = None,
                 tp: int = 1, tp_group=None, decode_graphs: bool | dict = False):
        """``model`` and ``cache`` may be passed in to reuse them across runs (another backend).
        ``tp > 1`` starts a tensor-parallel group (serving/tensor_parallel.py; this process is rank
        0, ``close()`` stops it); ``tp_group`` reuses a started one (its model and cache).
        ``decode_graphs``: run decode-only iterations as CUDA graph replays (serving/graphs.py;
        True, or a dict of ``DecodeGraphs`` options: batch_sizes, min_context)."""
        self.cfg, self.device, self.dtype = cfg, torch.device(device), dtype
        self._owns_group = False
        if tp_group is None and int(tp) > 1:
            from .tensor_parallel import TPGroup

            tp_group = TPGroup.start(cfg, int(tp), device, dtype, seed=seed, init_range=init_range, ops=ops,
                                     block_size=block_size, num_blocks=num_blocks, kv_fraction=kv_fraction,
                                     kv_headroom_gb=kv_headroom_gb)
            self._owns_group = True
        self.tp_group = tp_group
        self.tp = tp_group.tp if tp_group is not None else 1
        if tp_group is not None:
            if int(tp) not in (1, self.tp) or tp_group.cfg != cfg:
                raise ValueError(f"tp_group is tp={self.tp} of {tp_group.cfg.name}; asked tp={tp} of {cfg.name}")
            model, cache = model or tp_group.model, cache or tp_group.cache
            if model is not tp_group.model or cache is not tp_group.cache:
                raise ValueError("a tensor-parallel engine runs on its group's model shard and KV cache")
        self.model = model or LlamaModel(cfg, self.device, dtype, seed=seed, init_range=init_range, ops=ops)
        if cache is not None:
            self.cache = cache
        elif num_blocks is None:
            if self.device.type != "cuda":
                raise ValueError("num_blocks is required off the GPU")
            self.cache = KVCache.for_gpu(cfg, block_size, dtype, self.device, kv_fraction, kv_headroom_gb)
        else:
            self.cache = KVCache(cfg, num_blocks, block_size, dtype, self.device)
        # the backend sees this rank's heads only (the shard config; cfg itself at tp=1)
        local = getattr(self.model, "local", cfg)
        self.backend_name, self.backend_options = backend, dict(backend_options or {})
        try:
            self.backend = backends_mod.create(backend, local, self.cache, **self.backend_options)
            if tp_group is not None:    # the other ranks create the same backend on their shards
                tp_group.set_backend(backend, self.backend_options)
        except BaseException:
            self.close()
            raise
        if prompt not in ("repeated", "pseudo_random"):
            raise ValueError("prompt must be 'repeated' (the artifact's: one token id) or 'pseudo_random'")
        self.prompt = prompt
        self.graphs = None
        self.compile_clock = CompileClock()
        if decode_graphs:
            from .graphs import DecodeGraphs

            if self.tp_group is not None:
                self.close()
                raise ValueError("decode_graphs runs at tp=1 only (the other ranks run eagerly)")
            if not getattr(self.backend, "supports_decode_graphs", False):
                self.close()
                raise ValueError(f"decode_graphs: the {backend} backend plans on the host every iteration and "
                                 "cannot be captured; run it with decode_graphs off")
            self.graphs = DecodeGraphs(self, **(decode_graphs if isinstance(decode_graphs, dict) else {}))
        self.timer: EventTimer | None = None
        self.last_logits: torch.Tensor | None = None
        self.keep_logits = False
        self.logits_log: list = []
        # teacher forcing (the backend check): {rid: token ids} fed back instead of the argmax, so
        # that the iterations of two backends see the same inputs and one greedy flip cannot cascade
        self.forced_tokens: dict | None = None

    # ------------------------------------------------------------ iteration inputs
    def prompt_ids(self, rid: int, start: int, n: int) -> np.ndarray:
        if self.prompt == "repeated":
            return np.full(n, 1, dtype=np.int64)
        pos = np.arange(start, start + n, dtype=np.int64)
        return (rid * 1_000_003 + pos * 7_919 + (pos * pos) % 101) % self.cfg.vocab_size

    def batch_arrays(self, batch: Batch) -> dict:
        """The iteration's inputs as plain host data (numpy arrays and lists): what rank 0
        broadcasts to the other tensor-parallel ranks, and what ``meta_from_arrays`` turns into
        an ``IterationMeta``. Rows: prefill chunks first, then one per decode."""
        pool, bsz = self.cache.pool, self.cache.block_size
        ids, pos, slots, sample, prefills = [], [], [], [], []
        off = 0
        for w in batch.prefills:
            base = pool.base(w.req.rid) * bsz
            p = np.arange(w.start, w.kv_len, dtype=np.int64)
            ids.append(self.prompt_ids(w.req.rid, w.start, w.q_len))
            pos.append(p)
            slots.append(base + p)
            prefills.append((off, w.q_len, base, w.kv_len))
            off += w.q_len
            if w.samples:
                sample.append(off - 1)
        dbase, dkv = [], []
        if batch.decodes:
            d_ids, d_pos = [], []
            for w in batch.decodes:
                base = pool.base(w.req.rid) * bsz
                d_ids.append(w.req.tokens[-1] if w.req.tokens else 0)
                d_pos.append(w.start)
                dbase.append(base)
                dkv.append(w.kv_len)
            d_pos = np.asarray(d_pos, dtype=np.int64)
            ids.append(np.asarray(d_ids, dtype=np.int64))
            pos.append(d_pos)
            slots.append(np.asarray(dbase, dtype=np.int64) + d_pos)
            sample.extend(range(off, off + len(batch.decodes)))
        return {"input_ids": np.concatenate(ids).astype(np.int64), "positions": np.concatenate(pos),
                "slots": np.concatenate(slots), "sample_rows": np.asarray(sample, dtype=np.int64),
                "prefills": prefills, "decode_base": dbase, "decode_kv": dkv, "block_size": bsz}

    def build_meta(self, batch: Batch) -> IterationMeta:
        return meta_from_arrays(self.batch_arrays(batch), self.device)

    # ------------------------------------------------------------ one iteration
    @torch.inference_mode()
    def execute(self, batch: Batch, index: int = 0) -> float:
        """Run one iteration and append each sampling request's token. Returns the seconds that
        are not part of the iteration (a decode graph's one-time capture, Triton JIT compiles, a
        backend's plan timing on a shape's first sight: ``untimed_seconds``; 0 otherwise)."""
        arrays = self.batch_arrays(batch)
        if self.graphs is not None and self.timer is None and self.graphs.key(arrays) is not None:
            logits, untimed = self.graphs.run(arrays)     # a capture's compiles are in its untimed
            self._sample(batch, logits)
            return untimed
        before, before_backend = self.compile_clock.seconds, self.backend.untimed_seconds
        with self.compile_clock.measuring():
            self._execute_eager(batch, arrays)
        return self.compile_clock.seconds - before + self.backend.untimed_seconds - before_backend

    def _execute_eager(self, batch: Batch, arrays: dict) -> None:
        meta = meta_from_arrays(arrays, self.device)
        # planned before the other ranks hear of the batch: a backend refusing it (POD with two
        # prefills) raises here with the group still in step
        self.backend.begin(meta)
        if self.tp_group is None:
            logits = self.model.forward(meta, self.cache, self.backend, self.timer)
        else:
            try:
                # another engine may share the group with another backend: the ranks follow this one
                self.tp_group.set_backend(self.backend_name, self.backend_options)
                self.tp_group.broadcast_iteration(arrays)
                logits = self.model.forward(meta, self.cache, self.backend, self.timer)
            except BaseException:
                self.tp_group.abort()      # the ranks may be mid-collective: out of step for good
                raise
        self._sample(batch, logits)

    def _sample(self, batch: Batch, logits: torch.Tensor) -> None:
        tokens = logits.argmax(-1).tolist()          # synchronizes with the device
        if self.keep_logits:
            self.logits_log.append(logits.float().cpu())
        samplers = [w for w in batch.works if w.samples]
        for w, tok in zip(samplers, tokens):
            if self.forced_tokens is not None:
                tok = self.forced_tokens[w.req.rid][len(w.req.tokens)]
            w.req.tokens.append(int(tok))

    @property
    def gpus(self) -> int:
        """GPUs this engine computes on (tp on CUDA, 0 on the CPU)."""
        return self.tp if self.device.type == "cuda" else 0

    def close(self) -> None:
        """Stop the tensor-parallel group this engine started (no-op otherwise)."""
        if self._owns_group and self.tp_group is not None:
            self.tp_group.close()
        self._owns_group = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ runs
    def fresh_pool(self) -> BlockPool:
        # with decode graphs the cache's last block is the padding rows' scratch, never allocated
        blocks = self.cache.num_blocks - (1 if self.graphs is not None else 0)
        self.cache.pool = BlockPool(blocks, self.cache.block_size)
        return self.cache.pool

    def run_counters(self) -> dict:
        """Decode-graph and JIT-compile counters for a run's summary (``decode_graphs`` False when
        off; compiles since the warm-up)."""
        graphs = self.graphs.stats() if self.graphs is not None else {"decode_graphs": False}
        return {**graphs, **self.compile_clock.stats(), **self.backend.counters()}

    def run(self, specs: list[RequestSpec], scheduler_cfg: dict, max_iterations: int | None = None,
            select=None, on_iteration=None) -> LoopResult:
        sched = make_scheduler(scheduler_cfg, self.fresh_pool())
        return serve_loop(specs, sched, self.execute, wall_clock=time.perf_counter, max_iterations=max_iterations,
                          select=select, on_iteration=on_iteration, host_probe=host_counters)

    def warmup(self, scheduler_cfg: dict, prompt_lens=(300, 700), output_len: int = 6) -> None:
        """A short run with prefill-only, hybrid and decode-only batches, so that every kernel
        family is compiled (Triton, FlashInfer JIT) and cuBLAS is initialized before timing."""
        cfg = dict(scheduler_cfg)
        cap = self.cache.capacity_tokens // (2 * len(prompt_lens)) - output_len
        if cfg["name"] == "sarathi":
            cfg["chunk_size"] = min(int(cfg["chunk_size"]), 256)
        else:
            cap = min(cap, int(cfg.get("max_tokens", cap)))
        specs = [RequestSpec(i, max(1, min(p, cap)), output_len) for i, p in enumerate(prompt_lens)]
        self.run(specs, cfg)
        self.compile_clock = CompileClock()    # a run's summary counts the compiles the warm-up missed
        self.backend.reset_counters()

    def synthetic_batch(self, prefill_tokens: int, prefill_kv: int, num_decodes: int, decode_ctx: int,
                        shortest: int | None = None) -> Batch:
        """One iteration's batch built directly (no scheduler): a prefill chunk of ``prefill_tokens``
        ending at key ``prefill_kv`` (none if 0) plus ``num_decodes`` decodes of ``decode_ctx`` keys
        (with ``shortest``: lengths spread evenly from ``shortest`` to ``decode_ctx``), their KV
        blocks reserved in a fresh pool. Raises MemoryError when they do not fit."""
        pool = self.fresh_pool()
        if shortest is not None and not 1 <= int(shortest) <= decode_ctx:
            raise ValueError(f"shortest must be in [1, decode_ctx={decode_ctx}], got {shortest}")
        ctxs = ([int(round(x)) for x in np.linspace(int(shortest), decode_ctx, num_decodes)] if shortest
                else [decode_ctx] * num_decodes)
        need = (pool.blocks_for(prefill_kv + 2) if prefill_tokens else 0) + sum(pool.blocks_for(c + 4) for c in ctxs)
        if need > pool.num_blocks:
            raise MemoryError(f"{num_decodes} decodes of {decode_ctx} keys and a {prefill_kv}-key prefill need "
                              f"{need} KV blocks; the cache has {pool.num_blocks}")
        works = []
        if prefill_tokens:
            pre = Request(RequestSpec(0, prefill_kv, 2))
            pool.allocate(0, prefill_kv + 2)
            works.append(Work(pre, prefill_kv - prefill_tokens, prefill_tokens, True, True))
        decs = []
        for i, ctx in enumerate(ctxs):
            r = Request(RequestSpec(i + 1, ctx - 1, 4))
            pool.allocate(r.rid, ctx + 4)
            decs.append(Work(r, ctx - 1, 1, False, True))
        return Batch(works, decs)

    def time_batch(self, batch: Batch, repeats: int = 5, parts: bool = False) -> list[dict]:
        """Execute ``batch`` once untimed, then ``repeats`` times, each timed as the serving loop
        times an iteration (wall time to the sampled tokens on the host); with ``parts`` also each
        attention part's device time (CUDA events around it)."""
        samples = []
        for rep in range(repeats + 1):
            self.timer = EventTimer(self.device) if parts else None
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            untimed = self.execute(batch)
            total = time.perf_counter() - t0 - untimed
            part_times = self.timer.totals() if parts else {}
            self.timer = None
            for w in batch.works:        # the same batch again: forget the sampled token
                if w.samples and w.req.tokens:
                    w.req.tokens.pop()
            if rep:
                samples.append({"total": total, **part_times})
        return samples

    def breakdown(self, prefill_tokens: int, prefill_kv: int, num_decodes: int, decode_ctx: int,
                  repeats: int = 5) -> dict:
        """Time one hybrid iteration (a prefill chunk of ``prefill_tokens`` ending at key
        ``prefill_kv``, plus ``num_decodes`` decodes of ``decode_ctx`` keys): total and per
        attention part (figure 4), medians over ``repeats`` runs after one warm-up."""
        samples = self.time_batch(self.synthetic_batch(prefill_tokens, prefill_kv, num_decodes, decode_ctx),
                                  repeats, parts=True)
        keys = sorted({k for s in samples for k in s})
        return {k: float(np.median([s.get(k, 0.0) for s in samples])) for k in keys}
