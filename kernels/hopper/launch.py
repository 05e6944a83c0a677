"""Launching the Hopper-native POD kernel: TMA descriptors over the harness's tensors, arguments
by name, the persistent launch, the split-KV merge (kernels/common/merge.py), availability, and
ahead-of-time compilation for sm_90a on a machine without a GPU (tests read its PTX/SASS).

Layouts (kernels/workload.py): the prefill queries ``q_p`` (Lq, H, d) are seen as a 2-D (Lq, H*d)
matrix and its keys/values ``k_p``/``v_p`` (Lk, Hkv, d) as (Lk, Hkv*d); a TMA box [rows, d] at
column ``head*d`` is one head's tile, and rows past Lq/Lk come back as zeros. The decode queries
``q_d`` (B, H, d) are (B*H, d) (a box of 16 rows from the group's first head), and the decode K/V
are the dense view of the paged pool, (B, cap, Hkv, d) -> (B*cap, Hkv*d), where request b's pages
follow request b-1's (the harness's pool, kernels/workload.py ``decode_block_table``). Where each
request's pages are contiguous but the requests lie anywhere in the pool (a serving engine's pool,
reserved at admission), the K/V descriptors cover the whole pool, (pages*page_size, Hkv*d), and
``kv_starts`` holds each request's first row (the kernel's KV_STARTS variant). Page tables whose
requests' pages are not contiguous are refused (MethodUnavailable upstream).
"""
from __future__ import annotations

import torch

from kernels.common.aot import compile_gluon
from kernels.common.merge import MergedLaunch, SplitMerge
from kernels.common.splitkv import LOG2E
from kernels.workload import HybridBatch

from .plan import BLOCK_M, DECODE_ROWS, MODE_DECODE, MODE_POD, MODE_PREFILL, HopperPlan, WG_ROWS  # noqa: F401

MIN_CAPABILITY = (9, 0)
SCHED_INTS = 4           # launch counter, done counter, 2 spare


def gluon_import_error() -> str | None:
    try:
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia.hopper import tma, warpgroup_mma  # noqa: F401
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor  # noqa: F401
        if not hasattr(gl, "warp_specialize"):
            return "this Triton's Gluon has no warp_specialize"
    except Exception as e:  # noqa: BLE001
        return f"Triton's Gluon (Hopper TMA/wgmma) is missing ({type(e).__name__}: {e}); install triton >= 3.5"
    return None


def unavailable_reason(device: torch.device, what: str = "the Hopper POD kernel") -> str | None:
    """None if ``what`` can run on ``device``: a CUDA GPU of compute capability 9.0 (sm_90a:
    wgmma, setmaxnreg; TMA) and Gluon."""
    if device.type != "cuda":
        return f"{what} runs on sm_90 CUDA GPUs only, not {device.type}"
    err = gluon_import_error()
    if err:
        return err
    if not torch.cuda.is_available():
        return f"{what} needs a CUDA GPU; none is visible"
    cap = tuple(torch.cuda.get_device_capability(device))
    if cap != MIN_CAPABILITY:
        return (f"{what} is built for sm_90a (Hopper: wgmma, setmaxnreg, TMA); this GPU is sm_{cap[0]}{cap[1]}: "
                f"use the portable Triton methods (OURS_prefill / OURS_decode / POD)")
    return None


def num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


class LayoutUnsupported(ValueError):
    """The kernel cannot take this batch's head dim, dtype or decode page layout."""


def _operands_unsupported(batch: HybridBatch) -> str | None:
    """Why wgmma cannot take this batch's head dim or dtype (None if it can)."""
    d = batch.spec.model.head_dim
    if d not in (64, 128, 256):
        return f"head_dim {d} not supported"
    if batch.q.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {batch.q.dtype} not supported (fp16/bf16 only: wgmma operands)"
    return None


