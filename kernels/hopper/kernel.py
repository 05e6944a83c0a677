"""Gluon device code of the Hopper-native POD kernel (sm_90a).

One persistent CTA per SM (two for decode alone) holds up to two pipelines, each a producer warp
that only issues TMA copies into a ring of shared-memory stages guarded by mbarriers, and consumer
warps that only compute:

  * prefill (FA3's structure): 2 consumer warpgroups of 64 query rows each (a 128-row item),
    S = Q K^T and O += P V with asynchronous wgmma (Q, K, V from shared memory, P from registers);
    in steady state the QK^T of key block j+1 and the PV of block j are in flight together while
    the softmax of block j+1 runs (``warpgroup_mma_wait(1)``), so the softmax overlaps the tensor
    cores. Registers are redistributed with setmaxnreg (consumers up, producer down). With
    PINGPONG the two warpgroups also take turns issuing their wgmma (``_turn_wait``/``_turn_pass``).
  * decode (memory-bound): 1 consumer warpgroup, the GQA group's query heads as 16 rows of
    mma.sync tiles over a K/V ring that its producer warp keeps DSTAGES deep in TMA copies, so
    each SM keeps HBM reads in flight while its prefill warpgroups keep the tensor cores busy.

Both pipelines walk their items ``rank, rank + grid, ...`` (kernels/hopper/plan.py), where the
CTA's rank is its launch order. A producer and its consumers each keep a running count of K/V
blocks across items, which gives every block its ring stage and mbarrier phase; Q tiles have a
single buffer with its own ready/empty barriers. Softmax is in base 2 (scale folded with log2 e);
split-KV partials are normalised outputs + base-2 LSE, merged by kernels.common.merge.merge_kernel.

Tails: TMA zero-fills rows past a descriptor's extent (the prefill chunk's queries and keys, the
decode queries), masks set scores of keys past the length (and above the causal diagonal) to
-inf, rows of decode V past a request's length are zeroed in registers (the paged pool there may
hold anything), and stores are masked to the valid rows.
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

WG_ROWS = gl.constexpr(64)  # rows of one prefill consumer warpgroup (wgmma M)
KC = gl.constexpr(64)  # head-dim columns per mma.sync pass (one 128-byte swizzle row of 16-bit elements)


# ----------------------------------------------------------------------------------------------
# work-item coordinates (mirrored by kernels/hopper/plan.py: prefill_item, decode_item)
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _prefill_coords(t, H, n_mblocks, n_splits, Lq, Lk, BM: gl.constexpr, BN: gl.constexpr,
                    CAUSAL: gl.constexpr):
    split = t % n_splits
    r = t // n_splits
    h = r % H
    mb = n_mblocks - 1 - r // H
    if CAUSAL:
        kv_end = gl.minimum(Lk, Lk - Lq + (mb + 1) * BM)
    else:
        kv_end = Lk
    n_blocks = gl.cdiv(kv_end, BN)
    per = gl.cdiv(n_blocks, n_splits)
    lo = split * per
    hi = gl.maximum(gl.minimum(lo + per, n_blocks), lo)
    return h, mb, split, lo, hi


@gluon.jit
def _decode_coords(i, seqlens_ptr, HKV, n_hblocks, n_splits, BND: gl.constexpr):
    split = i % n_splits
    r = i // n_splits
    hb = r % n_hblocks
    r = r // n_hblocks
    kvh = r % HKV
    b = r // HKV
    L = gl.load(seqlens_ptr + b)
    n_blocks = gl.cdiv(L, BND)
    per = gl.cdiv(n_blocks, n_splits)
    lo = split * per
    hi = gl.maximum(gl.minimum(lo + per, n_blocks), lo)
    return b, kvh, hb, split, L, lo, hi


# ----------------------------------------------------------------------------------------------
# prefill pipeline
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _load_kv_block(desc, row, col, bufs, ready, empty, k, STAGES: gl.constexpr):
    """TMA of one K or V block (the k-th of its ring) once the consumers released its stage."""
    s = k % STAGES
    mbarrier.wait(empty.index(s), ((k // STAGES) & 1) ^ 1)
    mbarrier.expect(ready.index(s), desc.block_type.nbytes)
    tma.async_copy_global_to_shared(desc, [row, col], ready.index(s), bufs.index(s))


@gluon.jit
def _prefill_producer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready,
                      k_empty, v_empty, rank, grid, n_items, H, GROUP, n_mblocks, n_splits, Lq, Lk,
                      D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
                      CAUSAL: gl.constexpr):
    """One warp: Q halves of each item, then its K/V blocks into the rings in the order the
    consumers use them (K_j before V_{j-1}, as FA3): K and V have their own empty barriers, so a
    K stage is refilled as soon as its QK^T has completed, a whole iteration before it is needed."""
    it = 0
    cnt = 0
    for t in range(rank, n_items, grid):
        h, mb, split, lo, hi = _prefill_coords(t, H, n_mblocks, n_splits, Lq, Lk, BM, BN, CAUSAL)
        kv_col = (h // GROUP) * D
        # the consumers release Q after their last QK^T of the previous item
        mbarrier.wait(q_empty, (cnt & 1) ^ 1)
        mbarrier.expect(q_ready, 2 * q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [mb * BM, h * D], q_ready, q_smem.index(0))
        tma.async_copy_global_to_shared(q_desc, [mb * BM + WG_ROWS, h * D], q_ready, q_smem.index(1))
        if hi > lo:
            _load_kv_block(k_desc, lo * BN, kv_col, k_bufs, k_ready, k_empty, it, STAGES)
            for j in range(lo + 1, hi):
                k = it + j - lo
                _load_kv_block(k_desc, j * BN, kv_col, k_bufs, k_ready, k_empty, k, STAGES)
                _load_kv_block(v_desc, (j - 1) * BN, kv_col, v_bufs, v_ready, v_empty, k - 1, STAGES)
            _load_kv_block(v_desc, (hi - 1) * BN, kv_col, v_bufs, v_ready, v_empty, it + hi - lo - 1, STAGES)
            it += hi - lo
        cnt += 1


@gluon.jit
def _softmax_step(s, m_i, l_i, j, full_blocks, diag, Lk, qk_scale, COL: gl.constexpr, BN: gl.constexpr,
                  CAUSAL: gl.constexpr):
    """Online softmax (base 2) of one block of raw scores ``s``: returns (p, alpha, m_new, l_new)."""
    if j >= full_blocks:
        cols = j * BN + gl.arange(0, BN, layout=COL)
        ok = (cols < Lk)[None, :]
        if CAUSAL:
            ok = ok & (cols[None, :] <= diag[:, None])
        s = gl.where(ok, s, float("-inf"))
    # the scale is positive, so the row max of raw scores scales to the max of scaled ones; the
    # exponent s * scale - m is then one FFMA per score (FA3's form) instead of a multiply and a sub
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    # a row may have seen no key yet: keep exp2 away from (-inf) - (-inf)
    m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
    p = gl.exp2(s * qk_scale - m_use[:, None])
    alpha = gl.exp2(m_i - m_use)
    l_new = l_i * alpha + gl.sum(p, 1)
    return p, alpha, m_new, l_new


@gluon.jit
def _store_rows(acc, m_i, l_i, o_base, o_row_stride, po_ptr, plse_ptr, rows, part_rows, row_ok, is_split,
                LAYOUT: gl.constexpr, D: gl.constexpr):
    """Normalise and store rows (``rows`` x ``o_row_stride`` from ``o_base``), or, for a KV split,
    fp32 partials and base-2 LSE at ``part_rows`` of the (split, row, head) partial buffers."""
    COL: gl.constexpr = gl.SliceLayout(0, LAYOUT)
    offs_d = gl.arange(0, D, layout=COL)
    l_safe = gl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    mask = row_ok[:, None] & (offs_d < D)[None, :]
    if is_split:
        prow = part_rows.to(gl.int64)
        gl.store(po_ptr + prow[:, None] * D + offs_d[None, :], o, mask=mask)
        lse = gl.where(l_i == 0.0, float("-inf"), m_i + gl.log2(l_safe))
        gl.store(plse_ptr + prow, lse, mask=row_ok)
    else:
        orow = rows.to(gl.int64) * o_row_stride
        gl.store(o_base + orow[:, None] + offs_d[None, :], o.to(o_base.dtype.element_ty), mask=mask)


@gluon.jit
def _turn_wait(turns, k, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Ping-pong (FA3's warp-scheduler barrier): before issuing its k-th batch of wgmma, a prefill
    warpgroup waits until the other one has issued its own previous batch, so the two alternate on
    the tensor cores and one's softmax runs while the other's GEMMs do. Warpgroup 0 goes first:
    its wait at k = 0 asks for the phase before the barrier's first, which counts as complete."""
    if PINGPONG:
        if WG == 0:
            mbarrier.wait(turns.index(0), (k & 1) ^ 1)
        else:
            mbarrier.wait(turns.index(1), k & 1)


