"""Our prefill tile against FlashInfer's on figure-11 shapes: code variants of the prefill loop and
tile shapes, each checked against the reference attention and timed with the sweep core.

    python -m experiments.prefill_variants --out CSV [--shapes N] [--variants A,B] [--device cuda|cpu]

Why: our prefill alone reaches 0.77x FlashInfer fa3's TFLOP/s on the figure-11 grid, and POD's
fused prefill tile is slower still. The variants are constexpr switches of ``pod_kernel``
(PF_SOFTMAX: scale folded into the exponent with the P.V product accumulating in place; PF_WS:
Triton's automatic warp specialisation of the unmasked KV loop) and PodConfig tile overrides. The
switches are no method option (kernels/pod/plan.py's PodConfig has no field for them), so they
cannot be a study YAML's methods: this module applies them to the prepared launches
(``with_kernel_switches``). One CSV line per (shape, variant), keyed (row_key, method) like the
runner's raw CSV: status, median ms, IQR, prefill TFLOP/s; a rerun with the same --out resumes.
On the CPU (Triton interpreter) every shape is replaced by a tiny one of the same proportions: a
logic check of every variant, not a timing.
"""
from __future__ import annotations

import argparse
import sys

# (model, prefill_len, prefill_kv_len, decode_batch, decode_ctx): figure-11 rows
SHAPES = [
    ("llama-3-8b", 2048, 20480, 21, 20480),
    ("llama-3-8b", 1024, 16384, 23, 20480),
    ("llama-3-8b", 512, 7680, 26, 16384),
    ("llama-3-8b", 2048, 6144, 38, 12288),
    ("yi-6b", 2048, 18432, 48, 20480),
    ("yi-6b", 1024, 11264, 81, 12288),
    ("yi-6b-tp4", 2048, 14336, 274, 16384),
    ("llama-3-8b-tp2", 512, 19968, 51, 20480),
    ("llama-3-8b-tp2", 12288, 12288, 0, 0),
]

# (label, method, PodConfig options, kernel constexpr switches)
FUSED4 = dict(block_m=64, block_n=32, num_warps=4, num_stages=3, maxnreg=128)
FUSED2 = dict(block_m=128, block_n=64, num_warps=8, num_stages=2, maxnreg=128)
VARIANTS = [
    ("FI_prefill_auto", "FI_prefill_auto", {}, {}),
    ("OURS_prefill", "OURS_prefill", {}, {}),
    ("OURS_prefill_fma", "OURS_prefill", {}, {"PF_SOFTMAX": 1}),
    ("OURS_prefill_fma_s4", "OURS_prefill", {"num_stages": 4}, {"PF_SOFTMAX": 1}),
    ("OURS_prefill_fma_s2", "OURS_prefill", {"num_stages": 2}, {"PF_SOFTMAX": 1}),
    ("OURS_prefill_fma_bn128_s2", "OURS_prefill", {"block_n": 128, "num_stages": 2}, {"PF_SOFTMAX": 1}),
    ("OURS_prefill_fma_bn128_s3", "OURS_prefill", {"block_n": 128, "num_stages": 3}, {"PF_SOFTMAX": 1}),
    ("OURS_prefill_fma_64x64_w4", "OURS_prefill", {"block_m": 64, "num_warps": 4}, {"PF_SOFTMAX": 1}),
    ("OURS_prefill_fma_tma", "OURS_prefill", {"prefill_loads": "tma"}, {"PF_SOFTMAX": 1}),
    ("OURS_prefill_fma_ws", "OURS_prefill", {}, {"PF_SOFTMAX": 1, "PF_WS": True}),
    ("OURS_prefill_fma_tma_ws", "OURS_prefill", {"prefill_loads": "tma"}, {"PF_SOFTMAX": 1, "PF_WS": True}),
    ("fused4", "OURS_prefill", FUSED4, {}),
    ("fused4_fma", "OURS_prefill", FUSED4, {"PF_SOFTMAX": 1}),
    ("fused4_fma_bn64_s2", "OURS_prefill", {**FUSED4, "block_n": 64, "num_stages": 2}, {"PF_SOFTMAX": 1}),
    ("fused2", "OURS_prefill", FUSED2, {}),
    ("fused2_fma", "OURS_prefill", FUSED2, {"PF_SOFTMAX": 1}),
    ("POD", "POD", {}, {}),
    ("POD_fma", "POD", {}, {"PF_SOFTMAX": 1}),
    ("POD_fma_bn64", "POD", {"block_n": 64}, {"PF_SOFTMAX": 1}),
    ("OURS_Serial", "OURS_Serial", {}, {}),
    ("OURS_Serial_fma", "OURS_Serial", {}, {"PF_SOFTMAX": 1}),
]
COLUMNS = ["row_key", "method", "status", "reason", "impl", "median_ms", "iqr_ms", "tflop_s", "max_abs_err"]
TIMING = dict(warmup=2, repeats=7, calls=10)
CPU_TIMING = dict(warmup=0, repeats=1, calls=1)


