"""experiments.timing on a simulated GPU stream: the host enqueues, the GPU runs in order, events
stamp the GPU's time, so what a sample measures can be checked against what the kernels took."""
import contextlib

import pytest
import torch

from experiments import timing as T

CYCLES_PER_MS = 1.0e6


class SimulatedCuda:
    """One CUDA stream: ``host`` is the host's clock and ``free`` the time the GPU finishes the
    work enqueued so far (both in ms)."""

    def __init__(self, monkeypatch):
        self.host = self.free = 0.0
        self.cycles_per_ms = CYCLES_PER_MS  # the SM clock the spin runs at
        sim = self

        class Event:
            def __init__(self, enable_timing=True):
                self.t = None

            def record(self, stream=None):
                sim.enqueue(0.0)
                self.t = sim.free

            def synchronize(self):
                sim.host = max(sim.host, self.t)

            def elapsed_time(self, other):
                return other.t - self.t

        monkeypatch.setattr(T, "_cycles_per_ms", {})
        monkeypatch.setattr(T.time, "perf_counter", lambda: self.host / 1e3)
        for name, value in {"Event": Event, "_sleep": lambda cycles: self.enqueue(cycles / self.cycles_per_ms, 0.005),
                            "current_stream": lambda device=None: None, "synchronize": lambda device=None: self.sync(),
                            "device": lambda device: contextlib.nullcontext()}.items():
            monkeypatch.setattr(T.torch.cuda, name, value, raising=False)

    def enqueue(self, gpu_ms, host_ms=0.0):
        self.host += host_ms
        self.free = max(self.free, self.host) + gpu_ms

    def sync(self):
        self.host = max(self.host, self.free)

    def kernel(self, gpu_ms, launch_ms):
        """A callable that takes ``launch_ms`` of host time to launch one ``gpu_ms`` kernel."""
        return lambda: self.enqueue(gpu_ms, launch_ms)


GPU = torch.device("cuda", 0)


def test_without_queue_ahead_a_short_kernel_is_timed_at_its_launch_rate(monkeypatch):
    sim = SimulatedCuda(monkeypatch)
    t = T.time_callable(sim.kernel(0.010, 0.050), GPU, warmup=1, repeats=3, calls=3)
    # the span opens when the GPU is idle: three launches, then the last kernel
    assert t.median_ms == pytest.approx((3 * 0.050 + 0.010) / 3)


def test_queue_ahead_times_the_gpu_alone(monkeypatch):
    sim = SimulatedCuda(monkeypatch)
    # 3 calls of 0.3 ms launch outlast the first 0.5 ms hold: that sample is taken again, held longer
    slow, fast = sim.kernel(0.010, 0.300), sim.kernel(0.010, 0.050)
    times = T.time_interleaved({"slow": slow, "fast": fast}, GPU, warmup=1, repeats=3, calls=3, queue_ahead=True)
    for t in times.values():
        assert t.median_ms == pytest.approx(0.010) and t.max_ms == pytest.approx(0.010) and t.drained == 0
    # a long kernel: without the hold only the first launch is in the span, 1/calls of it per call
    long = sim.kernel(2.0, 0.050)
    assert T.time_callable(long, GPU, calls=5, queue_ahead=True).median_ms == pytest.approx(2.0)
    assert T.time_callable(long, GPU, calls=5).median_ms == pytest.approx(2.0 + 0.050 / 5)


def test_a_callable_that_waits_for_the_gpu_is_counted_as_drained(monkeypatch):
    sim = SimulatedCuda(monkeypatch)

    def syncs():
        sim.kernel(0.010, 0.050)()
        sim.sync()

    t = T.time_callable(syncs, GPU, warmup=1, repeats=2, calls=2, queue_ahead=True)
    assert t.drained == 2 and t.median_ms > 0.010


def test_queue_ahead_follows_the_clock_up_from_idle(monkeypatch):
    """The spin is calibrated on an idle GPU whose clock then rises five-fold under load: holds
    sized by the first calibration would be a fifth too short; every held sample recalibrates."""
    sim = SimulatedCuda(monkeypatch)
    sim.cycles_per_ms = CYCLES_PER_MS / 5
    kernel = sim.kernel(0.010, 0.050)

    def boosted():
        sim.cycles_per_ms = CYCLES_PER_MS
        kernel()

    t = T.time_callable(boosted, GPU, warmup=1, repeats=5, calls=3, queue_ahead=True)
    assert t.drained == 0 and t.max_ms == pytest.approx(0.010)


def test_timing_mode_names_what_shaped_the_span():
    assert T.timing_mode("cpu", interleaved=True) == "perf_counter+interleaved"
    assert T.timing_mode(GPU, queue_ahead=True, interleaved=True, warmup=1) == "events+queue_ahead+interleaved"
    assert T.timing_mode(GPU, cuda_graph=True) == "cuda_graph"
    assert T.timing_mode(GPU, l2_flush=True) == "events+l2_flush"
