"""Per-device calibration of our Triton POD kernels' rates, and the cost model the plan reads.

Why: whether one fused launch beats our own two launches (prefill, then decode) depends on the GPU
(its FLOP and byte rates, how well the fused tiles co-run); thresholds fit on one GPU did not hold
on the next. So the plan asks a small cost model fitted to this device's measurements.

The model, per calibrated shape (a model shape: head dim, query and KV heads), in ms:

    prefill alone  tp = a_p + F / R_p        F: the prefill's matrix TFLOPs (BatchSpec.flops)
    decode alone   td = a_d + B / W_d        B: the decodes' GB (BatchSpec.bytes_moved)
    serial         tp + td                   two launches, each with its own fixed cost
    fused, c CTAs/SM (c = 2, 4):
                   o_c + max(k_p tp, k_d td) + beta_c * min(k_p tp, k_d td)

k_p, k_d are how much slower each part runs with the fused tile set than with its own tiles (they
are identified by fused launches of a prefill-only and of a decode-only batch), beta_c how much of
the shorter part does not hide under the longer one (0: perfect overlap, 1: none, above 1: the
parts slow each other down; identified by hybrids spanning prefill:decode ratios ~0.03 to ~30).
Every parameter is fitted by (non-negative) least squares on relative errors, in stages that
are each linear, so the fit has one answer and needs no optimizer.

A batch is predicted with the parameters of the calibrated shape nearest to its model shape: the
same head dim first (the tile set follows the head dim), then the nearest query-head count (it
sets how many CTAs each part makes), then KV heads.

``for_device(device)`` returns the calibration of a device: the file named by $POD_CALIBRATION, else
a per-device cache file (GPU name, SM count, Triton version, hash of the kernel sources), else it
measures (``measure``, about a minute on a GPU, like an autotuner's first run) and caches. On the CPU
(Triton interpreter) it returns ``nominal()``: guessed H100-like numbers, never measured, so that
the plan code runs in tests.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernels.common.nnls import nonneg_lstsq
from kernels.workload import BatchSpec, ModelShape

ENV_PATH = "POD_CALIBRATION"            # a calibration JSON to use instead of the cache
ENV_CACHE_DIR = "POD_CALIBRATION_CACHE"  # where per-device calibrations are cached
FORMAT = 1
CTAS = (2, 4)

# Part times the calibration batches aim at, sized with the nominal rates: from launch-bound to
# well past a millisecond, so that the hybrids span prefill:decode ratios from ~0.04 to ~25.
PREFILL_TARGETS_MS = (0.04, 0.2, 1.0)
DECODE_TARGETS_MS = (0.04, 0.2, 1.0)
DECODE_CTX = 4096
# Few calls: the slowest probe is ~3 ms, and ~130 probes must fit in about a minute with compiles.
# queue_ahead: a short probe is otherwise timed at its host launch rate, not its GPU rate
DEFAULT_TIMING = {"warmup": 2, "repeats": 5, "calls": 5, "queue_ahead": True}


@dataclass(frozen=True)
class CalibrationShape:
    """A model shape the calibration measures (its own parameters are fitted)."""

    name: str
    q_heads: int
    kv_heads: int
    head_dim: int
    dtype: str = "float16"

    def model(self) -> ModelShape:
        return ModelShape(self.name, self.q_heads, self.kv_heads, self.head_dim)


# Two head dims (two tile sets), GQA groups 4 and 8, 1 to 8 KV heads: the figure-11 shape (llama-3-8b),
# the same at tensor-parallel 8 (few CTAs per part), and head dim 256 with a single KV head, where
# the fused launch was slowest against our serial on the H200.
DEFAULT_SHAPES = (
    CalibrationShape("d128-q32-kv8", 32, 8, 128),
    CalibrationShape("d128-q4-kv1", 4, 1, 128),
    CalibrationShape("d256-q8-kv1", 8, 1, 256),
)


@dataclass(frozen=True)
class FusedParams:
    """One fused tile set (CTAs per SM): fixed cost, per-part slowdowns, non-overlapped share."""

    overhead_ms: float
    prefill_slowdown: float
    decode_slowdown: float
    beta: float

    def predict(self, tp: float, td: float) -> float:
        a, b = self.prefill_slowdown * tp, self.decode_slowdown * td
        return self.overhead_ms + max(a, b) + self.beta * min(a, b)


@dataclass(frozen=True)
class ShapeParams:
    """Fitted parameters of one calibrated shape (times in ms, work in TFLOP and GB)."""

    prefill_ms: float           # fixed cost of a prefill launch
    prefill_ms_per_tflop: float
    decode_ms: float            # fixed cost of a decode launch
    decode_ms_per_gb: float
    fused: dict                 # CTAs per SM (int) -> FusedParams

    def prefill_time(self, tflop: float) -> float:
        return self.prefill_ms + self.prefill_ms_per_tflop * tflop if tflop > 0 else 0.0

    def decode_time(self, gb: float) -> float:
        return self.decode_ms + self.decode_ms_per_gb * gb if gb > 0 else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["fused"] = {str(c): asdict(p) for c, p in self.fused.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeParams":
        fused = {int(c): FusedParams(**p) for c, p in d["fused"].items()}
        return cls(d["prefill_ms"], d["prefill_ms_per_tflop"], d["decode_ms"], d["decode_ms_per_gb"], fused)


@dataclass(frozen=True)
class Prediction:
    """Predicted times (ms) of one batch: each part alone, serial, fused per CTAs per SM."""

    prefill: float
    decode: float
    serial: float
    fused: dict   # CTAs per SM -> ms
    shape: str    # the calibrated shape whose parameters were used


def work(spec: BatchSpec) -> tuple:
    """(prefill TFLOP, decode GB) of a batch: the cost model's inputs."""
    return spec.flops()["prefill"] / 1e12, spec.bytes_moved()["decode"] / 1e9


