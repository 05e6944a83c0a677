"""HFuse's sm_90 compile of one batch shape, for tests/test_hfuse.py (run through
``tests/clean_process.py``: Gluon cannot compile in an interpreter-mode process)."""
from __future__ import annotations


def compile_hfuse(hq: int, hkv: int, d: int, dtype: str, ctas_per_sm: int | None = None, sms: int = 132) -> dict:
    """PTX and metadata of ``hfuse_kernel`` compiled ahead of time for one (CPU-allocated) batch."""
    import torch

    from kernels.hfuse.launch import aot_compile, prepare_launch
    from kernels.hfuse.plan import HFuseConfig, make_plan
    from kernels.workload import BatchSpec, HybridBatch, ModelShape

    spec = BatchSpec(ModelShape(f"t{hq}-{hkv}-{d}", hq, hkv, d), dtype, 77, 300, 5, 333)
    config = HFuseConfig(ctas_per_sm=ctas_per_sm) if ctas_per_sm else None
    plan = make_plan(spec, sms, config)
    ck = aot_compile(prepare_launch(HybridBatch.allocate(spec, torch.device("cpu"), seed=0), plan), arch=90)
    return {"ptx": ck.asm["ptx"], "shared": ck.metadata.shared, "num_warps": ck.metadata.num_warps,
            "cubin_bytes": len(ck.asm["cubin"]), "tile_smem": plan.tiles.smem_bytes(d)}
