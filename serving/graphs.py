"""CUDA graphs for decode-only iterations, as production engines run them (vLLM, Sarathi-Serve).

A Llama forward is about 13 kernel launches per layer; a decode-only iteration of a few sequences
is so short on the GPU that the host's launches set its duration (and the host's speed drifts, so
the duration drifts with it). With ``Engine(decode_graphs=True)`` a decode-only iteration of B
sequences is the replay of a graph captured for ``Bp`` rows (the smallest of ``batch_sizes`` >= B,
vLLM's sizes by default) whose decodes attend at most ``ctx`` keys (the next power of two >= the
longest, at least ``min_context``). The iteration's token ids, positions, KV slots and per-row key
ranges are copied into the graph's static buffers before each replay; rows past B decode one key in
a scratch KV block that no request holds (the engine's pool leaves out the cache's last block), and
only the first B rows' logits are used. Mixed and prefill iterations run eagerly, as in vLLM.

The attention backend plans inside the capture, from a batch description whose host-side lengths
are the bounds (``Bp`` rows of ``ctx`` keys): its device-side metadata (key offsets, block tables)
is then computed in the graph from the static buffers, and its kernels read each row's real length
from ``decode_kv_t``. Backends that plan on the host every iteration (FlashInfer's wrappers) set
``supports_decode_graphs = False`` and the engine refuses the option for them.

A key's first use runs the iteration eagerly once (compiling and warming every kernel), captures,
then replays; that one-time cost is returned as untimed seconds (the serving loop leaves it out of
the iteration's duration, as an engine capturing at start-up would) and counted in ``stats()``.
On the CPU the same padded, static path runs eagerly without a capture: the tests check it there.
"""
from __future__ import annotations

import bisect
import time

import numpy as np
import torch

from .backends import IterationMeta

# vLLM's default capture sizes up to its default max_num_seqs of 256
DEFAULT_BATCH_SIZES = (1, 2, 4) + tuple(range(8, 257, 8))


def graph_options(decode_graphs) -> dict:
    """``decode_graphs`` as a run gives it (True or a dict) -> the full options, defaults filled."""
    opts = dict(decode_graphs) if isinstance(decode_graphs, dict) else {}
    unknown = set(opts) - {"batch_sizes", "min_context"}
    if unknown:
        raise ValueError(f"decode_graphs: unknown option(s) {sorted(unknown)}; known: batch_sizes, min_context")
    return {"batch_sizes": sorted({int(b) for b in opts.get("batch_sizes", DEFAULT_BATCH_SIZES)}),
            "min_context": int(opts.get("min_context", 1024))}


def graph_shape(num_decodes: int, longest: int, batch_sizes, min_context: int):
    """(rows, ctx) of the graph a decode-only batch of ``num_decodes`` sequences, the longest
    attending ``longest`` keys, replays: the smallest batch size >= num_decodes and the next power
    of two >= longest (at least ``min_context``); None when no graph covers it (too many decodes)."""
    if num_decodes < 1 or num_decodes > batch_sizes[-1]:
        return None
    rows = batch_sizes[bisect.bisect_left(batch_sizes, num_decodes)]
    return rows, max(int(min_context), 1 << (int(longest) - 1).bit_length())


class _Graph:
    """One captured (or, on the CPU, static) decode-only iteration of ``rows`` rows."""

    def __init__(self, rows: int, ctx: int, block_size: int, device: torch.device):
        z = lambda dt: torch.zeros(rows, dtype=dt, device=device)  # noqa: E731
        self.rows, self.ctx = rows, ctx
        self.meta = IterationMeta(
            num_tokens=rows, input_ids=z(torch.int64), positions=z(torch.int32), slots=z(torch.int64),
            sample_rows=torch.arange(rows, dtype=torch.int64, device=device), prefills=[],
            decode_base=[0] * rows, decode_kv=[ctx] * rows, block_size=block_size, device=device,
            decode_base_t=z(torch.int32), decode_kv_t=z(torch.int32), static=True)
        self.graph = None
        self.logits: torch.Tensor | None = None


