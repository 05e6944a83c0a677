"""Ahead-of-time sm_90a compiles of the Hopper kernel on a machine without a GPU, with counts of
what matters in its PTX and SASS (tests/test_hopper_compile.py runs this in a clean process:
TRITON_INTERPRET must not be set where Gluon compiles).

    python -m kernels.hopper.aot [MODE:HEAD_DIM:DTYPE[:FLAG,...] ...]    # prints one JSON line per variant

FLAG: a HopperConfig field, ``name`` (set true) or ``name=value``, e.g.
``prefill:128:float16:pingpong`` or ``prefill:128:float16:stages=3,pingpong``; or ``kv_starts``:
the decode requests' pages in reverse order (each request's contiguous, as a serving pool lays
them out), which the kernel's KV_STARTS variant reads.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

from kernels.common.aot import cubin_resources
from kernels.workload import BatchSpec, HybridBatch, ModelShape

PTX_PATTERNS = {
    "wgmma": r"wgmma\.mma_async",
    "wgmma_wait": r"wgmma\.wait_group",
    "mma_sync": r"\bmma\.sync",
    "setmaxnreg": r"setmaxnreg\.",
    "tma_load": r"cp\.async\.bulk\.tensor",
    "mbarrier_wait": r"mbarrier\.try_wait",
    "mbarrier_arrive": r"mbarrier\.arrive\.",
    "ld_global": r"ld\.global",
    "ld_local": r"ld\.local",
    "st_local": r"st\.local",
}
SASS_PATTERNS = {"HGMMA": r"\bHGMMA\.", "HMMA": r"\bHMMA\.", "LDL": r"\bLDL\b", "STL": r"\bSTL\b",
                 "USETMAXREG": r"\bUSETMAXREG\b", "UTMALDG": r"\bUTMALDG\b"}


def compile_variant(mode: str, head_dim: int, dtype: str = "float16", q_heads: int = 8, kv_heads: int = 2,
                    options: dict | None = None) -> dict:
    """Compile one variant (``options``: HopperConfig fields) for a small odd-shaped CPU batch;
    returns counts and resources."""
    from .launch import HopperLaunch, aot_compile
    from .plan import HopperConfig, make_plan

    spec = BatchSpec(ModelShape(f"t{q_heads}-{kv_heads}-{head_dim}", q_heads, kv_heads, head_dim), dtype=dtype,
                     prefill_len=0 if mode == "decode" else 300, prefill_kv_len=0 if mode == "decode" else 700,
                     decode_batch=0 if mode == "prefill" else 5, decode_ctx=333)
    options = dict(options or {})
    reversed_requests = bool(options.get("kv_starts"))
    batch = HybridBatch.allocate(spec, device="cpu")
    if reversed_requests:
        batch = RequestsReversed(**{f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)})
    plan = make_plan(spec, 132, mode, HopperConfig(**{k: v for k, v in options.items() if k != "kv_starts"}))
    launch = HopperLaunch(batch, plan)
    if reversed_requests and not launch.meta.get("KV_STARTS"):
        raise AssertionError("the reversed decode pages did not select the KV_STARTS variant")
    ck = aot_compile(launch)
    ptx = ck.asm["ptx"]
    rep = {"mode": mode, "head_dim": head_dim, "dtype": dtype, "options": options, "shared": ck.metadata.shared,
           "num_warps": ck.metadata.num_warps, "smem_operands": plan.tiles.smem_bytes(head_dim),
           "launch_regs": plan.tiles.launch_regs(), "ctas_per_sm": plan.tiles.ctas_per_sm,
           "ptx": {k: len(re.findall(p, ptx)) for k, p in PTX_PATTERNS.items()},
           "setmaxnreg_values": sorted({int(v) for v in re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx)}),
           "wgmma_shapes": sorted(set(re.findall(r"wgmma\.mma_async\.sync\.aligned\.(m\d+n\d+k\d+)", ptx))),
           "maxnreg_directive": [int(x) for x in re.findall(r"\.maxnreg\s+(\d+)", ptx)]}
    if "cubin" in ck.asm:
        res = cubin_resources(ck.asm["cubin"], sass=True)
        if "sass" in res:
            sass = res.pop("sass")
            rep["sass"] = {k: len(re.findall(p, sass)) for k, p in SASS_PATTERNS.items()}
        rep.update(res)
    return rep


class RequestsReversed(HybridBatch):
    """The harness's batch with its decode requests' pages in reverse request order (each
    request's still contiguous), as a serving pool may lay them out."""

    def decode_block_table(self):
        return super().decode_block_table().flip(0)


def _option(flag: str):
    """``pingpong`` -> (pingpong, True); ``stages=3`` -> (stages, 3) (HopperConfig's fields)."""
    name, _, value = flag.partition("=")
    if not value:
        return name, True
    return name, int(value) if value.lstrip("-").isdigit() else {"true": True, "false": False}.get(value, value)


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET"):
        print("kernels.hopper.aot: unset TRITON_INTERPRET (Gluon cannot compile under the interpreter)", file=sys.stderr)
        return 2
    specs = argv if argv else ["prefill:128:float16"]
    for s in specs:
        mode, d, dt, *flags = s.split(":")
        options = dict(_option(f) for f in flags[0].split(",")) if flags else {}
        try:
            rep = compile_variant(mode, int(d), dt, options=options)
        except Exception as e:  # noqa: BLE001 - reported per variant
            rep = {"mode": mode, "head_dim": int(d), "dtype": dt, "options": options,
                   "error": f"{type(e).__name__}: {e}"[:2000]}
        print(json.dumps(rep), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
