"""Warm every kernel an experiment needs before anything is timed.

    python -m experiments.build EXPERIMENT_YAML --out MARKER.json [--device cuda] [--smoke] [--methods A,B]
                                [--flashinfer-modules DIR]

FlashInfer JIT-compiles each kernel family with nvcc on first use (fa2 ~30 s per family, fa3
several minutes) and Triton compiles per configuration, so a cold first timed call would measure
the compiler. For each distinct (model shape, dtype, page size) of the experiment's rows this
allocates a small hybrid batch of that shape and calls every method's ``prepare()`` and callable
once. Methods run in parallel threads (one per registered method, never two on the same one) so
the nvcc builds overlap. The marker JSON records, per method label, ok/unavailable/error, the
reason and the seconds spent; only "--device cuda without a GPU" fails the build.

When a method's plan asks our POD kernels' cost model (``POD`` and ``OURS_CTA`` with
``plan: model`` and ``ctas_per_sm: auto``; the default plan is the threshold rule) and the device is a GPU, the build step first gets the device's calibration
(kernels/pod/calibration.py: $POD_CALIBRATION, the per-device cache, or measured now, ~1 min, before
any compiler thread starts so nothing else loads the GPU), writes a copy next to the marker
(``<marker stem>.calibration.json``), logs its fitted parameters and names it in the marker. The
runner's POD rows name the calibration they used in their ``impl`` column.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from kernels.registry import MethodUnavailable, load_all
from kernels.workload import BatchSpec, HybridBatch

# The small warm-up batch: odd enough to exercise masking, small enough to run anywhere.
WARM_PREFILL, WARM_PREFILL_KV, WARM_DECODES, WARM_DECODE_CTX = 64, 192, 4, 100


def default_arch_list(device: torch.device) -> str:
    """FLASHINFER_CUDA_ARCH_LIST for ``device``: '9.0a' on sm_90 (Hopper-only features need the
    'a' target), else 'major.minor', which FlashInfer normalizes itself."""
    from experiments.flashinfer_modules import arch_list

    return arch_list("{}.{}".format(*torch.cuda.get_device_capability(device)))


def set_build_env(device: torch.device) -> dict:
    """Default MAX_JOBS and FLASHINFER_CUDA_ARCH_LIST (kept if already set); returns both."""
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    if device.type == "cuda":
        os.environ.setdefault("FLASHINFER_CUDA_ARCH_LIST", default_arch_list(device))
    return {k: os.environ.get(k) for k in ("MAX_JOBS", "FLASHINFER_CUDA_ARCH_LIST")}


def warm_specs(rows) -> list:
    """One small BatchSpec per distinct (model shape, dtype, page size) of ``rows``, in row order."""
    specs = {}
    for row in rows:
        s = row.spec
        key = (s.model, s.dtype, s.page_size)
        if key not in specs:
            specs[key] = BatchSpec(s.model, dtype=s.dtype, prefill_len=WARM_PREFILL, prefill_kv_len=WARM_PREFILL_KV,
                                   decode_batch=WARM_DECODES, decode_ctx=WARM_DECODE_CTX, page_size=s.page_size)
    return list(specs.values())


def _shape_name(spec: BatchSpec) -> str:
    return f"{spec.model.name}|{spec.dtype}|ps{spec.page_size}"


def warm_one(cls, options: dict, batch: HybridBatch) -> dict:
    """prepare() + one call of one method on one batch: {status, reason, seconds, impl}."""
    t0 = time.perf_counter()
    method, status, reason = None, "ok", ""
    try:
        method = cls(**options)
        why = method.unavailable_reason(batch.device)
        if why:
            raise MethodUnavailable(why)
        fn = method.prepare(batch)
        fn()
        if batch.device.type == "cuda":
            # Kernel faults surface asynchronously; catch them here, not in the next method's timing.
            torch.cuda.synchronize(batch.device)
    except MethodUnavailable as e:
        status, reason = "unavailable", str(e)
    except Exception as e:  # any failure is recorded; the runner will record it again per row
        status, reason = "error", f"{type(e).__name__}: {e}"
    return {"status": status, "reason": reason, "seconds": round(time.perf_counter() - t0, 3),
            "impl": method.info().get("impl", cls.name) if status == "ok" else ""}


class Progress:
    """Thread-safe progress lines on stdout (the console, and the log the workflow tees it into):
    one line when a (method, shape) starts and one when it ends, numbered against the total, and a
    line every ``heartbeat`` seconds naming what is still compiling, so a long nvcc build is never
    silent."""

    def __init__(self, total: int, heartbeat: float = 30.0):
        self.total, self.done, self.heartbeat = total, 0, heartbeat
        self.running: dict = {}
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _say(self, text: str) -> None:
        print(f"[build {time.perf_counter() - self.t0:7.1f} s] {text}", flush=True)

    def start(self, label: str, shape: str) -> None:
        with self._lock:
            self.running[(label, shape)] = time.perf_counter()
            self._say(f"start {label} on {shape}")

    def finish(self, label: str, shape: str, result: dict) -> None:
        with self._lock:
            self.running.pop((label, shape), None)
            self.done += 1
            why = f": {result['reason'][:120]}" if result["reason"] else ""
            self._say(f"[{self.done}/{self.total}] {label} on {shape}: {result['status']} in "
                      f"{result['seconds']:.1f} s{why}")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            with self._lock:
                now = time.perf_counter()
                busy = ", ".join(f"{label} on {shape} ({now - t:.0f} s)" for (label, shape), t in self.running.items())
                if busy:
                    self._say(f"[{self.done}/{self.total}] still compiling: {busy}")


def warm_method(cls, variants: list, batches: list, progress: Progress | None = None) -> dict:
    """Warm every (label, options) variant of one registered method on every batch, in order."""
    out = {}
    for label, options in variants:
        out[label] = {}
        for b in batches:
            shape = _shape_name(b.spec)
            if progress:
                progress.start(label, shape)
            out[label][shape] = warm_one(cls, options, b)
            if progress:
                progress.finish(label, shape, out[label][shape])
    return out


def summarize(per_shape: dict) -> dict:
    """One verdict per method label: error if any shape failed, else ok if any ran, else unavailable."""
    statuses = [r["status"] for r in per_shape.values()]
    status = "error" if "error" in statuses else "ok" if "ok" in statuses else "unavailable"
    shapes_by_reason: dict = {}
    for shape, r in per_shape.items():
        if r["reason"]:
            shapes_by_reason.setdefault(r["reason"], []).append(shape)
    # A reason shared by every shape is said once; others name their shapes.
    reasons = [why if len(shapes) == len(per_shape) else f"{', '.join(shapes)}: {why}"
               for why, shapes in shapes_by_reason.items()]
    return {"status": status, "reason": "; ".join(reasons),
            "seconds": round(sum(r["seconds"] for r in per_shape.values()), 3), "shapes": per_shape}


def calibration_path(marker: Path) -> Path:
    """Where the POD calibration goes beside a build marker: figure11.json -> figure11.calibration.json."""
    marker = Path(marker)
    stem = marker.stem if marker.suffix == ".json" else marker.name
    return marker.with_name(f"{stem}.calibration.json")


def calibrate_pod(exp, registry, device: torch.device, out: Path | None) -> dict | None:
    """Get (load or measure) the POD cost model's calibration when a method of ``exp`` uses it on a
    GPU; save a copy at ``out``. Returns what the marker records (None when no method needs one)."""
    users = []
    for ms in exp.methods:
        cls = registry.get(ms.method)
        try:
            inst = cls(**ms.options) if cls is not None else None
        except Exception:  # noqa: BLE001 - bad options are reported by the warm-up
            inst = None
        if inst is not None and getattr(inst, "needs_calibration", lambda: False)():
            users.append(ms.label)
    if not users or device.type != "cuda":
        return None
    from kernels.pod import calibration as cal_mod

    t0 = time.perf_counter()
    env = os.environ.get(cal_mod.ENV_PATH)
    ident = cal_mod.device_identity(device)
    source = (f"${cal_mod.ENV_PATH} ({env})" if env else
              f"cache ({cal_mod.cache_path(*ident)})" if cal_mod.cache_path(*ident).exists() else "measured now")
    print(f"build: POD calibration for {', '.join(users)}: {source}", flush=True)
    try:
        cal = cal_mod.for_device(device, log=lambda line: print(f"build: {line}", flush=True))
    except Exception as e:  # noqa: BLE001 - recorded; the runner's POD rows will report it too
        print(f"build: POD calibration failed: {type(e).__name__}: {e}", flush=True)
        return {"status": "error", "reason": f"{type(e).__name__}: {e}", "methods": users}
    for line in cal.describe():
        print(f"build: {line}", flush=True)
    if out is not None:
        cal.save(out)
    return {"status": "ok", "ident": cal.ident, "source": source, "path": str(out) if out else "",
            "methods": users, "seconds": round(time.perf_counter() - t0, 3), "summary": cal.describe()}


def build(experiment_path: str, device: torch.device, smoke: bool, calibration_out: Path | None = None,
          methods=None, flashinfer_modules: Path | None = None) -> dict:
    """Warm the experiment's methods (all, or the labels ``methods`` names, as the runner's
    --methods) on ``device``; returns the marker document. A POD calibration, when a method needs
    one, is saved at ``calibration_out``. ``flashinfer_modules``: a directory of FlashInfer modules
    compiled ahead of time (experiments/flashinfer_modules.py), installed before the warm-up."""
    from experiments.grid import device_memory_bytes, device_sm_count, expand, load_experiment, select_methods

    exp = load_experiment(experiment_path, smoke=smoke)
    labels = select_methods(exp, methods)
    if labels is not None:
        exp.methods = [ms for ms in exp.methods if ms.label in labels]
    env = set_build_env(device)
    started = time.time()
    prebuilt = None
    if flashinfer_modules is not None:   # after set_build_env: FlashInfer reads its arch list on import
        from experiments.flashinfer_modules import install

        try:
            prebuilt = install(flashinfer_modules, device)
        except ImportError as e:
            prebuilt = {"source": str(flashinfer_modules), "status": "refused", "reason": f"flashinfer: {e}"}
        print(f"build: FlashInfer modules from {flashinfer_modules}: " + (
            f"{len(prebuilt['installed'])} installed, {len(prebuilt['present'])} already there"
            if prebuilt["status"] == "ok" else f"not installed ({prebuilt['reason']}); FlashInfer compiles them"),
            flush=True)
    # Only the shapes matter here, not the memory- or SM-filling decode batch sizes: without a GPU
    # any memory size (80 GB, the paper's) and SM count (the paper's 108) expands the grid.
    cuda = device.type == "cuda"
    rows = expand(exp, gpu_memory_bytes=(device_memory_bytes() if cuda else None) or 80e9,
                  sm_count=(device_sm_count() if cuda else None) or 108)
    registry = load_all()
    batches = []
    for spec in warm_specs(rows):
        batch = HybridBatch.allocate(spec, device=device)
        batch.decode_seqlens  # fill the shared cache before threads read it
        batches.append(batch)

    results, by_method = {}, {}
    for ms in exp.methods:
        if ms.method not in registry:
            results[ms.label] = {"status": "error", "seconds": 0.0, "shapes": {},
                                 "reason": f"{ms.method!r} is not a registered method "
                                           f"(registered: {', '.join(sorted(registry))})"}
        else:
            by_method.setdefault(ms.method, []).append((ms.label, ms.options))

    # before the warm-up threads: nvcc builds would load the machine while the calibration times
    pod_calibration = calibrate_pod(exp, registry, device, calibration_out)

    t0 = time.perf_counter()
    # Methods sharing one compiled kernel (``build_group``) warm in one thread, one after another,
    # so no kernel is compiled by two threads at once; other groups overlap their compilations.
    groups: dict = {}
    for name, variants in by_method.items():
        groups.setdefault(registry[name].build_group or name, []).append((registry[name], variants))

    n_variants = sum(len(v) for v in by_method.values())
    print(f"build {exp.name}{' (smoke)' if smoke else ''} on {device}: {n_variants} method(s) x "
          f"{len(batches)} shape(s) = {n_variants * len(batches)} warm-ups in {len(groups)} parallel group(s)\n"
          f"  shapes: {', '.join(_shape_name(b.spec) for b in batches)}\n"
          f"  methods: {', '.join(label for v in by_method.values() for label, _ in v)}", flush=True)

    with Progress(n_variants * len(batches)) as progress:
        def warm_group(members):
            out = {}
            for cls, variants in members:
                out.update(warm_method(cls, variants, batches, progress))
            return out

        with ThreadPoolExecutor(max_workers=max(1, len(groups))) as pool:
            for per_label in pool.map(warm_group, groups.values()):
                for label, per_shape in per_label.items():
                    results[label] = summarize(per_shape)
    order = [ms.label for ms in exp.methods]
    compiled_here = []
    if cuda:
        from experiments.flashinfer_modules import jit_compiled_since

        compiled_here = jit_compiled_since(started)
        if compiled_here:
            print(f"build: FlashInfer JIT-compiled {len(compiled_here)} module(s) here: {', '.join(compiled_here)}",
                  flush=True)
    return {"experiment": exp.name, "path": str(experiment_path), "smoke": smoke, "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
            "env": env, "shapes": [_shape_name(b.spec) for b in batches],
            "wall_seconds": round(time.perf_counter() - t0, 3),
            "pod_calibration": pod_calibration,
            "flashinfer_prebuilt": prebuilt, "flashinfer_jit_compiled": compiled_here,
            "methods": {label: results[label] for label in order}}


def print_table(marker: dict) -> None:
    """Short human summary of the marker."""
    rows = [(label, r["status"], f"{r['seconds']:.1f}", r["reason"][:100]) for label, r in marker["methods"].items()]
    header = ("method", "status", "seconds", "reason")
    widths = [max(len(str(x[i])) for x in rows + [header]) for i in range(3)]
    for r in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3])
    print(f"warmed {len(marker['shapes'])} shape(s) in {marker['wall_seconds']:.1f} s on {marker['device']} "
          f"{marker['gpu']}".rstrip())
    cal = marker.get("pod_calibration")
    if cal:
        print(f"POD calibration: {cal.get('ident') or cal.get('reason')} ({cal.get('source', cal['status'])})"
              + (f" -> {cal['path']}" if cal.get("path") else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiment", help="experiments/<experiment>.yaml")
    ap.add_argument("--out", required=True, help="marker JSON to write")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available, else cpu)")
    ap.add_argument("--smoke", action="store_true", help="use the experiment's smoke overrides")
    ap.add_argument("--methods", help="comma-separated method labels to warm (default: all in the YAML), "
                                      "as the runner's --methods")
    ap.add_argument("--flashinfer-modules", type=Path, metavar="DIR",
                    help="FlashInfer modules compiled ahead of time (python -m experiments.flashinfer_modules "
                         "build ... --out DIR), installed before the warm-up")
    args = ap.parse_args(argv)

    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"experiments.build: --device {name} but no CUDA GPU is visible to torch {torch.__version__} "
              f"(CUDA build: {torch.version.cuda or 'none'}). Run on a GPU machine with a CUDA build of "
              "PyTorch, or pass --device cpu --smoke.", file=sys.stderr)
        return 1
    from experiments.grid import ExperimentError

    try:
        marker = build(args.experiment, device, args.smoke, calibration_path(args.out), args.methods,
                       args.flashinfer_modules)
    except ExperimentError as e:  # bad input, found before anything is compiled
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(marker, indent=2) + "\n")
    tmp.replace(out)  # the workflow never sees a half-written marker
    print_table(marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