@gluon.jit
def _turn_pass(turns, WG: gl.constexpr, PINGPONG: gl.constexpr):
    """Hand the tensor cores to the other prefill warpgroup (see _turn_wait)."""
    if PINGPONG:
        mbarrier.arrive(turns.index(1 - WG), count=1)


@gluon.jit
def _prefill_consumer(q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, k_empty, v_empty, turns,
                      o_ptr, po_ptr, plse_ptr, s_ot, rank, grid, n_items, H, n_mblocks, n_splits, Lq, Lk, qk_scale,
                      WG: gl.constexpr, D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                      STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr):
    """One warpgroup: rows WG*64 .. WG*64+63 of every item of this CTA's prefill queue."""
    dtype: gl.constexpr = q_smem.dtype
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BN, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, D, 16])
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    ROW: gl.constexpr = gl.SliceLayout(1, S_L)
    COL: gl.constexpr = gl.SliceLayout(0, S_L)
    ROW_O: gl.constexpr = gl.SliceLayout(1, O_L)
    q = q_smem.index(WG)
    s0 = gl.zeros([WG_ROWS, BN], gl.float32, S_L)
    it = 0
    cnt = 0
    tk = 0      # wgmma batches issued so far (the same sequence in both warpgroups)
    for t in range(rank, n_items, grid):
        h, mb, split, lo, hi = _prefill_coords(t, H, n_mblocks, n_splits, Lq, Lk, BM, BN, CAUSAL)
        row0 = mb * BM + WG * WG_ROWS
        diag = Lk - Lq + row0 + gl.arange(0, WG_ROWS, layout=ROW)   # row i sees keys <= Lk - Lq + i
        if CAUSAL:
            full_blocks = gl.minimum(Lk - Lq + row0 + 1, Lk) // BN      # blocks every row sees whole
        else:
            full_blocks = Lk // BN
        n = hi - lo
        m_i = gl.full([WG_ROWS], float("-inf"), gl.float32, ROW)
        l_i = gl.zeros([WG_ROWS], gl.float32, ROW)
        acc = gl.zeros([WG_ROWS, D], gl.float32, O_L)
        mbarrier.wait(q_ready, cnt & 1)
        if n > 0:
            st = it % STAGES
            mbarrier.wait(k_ready.index(st), (it // STAGES) & 1)
            _turn_wait(turns, tk, WG, PINGPONG)
            s = warpgroup_mma(q, k_bufs.index(st).permute((1, 0)), s0, use_acc=False, is_async=True)
            _turn_pass(turns, WG, PINGPONG)
            tk += 1
            s = warpgroup_mma_wait(0, deps=(s,))
            mbarrier.arrive(k_empty.index(st), count=1)
            p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, lo, full_blocks, diag, Lk, qk_scale, COL, BN, CAUSAL)
            p16 = gl.convert_layout(p.to(dtype), P_L)
            for jj in range(1, n):
                cur = it + jj
                stn = cur % STAGES
                stp = (cur - 1) % STAGES
                # S_{j} = Q K_j^T and O += P_{j-1} V_{j-1} in flight together
                mbarrier.wait(k_ready.index(stn), (cur // STAGES) & 1)
                _turn_wait(turns, tk, WG, PINGPONG)
                s = warpgroup_mma(q, k_bufs.index(stn).permute((1, 0)), s0, use_acc=False, is_async=True)
                # O's rescale for block j-1 runs while QK^T does (FA3's order), not between two GEMMs
                acc = acc * gl.convert_layout(alpha, ROW_O)[:, None]
                mbarrier.wait(v_ready.index(stp), ((cur - 1) // STAGES) & 1)
                acc = warpgroup_mma(p16, v_bufs.index(stp), acc, is_async=True)
                _turn_pass(turns, WG, PINGPONG)
                tk += 1
                s = warpgroup_mma_wait(1, deps=(s,))
                # K_j is consumed: its stage refills during this softmax and the PV
                mbarrier.arrive(k_empty.index(stn), count=1)
                # softmax of block j while PV_{j-1} runs on the tensor cores
                p, alpha, m_i, l_i = _softmax_step(s, m_i, l_i, lo + jj, full_blocks, diag, Lk, qk_scale,
                                                   COL, BN, CAUSAL)
                p16n = gl.convert_layout(p.to(dtype), P_L)
                acc = warpgroup_mma_wait(0, deps=(acc,))
                mbarrier.arrive(v_empty.index(stp), count=1)
                p16 = p16n
            # every QK^T of the item has completed: Q's buffer may take the next item's (released
            # here, once per item, not inside the loop: each arrive costs a warpgroup barrier)
            mbarrier.arrive(q_empty, count=1)
            last = it + n - 1
            stl = last % STAGES
            acc = acc * gl.convert_layout(alpha, ROW_O)[:, None]
            mbarrier.wait(v_ready.index(stl), (last // STAGES) & 1)
            _turn_wait(turns, tk, WG, PINGPONG)
            acc = warpgroup_mma(p16, v_bufs.index(stl), acc, is_async=True)
            _turn_pass(turns, WG, PINGPONG)
            tk += 1
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(v_empty.index(stl), count=1)
            it += n
        else:
            mbarrier.arrive(q_empty, count=1)   # an empty split: Q unused, partial = (0, -inf)
        rows = row0 + gl.arange(0, WG_ROWS, layout=ROW_O)
        _store_rows(acc, gl.convert_layout(m_i, ROW_O), gl.convert_layout(l_i, ROW_O),
                    o_ptr + h * D, s_ot, po_ptr, plse_ptr, rows, (split * Lq + rows) * H + h, rows < Lq,
                    n_splits > 1, O_L, D)
        cnt += 1


# ----------------------------------------------------------------------------------------------
# decode pipeline
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _decode_producer(q_desc, k_desc, v_desc, q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready,
                     kv_empty, seqlens_ptr, kv_starts_ptr, rank, grid, n_items, H, GROUP, HKV, n_hblocks, n_splits,
                     cap, D: gl.constexpr, BH: gl.constexpr, BND: gl.constexpr, STAGES: gl.constexpr,
                     KV_STARTS: gl.constexpr):
    """One warp: the group's query rows of each item, then its K/V blocks into the ring. A
    request's keys start at row b * cap of the K/V descriptors, or (KV_STARTS) at the row
    kv_starts[b] names (a serving pool: each request's pages contiguous, the requests anywhere)."""
    it = 0
    cnt = 0
    for i in range(rank, n_items, grid):
        b, kvh, hb, split, L, lo, hi = _decode_coords(i, seqlens_ptr, HKV, n_hblocks, n_splits, BND)
        if KV_STARTS:
            kv_row = gl.load(kv_starts_ptr + b)
        else:
            kv_row = b * cap
        mbarrier.wait(q_empty, (cnt & 1) ^ 1)
        mbarrier.expect(q_ready, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b * H + kvh * GROUP + hb * BH, 0], q_ready, q_smem)
        for j in range(lo, hi):
            s = it % STAGES
            ph = (it // STAGES) & 1
            mbarrier.wait(kv_empty.index(s), ph ^ 1)
            mbarrier.expect(k_ready.index(s), k_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [kv_row + j * BND, kvh * D], k_ready.index(s), k_bufs.index(s))
            mbarrier.expect(v_ready.index(s), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [kv_row + j * BND, kvh * D], v_ready.index(s), v_bufs.index(s))
            it += 1
        cnt += 1


@gluon.jit
def _decode_consumer(q_smem, k_bufs, v_bufs, q_ready, q_empty, k_ready, v_ready, kv_empty,
                     o_ptr, po_ptr, plse_ptr, seqlens_ptr, rank, grid, n_items, B, H, GROUP, HKV, n_hblocks,
                     n_splits, qk_scale,
                     D: gl.constexpr, BH: gl.constexpr, BND: gl.constexpr, STAGES: gl.constexpr):
    """One warpgroup: every item of this CTA's decode queue with mma.sync on 16-row tiles."""
    dtype: gl.constexpr = q_smem.dtype
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 4], instr_shape=[16, 8])
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_OP: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    COL: gl.constexpr = gl.SliceLayout(0, MMA)
    VROW: gl.constexpr = gl.SliceLayout(1, B_OP)
    it = 0
    cnt = 0
    for i in range(rank, n_items, grid):
        b, kvh, hb, split, L, lo, hi = _decode_coords(i, seqlens_ptr, HKV, n_hblocks, n_splits, BND)
        m_i = gl.full([BH], float("-inf"), gl.float32, ROW)
        l_i = gl.zeros([BH], gl.float32, ROW)
        acc = gl.zeros([BH, D], gl.float32, MMA)
        mbarrier.wait(q_ready, cnt & 1)
        for j in range(lo, hi):
            st = it % STAGES
            ph = (it // STAGES) & 1
            mbarrier.wait(k_ready.index(st), ph)
            k_tile = k_bufs.index(st)
            s = gl.zeros([BH, BND], gl.float32, MMA)
            for kk in gl.static_range(D // KC):
                a = q_smem.slice(kk * KC, KC, 1).load(A_OP)
                kb = k_tile.slice(kk * KC, KC, 1).permute((1, 0)).load(B_OP)
                s = mma_v2(a, kb, s)
            s = s * qk_scale
            tail = (j + 1) * BND > L
            if tail:
                cols = j * BND + gl.arange(0, BND, layout=COL)
                s = gl.where((cols < L)[None, :], s, float("-inf"))
            m_new = gl.maximum(m_i, gl.max(s, 1))
            m_use = gl.where(m_new == float("-inf"), 0.0, m_new)
            p = gl.exp2(s - m_use[:, None])
            alpha = gl.exp2(m_i - m_use)
            l_i = l_i * alpha + gl.sum(p, 1)
            m_i = m_new
            acc = acc * alpha[:, None]
            mbarrier.wait(v_ready.index(st), ph)
            v = v_bufs.index(st).load(B_OP)
            if tail:
                # keys past L belong to the pool's unused slots: their V may be anything (even NaN)
                vr = j * BND + gl.arange(0, BND, layout=VROW)
                v = gl.where((vr < L)[:, None], v, gl.zeros_like(v))
            acc = mma_v2(gl.convert_layout(p.to(dtype), A_OP), v, acc)
            # K and V of this stage are in registers now (the arrive waits for the whole warpgroup)
            mbarrier.arrive(kv_empty.index(st), count=1)
            it += 1
        mbarrier.arrive(q_empty, count=1)
        hr = hb * BH + gl.arange(0, BH, layout=ROW)     # query head within the GQA group
        hq = kvh * GROUP + hr
        _store_rows(acc, m_i, l_i, o_ptr + b.to(gl.int64) * H * D + kvh * GROUP * D, D, po_ptr, plse_ptr,
                    hr, (split * B + b) * H + hq, hr < GROUP, n_splits > 1, MMA, D)
        cnt += 1


# ----------------------------------------------------------------------------------------------
# the persistent kernel
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _take_rank(sched_ptr, trace_ptr, TRACE: gl.constexpr):
    """Launch-order rank of this CTA (scalar atomic on the launch counter); with TRACE, records
    the CTA's SM (%smid) under its rank."""
    rank = gl.atomic_add(sched_ptr, 1)
    if TRACE:
        smid = gl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=gl.int32, is_pure=True, pack=1)
        gl.store(trace_ptr + rank, smid)
    return rank


@gluon.jit
def _release_rank(sched_ptr, grid):
    """The last CTA to finish resets the launch and done counters for the next launch."""
    done = gl.atomic_add(sched_ptr + 1, 1)
    if done == grid - 1:
        gl.atomic_xchg(sched_ptr, 0)
        gl.atomic_xchg(sched_ptr + 1, 0)


@gluon.jit(do_not_specialize=["Lq", "Lk", "n_mblocks", "n_splits_p", "n_p_items", "B", "n_hblocks",
                              "n_splits_d", "n_d_items", "cap"])
def pod_hopper_kernel(
    # prefill: Q (Lq, H*D), K/V (Lk, Hkv*D) as 2-D TMA descriptors; output (Lq, H, D)
    qp_desc, kp_desc, vp_desc, op_ptr, pop_ptr, plsep_ptr,
    Lq, Lk, H, GROUP, n_mblocks, n_splits_p, n_p_items, s_opt,
    # decode: Q (B*H, D), K/V (B*cap, Hkv*D) as 2-D TMA descriptors, or with KV_STARTS the whole
    # pool's (tokens, Hkv*D) and each request's first row in kv_starts_ptr; output (B, H, D)
    qd_desc, kd_desc, vd_desc, od_ptr, pod_ptr, plsed_ptr, seqlens_ptr, kv_starts_ptr,
    B, HKV, n_hblocks, n_splits_d, n_d_items, cap,
    qk_scale, sched_ptr, trace_ptr,
    D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
    BH: gl.constexpr, BND: gl.constexpr, DSTAGES: gl.constexpr,
    HAS_P: gl.constexpr, HAS_D: gl.constexpr, CAUSAL: gl.constexpr, TRACE: gl.constexpr,
    P_REGS: gl.constexpr, D_REGS: gl.constexpr, L_REGS: gl.constexpr, PINGPONG: gl.constexpr,
    KV_STARTS: gl.constexpr = False,
):
    """Prefill and/or decode attention of a hybrid batch; grid = persistent CTAs (plan.grid)."""
    grid = gl.num_programs(0)
    rank = _take_rank(sched_ptr, trace_ptr, TRACE)
    if HAS_P:
        dt_p: gl.constexpr = qp_desc.dtype
        q_p = gl.allocate_shared_memory(dt_p, [2, WG_ROWS, D], qp_desc.layout)
        k_p = gl.allocate_shared_memory(dt_p, [STAGES, BN, D], kp_desc.layout)
        v_p = gl.allocate_shared_memory(dt_p, [STAGES, BN, D], vp_desc.layout)
        bars_p = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        kr_p = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        vr_p = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        ke_p = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        ve_p = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        turns_p = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        mbarrier.init(bars_p.index(0), count=1)        # Q ready (TMA transaction)
        mbarrier.init(bars_p.index(1), count=2)        # Q empty (both consumer warpgroups)
        mbarrier.init(turns_p.index(0), count=1)       # ping-pong: warpgroup 0 may issue
        mbarrier.init(turns_p.index(1), count=1)       # ping-pong: warpgroup 1 may issue
        for i in gl.static_range(STAGES):
            mbarrier.init(kr_p.index(i), count=1)
            mbarrier.init(vr_p.index(i), count=1)
            mbarrier.init(ke_p.index(i), count=2)     # K stage empty (both consumer warpgroups)
            mbarrier.init(ve_p.index(i), count=2)     # V stage empty
    if HAS_D:
        dt_d: gl.constexpr = qd_desc.dtype
        q_d = gl.allocate_shared_memory(dt_d, [BH, D], qd_desc.layout)
        k_d = gl.allocate_shared_memory(dt_d, [DSTAGES, BND, D], kd_desc.layout)
        v_d = gl.allocate_shared_memory(dt_d, [DSTAGES, BND, D], vd_desc.layout)
        bars_d = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        kr_d = gl.allocate_shared_memory(gl.int64, [DSTAGES, 1], mbarrier.MBarrierLayout())
        vr_d = gl.allocate_shared_memory(gl.int64, [DSTAGES, 1], mbarrier.MBarrierLayout())
        ke_d = gl.allocate_shared_memory(gl.int64, [DSTAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(bars_d.index(0), count=1)
        mbarrier.init(bars_d.index(1), count=1)
        for i in gl.static_range(DSTAGES):
            mbarrier.init(kr_d.index(i), count=1)
            mbarrier.init(vr_d.index(i), count=1)
            mbarrier.init(ke_d.index(i), count=1)
    fence_async_shared()   # barrier initialisation visible to the copy engine

    if HAS_P and HAS_D:
        gl.warp_specialize([
            (_prefill_consumer, (q_p, k_p, v_p, bars_p.index(0), bars_p.index(1), kr_p, vr_p, ke_p, ve_p, turns_p,
                                 op_ptr, pop_ptr, plsep_ptr, s_opt, rank, grid, n_p_items, H, n_mblocks,
                                 n_splits_p, Lq, Lk, qk_scale, 0, D, BM, BN, STAGES, CAUSAL, PINGPONG)),
            (_prefill_consumer, (q_p, k_p, v_p, bars_p.index(0), bars_p.index(1), kr_p, vr_p, ke_p, ve_p, turns_p,
                                 op_ptr, pop_ptr, plsep_ptr, s_opt, rank, grid, n_p_items, H, n_mblocks,
                                 n_splits_p, Lq, Lk, qk_scale, 1, D, BM, BN, STAGES, CAUSAL, PINGPONG)),
            (_decode_consumer, (q_d, k_d, v_d, bars_d.index(0), bars_d.index(1), kr_d, vr_d, ke_d,
                                od_ptr, pod_ptr, plsed_ptr, seqlens_ptr, rank, grid, n_d_items, B, H, GROUP, HKV,
                                n_hblocks, n_splits_d, qk_scale, D, BH, BND, DSTAGES)),
            (_prefill_producer, (qp_desc, kp_desc, vp_desc, q_p, k_p, v_p, bars_p.index(0), bars_p.index(1),
                                 kr_p, vr_p, ke_p, ve_p, rank, grid, n_p_items, H, GROUP, n_mblocks, n_splits_p,
                                 Lq, Lk, D, BM, BN, STAGES, CAUSAL)),
            (_decode_producer, (qd_desc, kd_desc, vd_desc, q_d, k_d, v_d, bars_d.index(0), bars_d.index(1),
                                kr_d, vr_d, ke_d, seqlens_ptr, kv_starts_ptr, rank, grid, n_d_items, H, GROUP, HKV,
                                n_hblocks, n_splits_d, cap, D, BH, BND, DSTAGES, KV_STARTS)),
        ], [4, 4, 1, 1], [P_REGS, D_REGS, L_REGS, L_REGS])
    elif HAS_P:
        gl.warp_specialize([
            (_prefill_consumer, (q_p, k_p, v_p, bars_p.index(0), bars_p.index(1), kr_p, vr_p, ke_p, ve_p, turns_p,
                                 op_ptr, pop_ptr, plsep_ptr, s_opt, rank, grid, n_p_items, H, n_mblocks,
                                 n_splits_p, Lq, Lk, qk_scale, 0, D, BM, BN, STAGES, CAUSAL, PINGPONG)),
            (_prefill_consumer, (q_p, k_p, v_p, bars_p.index(0), bars_p.index(1), kr_p, vr_p, ke_p, ve_p, turns_p,
                                 op_ptr, pop_ptr, plsep_ptr, s_opt, rank, grid, n_p_items, H, n_mblocks,
                                 n_splits_p, Lq, Lk, qk_scale, 1, D, BM, BN, STAGES, CAUSAL, PINGPONG)),
            (_prefill_producer, (qp_desc, kp_desc, vp_desc, q_p, k_p, v_p, bars_p.index(0), bars_p.index(1),
                                 kr_p, vr_p, ke_p, ve_p, rank, grid, n_p_items, H, GROUP, n_mblocks, n_splits_p,
                                 Lq, Lk, D, BM, BN, STAGES, CAUSAL)),
        ], [4, 1], [P_REGS, L_REGS])
    else:
        gl.warp_specialize([
            (_decode_consumer, (q_d, k_d, v_d, bars_d.index(0), bars_d.index(1), kr_d, vr_d, ke_d,
                                od_ptr, pod_ptr, plsed_ptr, seqlens_ptr, rank, grid, n_d_items, B, H, GROUP, HKV,
                                n_hblocks, n_splits_d, qk_scale, D, BH, BND, DSTAGES)),
            (_decode_producer, (qd_desc, kd_desc, vd_desc, q_d, k_d, v_d, bars_d.index(0), bars_d.index(1),
                                kr_d, vr_d, ke_d, seqlens_ptr, kv_starts_ptr, rank, grid, n_d_items, H, GROUP, HKV,
                                n_hblocks, n_splits_d, cap, D, BH, BND, DSTAGES, KV_STARTS)),
        ], [1], [L_REGS])
    _release_rank(sched_ptr, grid)
