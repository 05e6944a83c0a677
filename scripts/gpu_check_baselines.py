"""GPU smoke check of every registered method on a few hybrid batches.

    python scripts/gpu_check_baselines.py [--methods FA_prefill,FI_POD] [--calls 5]

For each batch (C0 of the paper, a tiny odd one, a bfloat16 head-dim-256 one) it runs every
method once, checks the outputs against the float32 reference (kernels.reference), times a few
calls with CUDA events and prints one table. Exit status 1 if a method errors, fails its check,
or is unavailable although it should run here (FA_* always on CUDA, FI_* when flashinfer imports);
2 if there is no GPU. The first FlashInfer call of each kernel family JIT-compiles (minutes).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in the checkout

from kernels.build import set_build_env  # noqa: E402
from kernels.reference import check_outputs, reference_outputs  # noqa: E402
from kernels.registry import MethodUnavailable, load_all  # noqa: E402
from kernels.workload import BatchSpec, HybridBatch, ModelShape  # noqa: E402

CONFIGS = {
    # llama-3-8b at TP2 (16 q / 4 kv heads): prefill chunk 1K over 12K keys + 80 decodes of 12K.
    "C0": BatchSpec(ModelShape("llama-3-8b-tp2", 16, 4, 128, tp=2), dtype="float16", prefill_len=1024,
                    prefill_kv_len=12288, decode_batch=80, decode_ctx=12288, page_size=16),
    # Nothing a multiple of a tile: GQA 3, partial last pages, prefill shorter than one tile.
    "tiny-odd": BatchSpec(ModelShape("tiny-gqa3", 6, 2, 64), dtype="float16", prefill_len=37,
                          prefill_kv_len=101, decode_batch=5, decode_ctx=77, page_size=16),
    "bf16-d256": BatchSpec(ModelShape("d256-gqa2", 8, 4, 256), dtype="bfloat16", prefill_len=300,
                           prefill_kv_len=1000, decode_batch=12, decode_ctx=2000, page_size=16),
}

# H100 medians for C0 measured with the same libraries (shared/reference/h100-anchors.md), in ms.
C0_ANCHOR_MS = {"FA_prefill": 0.393, "FA_decode": 1.010, "FA_Streams": 1.309, "FI_prefill_auto": 0.210,
                "FI_prefill_fa2": 0.304, "FI_decode": 0.753, "FI_Batched_fa2": 1.149, "FI_Batched_auto": 2.702,
                "FI_POD": 0.818}


def expected_available() -> set:
    """Methods that must run on a CUDA machine with this software."""
    names = {"FA_prefill", "FA_decode", "FA_BackToBack", "FA_Streams"}
    try:
        import flashinfer  # noqa: F401
    except Exception:
        return names
    return names | {"FI_prefill_auto", "FI_prefill_fa2", "FI_decode", "FI_Batched_fa2", "FI_Batched_auto", "FI_POD"}


def time_ms(fn, calls: int) -> float:
    """Median of ``calls`` single calls, each between two CUDA events (after the checked call)."""
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def check_method(cls, batch: HybridBatch, ref: dict, calls: int) -> dict:
    """Run, check and time one method on one batch; never raises."""
    res = {"impl": "", "status": "ok", "rel_err": float("nan"), "max_abs": float("nan"), "ms": float("nan"),
           "reason": "", "first_s": float("nan")}
    try:
        method = cls()
        why = method.unavailable_reason(batch.device)
        if why:
            raise MethodUnavailable(why)
        t0 = time.perf_counter()
        fn = method.prepare(batch)
        outputs = fn()
        torch.cuda.synchronize()
        res["first_s"] = time.perf_counter() - t0  # includes any JIT compilation
        res["impl"] = method.info().get("impl", cls.name)
        check = check_outputs(outputs, {p: ref[p] for p in method.parts}, batch.spec.dtype, parts=method.parts)
        res.update(rel_err=check.rel_err, max_abs=check.max_abs_err)
        if not check.ok:
            res.update(status="failed_check", reason=check.reason)
        res["ms"] = time_ms(fn, calls)
    except MethodUnavailable as e:
        res.update(status="unavailable", reason=str(e))
    except Exception as e:
        res.update(status="error", reason=f"{type(e).__name__}: {e}")
        traceback.print_exc()
    finally:
        torch.cuda.synchronize()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="", help="comma-separated method names (default: all registered)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    ap.add_argument("--calls", type=int, default=5, help="timed calls per method (median reported)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"no CUDA GPU visible to torch {torch.__version__}; this script checks the GPU baselines", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    env = set_build_env(device)
    registry = load_all()
    names = [n for n in args.methods.split(",") if n] or sorted(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        print(f"unknown methods {unknown}; registered: {sorted(registry)}", file=sys.stderr)
        return 2
    must_run = expected_available()
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, env {env}", flush=True)

    table, bad = [], []
    for cname in [c for c in args.configs.split(",") if c]:
        spec = CONFIGS[cname]
        batch = HybridBatch.allocate(spec, device=device, seed=0)
        ref = reference_outputs(batch)
        for name in names:
            print(f"[{cname}] {name} ...", flush=True)
            r = check_method(registry[name], batch, ref, args.calls)
            anchor = C0_ANCHOR_MS.get(name) if cname == "C0" else None
            table.append((cname, name, r, anchor))
            if r["status"] in ("error", "failed_check") or (r["status"] == "unavailable" and name in must_run):
                bad.append(f"{cname}/{name}: {r['status']}: {r['reason']}")
        del batch, ref
        torch.cuda.empty_cache()

    print()
    print(f"{'config':<10} {'method':<18} {'status':<12} {'rel_err':>9} {'max_abs':>9} {'ms':>8} {'H100 ms':>8} "
          f"{'first s':>8}  impl / reason")
    for cname, name, r, anchor in table:
        tail = r["impl"] if r["status"] == "ok" else f"{r['impl']} {r['reason']}".strip()
        print(f"{cname:<10} {name:<18} {r['status']:<12} {r['rel_err']:>9.2e} {r['max_abs']:>9.2e} {r['ms']:>8.3f} "
              f"{anchor if anchor is not None else '':>8} {r['first_s']:>8.1f}  {tail[:160]}")
    if bad:
        print("\nPROBLEMS:\n  " + "\n  ".join(bad))
        return 1
    print("\nall expected methods ran and matched the reference")
    return 0


if __name__ == "__main__":
    sys.exit(main())