@dataclass
class Calibration:
    """A device's calibration: provenance, raw measurements, fitted parameters (JSON-serialisable)."""

    gpu_name: str
    sm_count: int
    torch_version: str
    triton_version: str
    code_hash: str
    created: str
    nominal: bool
    shapes: list            # CalibrationShape as dicts
    params: dict            # shape name -> ShapeParams
    measurements: list = field(default_factory=list)
    fit_error: dict = field(default_factory=dict)   # shape name -> {kind: relative RMS error of the model}
    seconds: float = 0.0
    format: int = FORMAT

    # ----- the model
    def params_for(self, model: ModelShape) -> tuple:
        """(shape name, ShapeParams) of the calibrated shape nearest to ``model``."""
        def distance(s):
            return (abs(math.log2(s["head_dim"] / model.head_dim)),
                    abs(math.log2(s["q_heads"] / model.q_heads)), abs(math.log2(s["kv_heads"] / model.kv_heads)))
        best = min((s for s in self.shapes if s["name"] in self.params), key=distance)
        return best["name"], self.params[best["name"]]

    def predict(self, spec: BatchSpec) -> Prediction:
        """Predicted times of ``spec`` run serially and fused with 2 and 4 CTAs per SM."""
        name, p = self.params_for(spec.model)
        tflop, gb = work(spec)
        tp, td = p.prefill_time(tflop), p.decode_time(gb)
        return Prediction(tp, td, tp + td, {c: f.predict(tp, td) for c, f in sorted(p.fused.items())}, name)

    # ----- identity and files
    @property
    def ident(self) -> str:
        """Short name of this calibration (recorded with every POD row that used it)."""
        if self.nominal:
            return "nominal"
        digest = hashlib.sha256(json.dumps(self.to_dict()["params"], sort_keys=True).encode()).hexdigest()[:8]
        return f"{_slug(self.gpu_name)}-{self.sm_count}sm-{digest}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = {k: v.as_dict() for k, v in self.params.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        if d.get("format") != FORMAT:
            raise ValueError(f"calibration format {d.get('format')!r}, this code reads {FORMAT}")
        d = dict(d)
        d["params"] = {k: ShapeParams.from_dict(v) for k, v in d["params"].items()}
        return cls(**d)

    def save(self, path) -> Path:
        """Write as JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path) -> "Calibration":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def describe(self) -> list:
        """Human lines: provenance, then each shape's rates, fused parameters and fit error."""
        lines = [f"POD calibration {self.ident}: {self.gpu_name}, {self.sm_count} SMs, torch {self.torch_version}, "
                 f"triton {self.triton_version}, {self.created}" + (" (nominal, not measured)" if self.nominal else
                                                                   f", measured in {self.seconds:.1f} s")]
        for name, p in self.params.items():
            fused = "; ".join(f"cps{c}: o {f.overhead_ms * 1e3:.1f} us, k_p {f.prefill_slowdown:.3f}, "
                              f"k_d {f.decode_slowdown:.3f}, beta {f.beta:.3f}" for c, f in sorted(p.fused.items()))
            err = ", ".join(f"{k} {v:.1%}" for k, v in self.fit_error.get(name, {}).items())
            lines.append(f"  {name}: prefill {1e3 / p.prefill_ms_per_tflop if p.prefill_ms_per_tflop else math.inf:.0f} "
                         f"TFLOP/s + {p.prefill_ms * 1e3:.1f} us, decode "
                         f"{1 / p.decode_ms_per_gb if p.decode_ms_per_gb else math.inf:.2f} TB/s + "
                         f"{p.decode_ms * 1e3:.1f} us; {fused}" + (f"; fit error (RMS) {err}" if err else ""))
        return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-") or "gpu"