def with_kernel_switches(run, switches: dict):
    """Apply ``pod_kernel`` constexpr ``switches`` to every launch behind a prepared ``run`` of our
    Triton family (one launch: ``launch_state``; serial and stream launches: ``launch_states``)."""
    if switches:
        for state in getattr(run, "launch_states", None) or (run.launch_state,):
            state.meta.update(switches)
    return run


class SwitchedMethod:
    """A method whose prepared launches get kernel constexpr switches; the rest is the method's."""

    def __init__(self, inst, switches: dict):
        self._inst, self._switches = inst, switches

    def prepare(self, batch):
        return with_kernel_switches(self._inst.prepare(batch), self._switches)

    def __getattr__(self, name):
        return getattr(self._inst, name)


def shape_spec(shape: tuple, device: str):
    """The BatchSpec of a SHAPES entry (on the CPU a tiny stand-in of the same proportions)."""
    from experiments.grid import resolve_model
    from kernels.workload import BatchSpec, ModelShape

    name, lq, lk, bs, ctx = shape
    model = resolve_model(name)
    if device == "cpu":
        lq, lk, bs, ctx = 19, 50, min(bs, 3), 33 if bs else 0
        model = ModelShape(name=name, q_heads=max(2, model.q_heads // 8), kv_heads=max(1, model.kv_heads // 8),
                           head_dim=model.head_dim, layers=1)
    return BatchSpec(model=model, prefill_len=lq, prefill_kv_len=lk, decode_batch=bs, decode_ctx=ctx)


def time_variants(out: str, shapes: int | None = None, variants=None, device: str = "auto",
                  progress: bool = True) -> dict:
    """Check and time every variant on every shape into ``out``; returns counts per status written now."""
    from experiments.sweep import configure_device_env, resolve_device

    device = resolve_device(device)
    configure_device_env(device)
    import torch
    from tqdm import tqdm

    from experiments.grid import ExperimentError, row_key
    from experiments.sweep import ResumableCSV, count, error_text, run_method
    from kernels import registry
    from kernels.reference import reference_outputs
    from kernels.workload import HybridBatch

    dev = torch.device(device)
    registry.load_all()
    chosen = [v for v in VARIANTS if not variants or v[0] in variants]
    unknown = sorted(set(variants or []) - {v[0] for v in VARIANTS})
    if unknown:
        raise ExperimentError(f"--variants: {', '.join(unknown)} unknown; known: {', '.join(v[0] for v in VARIANTS)}")
    timing = TIMING if dev.type == "cuda" else CPU_TIMING
    sink = ResumableCSV(out, COLUMNS)
    done = sink.done()
    sink.write_header()
    counts: dict = {}
    for shape in tqdm(SHAPES[:shapes], unit="shape", file=sys.stderr, disable=not progress):
        spec = shape_spec(shape, dev.type)
        key = row_key(spec)
        # the fused and serial launches need decodes; a prefill-only shape times the prefill alone
        todo = [v for v in chosen
                if (key, v[0]) not in done and (spec.has_decode or v[1] not in ("POD", "OURS_Serial"))]
        if not todo:
            continue
        batch = HybridBatch.allocate(spec, device=dev, seed=0)
        ref = reference_outputs(batch)
        for label, method, options, switches in todo:
            line = {"row_key": key, "method": label}
            try:
                # the switches are our Triton kernel's: its prefill, not the Gluon Hopper one
                # that prefill_kernel "auto" would run on sm_90
                extra = {"prefill_kernel": "triton"} if method.startswith(("OURS", "POD")) else {}
                inst = registry.create(method, **extra, **options)
                reason = inst.unavailable_reason(dev)
                res = ({"status": "unavailable", "reason": reason} if reason else
                       run_method(SwitchedMethod(inst, switches), batch, lambda: ref, dev, timing))
            except Exception as e:  # noqa: BLE001 - options a method refuses are a result, not a crash
                res = {"status": "error", "reason": error_text(e)}
            line.update({k: res.get(k, "") for k in ("status", "reason", "impl", "median_ms", "iqr_ms", "max_abs_err")})
            if res["status"] == "ok" and "prefill" in method:  # the prefill alone: its rate
                line["tflop_s"] = spec.flops()["prefill"] / (res["median_ms"] * 1e-3) / 1e12
            sink.append([line])
            count(counts, line["status"])
        batch = ref = None
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return counts


def main(argv=None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.prefill_variants", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="CSV to append to (resumed if it exists)")
    ap.add_argument("--shapes", type=int, help="only the first N shapes (e.g. 1 to compile every variant)")
    ap.add_argument("--variants", help="comma-separated labels (default: all)")
    ap.add_argument("--device", default="auto", help="cuda, cpu (Triton interpreter, tiny shapes) or auto")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    from experiments.sweep import labels_arg, report

    return report(args.out, lambda: time_variants(args.out, args.shapes, labels_arg(args.variants), args.device,
                                                  not args.no_progress))


if __name__ == "__main__":
    sys.exit(main())
