"""Launching HFuse (kernels/hfuse/kernel.py): availability, the kernel's arguments by name, the
fused launch (grid = max of both sides), the split merge and the ahead-of-time compile for sm_90
without a GPU (tests read its PTX). Planning is in plan.py."""
from __future__ import annotations

import torch

from kernels.common.aot import compile_gluon
from kernels.common.merge import MergedLaunch, SplitMerge
from kernels.common.splitkv import LOG2E
from kernels.workload import BatchSpec, HybridBatch

from .plan import PARTITION_WARPS, HFusePlan, HFuseTiles

MIN_CAPABILITY = (9, 0)  # Gluon's warp_specialize lowering always emits setmaxnreg (sm_90+)

# Scalars of an absent part (its pointers get stand-ins): never read by the kernel.
_NO_PREFILL = dict(Lq=0, Lk=0, n_mblocks=0, n_splits_p=1, n_prefill_ctas=0, s_qpt=0, s_qph=0, s_kpt=0, s_kph=0,
                   s_vpt=0, s_vph=0, s_opt=0, s_oph=0)
_NO_DECODE = dict(B=0, n_hblocks=0, n_splits_d=1, n_decode_ctas=0, s_qdb=0, s_qdh=0, s_kdb=0, s_kdt=0, s_kdh=0,
                  s_vdb=0, s_vdt=0, s_vdh=0, s_odb=0, s_odh=0)


# ----------------------------------------------------------------------------------------------
# availability
# ----------------------------------------------------------------------------------------------
def gluon_import_error() -> str | None:
    """None if Gluon (triton.experimental.gluon with warp_specialize and mma_v2) imports."""
    try:
        from triton.experimental.gluon import language as gl  # noqa: F401
        from triton.experimental.gluon.language.nvidia.ampere import mma_v2  # noqa: F401
        if not hasattr(gl, "warp_specialize"):
            return "this Triton's Gluon has no warp_specialize"
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return f"Triton's Gluon is missing ({type(e).__name__}: {e}); install triton >= 3.5"
    return None


def unavailable_reason(device: torch.device) -> str | None:
    if device.type != "cuda":
        return f"HFuse runs on CUDA GPUs only, not {device.type}"
    err = gluon_import_error()
    if err:
        return err
    if not torch.cuda.is_available():
        return "HFuse needs a CUDA GPU; none is visible"
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < MIN_CAPABILITY:
        return (f"HFuse needs sm_90+ (Hopper): Gluon's warp_specialize lowering emits setmaxnreg, "
                f"which sm_{cap[0]}{cap[1]} lacks (LLVM aborts the process compiling it)")
    return None


def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


# ----------------------------------------------------------------------------------------------
# arguments, launch
# ----------------------------------------------------------------------------------------------
def kernel_meta(spec: BatchSpec, tiles: HFuseTiles) -> dict:
    """Compile-time arguments of ``hfuse_kernel`` for ``spec`` (launch options included)."""
    d = spec.model.head_dim
    meta = dict(D=d, CAUSAL=bool(spec.causal), BM=tiles.block_m, BN=tiles.block_n,
                KC_P=min(tiles.head_chunk, d), STAGES_P=tiles.prefill_stages,
                BH=tiles.decode_rows, BN_D=tiles.decode_n, KC_D=min(tiles.head_chunk, d),
                STAGES_D=tiles.decode_stages, DECODE_WARPS=PARTITION_WARPS,
                DECODE_REGS=tiles.decode_regs or 128, num_warps=PARTITION_WARPS)
    if tiles.maxnreg:
        meta["maxnreg"] = tiles.maxnreg
    return meta


def _unit_stride(parts: dict) -> None:
    for name, x in parts.items():
        if x.stride(-1) != 1:
            raise ValueError(f"HFuse needs a unit head-dim stride in {name}")


