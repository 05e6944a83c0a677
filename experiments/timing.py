"""Latency of a zero-argument callable, measured the paper's way (back-to-back calls between two
CUDA events, latency = elapsed / calls), ``repeats`` times, reported as median and spread.

With ``queue_ahead`` a sample first holds the GPU in a spin kernel while the host enqueues its
calls, so the span between the events is the GPU's work alone: without it, a call whose kernels
run shorter than the host takes to launch them (tens of microseconds of Python wrappers) is timed
partly as host time, and a method made of two callables pays that twice."""
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
    # queue_ahead: samples whose calls the host had not all enqueued when the GPU reached them,
    # after the retries (then timed like a sample without queue_ahead)
    drained: int = 0


def _summary(samples, repeats, calls, drained=0) -> Timing:
    s = sorted(samples)
    if len(s) >= 2:
        q = statistics.quantiles(s, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return Timing(statistics.median(s), s[0], s[-1], iqr, list(samples), repeats, calls, drained)


def timing_mode(device, l2_flush: bool = False, cuda_graph: bool = False, queue_ahead: bool = False,
                interleaved: bool = False, **_) -> str:
    """How a row was timed, for its ``timing`` column: e.g. 'events+queue_ahead+interleaved'."""
    if torch.device(device).type != "cuda":
        return "perf_counter" + ("+interleaved" if interleaved else "")
    flags = [("l2_flush", l2_flush), ("queue_ahead", queue_ahead), ("interleaved", interleaved)]
    return "+".join(["cuda_graph" if cuda_graph else "events"] + [name for name, on in flags if on])


def l2_bytes(device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or _FALLBACK_L2_BYTES)


def time_callable(fn, device, warmup: int = 1, repeats: int = 3, calls: int = 5, l2_flush: bool = False,
                  cuda_graph: bool = False, queue_ahead: bool = False) -> Timing:
    """Per-call latency of ``fn`` in ms: ``repeats`` samples, each the mean over ``calls`` calls.

    l2_flush: write 2x the L2 size before every call and time each call with its own events (the
    flush stays outside them). cuda_graph: capture ``calls`` calls into one CUDA graph and time its
    replays. queue_ahead: enqueue each sample behind a GPU spin long enough for the host to launch
    all of it (module docstring). On CPU, time.perf_counter.
    """
    return time_interleaved({"fn": fn}, device, warmup, repeats, calls, l2_flush, cuda_graph, queue_ahead)["fn"]


def time_interleaved(fns: dict, device, warmup: int = 1, repeats: int = 3, calls: int = 5, l2_flush: bool = False,
                     cuda_graph: bool = False, queue_ahead: bool = False) -> dict:
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
        samplers = {n: _Sampler(fns[n], device, calls, l2_flush, cuda_graph, queue_ahead) for n in names}
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
    return {n: _summary(samples[n], repeats, calls, samplers[n].drained) for n in names}


# queue_ahead: the first sample's hold, the shortest hold, and how often a sample whose calls the
# host enqueued too late is taken again (with a hold twice that host time) before it is kept as is.
_FIRST_HOLD_MS = 0.5
_MIN_HOLD_MS = 0.02
_HOLD_RETRIES = 3
_cycles_per_ms: dict = {}


def _spin_cycles_per_ms(device) -> float:
    """GPU clock cycles per ms of ``torch.cuda._sleep`` on ``device``: measured with events the
    first time, then updated by every held sample, because the SM clock of an idle GPU (the first
    measurement) can be a fifth of its clock under load."""
    key = str(device)
    if key not in _cycles_per_ms:
        cycles = 2_000_000
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        torch.cuda._sleep(cycles)
        b.record()
        b.synchronize()
        _cycles_per_ms[key] = cycles / max(a.elapsed_time(b), 1e-3)
    return _cycles_per_ms[key]


class _Sampler:
    """One callable's timer: ``warm`` once (warm-up calls, and the capture with ``cuda_graph``),
    then ``sample()`` returns the mean ms per call over ``calls`` calls."""

    def __init__(self, fn, device, calls, l2_flush, cuda_graph, queue_ahead=False):
        self.fn, self.device, self.calls = fn, device, calls
        self.l2_flush, self.cuda_graph = l2_flush, cuda_graph
        self.cuda = device.type == "cuda"
        self.queue_ahead = queue_ahead and self.cuda
        self.hold_ms, self.drained = _FIRST_HOLD_MS, 0
        self.graph = self.flush = None
        if self.cuda:
            self.stream = torch.cuda.current_stream(device)

    def warm(self, warmup: int) -> None:
        if self.queue_ahead:
            _spin_cycles_per_ms(self.device)
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
        for _ in range(_HOLD_RETRIES + 1 if self.queue_ahead else 1):
            ms, in_time = self._sample_once()
            if in_time:
                return ms
        self.drained += 1
        return ms

    def _sample_once(self) -> tuple:
        """(mean ms per call, whether every call was enqueued before the GPU reached it)."""
        hold = None
        t0 = time.perf_counter()
        if self.queue_ahead:
            hold = torch.cuda.Event(enable_timing=True)
            hold.record(self.stream)
            cycles = max(1, int(self.hold_ms * _spin_cycles_per_ms(self.device)))
            torch.cuda._sleep(cycles)
        spans = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                 for _ in range(self.calls if self.flush is not None else 1)]
        if self.flush is not None:
            for start, end in spans:
                self.flush.zero_()
                start.record(self.stream)
                self.fn()
                end.record(self.stream)
        else:
            start, end = spans[0]
            start.record(self.stream)
            if self.graph is not None:
                self.graph.replay()
            else:
                for _ in range(self.calls):
                    self.fn()
            end.record(self.stream)
        host_ms = (time.perf_counter() - t0) * 1e3
        spans[-1][1].synchronize()
        ms = sum(s.elapsed_time(e) for s, e in spans) / self.calls
        if hold is None:
            return ms, True
        # The hold event was stamped no earlier than t0, so an enqueue time shorter than the hold as
        # the GPU measured it means every call was enqueued before the GPU left the spin.
        held_ms = hold.elapsed_time(spans[0][0])
        in_time = host_ms < held_ms
        if held_ms > 0:
            # held_ms includes the spin's launch (microseconds): the rate comes out a little low and
            # the next hold a little short of asked, well inside its factor of 2 over the host time
            _cycles_per_ms[str(self.device)] = cycles / held_ms
        self.hold_ms = max(_MIN_HOLD_MS, 2 * host_ms)
        return ms, in_time

    def close(self) -> None:
        self.graph = self.flush = None