# ----------------------------------------------------------------------------- nominal

def nominal() -> Calibration:
    """Guessed H100-like parameters, NEVER measured: what the CPU/interpreter gets so plan code and
    tests run. Prefill 420 TFLOP/s, decode 2.9 TB/s (our parts alone on H100, docs/pod-kernel-notes.md),
    fused slowdowns and overlaps guessed. A GPU never uses these unless $POD_CALIBRATION names them."""
    fused = {2: FusedParams(0.005, 1.15, 1.05, 0.35), 4: FusedParams(0.005, 1.35, 1.0, 0.3)}
    shape = CalibrationShape("nominal", 32, 8, 128)
    return Calibration(gpu_name="nominal (not measured)", sm_count=0, torch_version="", triton_version="",
                       code_hash="", created="", nominal=True, shapes=[asdict(shape)],
                       params={"nominal": ShapeParams(0.01, 1e3 / 420, 0.01, 1e3 / 2900, fused)})


# ----------------------------------------------------------------------------- the batches measured

@dataclass(frozen=True)
class Probe:
    """One timed launch of the calibration: ``kind`` is 'prefill' or 'decode' (the part alone with
    its own tiles), 'serial' (both, two launches) or 'fused' (MODE_POD with ``ctas_per_sm``)."""

    shape: str
    kind: str
    ctas_per_sm: int
    spec: BatchSpec


def _prefill_size(model: ModelShape, target_ms: float, ms_per_tflop: float) -> tuple:
    """(chunk, chunk's KV) whose causal prefill is about ``target_ms`` at the nominal rate."""
    pairs = target_ms / ms_per_tflop * 1e12 / (4 * model.head_dim * model.q_heads)
    lq = 2048
    while lq > 64 and lq * (lq + 1) / 2 > pairs:
        lq //= 2
    lk = lq + max(0.0, pairs - lq * (lq + 1) / 2) / lq
    return lq, min(131072, max(lq, 16 * math.ceil(lk / 16)))


def _decode_size(model: ModelShape, target_ms: float, ms_per_gb: float) -> tuple:
    """(requests, context) whose decodes move about ``target_ms`` worth of KV at the nominal rate."""
    per_request = 2 * DECODE_CTX * model.kv_heads * model.head_dim * 2 / 1e9
    return max(1, round(target_ms / ms_per_gb / per_request)), DECODE_CTX


