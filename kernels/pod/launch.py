"""Host side of our POD kernel family: turn a HybridBatch and a LaunchPlan into kernel launches.

``prepare_launch`` does all allocation (outputs, split partials, scheduler counters) up front and
returns a callable that only launches, so the timed region holds kernels and nothing else.
"""
from __future__ import annotations

import math
import os

import torch
import triton
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.workload import HybridBatch

from .kernel import MODE_CTA, MODE_DECODE, MODE_POD, MODE_PREFILL, merge_kernel, pod_kernel
from .plan import LaunchPlan

LOG2E = 1.4426950408889634
MERGE_ROWS = 16


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def num_sms(device: torch.device, default: int = 8) -> int:
    """Multiprocessor count of ``device``; on the CPU (interpreter) a small stand-in."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return default


def tma_capable(device: torch.device) -> bool:
    """True on GPUs with the tensor copy engine (compute capability 9.0 and newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (9, 0)


def sm_slots(n_sms: int) -> int:
    """Size of the per-SM counter array: a power of two above the SM count."""
    return 1 << max(1, math.ceil(math.log2(n_sms + 1)))


def _kv_descriptor(kv: torch.Tensor, block_n: int) -> TensorDescriptor:
    """Tensor descriptor of a dense (Lk, Hkv, D) K or V as a 2-D (Lk, Hkv*D) matrix, one block =
    ``block_n`` keys of one head."""
    lk, hkv, d = kv.shape
    if kv.stride(2) != 1 or kv.stride(1) != d:
        raise ValueError("TMA prefill loads need each token's KV heads contiguous (dense layout)")
    return TensorDescriptor(kv, [lk, hkv * d], [kv.stride(0), 1], [block_n, d])


class _Launch:
    """The tensors and scalar arguments of one prepared launch (shared by the ways to run it)."""

    def __init__(self, batch: HybridBatch, plan: LaunchPlan, paged: bool, smid_table=None, trace=None):
        spec, dev = batch.spec, batch.device
        m = spec.model
        self.plan, self.paged, self.device = plan, paged, dev
        self.do_p = spec.has_prefill and plan.mode != MODE_DECODE
        self.do_d = spec.has_decode and plan.mode != MODE_PREFILL
        dummy_f = torch.empty(1, device=dev, dtype=torch.float32)
        dummy_i = torch.zeros(1, device=dev, dtype=torch.int32)
        self.out_p = torch.empty_like(batch.q_p) if self.do_p else torch.empty(1, 1, 1, device=dev, dtype=batch.q.dtype)
        self.out_d = torch.empty_like(batch.q_d) if self.do_d else torch.empty(1, 1, 1, device=dev, dtype=batch.q.dtype)
        sp, sd = plan.n_splits_p, plan.n_splits_d
        split_p = self.do_p and sp > 1
        split_d = self.do_d and sd > 1
        self.po_p = torch.empty((sp, spec.prefill_len, m.q_heads, m.head_dim), device=dev) if split_p else dummy_f
        self.plse_p = torch.empty((sp, spec.prefill_len, m.q_heads), device=dev) if split_p else dummy_f
        self.po_d = torch.empty((sd, spec.decode_batch, m.q_heads, m.head_dim), device=dev) if split_d else dummy_f
        self.plse_d = torch.empty((sd, spec.decode_batch, m.q_heads), device=dev) if split_d else dummy_f
        self.split_p, self.split_d = split_p, split_d

        if self.do_p:
            qp = batch.q_p
            if paged:
                kp, vp, btp = batch.k_pool, batch.v_pool, batch.prefill_block_table()
                skp = (kp.stride(0), kp.stride(1), kp.stride(2))
                svp = (vp.stride(0), vp.stride(1), vp.stride(2))
            else:
                kp, vp, btp = batch.k_p, batch.v_p, dummy_i
                skp = (0, kp.stride(0), kp.stride(1))
                svp = (0, vp.stride(0), vp.stride(1))
                if plan.prefill_tma:
                    kp, vp = (_kv_descriptor(x, plan.tiles.block_n) for x in (kp, vp))
            p_args = [qp, kp, vp, self.out_p, self.po_p, self.plse_p, btp,
                      spec.prefill_len, spec.prefill_kv_len, m.q_heads, m.group_size, plan.n_mblocks, sp,
                      spec.page_size, qp.stride(0), qp.stride(1), *skp, *svp,
                      self.out_p.stride(0), self.out_p.stride(1)]
        else:
            p_args = [batch.q, batch.k_pool, batch.v_pool, self.out_p, dummy_f, dummy_f, dummy_i,
                      0, 0, m.q_heads, m.group_size, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        if self.do_d:
            qd = batch.q_d
            if paged:
                kd, vd, btd = batch.k_pool, batch.v_pool, batch.decode_block_table()
            else:
                kd, vd, btd = batch.k_d, batch.v_d, dummy_i
            sk = (kd.stride(0), kd.stride(1), kd.stride(2))
            sv = (vd.stride(0), vd.stride(1), vd.stride(2))
            d_args = [qd, kd, vd, self.out_d, self.po_d, self.plse_d, btd, batch.decode_seqlens,
                      spec.decode_batch, m.kv_heads, plan.n_hblocks, sd, plan.n_items, spec.page_size,
                      btd.stride(0) if paged else 0, qd.stride(0), qd.stride(1), *sk, *sv,
                      self.out_d.stride(0), self.out_d.stride(1)]
        else:
            d_args = [batch.q, batch.k_pool, batch.v_pool, self.out_d, dummy_f, dummy_f, dummy_i, dummy_i,
                      0, m.kv_heads, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        self.slots = sm_slots(plan.num_sms)
        # counters start at zero once; the kernel's last CTA re-zeroes them after every launch
        self.sched = torch.zeros(3 * self.slots + 4, device=dev, dtype=torch.int32)
        self.trace = trace if trace is not None else torch.zeros(1, device=dev, dtype=torch.int64)
        self.smid_table = smid_table if smid_table is not None else dummy_i
        t = plan.tiles
        self.args = p_args + d_args + [
            spec.sm_scale * LOG2E, plan.n_prefill_ctas, plan.n_decode_ctas, plan.prefill_ratio,
            plan.decode_ratio, self.sched, self.smid_table, self.trace]
        self.meta = dict(D=m.head_dim, CAUSAL=spec.causal, BM=t.block_m, BN=t.block_n, PAGED_P=paged,
                         TMA_P=self.do_p and plan.prefill_tma and not paged,
                         BH=t.decode_rows, BN_D=t.decode_n, V=t.virtual, PAGED_D=paged, DS=t.decode_stages,
                         SM_SLOTS=self.slots,
                         USE_SMID_TABLE=smid_table is not None, INTERPRET=interpreting(),
                         TRACE=trace is not None, BINDING=plan.binding, num_warps=t.num_warps, num_stages=t.num_stages)
        if t.maxnreg and not interpreting():
            self.meta["maxnreg"] = t.maxnreg
        n_rows_p = spec.prefill_len * m.q_heads if split_p else 0
        n_rows_d = spec.decode_batch * m.q_heads if split_d else 0
        self.merge_blocks_p = triton.cdiv(n_rows_p, MERGE_ROWS)
        self.merge_grid = self.merge_blocks_p + triton.cdiv(n_rows_d, MERGE_ROWS)
        self.merge_args = [self.po_p, self.plse_p, self.out_p, n_rows_p, sp,
                           self.po_d, self.plse_d, self.out_d, n_rows_d, sd, self.merge_blocks_p]

    def launch(self, mode: int, grid: int):
        if grid > 0:
            pod_kernel[(grid,)](*self.args, MODE=mode, **self.meta)

    def merge(self):
        if self.merge_grid:
            merge_kernel[(self.merge_grid,)](*self.merge_args, D=self.meta["D"], BR=MERGE_ROWS, num_warps=4)

    def outputs(self) -> dict:
        out = {}
        if self.do_p:
            out["prefill"] = self.out_p
        if self.do_d:
            out["decode"] = self.out_d
        return out


def prepare_launch(batch: HybridBatch, plan: LaunchPlan, paged: bool = False,
                   smid_table: torch.Tensor | None = None, trace: torch.Tensor | None = None):
    """Allocate everything for ``plan`` and return a zero-argument callable running it: mode 0 or 1
    runs one part, 2 and 3 both parts in one launch (plus the split merge when there are splits).
    ``smid_table`` replaces %smid per CTA (tests); ``trace`` (int64, grid x 5) records each CTA's
    op, logical CTA, SM, start and end time (ns)."""
    L = _Launch(batch, plan, paged, smid_table, trace)
    grid = plan.n_prefill_ctas + plan.n_decode_ctas
    if plan.mode == MODE_PREFILL:
        grid = plan.n_prefill_ctas
    elif plan.mode == MODE_DECODE:
        grid = plan.n_decode_ctas

    def run():
        L.launch(plan.mode, grid)
        L.merge()
        return L.outputs()

    run.launch_state = L
    return run


def prepare_serial(batch: HybridBatch, plan_p: LaunchPlan, plan_d: LaunchPlan, paged: bool = False,
                   streams: bool = False):
    """Prefill launch then decode launch (own tiles each), on one stream or on two streams. The
    callable's ``launch_states`` are the two launches' states (one launch has ``launch_state``)."""
    run_p = prepare_launch(batch, plan_p, paged)
    run_d = prepare_launch(batch, plan_d, paged)
    states = (run_p.launch_state, run_d.launch_state)
    if not streams:
        def run():
            out = run_p()
            out.update(run_d())
            return out
        run.launch_states = states
        return run
    if batch.device.type != "cuda":
        raise ValueError("streams need a CUDA device")
    s_p, s_d = torch.cuda.Stream(batch.device), torch.cuda.Stream(batch.device)

    def run_streams():
        main = torch.cuda.current_stream(batch.device)
        s_p.wait_stream(main)
        s_d.wait_stream(main)
        with torch.cuda.stream(s_p):
            out = run_p()
        with torch.cuda.stream(s_d):
            out.update(run_d())
        main.wait_stream(s_p)
        main.wait_stream(s_d)
        return out
    run_streams.launch_states = states
    return run_streams


__all__ = ["prepare_launch", "prepare_serial", "num_sms", "interpreting", "tma_capable", "MODE_PREFILL", "MODE_DECODE",
           "MODE_CTA", "MODE_POD"]
