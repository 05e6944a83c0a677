"""Request state, KV block accounting, the two schedulers and the serving loop that the engine and
the simulator share (so the simulator reproduces the engine's decisions exactly).

Semantics (Sarathi-Serve's, as the artifact ran them):
  * A request of ``prompt_len`` prefill and ``output_len`` decode tokens produces its first output
    token at the end of the iteration holding its last prefill chunk, then one token per decode
    iteration: ``output_len - 1`` decode iterations.
  * Sarathi: token budget per iteration = ``chunk_size``; running decodes are scheduled first and
    each takes one token of the budget (57 decodes at chunk 1024 leave a 967-token chunk); then one
    prefill chunk per batch (the one in progress, else the next arrived request, FCFS).
  * vLLM (original): prefill first: whole prompts of arrived requests (FCFS) while their sum stays
    within ``max_tokens``; a batch is either prompts only or all running decodes.
  * Memory: a request reserves the KV blocks of its whole length (prompt + output) at admission,
    as one contiguous block range, and frees them when it finishes. Admission stops at the first
    request that does not fit (FCFS) or at ``max_batch_size`` running requests. There is never a
    preemption. (vAttention instead maps 2 MB physical pages on demand, admits on the current
    length and preempts by recompute on overflow; see serving/kv_cache.py.)
"""
from __future__ import annotations

import bisect
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .trace import RequestSpec