def probes(shapes=DEFAULT_SHAPES) -> list:
    """Every launch ``measure`` times, grouped so that probes on one batch are consecutive: per
    shape, each prefill size alone (own tiles, fused 2, fused 4), each decode size alone (same),
    then every prefill x decode hybrid (serial, fused 2, fused 4)."""
    nom = nominal().params["nominal"]
    out = []
    for s in shapes:
        m = s.model()
        pre = [_prefill_size(m, t, nom.prefill_ms_per_tflop) for t in PREFILL_TARGETS_MS]
        dec = [_decode_size(m, t, nom.decode_ms_per_gb) for t in DECODE_TARGETS_MS]
        for lq, lk in pre:
            spec = BatchSpec(m, s.dtype, prefill_len=lq, prefill_kv_len=lk)
            out += [Probe(s.name, "prefill", 0, spec)] + [Probe(s.name, "fused", c, spec) for c in CTAS]
        for bs, ctx in dec:
            spec = BatchSpec(m, s.dtype, decode_batch=bs, decode_ctx=ctx)
            out += [Probe(s.name, "decode", 0, spec)] + [Probe(s.name, "fused", c, spec) for c in CTAS]
        for lq, lk in pre:
            for bs, ctx in dec:
                spec = BatchSpec(m, s.dtype, prefill_len=lq, prefill_kv_len=lk, decode_batch=bs, decode_ctx=ctx)
                out += [Probe(s.name, "serial", 0, spec)] + [Probe(s.name, "fused", c, spec) for c in CTAS]
    return out


def measurement(probe: Probe, ms: float) -> dict:
    """The raw record of one timed probe (what the fit reads)."""
    s = probe.spec
    tflop, gb = work(s)
    return {"shape": probe.shape, "kind": probe.kind, "ctas_per_sm": probe.ctas_per_sm,
            "prefill_len": s.prefill_len, "prefill_kv_len": s.prefill_kv_len, "decode_batch": s.decode_batch,
            "decode_ctx": s.decode_ctx, "prefill_tflop": tflop, "decode_gb": gb, "ms": float(ms)}


# ----------------------------------------------------------------------------- the fit

def _nnls(rows: list, y: list) -> list:
    """Least squares with every coefficient >= 0 (exact; kernels/common/nnls.py)."""
    return [float(c) for c in nonneg_lstsq(rows, y)]


def _rel_rows(rows, ys):
    # divide each equation by its measured time: relative errors, so 40 us and 3 ms batches weigh alike
    return [[x / y for x in r] for r, y in zip(rows, ys)], [1.0] * len(ys)


def fit_shape(records: list) -> ShapeParams:
    """Fit one shape's parameters from its measurements (see the module docstring)."""
    pre = [r for r in records if r["kind"] == "prefill"]
    dec = [r for r in records if r["kind"] == "decode"]
    if len(pre) < 2 or len(dec) < 2:
        raise ValueError("a shape needs at least two prefill-alone and two decode-alone measurements")
    a_p, m_p = _nnls(*_rel_rows([[1.0, r["prefill_tflop"]] for r in pre], [r["ms"] for r in pre]))
    a_d, m_d = _nnls(*_rel_rows([[1.0, r["decode_gb"]] for r in dec], [r["ms"] for r in dec]))
    # the fused parts are related to the measured part alone of the same size
    tp_of = {(r["prefill_len"], r["prefill_kv_len"]): r["ms"] for r in pre}
    td_of = {(r["decode_batch"], r["decode_ctx"]): r["ms"] for r in dec}

    def alone(r):
        tp = tp_of.get((r["prefill_len"], r["prefill_kv_len"]), 0.0) if r["prefill_len"] else 0.0
        td = td_of.get((r["decode_batch"], r["decode_ctx"]), 0.0) if r["decode_batch"] else 0.0
        if r["prefill_len"] and not tp:
            tp = a_p + m_p * r["prefill_tflop"]
        if r["decode_batch"] and not td:
            td = a_d + m_d * r["decode_gb"]
        return tp, td

    fused = {}
    for c in CTAS:
        rs = [r for r in records if r["kind"] == "fused" and r["ctas_per_sm"] == c]
        single = [r for r in rs if not (r["prefill_len"] and r["decode_batch"])]
        hybrid = [r for r in rs if r["prefill_len"] and r["decode_batch"]]
        if not single:
            raise ValueError(f"no single-part fused measurements with {c} CTAs/SM")
        rows = []
        for r in single:
            tp, td = alone(r)
            rows.append([1.0, tp, td])
        o, kp, kd = _nnls(*_rel_rows(rows, [r["ms"] for r in single]))
        # a part never measured fused keeps no slowdown (k = 1) rather than 0
        if not any(r["prefill_len"] for r in single):
            kp = 1.0
        if not any(r["decode_batch"] for r in single):
            kd = 1.0
        num = den = 0.0
        for r in hybrid:
            tp, td = alone(r)
            a, b = kp * tp, kd * td
            x, y = min(a, b) / r["ms"], (r["ms"] - o - max(a, b)) / r["ms"]
            num, den = num + x * y, den + x * x
        beta = max(0.0, num / den) if den > 0 else 1.0
        fused[c] = FusedParams(o, kp, kd, beta)
    return ShapeParams(a_p, m_p, a_d, m_d, fused)


