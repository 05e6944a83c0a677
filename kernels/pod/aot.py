"""Ahead-of-time compiles of our Triton POD kernel's launches for a GPU architecture on a machine
without one: registers, shared memory, spills, and how many CTAs of the launch an SM holds at once
(tests/test_pod_compile.py runs this in a clean process: TRITON_INTERPRET must not be set).

    python -m kernels.pod.aot [KIND:HEAD_DIM:DTYPE ...] [--arch 90]    # one JSON line per launch

KIND: ``decode`` or ``prefill`` (a part alone, as OURS_decode / OURS_prefill launch it), ``fused2``
or ``fused4`` (POD's fused launch with the tile set of 2 or 4 CTAs per SM).

Why: a split count or a wave count is only as right as the CTAs per SM it assumes; the plan counts
``ctas_per_sm`` slots per SM, and this says how many the compiled launch really fits.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict

from kernels.hopper.plan import REGS_PER_SM, SMEM_PER_SM

# per-SM limits of each architecture (CUDA programming guide, compute capabilities): registers,
# shared memory, shared memory the driver reserves per CTA, resident threads and CTAs; sm_90's as
# the Hopper kernel's plan counts them
SM_LIMITS = {80: dict(regs=65536, smem=167936, smem_reserved=1024, threads=2048, ctas=32),
             86: dict(regs=65536, smem=102400, smem_reserved=1024, threads=1536, ctas=16),
             89: dict(regs=65536, smem=102400, smem_reserved=1024, threads=1536, ctas=24),
             90: dict(regs=REGS_PER_SM, smem=SMEM_PER_SM, smem_reserved=1024, threads=2048, ctas=32)}


def ctas_per_sm(regs: int, shared: int, num_warps: int, arch: int) -> int:
    """CTAs of ``num_warps`` warps using ``regs`` registers per thread and ``shared`` bytes of shared
    memory that one SM of ``sm_<arch>`` holds at once (registers are allocated per warp in units of
    256, i.e. per thread in multiples of 8)."""
    lim = SM_LIMITS[arch]
    threads = 32 * num_warps
    per_thread = -(-max(regs, 1) // 8) * 8
    return min(lim["ctas"], lim["threads"] // threads, lim["regs"] // (per_thread * threads),
               lim["smem"] // (shared + lim["smem_reserved"]))


def compile_launch(kind: str, head_dim: int, dtype: str = "float16", arch: int = 90) -> dict:
    """Compile the launch of ``kind`` for a small odd-shaped batch (GQA 4; the launch's code does not
    depend on the lengths) planned for a 132-SM device; returns its resources."""
    from kernels.common.aot import compile_triton, cubin_resources
    from kernels.workload import BatchSpec, HybridBatch, ModelShape

    from .kernel import pod_kernel
    from .launch import MODE_DECODE, MODE_POD, MODE_PREFILL, PodLaunch
    from .plan import PodConfig, make_plan

    mode = {"decode": MODE_DECODE, "prefill": MODE_PREFILL, "fused2": MODE_POD, "fused4": MODE_POD}[kind]
    spec = BatchSpec(ModelShape(f"t-{head_dim}", 16, 4, head_dim), dtype=dtype,
                     prefill_len=0 if kind == "decode" else 300, prefill_kv_len=0 if kind == "decode" else 700,
                     decode_batch=0 if kind == "prefill" else 5, decode_ctx=333)
    cfg = PodConfig(ctas_per_sm=int(kind[-1])) if kind.startswith("fused") else PodConfig()
    plan = make_plan(spec, mode, 132, cfg)
    launch = PodLaunch(HybridBatch.allocate(spec, device="cpu"), plan, paged=False)
    meta = dict(launch.meta, INTERPRET=False)
    ck = compile_triton(pod_kernel, {**launch.kwargs, "MODE": mode, **meta}, arch)
    rep = {"kind": kind, "head_dim": head_dim, "dtype": dtype, "arch": arch, "shared": ck.metadata.shared,
           "num_warps": ck.metadata.num_warps, "plan_ctas_per_sm": plan.ctas_per_sm,
           "tiles": asdict(plan.tiles)}
    rep.update(cubin_resources(ck.asm["cubin"]) if "cubin" in ck.asm else {})
    if "regs" in rep:
        rep["ctas_per_sm"] = ctas_per_sm(rep["regs"], rep["shared"], rep["num_warps"], arch)
    return rep


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("TRITON_INTERPRET"):
        print("kernels.pod.aot: unset TRITON_INTERPRET (an interpreted kernel does not compile)", file=sys.stderr)
        return 2
    arch = 90
    if "--arch" in argv:
        i = argv.index("--arch")
        arch = int(argv[i + 1])
        del argv[i:i + 2]
    if arch not in SM_LIMITS:
        print(f"kernels.pod.aot: no SM limits for sm_{arch} (known: {sorted(SM_LIMITS)})", file=sys.stderr)
        return 2
    for s in argv or ["decode:128:float16"]:
        kind, d, dt = s.split(":")
        try:
            rep = compile_launch(kind, int(d), dt, arch)
        except Exception as e:  # noqa: BLE001 - reported per launch
            rep = {"kind": kind, "head_dim": int(d), "dtype": dt, "arch": arch, "error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(rep), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