# ---------------------------------------------------------------- KV block accounting
class BlockPool:
    """``num_blocks`` blocks of ``block_size`` tokens; each request holds one contiguous range
    (first fit). The engine's KV cache uses the block ids as page indices."""

    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("num_blocks and block_size must be >= 1")
        self.num_blocks, self.block_size = num_blocks, block_size
        self._free: list[list[int]] = [[0, num_blocks]]   # sorted [start, length] ranges
        self._held: dict[int, tuple[int, int]] = {}        # rid -> (start, length)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @property
    def free_blocks(self) -> int:
        return sum(n for _, n in self._free)

    def can_allocate(self, tokens: int) -> bool:
        need = self.blocks_for(tokens)
        return any(n >= need for _, n in self._free)

    def allocate(self, rid: int, tokens: int) -> int:
        """First block of a fresh contiguous range for ``tokens`` tokens."""
        if rid in self._held:
            raise ValueError(f"request {rid} already holds blocks")
        need = self.blocks_for(tokens)
        for i, (start, n) in enumerate(self._free):
            if n >= need:
                if n == need:
                    self._free.pop(i)
                else:
                    self._free[i] = [start + need, n - need]
                self._held[rid] = (start, need)
                return start
        raise MemoryError(f"no contiguous range of {need} blocks for request {rid}")

    def free(self, rid: int) -> None:
        start, n = self._held.pop(rid)
        starts = [s for s, _ in self._free]
        i = bisect.bisect_left(starts, start)
        self._free.insert(i, [start, n])
        # merge with the right then the left neighbour
        if i + 1 < len(self._free) and self._free[i][0] + self._free[i][1] == self._free[i + 1][0]:
            self._free[i][1] += self._free.pop(i + 1)[1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == self._free[i][0]:
            self._free[i - 1][1] += self._free.pop(i)[1]

    def base(self, rid: int) -> int:
        return self._held[rid][0]

    def held(self, rid: int) -> tuple[int, int]:
        return self._held[rid]


# ---------------------------------------------------------------- requests and batches
@dataclass(eq=False)
class Request:
    spec: RequestSpec
    prefilled: int = 0                 # prompt tokens whose KV is in the cache
    generated: int = 0                 # output tokens produced
    first_scheduled: float | None = None
    token_times: list = field(default_factory=list)
    finished: bool = False
    tokens: list = field(default_factory=list)   # engine: sampled token ids

    @property
    def rid(self) -> int:
        return self.spec.rid

    @property
    def arrival(self) -> float:
        return self.spec.arrival

    @property
    def prefill_done(self) -> bool:
        return self.prefilled >= self.spec.prompt_len

    @property
    def context_len(self) -> int:
        """Tokens whose KV is in the cache."""
        return self.prefilled + max(0, self.generated - 1)


@dataclass(frozen=True)
class Work:
    """One sequence's share of an iteration: ``q_len`` new tokens at positions
    [start, start + q_len), attending to ``kv_len = start + q_len`` keys."""

    req: Request
    start: int
    q_len: int
    is_prefill: bool
    samples: bool          # produces an output token (a decode, or the last prefill chunk)

    @property
    def kv_len(self) -> int:
        return self.start + self.q_len


@dataclass
class Batch:
    """Prefill chunks first, then decodes (the order of the query rows)."""

    prefills: list
    decodes: list

    @property
    def works(self) -> list:
        return self.prefills + self.decodes

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decodes

    @property
    def num_tokens(self) -> int:
        return sum(w.q_len for w in self.prefills) + len(self.decodes)

    @property
    def kind(self) -> str:
        if self.prefills and self.decodes:
            return "hybrid"
        return "prefill" if self.prefills else "decode"

    def features(self) -> dict:
        """What the latency model and the iteration CSV know of a batch."""
        pairs = sum(w.q_len * (w.kv_len - w.q_len) + w.q_len * (w.q_len + 1) // 2 for w in self.prefills)
        return {
            "kind": self.kind,
            "num_tokens": self.num_tokens,
            "num_seqs": len(self.prefills) + len(self.decodes),
            "num_prefills": len(self.prefills),
            "prefill_tokens": sum(w.q_len for w in self.prefills),
            "prefill_kv": sum(w.kv_len for w in self.prefills),
            "prefill_pairs": pairs,
            "num_decodes": len(self.decodes),
            "decode_kv": sum(w.kv_len for w in self.decodes),
            "decode_kv_max": max((w.kv_len for w in self.decodes), default=0),
        }


def _decode_work(r: Request) -> Work:
    # the newest output token (number ``generated``) goes in; its KV lands at position context_len
    return Work(r, r.spec.prompt_len + r.generated - 1, 1, False, True)


def _prefill_work(r: Request, n: int) -> Work:
    return Work(r, r.prefilled, n, True, r.prefilled + n == r.spec.prompt_len)


# ---------------------------------------------------------------- schedulers
class Scheduler:
    """State shared by both policies: the waiting queue (arrived, FCFS), the running list
    (admission order) and the block pool."""

    name = ""

    def __init__(self, pool: BlockPool, max_batch_size: int):
        self.pool, self.max_batch_size = pool, max_batch_size
        self.waiting: list[Request] = []
        self.running: list[Request] = []

    def add(self, req: Request) -> None:
        if self.pool.blocks_for(req.spec.total_len) > self.pool.num_blocks:
            raise ValueError(f"request {req.rid} ({req.spec.total_len} tokens) exceeds the whole KV cache")
        self.waiting.append(req)

    def _admit_head(self) -> Request | None:
        if not self.waiting or len(self.running) >= self.max_batch_size:
            return None
        head = self.waiting[0]
        if not self.pool.can_allocate(head.spec.total_len):
            return None
        self.waiting.pop(0)
        self.pool.allocate(head.rid, head.spec.total_len)
        self.running.append(head)
        return head

    def schedule(self) -> Batch:
        raise NotImplementedError

    def complete(self, batch: Batch, start: float, end: float) -> list[Request]:
        """Advance the requests of an executed ``batch`` (run from ``start`` to ``end``); returns
        the requests that finished."""
        done = []
        for w in batch.works:
            r = w.req
            if r.first_scheduled is None:
                r.first_scheduled = start
            if w.is_prefill:
                r.prefilled += w.q_len
            if w.samples:
                r.generated += 1
                r.token_times.append(end)
                if r.generated >= r.spec.output_len:
                    r.finished = True
                    done.append(r)
        if done:
            finished = set(map(id, done))
            self.running = [r for r in self.running if id(r) not in finished]
            for r in done:
                self.pool.free(r.rid)
        return done


class SarathiScheduler(Scheduler):
    """Chunked prefills with stall-free hybrid batches (decodes first, one prefill per batch)."""

    name = "sarathi"

    def __init__(self, pool: BlockPool, max_batch_size: int, chunk_size: int):
        super().__init__(pool, max_batch_size)
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        self.chunk_size = chunk_size

    def schedule(self) -> Batch:
        decodes = [_decode_work(r) for r in self.running if r.prefill_done]
        budget = self.chunk_size - len(decodes)
        prefills = []
        if budget > 0:
            partial = next((r for r in self.running if not r.prefill_done), None)
            if partial is None:
                partial = self._admit_head()
            if partial is not None:
                prefills.append(_prefill_work(partial, min(partial.spec.prompt_len - partial.prefilled, budget)))
        return Batch(prefills, decodes)


class VLLMScheduler(Scheduler):
    """vLLM's original policy: whole prompts first, prefill and decode batches kept apart."""

    name = "vllm"

    def __init__(self, pool: BlockPool, max_batch_size: int, max_tokens: int):
        super().__init__(pool, max_batch_size)
        self.max_tokens = max_tokens

    def add(self, req: Request) -> None:
        if req.spec.prompt_len > self.max_tokens:
            raise ValueError(f"request {req.rid}: prompt of {req.spec.prompt_len} tokens exceeds the "
                             f"vLLM scheduler's token limit {self.max_tokens}")
        super().add(req)

    def schedule(self) -> Batch:
        prefills, tokens = [], 0
        while self.waiting and tokens + self.waiting[0].spec.prompt_len <= self.max_tokens:
            r = self._admit_head()
            if r is None:
                break
            prefills.append(_prefill_work(r, r.spec.prompt_len))
            tokens += r.spec.prompt_len
        if prefills:
            return Batch(prefills, [])
        return Batch([], [_decode_work(r) for r in self.running if r.prefill_done])


def make_scheduler(cfg: dict, pool: BlockPool) -> Scheduler:
    """From a YAML ``scheduler:`` mapping: {name: sarathi, chunk_size, max_batch_size} or
    {name: vllm, max_tokens, max_batch_size}."""
    name = cfg["name"]
    if name == "sarathi":
        return SarathiScheduler(pool, int(cfg.get("max_batch_size", 999)), int(cfg["chunk_size"]))
    if name == "vllm":
        return VLLMScheduler(pool, int(cfg.get("max_batch_size", 999)), int(cfg.get("max_tokens", 16384)))
    raise ValueError(f"unknown scheduler {name!r} (sarathi or vllm)")


# ---------------------------------------------------------------- the serving loop
@dataclass
class LoopResult:
    requests: list          # Request objects (all, in rid order)
    iterations: list        # one dict per executed iteration
    clock: float            # time at the end of the last iteration


def serve_loop(specs: Iterable[RequestSpec], scheduler: Scheduler,
               execute: Callable[[Batch, int], float | None],
               wall_clock: Callable[[], float] | None = None,
               max_iterations: int | None = None,
               select: Callable[[list, int], bool] | None = None,
               on_iteration: Callable[[dict], None] | None = None,
               stop: Callable[[list, int], bool] | None = None,
               host_probe: Callable[[], dict] | None = None) -> LoopResult:
    """Run requests to completion (or ``max_iterations`` measured iterations).

    Each iteration: requests that arrived by ``now`` join the waiting queue, the scheduler builds a
    batch, ``execute(batch, index)`` runs it. Its duration is what ``execute`` returns (simulator),
    or with ``wall_clock`` the wall time from before scheduling to after bookkeeping (engine: the
    scheduler's CPU time, input preparation, the forward pass and sampling all count), less the
    seconds ``execute`` returns as spent outside the iteration (a decode graph's capture). The next
    iteration starts when this one ends; with nothing to run the clock jumps to the next arrival.
    With ``select``, only iterations for which ``select(finished_requests, index)`` holds are
    executed and measured; the others advance the schedule without running (duration 0). The
    schedule of an offline workload does not depend on time, so this samples the exact iterations
    of the whole run (a steady-state window, or every k-th iteration over a cycle) at the GPU cost
    of the sampled ones only; ``max_iterations`` then counts executed iterations. ``stop(finished,
    index)``, checked after each iteration, ends the loop early. ``host_probe()`` (engine) returns
    cumulative host counters in seconds; each measured iteration records their increase over it.
    """
    reqs = [Request(s) for s in specs]
    pending = sorted(reqs, key=lambda r: (r.arrival, r.rid))
    nxt, now, index, measured = 0, 0.0, 0, 0
    finished: list[Request] = []
    iterations: list[dict] = []
    while len(finished) < len(reqs):
        while nxt < len(pending) and pending[nxt].arrival <= now:
            scheduler.add(pending[nxt])
            nxt += 1
        t0 = wall_clock() if wall_clock else None
        host0 = host_probe() if host_probe and t0 is not None else None
        batch = scheduler.schedule()
        if batch.empty:
            if nxt < len(pending):
                now = max(now, pending[nxt].arrival)
                continue
            raise RuntimeError(f"nothing schedulable with {len(scheduler.waiting)} waiting and "
                               f"{len(scheduler.running)} running requests (KV cache too small?)")
        measuring = select is None or select(finished, index)
        res = execute(batch, index) if measuring else 0.0
        start = now
        host = {}
        if t0 is not None and measuring:
            done = scheduler.complete(batch, start, start)  # token times set below, once the clock stops
            if host0 is not None:   # read inside the wall clock's span, so the host's times fit in it
                host = {k: v - host0[k] for k, v in host_probe().items() if k in host0}
            # a float from execute is time outside the iteration (a one-time CUDA-graph capture)
            dur = wall_clock() - t0 - (float(res) if res else 0.0)
            end = start + dur
            for w in batch.works:
                if w.samples:
                    w.req.token_times[-1] = end
        else:
            dur = float(res) if measuring else 0.0
            end = start + dur
            done = scheduler.complete(batch, start, end)
        finished.extend(done)
        rec = {"iteration": index, "start": start, "end": end, "duration": dur,
               "measured": measuring, **batch.features(), "finished": len(done),
               "prefill_rids": " ".join(str(w.req.rid) for w in batch.prefills), **host}
        iterations.append(rec)
        if on_iteration:
            on_iteration(rec)
        now = end
        index += 1
        if measuring:
            measured += 1
            if max_iterations is not None and measured >= max_iterations:
                break
        if stop is not None and stop(finished, index - 1):
            break
    return LoopResult(sorted(reqs, key=lambda r: r.rid), iterations, now)


def perf_clock() -> float:
    return time.perf_counter()