class DecodeGraphs:
    """The engine's decode-only graphs, keyed by (padded rows, key bound)."""

    def __init__(self, engine, batch_sizes=DEFAULT_BATCH_SIZES, min_context: int = 1024):
        opts = graph_options({"batch_sizes": batch_sizes, "min_context": min_context})
        sizes = opts["batch_sizes"]
        if not sizes or sizes[0] < 1:
            raise ValueError(f"decode graph batch sizes must be positive integers, got {list(batch_sizes)}")
        if opts["min_context"] < 1:
            raise ValueError(f"min_context must be >= 1, got {min_context}")
        self.engine, self.sizes, self.min_context = engine, sizes, opts["min_context"]
        cache = engine.cache
        if cache.num_blocks < 2:
            raise ValueError("decode graphs need a KV cache of at least 2 blocks (one is the padding rows' scratch)")
        self.scratch_row = (cache.num_blocks - 1) * cache.block_size
        self.capture = engine.device.type == "cuda"
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.graphs: dict = {}
        self.capture_seconds = 0.0
        self.replays = 0

    def key(self, arrays: dict):
        """(rows, ctx) of the graph for this iteration's host arrays, or None if it runs eagerly."""
        kv = arrays["decode_kv"]
        if arrays["prefills"] or not kv:
            return None
        return graph_shape(len(kv), max(kv), self.sizes, self.min_context)

    def _fill(self, g: _Graph, arrays: dict) -> None:
        b, pad = len(arrays["decode_kv"]), g.rows - len(arrays["decode_kv"])

        def put(dst, values, fill):
            host = np.concatenate([np.asarray(values), np.full(pad, fill)]).astype(np.int64)
            dst.copy_(torch.from_numpy(host).to(dst.dtype))

        put(g.meta.input_ids, arrays["input_ids"][:b], 0)
        put(g.meta.positions, arrays["positions"][:b], 0)
        put(g.meta.slots, arrays["slots"][:b], self.scratch_row)
        put(g.meta.decode_base_t, arrays["decode_base"], self.scratch_row)
        put(g.meta.decode_kv_t, arrays["decode_kv"], 1)

    def _forward(self, g: _Graph) -> torch.Tensor:
        eng = self.engine
        eng.backend.begin(g.meta)
        return eng.model.forward(g.meta, eng.cache, eng.backend)

    def run(self, arrays: dict):
        """Logits of the iteration's decodes (its B sampled rows) and the untimed seconds spent
        capturing (0 after a key's first use)."""
        rows, ctx = self.key(arrays)
        b = len(arrays["decode_kv"])
        g = self.graphs.get((rows, ctx))
        untimed = 0.0
        if g is None:
            t0 = time.perf_counter()
            g = _Graph(rows, ctx, self.engine.cache.block_size, self.engine.device)
            self._fill(g, arrays)
            if self.capture:
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    self._forward(g)                 # compiles and warms every kernel of this shape
                torch.cuda.current_stream().wait_stream(stream)
                torch.cuda.synchronize()
                g.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g.graph, pool=self.pool):
                    g.logits = self._forward(g)
                torch.cuda.synchronize()
            self.graphs[(rows, ctx)] = g
            untimed = time.perf_counter() - t0
            self.capture_seconds += untimed
        self._fill(g, arrays)
        if self.capture:
            g.graph.replay()
            logits = g.logits
        else:
            logits = self._forward(g)
        self.replays += 1
        return logits[:b], untimed

    def stats(self) -> dict:
        return {"decode_graphs": True, "graphs_captured": len(self.graphs) if self.capture else 0,
                "graph_keys": len(self.graphs), "graph_capture_s": self.capture_seconds,
                "graphed_iterations": self.replays}