def decode_kv_starts(batch: HybridBatch) -> torch.Tensor | None:
    """Each decode request's first K/V row in the pool (int32), or None where request b starts at
    row b * capacity (the dense view). Raises LayoutUnsupported where a request's pages are not
    contiguous (TMA reads each request's keys as one run of rows). One host sync: a serving engine
    prepares a launch on every hybrid iteration."""
    s = batch.spec
    bt = batch.decode_block_table().long()
    first = bt[:, 0]
    steps = torch.arange(bt.shape[1], device=bt.device)
    contiguous = (bt == first[:, None] + steps[None, :]).all()
    dense = (first == torch.arange(s.decode_batch, device=bt.device) * batch.decode_pages_per_req).all()
    contiguous, dense = torch.stack([contiguous, dense]).tolist()
    if not contiguous:
        raise LayoutUnsupported("decode pages are not contiguous per request "
                                "(TMA reads each request's keys as one run of rows)")
    return None if dense else (first * s.page_size).int()


def _gl_dtype(dt: torch.dtype):
    from triton.experimental.gluon import language as gl
    return {torch.float16: gl.float16, torch.bfloat16: gl.bfloat16}[dt]


def _desc(t2d: torch.Tensor, rows: int, d: int):
    """TMA descriptor of a 2-D tensor with a [rows, d] box in the NVMMA (swizzled) shared layout."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    layout = gl.NVMMASharedLayout.get_default_for([rows, d], _gl_dtype(t2d.dtype))
    return TensorDescriptor.from_tensor(t2d, [rows, d], layout)


def kernel_meta(plan: HopperPlan, head_dim: int, has_p: bool, has_d: bool, trace: bool = False,
                kv_starts: bool = False) -> dict:
    t = plan.tiles
    meta = dict(D=head_dim, BM=BLOCK_M, BN=t.block_n, STAGES=t.stages, BH=DECODE_ROWS, BND=t.decode_n,
                DSTAGES=t.decode_stages, HAS_P=has_p, HAS_D=has_d, CAUSAL=plan.causal, TRACE=trace,
                P_REGS=t.consumer_regs, D_REGS=t.decode_regs, L_REGS=t.producer_regs,
                PINGPONG=bool(t.pingpong and has_p), num_warps=4, maxnreg=t.launch_regs())
    if kv_starts:       # only then: the harness's launches keep their b * cap rows
        meta["KV_STARTS"] = True
    return meta


# Scalars of an absent part (its descriptors and pointers get stand-ins): never read by the kernel.
_NO_PREFILL = dict(Lq=0, Lk=0, n_mblocks=0, n_splits_p=1, n_p_items=0, s_opt=0)
_NO_DECODE = dict(B=0, n_hblocks=0, n_splits_d=1, n_d_items=0, cap=0)


class HopperLaunch(MergedLaunch):
    """Everything allocated up front; ``__call__`` launches the persistent kernel, then the merge of
    split partials when there are splits, and returns the outputs. ``kwargs`` are the kernel's
    runtime arguments by name, ``meta`` its compile-time ones. Raises LayoutUnsupported for a
    batch the kernel cannot read."""

    def __init__(self, batch: HybridBatch, plan: HopperPlan, trace: bool = False):
        from .kernel import pod_hopper_kernel

        self._kernel = pod_hopper_kernel
        spec, dev = batch.spec, batch.device
        m = spec.model
        d, H, Hkv = m.head_dim, m.q_heads, m.kv_heads
        why = _operands_unsupported(batch)
        if why:
            raise LayoutUnsupported(why)
        self.plan = plan
        t = plan.tiles
        self.do_p = t.has_prefill and spec.has_prefill
        self.do_d = t.has_decode and spec.has_decode
        self.kv_starts = decode_kv_starts(batch) if self.do_d else None
        dt = batch.q.dtype
        dummy_f = torch.empty(1, device=dev, dtype=torch.float32)
        dummy_i = torch.zeros(1, device=dev, dtype=torch.int32)
        dummy_x = torch.zeros((WG_ROWS, d), device=dev, dtype=dt)    # descriptors of an absent part
        self.out_p = torch.empty_like(batch.q_p) if self.do_p else None
        self.out_d = torch.empty_like(batch.q_d) if self.do_d else None
        dummy_o = batch.q[:1]
        self.merger = SplitMerge(dev, H, d, prefill=(plan.n_splits_p, spec.prefill_len, self.out_p),
                                 decode=(plan.n_splits_d, spec.decode_batch, self.out_d),
                                 unsplit_out={"p": dummy_o, "d": dummy_o})
        po_p, plse_p = self.merger.partials("p")
        po_d, plse_d = self.merger.partials("d")
        kw = dict(H=H, GROUP=m.group_size, HKV=Hkv)
        if self.do_p:
            qp = batch.q_p.reshape(spec.prefill_len, H * d)
            kp = batch.k_p.reshape(spec.prefill_kv_len, Hkv * d)
            vp = batch.v_p.reshape(spec.prefill_kv_len, Hkv * d)
            kw.update(qp_desc=_desc(qp, WG_ROWS, d), kp_desc=_desc(kp, t.block_n, d), vp_desc=_desc(vp, t.block_n, d),
                      op_ptr=self.out_p, pop_ptr=po_p, plsep_ptr=plse_p, Lq=spec.prefill_len,
                      Lk=spec.prefill_kv_len, n_mblocks=plan.n_mblocks, n_splits_p=plan.n_splits_p,
                      n_p_items=plan.n_prefill_items, s_opt=self.out_p.stride(0))
        else:
            kw.update(_NO_PREFILL, qp_desc=_desc(dummy_x, WG_ROWS, d), kp_desc=_desc(dummy_x, t.block_n, d),
                      vp_desc=_desc(dummy_x, t.block_n, d), op_ptr=dummy_x, pop_ptr=dummy_f, plsep_ptr=dummy_f)
        if self.do_d:
            qd = batch.q_d.reshape(spec.decode_batch * H, d)
            if self.kv_starts is None:
                cap = batch.k_d.shape[1]
                kd = batch.k_d.reshape(spec.decode_batch * cap, Hkv * d)
                vd = batch.v_d.reshape(spec.decode_batch * cap, Hkv * d)
            else:
                cap = 0
                kd = batch.k_pool.reshape(-1, Hkv * d)
                vd = batch.v_pool.reshape(-1, Hkv * d)
            kw.update(qd_desc=_desc(qd, DECODE_ROWS, d), kd_desc=_desc(kd, t.decode_n, d),
                      vd_desc=_desc(vd, t.decode_n, d), od_ptr=self.out_d, pod_ptr=po_d, plsed_ptr=plse_d,
                      seqlens_ptr=batch.decode_seqlens,
                      kv_starts_ptr=self.kv_starts if self.kv_starts is not None else dummy_i,
                      B=spec.decode_batch, n_hblocks=plan.n_hblocks,
                      n_splits_d=plan.n_splits_d, n_d_items=plan.n_decode_items, cap=cap)
        else:
            kw.update(_NO_DECODE, qd_desc=_desc(dummy_x, DECODE_ROWS, d), kd_desc=_desc(dummy_x, t.decode_n, d),
                      vd_desc=_desc(dummy_x, t.decode_n, d), od_ptr=dummy_x, pod_ptr=dummy_f, plsed_ptr=dummy_f,
                      seqlens_ptr=dummy_i, kv_starts_ptr=dummy_i)
        self.sched = torch.zeros(SCHED_INTS, device=dev, dtype=torch.int32)
        self.trace = torch.full((plan.grid,), -1, device=dev, dtype=torch.int32) if trace else dummy_i
        kw.update(qk_scale=spec.sm_scale * LOG2E, sched_ptr=self.sched, trace_ptr=self.trace)
        self.kwargs = kw
        if not (self.do_p or self.do_d):
            raise ValueError(f"a {t.mode} plan computes no part of this batch")
        self.meta = kernel_meta(plan, d, self.do_p, self.do_d, trace, kv_starts=self.kv_starts is not None)
        self.grid = plan.grid
        self.head_dim = d

    def launch(self):
        self._kernel[(self.grid,)](**self.kwargs, **self.meta)


def aot_compile(launch: HopperLaunch, arch: int = 90):
    """Compile the kernel of a prepared launch (its batch may live on the CPU) for ``sm_90a``
    without a GPU, specialised as the JIT would (kernels/common/aot.py). Returns triton's
    CompiledKernel (``.asm['ptx'|'cubin']``, ``.metadata.shared``). Never call with
    TRITON_INTERPRET=1 set."""
    if arch != 90:
        raise ValueError("the Hopper kernel targets sm_90a only")
    return compile_gluon(launch._kernel, {**launch.kwargs, **launch.meta}, arch)


__all__ = ["HopperLaunch", "aot_compile", "unavailable_reason", "num_sms", "LayoutUnsupported", "kernel_meta",
           "decode_kv_starts",
           "MODE_PREFILL", "MODE_DECODE", "MODE_POD"]
