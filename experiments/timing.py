"""Latency of a zero-argument callable, measured the paper's way (back-to-back calls between two
CUDA events, latency = elapsed / calls), ``repeats`` times, reported as median and spread."""
from __future__ import annotations

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
    device = torch.device(device)
    if repeats < 1 or calls < 1 or warmup < 0:
        raise ValueError("need repeats >= 1, calls >= 1, warmup >= 0")
    if device.type != "cuda":
        if cuda_graph:
            raise ValueError("cuda_graph timing needs a CUDA device")
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / calls)
        return _summary(samples, repeats, calls)

    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if l2_flush and cuda_graph:
        raise ValueError("l2_flush and cuda_graph cannot be combined: a graph replays its calls back to back")
    with torch.cuda.device(device):
        stream = torch.cuda.current_stream(device)
        if cuda_graph:
            return _time_graph(fn, device, stream, warmup, repeats, calls)
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        samples = []
        if l2_flush:
            flush = torch.empty(2 * l2_bytes(device) // 4, dtype=torch.int32, device=device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(calls)]
            for _ in range(repeats):
                for start, end in events:
                    flush.zero_()
                    start.record(stream)
                    fn()
                    end.record(stream)
                torch.cuda.synchronize(device)
                samples.append(sum(s.elapsed_time(e) for s, e in events) / calls)
            del flush
        else:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            for _ in range(repeats):
                start.record(stream)
                for _ in range(calls):
                    fn()
                end.record(stream)
                end.synchronize()
                samples.append(start.elapsed_time(end) / calls)
        torch.cuda.synchronize(device)
    return _summary(samples, repeats, calls)


def _time_graph(fn, device, stream, warmup, repeats, calls) -> Timing:
    # PyTorch requires warm-up on a side stream before capture (lazy init, cuBLAS workspaces...).
    side = torch.cuda.Stream(device)
    side.wait_stream(stream)
    with torch.cuda.stream(side):
        for _ in range(max(1, warmup)):
            fn()
    stream.wait_stream(side)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception as e:
        torch.cuda.synchronize(device)
        raise RuntimeError(f"CUDA graph capture failed (the method may sync with the host or allocate "
                           f"outside PyTorch): {type(e).__name__}: {e}") from e
    graph.replay()  # first replay uploads the graph
    torch.cuda.synchronize(device)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(repeats):
        start.record(stream)
        graph.replay()
        end.record(stream)
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    del graph
    return _summary(samples, repeats, calls)