def fit_errors(params: ShapeParams, records: list) -> dict:
    """Relative RMS error of the model's predictions (from the work alone, as the plan uses it) per kind."""
    by_kind: dict = {}
    for r in records:
        tp, td = params.prefill_time(r["prefill_tflop"]), params.decode_time(r["decode_gb"])
        pred = {"prefill": tp, "decode": td, "serial": tp + td}.get(r["kind"])
        kind = r["kind"]
        if kind == "fused":
            pred = params.fused[r["ctas_per_sm"]].predict(tp, td)
            kind = f"fused{r['ctas_per_sm']}"
        by_kind.setdefault(kind, []).append((pred - r["ms"]) / r["ms"])
    return {k: math.sqrt(sum(e * e for e in v) / len(v)) for k, v in by_kind.items()}


def fit(records: list, shapes) -> tuple:
    """({shape name: ShapeParams}, {shape name: fit errors}) from raw measurements."""
    params, errors = {}, {}
    for s in shapes:
        name = s["name"] if isinstance(s, dict) else s.name
        rs = [r for r in records if r["shape"] == name]
        if not rs:
            continue
        params[name] = fit_shape(rs)
        errors[name] = fit_errors(params[name], rs)
    if not params:
        raise ValueError("no measurements to fit")
    return params, errors


# ----------------------------------------------------------------------------- measuring

def _prepare_probe(batch, probe: Probe):
    from .launch import num_sms, prepare_launch, prepare_serial
    from .plan import MODE_DECODE, MODE_POD, MODE_PREFILL, PodConfig, make_plan

    n = num_sms(batch.device)
    if probe.kind == "fused":
        return prepare_launch(batch, make_plan(batch.spec, MODE_POD, n, PodConfig(ctas_per_sm=probe.ctas_per_sm)))
    plan_p, plan_d = make_plan(batch.spec, MODE_PREFILL, n), make_plan(batch.spec, MODE_DECODE, n)
    if probe.kind == "prefill":
        return prepare_launch(batch, plan_p)
    if probe.kind == "decode":
        return prepare_launch(batch, plan_d)
    return prepare_serial(batch, plan_p, plan_d)


def gpu_timer(device, timing: dict | None = None):
    """A probe -> median ms function timing our launches on ``device`` with the project's timer
    (experiments/timing.py); it keeps one batch allocated and re-allocates when the spec changes."""
    import torch

    from experiments.timing import time_callable
    from kernels.workload import HybridBatch

    timing = {**DEFAULT_TIMING, **(timing or {})}
    state = {"spec": None, "batch": None}

    def timer(probe: Probe) -> float:
        if state["spec"] != probe.spec:
            state["batch"] = None  # free the last batch before allocating the next
            state["batch"], state["spec"] = HybridBatch.allocate(probe.spec, device, seed=0), probe.spec
        run = _prepare_probe(state["batch"], probe)
        ms = time_callable(run, device, **timing).median_ms
        del run
        return ms

    timer.release = lambda: (state.update(spec=None, batch=None), torch.cuda.empty_cache()
                             if torch.device(device).type == "cuda" else None)
    return timer


