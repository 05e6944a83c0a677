"""Latency of a zero-argument callable, measured the paper's way (back-to-back calls between two
CUDA events, latency = elapsed / calls), ``repeats`` times, reported as median and spread."""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field

import torch

# Fallback when the device properties do not report L2 (older PyTorch); larger than any current L2.
_FALLBACK_L2_BYTES = 128 * 2 ** 20


@dataclass
class Timing:
    median_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    samples_ms: list = field(default_factory=list)
    repeats: int = 0
    calls: int = 0


def _summary(samples, repeats, calls) -> Timing:
    s = sorted(samples)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return Timing(statistics.median(s), s[0], s[-1], iqr, list(samples), repeats, calls)


def l2_bytes(device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or _FALLBACK_L2_BYTES)


def time_callable(fn, device, warmup: int = 1, repeats: int = 3, calls: int = 5, l2_flush: bool = False,
                  cuda_graph: bool = False) -> Timing:
    """Per-call latency of ``fn`` in ms: ``repeats`` samples, each the mean over ``calls`` calls.

    l2_flush: write 2x the L2 size before every call and time each call with its own events (the
    flush stays outside them). cuda_graph: capture ``calls`` calls into one CUDA graph and time its
    replays. On CPU, time.perf_counter.
    """
    return time_interleaved({"fn": fn}, device, warmup, repeats, calls, l2_flush, cuda_graph)["fn"]


def time_interleaved(fns: dict, device, warmup: int = 1, repeats: int = 3, calls: int = 5, l2_flush: bool = False,
                     cuda_graph: bool = False) -> dict:
    """``time_callable`` for several callables at once, their samples taken in turn: every callable
    is warmed up (and captured) first, then each round takes one sample of each, in the opposite
    order every other round (A B C, C B A, ...). A drift of the device over the run (clocks settling
    under a sustained load, a neighbour's work) then lands on every callable alike instead of on
    whichever is timed last. Returns {name: Timing}."""
    device = torch.device(device)
    if repeats < 1 or calls < 1 or warmup < 0:
        raise ValueError("need repeats >= 1, calls >= 1, warmup >= 0")
    if device.type != "cuda" and cuda_graph:
        raise ValueError("cuda_graph timing needs a CUDA device")
    if l2_flush and cuda_graph:
        raise ValueError("l2_flush and cuda_graph cannot be combined: a graph replays its calls back to back")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    names = list(fns)
    samples: dict = {n: [] for n in names}
    ctx = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
    with ctx:
        samplers = {n: _Sampler(fns[n], device, calls, l2_flush, cuda_graph) for n in names}
        try:
            for n in names:
                samplers[n].warm(warmup)
            for r in range(repeats):
                for n in (names if r % 2 == 0 else names[::-1]):
                    samples[n].append(samplers[n].sample())
        finally:
            for sm in samplers.values():
                sm.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    return {n: _summary(samples[n], repeats, calls) for n in names}


class _Sampler:
    """One callable's timer: ``warm`` once (warm-up calls, and the capture with ``cuda_graph``),
    then ``sample()`` returns the mean ms per call over ``calls`` calls."""

    def __init__(self, fn, device, calls, l2_flush, cuda_graph):
        self.fn, self.device, self.calls = fn, device, calls
        self.l2_flush, self.cuda_graph = l2_flush, cuda_graph
        self.cuda = device.type == "cuda"
        self.graph = self.flush = None
        if self.cuda:
            self.stream = torch.cuda.current_stream(device)

    def warm(self, warmup: int) -> None:
        if self.cuda and self.cuda_graph:
            self._capture(warmup)
            return
        for _ in range(warmup):
            self.fn()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            if self.l2_flush:
                self.flush = torch.empty(2 * l2_bytes(self.device) // 4, dtype=torch.int32, device=self.device)

    def _capture(self, warmup: int) -> None:
        # PyTorch requires warm-up on a side stream before capture (lazy init, cuBLAS workspaces...).
        side = torch.cuda.Stream(self.device)
        side.wait_stream(self.stream)
        with torch.cuda.stream(side):
            for _ in range(max(1, warmup)):
                self.fn()
        self.stream.wait_stream(side)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                for _ in range(self.calls):
                    self.fn()
        except Exception as e:
            torch.cuda.synchronize(self.device)
            raise RuntimeError(f"CUDA graph capture failed (the method may sync with the host or allocate "
                               f"outside PyTorch): {type(e).__name__}: {e}") from e
        graph.replay()  # first replay uploads the graph
        torch.cuda.synchronize(self.device)
        self.graph = graph

    def sample(self) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(self.calls):
                self.fn()
            return (time.perf_counter() - t0) * 1e3 / self.calls
        if self.flush is not None:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(self.calls)]
            for start, end in events:
                self.flush.zero_()
                start.record(self.stream)
                self.fn()
                end.record(self.stream)
            torch.cuda.synchronize(self.device)
            return sum(s.elapsed_time(e) for s, e in events) / self.calls
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        if self.graph is not None:
            self.graph.replay()
        else:
            for _ in range(self.calls):
                self.fn()
        end.record(self.stream)
        end.synchronize()
        return start.elapsed_time(end) / self.calls

    def close(self) -> None:
        self.graph = self.flush = None
