"""Host side of our POD kernel family: turn a HybridBatch and a LaunchPlan into kernel launches.

``prepare_launch`` does all allocation (outputs, split partials, scheduler counters) up front and
returns a callable that only launches, so the timed region holds kernels and nothing else.
"""
from __future__ import annotations

import math
import os

import torch
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels.common.merge import MERGE_ROWS, MergedLaunch, SplitMerge, merge_kernel  # noqa: F401
from kernels.common.splitkv import LOG2E
from kernels.workload import HybridBatch

from .kernel import pod_kernel
from .plan import MODE_CTA, MODE_DECODE, MODE_POD, MODE_PREFILL, LaunchPlan


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def num_sms(device: torch.device, default: int = 8) -> int:
    """Multiprocessor count of ``device``; on the CPU (interpreter) a small stand-in."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return default


def smem_per_block(device: torch.device) -> int | None:
    """Shared memory one CTA may opt in to on ``device`` (bytes); None on the CPU or when this
    PyTorch does not report it."""
    if device.type != "cuda":
        return None
    return getattr(torch.cuda.get_device_properties(device), "shared_memory_per_block_optin", None) or None


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


# Arguments of an absent part (a mode or batch without it): never read by the kernel, but every
# parameter needs a value. The pointers get 1-element stand-ins; these are the scalars.
_NO_PREFILL = dict(Lq=0, Lk=0, n_mblocks=0, n_splits_p=1, page_size_p=1, s_qpt=0, s_qph=0, s_kpp=0, s_kpt=0,
                   s_kph=0, s_vpp=0, s_vpt=0, s_vph=0, s_opt=0, s_oph=0)
_NO_DECODE = dict(B=0, n_hblocks=0, n_splits_d=1, n_items=0, page_size_d=1, btd_stride=0, s_qdb=0, s_qdh=0,
                  s_kdp=0, s_kdt=0, s_kdh=0, s_vdp=0, s_vdt=0, s_vdh=0, s_odb=0, s_odh=0)


class PodLaunch(MergedLaunch):
    """The tensors and arguments (by name) of one prepared launch of ``pod_kernel`` and its merge.

    ``kwargs`` are the kernel's runtime arguments and ``meta`` its compile-time ones; ``args`` and
    ``merge_args`` are positional views of them (serving/backends.py re-points tensors by slot)."""

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
        self.merger = SplitMerge(dev, m.q_heads, m.head_dim,
                                 prefill=(plan.n_splits_p, spec.prefill_len, self.out_p if self.do_p else None),
                                 decode=(plan.n_splits_d, spec.decode_batch, self.out_d if self.do_d else None),
                                 unsplit_out={"p": self.out_p, "d": self.out_d})
        self.split_p, self.split_d = self.merger.split_p, self.merger.split_d
        po_p, plse_p = self.merger.partials("p")
        po_d, plse_d = self.merger.partials("d")
        kw = dict(H=m.q_heads, GROUP=m.group_size, HKV=m.kv_heads)

        if self.do_p:
            qp = batch.q_p
            if paged:
                kp, vp, btp = batch.k_pool, batch.v_pool, batch.prefill_block_table()
                s_kpp, s_kpt, s_kph = kp.stride(0), kp.stride(1), kp.stride(2)
                s_vpp, s_vpt, s_vph = vp.stride(0), vp.stride(1), vp.stride(2)
            else:
                kp, vp, btp = batch.k_p, batch.v_p, dummy_i
                s_kpp, s_kpt, s_kph = 0, kp.stride(0), kp.stride(1)
                s_vpp, s_vpt, s_vph = 0, vp.stride(0), vp.stride(1)
                if plan.prefill_tma:
                    kp, vp = (_kv_descriptor(x, plan.tiles.block_n) for x in (kp, vp))
            kw.update(qp_ptr=qp, kp_ptr=kp, vp_ptr=vp, op_ptr=self.out_p, pop_ptr=po_p, plsep_ptr=plse_p,
                      btp_ptr=btp, Lq=spec.prefill_len, Lk=spec.prefill_kv_len, n_mblocks=plan.n_mblocks,
                      n_splits_p=plan.n_splits_p, page_size_p=spec.page_size,
                      s_qpt=qp.stride(0), s_qph=qp.stride(1), s_kpp=s_kpp, s_kpt=s_kpt, s_kph=s_kph,
                      s_vpp=s_vpp, s_vpt=s_vpt, s_vph=s_vph,
                      s_opt=self.out_p.stride(0), s_oph=self.out_p.stride(1))
        else:
            kw.update(_NO_PREFILL, qp_ptr=batch.q, kp_ptr=batch.k_pool, vp_ptr=batch.v_pool, op_ptr=self.out_p,
                      pop_ptr=dummy_f, plsep_ptr=dummy_f, btp_ptr=dummy_i)
        if self.do_d:
            qd = batch.q_d
            if paged:
                kd, vd, btd = batch.k_pool, batch.v_pool, batch.decode_block_table()
            else:
                kd, vd, btd = batch.k_d, batch.v_d, dummy_i
            kw.update(qd_ptr=qd, kd_ptr=kd, vd_ptr=vd, od_ptr=self.out_d, pod_ptr=po_d, plsed_ptr=plse_d,
                      btd_ptr=btd, seqlens_ptr=batch.decode_seqlens, B=spec.decode_batch,
                      n_hblocks=plan.n_hblocks, n_splits_d=plan.n_splits_d, n_items=plan.n_items,
                      page_size_d=spec.page_size, btd_stride=btd.stride(0) if paged else 0,
                      s_qdb=qd.stride(0), s_qdh=qd.stride(1),
                      s_kdp=kd.stride(0), s_kdt=kd.stride(1), s_kdh=kd.stride(2),
                      s_vdp=vd.stride(0), s_vdt=vd.stride(1), s_vdh=vd.stride(2),
                      s_odb=self.out_d.stride(0), s_odh=self.out_d.stride(1))
        else:
            kw.update(_NO_DECODE, qd_ptr=batch.q, kd_ptr=batch.k_pool, vd_ptr=batch.v_pool, od_ptr=self.out_d,
                      pod_ptr=dummy_f, plsed_ptr=dummy_f, btd_ptr=dummy_i, seqlens_ptr=dummy_i)
        self.slots = sm_slots(plan.num_sms)
        # counters start at zero once; the kernel's last CTA re-zeroes them after every launch
        self.sched = torch.zeros(3 * self.slots + 4, device=dev, dtype=torch.int32)
        self.trace = trace if trace is not None else torch.zeros(1, device=dev, dtype=torch.int64)
        self.smid_table = smid_table if smid_table is not None else dummy_i
        kw.update(qk_scale=spec.sm_scale * LOG2E, n_prefill_ctas=plan.n_prefill_ctas,
                  n_decode_ctas=plan.n_decode_ctas, prefill_ratio=plan.prefill_ratio,
                  decode_ratio=plan.decode_ratio, sched_ptr=self.sched, smid_table=self.smid_table,
                  trace_ptr=self.trace)
        self.kwargs = kw
        t = plan.tiles
        self.meta = dict(D=m.head_dim, CAUSAL=spec.causal, BM=t.block_m, BN=t.block_n, PAGED_P=paged,
                         TMA_P=self.do_p and plan.prefill_tma and not paged,
                         BH=t.decode_rows, BN_D=t.decode_n, V=t.virtual, PAGED_D=paged, DS=t.decode_stages,
                         SM_SLOTS=self.slots,
                         USE_SMID_TABLE=smid_table is not None, INTERPRET=interpreting(),
                         TRACE=trace is not None, BINDING=plan.binding, num_warps=t.num_warps, num_stages=t.num_stages)
        if t.maxnreg and not interpreting():
            self.meta["maxnreg"] = t.maxnreg
        # CTAs of a launch in the plan's mode: one part's in MODE_PREFILL/MODE_DECODE, else both
        self.grid = {MODE_PREFILL: plan.n_prefill_ctas, MODE_DECODE: plan.n_decode_ctas}.get(
            plan.mode, plan.n_prefill_ctas + plan.n_decode_ctas)

    @property
    def po_p(self):
        return self.merger.partials("p")[0]

    @property
    def po_d(self):
        return self.merger.partials("d")[0]

    def launch(self, mode: int | None = None, grid: int | None = None):
        """One launch of ``pod_kernel`` (by default in the plan's mode, with its grid)."""
        mode = self.plan.mode if mode is None else mode
        grid = self.grid if grid is None else grid
        if grid > 0:
            pod_kernel[(grid,)](**self.kwargs, MODE=mode, **self.meta)


def prepare_launch(batch: HybridBatch, plan: LaunchPlan, paged: bool = False,
                   smid_table: torch.Tensor | None = None, trace: torch.Tensor | None = None):
    """Allocate everything for ``plan`` and return a zero-argument callable running it: MODE_PREFILL
    or MODE_DECODE runs one part, MODE_CTA and MODE_POD both parts in one launch (plus the split
    merge when there are splits).
    ``smid_table`` replaces %smid per CTA (tests); ``trace`` (int64, grid x 5) records each CTA's
    op, logical CTA, SM, start and end time (ns)."""
    L = PodLaunch(batch, plan, paged, smid_table, trace)

    def run():
        return L()

    run.launch_state = L
    return run


def prepare_serial(batch: HybridBatch, plan_p: LaunchPlan | None, plan_d: LaunchPlan, paged: bool = False,
                   streams: bool = False, run_p=None):
    """Prefill launch then decode launch (own tiles each), on one stream or on two streams.
    ``run_p``, a prepared prefill callable of another kernel (the Gluon Hopper prefill), replaces
    ``plan_p``'s. The callable's ``launch_states`` are the states of this family's launches in it
    (one launch has ``launch_state``); its ``parts`` are the two prepared callables, in launch order."""
    if run_p is None:
        run_p = prepare_launch(batch, plan_p, paged)
    run_d = prepare_launch(batch, plan_d, paged)
    states = tuple(r.launch_state for r in (run_p, run_d) if hasattr(r, "launch_state"))
    if not streams:
        def run():
            out = run_p()
            out.update(run_d())
            return out
        run.launch_states, run.parts = states, (run_p, run_d)
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
    run_streams.launch_states, run_streams.parts = states, (run_p, run_d)
    return run_streams


__all__ = ["PodLaunch", "prepare_launch", "prepare_serial", "num_sms", "interpreting", "tma_capable", "MODE_PREFILL", "MODE_DECODE",
           "MODE_CTA", "MODE_POD"]