class HFuseLaunch(MergedLaunch):
    """Everything allocated up front; ``__call__`` only launches (fused kernel, then the merge of
    split partials when there are splits). ``kwargs`` are the kernel's runtime arguments by name,
    ``meta`` its compile-time ones."""

    def __init__(self, batch: HybridBatch, plan: HFusePlan):
        from .kernel import hfuse_kernel

        self._kernel = hfuse_kernel
        spec, dev = batch.spec, batch.device
        m = spec.model
        self.plan = plan
        self.do_p, self.do_d = spec.has_prefill, spec.has_decode
        dummy_f = torch.empty(1, device=dev, dtype=torch.float32)
        dummy_i = torch.zeros(1, device=dev, dtype=torch.int32)
        self.out_p = torch.empty_like(batch.q_p) if self.do_p else None
        self.out_d = torch.empty_like(batch.q_d) if self.do_d else None
        dummy_o = batch.q[:1]
        self.merger = SplitMerge(dev, m.q_heads, m.head_dim, prefill=(plan.n_splits_p, spec.prefill_len, self.out_p),
                                 decode=(plan.n_splits_d, spec.decode_batch, self.out_d),
                                 unsplit_out={"p": dummy_o, "d": dummy_o})
        po_p, plse_p = self.merger.partials("p")
        po_d, plse_d = self.merger.partials("d")
        kw = dict(H=m.q_heads, GROUP=m.group_size, HKV=m.kv_heads, qk_scale=spec.sm_scale * LOG2E)
        if self.do_p:
            qp, kp, vp, op = batch.q_p, batch.k_p, batch.v_p, self.out_p
            _unit_stride({"q_p": qp, "k_p": kp, "v_p": vp, "out_p": op})
            kw.update(qp_ptr=qp, kp_ptr=kp, vp_ptr=vp, op_ptr=op, pop_ptr=po_p, plsep_ptr=plse_p,
                      Lq=spec.prefill_len, Lk=spec.prefill_kv_len, n_mblocks=plan.n_mblocks,
                      n_splits_p=plan.n_splits_p, n_prefill_ctas=plan.n_prefill_ctas,
                      s_qpt=qp.stride(0), s_qph=qp.stride(1), s_kpt=kp.stride(0), s_kph=kp.stride(1),
                      s_vpt=vp.stride(0), s_vph=vp.stride(1), s_opt=op.stride(0), s_oph=op.stride(1))
        else:
            q = batch.q
            kw.update(_NO_PREFILL, qp_ptr=q, kp_ptr=q, vp_ptr=q, op_ptr=q, pop_ptr=dummy_f, plsep_ptr=dummy_f)
        if self.do_d:
            qd, kd, vd, od = batch.q_d, batch.k_d, batch.v_d, self.out_d
            _unit_stride({"q_d": qd, "k_d": kd, "v_d": vd, "out_d": od})
            kw.update(qd_ptr=qd, kd_ptr=kd, vd_ptr=vd, od_ptr=od, pod_ptr=po_d, plsed_ptr=plse_d,
                      seqlens_ptr=batch.decode_seqlens, B=spec.decode_batch, n_hblocks=plan.n_hblocks,
                      n_splits_d=plan.n_splits_d, n_decode_ctas=plan.n_decode_ctas,
                      s_qdb=qd.stride(0), s_qdh=qd.stride(1), s_kdb=kd.stride(0), s_kdt=kd.stride(1),
                      s_kdh=kd.stride(2), s_vdb=vd.stride(0), s_vdt=vd.stride(1), s_vdh=vd.stride(2),
                      s_odb=od.stride(0), s_odh=od.stride(1))
        else:
            q = batch.q
            kw.update(_NO_DECODE, qd_ptr=q, kd_ptr=q, vd_ptr=q, od_ptr=q, pod_ptr=dummy_f, plsed_ptr=dummy_f,
                      seqlens_ptr=dummy_i)
        self.kwargs = kw
        self.meta = kernel_meta(spec, plan.tiles)
        self.grid = plan.grid
        self.head_dim = m.head_dim

    def launch(self):
        if self.grid > 0:
            self._kernel[(self.grid,)](**self.kwargs, **self.meta)


    def kernel_stats(self) -> dict:
        """Registers, spills and shared memory of the compiled kernel (GPU only; compiles if needed)."""
        ck = self._kernel.warmup(**self.kwargs, grid=(max(1, self.grid),), **self.meta)
        ck._init_handles()
        return {"n_regs": ck.n_regs, "n_spills": ck.n_spills, "shared": ck.metadata.shared,
                "num_warps": ck.metadata.num_warps}

def prepare_launch(batch: HybridBatch, plan: HFusePlan) -> HFuseLaunch:
    return HFuseLaunch(batch, plan)


def aot_compile(launch: HFuseLaunch, arch: int = 90):
    """Compile ``hfuse_kernel`` for a prepared launch (its batch may live on the CPU) for CUDA
    ``sm_<arch>`` without a GPU, specialised as the JIT would (kernels/common/aot.py). Returns
    triton's CompiledKernel: ``.asm['ttgir'|'ptx'|'cubin']``, ``.metadata.shared``."""
    if arch < 90:
        raise ValueError("Gluon's warp_specialize needs sm_90+: compiling it for an older arch aborts the process "
                         "(LLVM cannot select setmaxnreg)")
    return compile_gluon(launch._kernel, {**launch.kwargs, **launch.meta}, arch)


__all__ = ["HFuseLaunch", "prepare_launch", "unavailable_reason", "aot_compile", "num_sms", "kernel_meta"]