def code_hash() -> str:
    """Hash of the sources of our kernels and their plan: a calibration is stale once they change."""
    here = Path(__file__).resolve().parent
    files = sorted(here.glob("*.py")) + sorted((here.parent / "common").glob("*.py"))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _versions() -> tuple:
    import torch
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = ""
    return torch.__version__, tv


def device_identity(device) -> tuple | None:
    """(GPU name, SM count) of a CUDA device; None elsewhere (the CPU gets the nominal calibration)."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None
    p = torch.cuda.get_device_properties(device)
    return p.name, p.multi_processor_count


def measure(device, shapes=DEFAULT_SHAPES, timer=None, timing: dict | None = None, log=None) -> Calibration:
    """Time ``probes(shapes)`` on ``device`` and fit the cost model. ``timer(probe) -> ms`` replaces
    the GPU timing (tests inject synthetic times); ``log`` gets progress lines."""
    t0 = time.perf_counter()
    ident = device_identity(device) or ("cpu", 0)
    own_timer = timer is None
    timer = gpu_timer(device, timing) if own_timer else timer
    records = []
    try:
        for probe in probes(shapes):
            records.append(measurement(probe, timer(probe)))
    finally:
        if own_timer:
            timer.release()
    shape_dicts = [asdict(s) for s in shapes]
    params, errors = fit(records, shape_dicts)
    tv, trv = _versions()
    cal = Calibration(gpu_name=ident[0], sm_count=ident[1], torch_version=tv, triton_version=trv,
                      code_hash=code_hash(),
                      created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                      nominal=False, shapes=shape_dicts, params=params, measurements=records, fit_error=errors,
                      seconds=round(time.perf_counter() - t0, 2))
    if log:
        for line in cal.describe():
            log(line)
    return cal


# ----------------------------------------------------------------------------- per device

def cache_dir() -> Path:
    """$POD_CALIBRATION_CACHE, else $XDG_CACHE_HOME/pod-attention, else ~/.cache/pod-attention."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pod-attention"


def cache_path(gpu_name: str, sm_count: int) -> Path:
    """The cache file of a device: GPU name, SM count, Triton version and the kernels' source hash."""
    return cache_dir() / f"calibration-{_slug(gpu_name)}-{sm_count}sm-triton{_versions()[1]}-{code_hash()}.json"


_LOCK = threading.Lock()
_MEMO: dict = {}


def for_device(device, log=print) -> Calibration:
    """The calibration for ``device``: $POD_CALIBRATION's file, else the device's cache file, else
    measured now and cached; the nominal one on a non-CUDA device without $POD_CALIBRATION."""
    env = os.environ.get(ENV_PATH)
    if env:
        key = ("file", os.path.abspath(env))
        with _LOCK:
            if key not in _MEMO:
                if not os.path.exists(env):
                    raise FileNotFoundError(f"${ENV_PATH} names {env}, which does not exist")
                _MEMO[key] = Calibration.load(env)
            return _MEMO[key]
    ident = device_identity(device)
    if ident is None:
        return nominal()
    path = cache_path(*ident)
    key = ("cache", str(path))
    with _LOCK:  # one measurement per process even when methods warm up in threads
        if key in _MEMO:
            return _MEMO[key]
        if path.exists():
            cal = Calibration.load(path)
        else:
            if log:
                log(f"POD calibration: none cached for {ident[0]} ({path}); measuring (about a minute)")
            cal = measure(device, log=log)
            cal.save(path)
        _MEMO[key] = cal
        return cal


def clear_memo() -> None:
    """Forget calibrations loaded in this process (tests; after changing $POD_CALIBRATION's file)."""
    with _LOCK:
        _MEMO.clear()


__all__ = ["Calibration", "CalibrationShape", "FusedParams", "ShapeParams", "Prediction", "Probe", "DEFAULT_SHAPES",
           "nominal", "probes", "measurement", "fit", "fit_shape", "measure", "for_device", "cache_path",
           "gpu_timer", "work", "clear_memo"]
