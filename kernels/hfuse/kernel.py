"""Gluon device code of HFuse: one CTA, two warp groups, two different programs.

HFuse-style warp-parallel (horizontal) fusion, as the paper's FA_HFuse baseline: warps 0-3 of a
CTA (Gluon's *default partition*) run a prefill attention tile and warps 4-7 (one *worker
partition*) run a decode attention tile. Each warp group synchronises only with itself, through a
named barrier (``bar.sync id, 128``), never a CTA-wide ``__syncthreads``; each owns its shared memory (the CTA
holds the sum of both); CTA ``i`` runs prefill tile ``i`` and decode work item ``i``, so the grid is
max(prefill CTAs, decode CTAs) and a CTA whose index is past one side's count leaves that side's
warps idle until the other side finishes (the CTA ends when both groups have).

Why Gluon: a Triton (``tl``) kernel runs the same program in every warp of a CTA, so Triton cannot
express "these warps do prefill, those do decode" (our Triton POD kernel binds whole CTAs instead).
Gluon's ``gl.warp_specialize`` gives each partition its own code, warp count and register budget
(``setmaxnreg``), and lowers the barriers inside a partition to named barriers over that
partition's threads only. In the sm_90 PTX (triton 3.6; checked by tests/test_hfuse.py) the
prefill warps synchronise with ``bar.sync 0, 128``, the decode warps with ``bar.sync 2, 128``,
and the only CTA-wide barrier, ``barrier.sync 1``, is Gluon's hand-shake where the two partitions
start and end. Gluon's warp-specialisation lowering needs sm_90 (Hopper): it always emits
``setmaxnreg``.

The tile logic mirrors kernels/pod/kernel.py: prefill = BM query rows of one head over one KV
split, causal bottom-right, online softmax in base 2, split partials merged by LSE in a second
launch (kernels.common.merge.merge_kernel); decode = the GQA group's query heads packed into the rows
of one tile (one query token per request), over one KV split. The matrix products are
``mma.sync`` (Gluon's ``mma_v2``, the instructions FA2 uses), operands read from shared memory
filled by ``cp.async`` through a ring of ``STAGES`` buffers (K and V of one key block per stage).
"""
from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp
from triton.experimental.gluon.language.nvidia.ampere import mma_v2


# ----------------------------------------------------------------------------------------------
# layouts (evaluated at compile time)
# ----------------------------------------------------------------------------------------------
@gluon.constexpr_function
def load_layout(head_dim, num_warps):
    """Blocked layout of a [rows, head_dim] tile for 16-byte cp.async copies (8 x 16-bit)."""
    td = min(32, head_dim // 8)
    return gl.BlockedLayout([1, 8], [32 // td, td], [num_warps, 1], [1, 0])


@gluon.constexpr_function
def mma_layout(rows, num_warps):
    """mma.sync (v2) accumulator layout: warps along the rows as far as the rows allow (16 rows a
    warp), the rest along the columns (decode tiles of 16 rows: 1 x 4 warps)."""
    wm = max(1, min(num_warps, rows // 16))
    return gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[wm, num_warps // wm],
                                     instr_shape=[16, 8])


@gluon.constexpr_function
def smem_layout(rows, head_dim, dtype):
    """Swizzled shared layout of a [rows, head_dim] operand tile (bank-conflict-free ldmatrix)."""
    return gl.NVMMASharedLayout.get_default_for([rows, head_dim], dtype)


# ----------------------------------------------------------------------------------------------
# shared pieces of both sides
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _copy_rows(smem, base, rows, row_stride, row_ok, LOAD: gl.constexpr, D: gl.constexpr):
    """cp.async rows ``rows`` (SliceLayout(1, LOAD)) of a [*, D] matrix at ``base`` into ``smem``;
    rows with ``row_ok`` false are not read and land as zeros."""
    offs_d = gl.arange(0, D, layout=gl.SliceLayout(0, LOAD))
    safe = gl.where(row_ok, rows, 0)
    ptrs = base + (safe * row_stride)[:, None] + offs_d[None, :]
    mask = row_ok[:, None] & (offs_d < D)[None, :]
    cp.async_copy_global_to_shared(smem, ptrs, mask=mask)


@gluon.jit
def _issue_kv(k_dst, v_dst, k_base, v_base, nb, hi, kv_len, s_kt, s_vt,
              LOAD: gl.constexpr, BN: gl.constexpr, D: gl.constexpr):
    """Start copying key block ``nb`` (keys nb*BN ..) of K and V; nothing is read when nb >= hi."""
    pos = nb * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, LOAD))
    ok = (pos < kv_len) & (nb < hi)
    _copy_rows(k_dst, k_base, pos, s_kt, ok, LOAD, D)
    _copy_rows(v_dst, v_base, pos, s_vt, ok, LOAD, D)


@gluon.jit
def _attend(q_smem, k_bufs, v_bufs, k_base, v_base, s_kt, s_vt, lo, hi, kv_len, full_blocks, diag,
            qk_scale, MMA: gl.constexpr, LOAD: gl.constexpr, BR: gl.constexpr, BN: gl.constexpr,
            D: gl.constexpr, KC: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """Online-softmax attention of the BR query rows in ``q_smem`` over key blocks [lo, hi).

    Blocks from ``full_blocks`` on are masked (key < kv_len, and key <= diag[row] if CAUSAL).
    K/V blocks stream through a ring of STAGES shared buffers: block j+STAGES-1 is in flight while
    block j is computed. Returns (acc, m, l): unnormalised output, running max (base 2), sum."""
    dtype: gl.constexpr = q_smem.dtype
    A_OP: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_OP: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    COL: gl.constexpr = gl.SliceLayout(0, MMA)

    m_i = gl.full([BR], float("-inf"), gl.float32, ROW)
    l_i = gl.zeros([BR], gl.float32, ROW)
    acc = gl.zeros([BR, D], gl.float32, MMA)
    for i in gl.static_range(STAGES - 1):  # prologue: the first STAGES-1 blocks in flight
        _issue_kv(k_bufs.index(i), v_bufs.index(i), k_base, v_base, lo + i, hi, kv_len, s_kt, s_vt, LOAD, BN, D)
        cp.commit_group()
    for nb in range(lo, hi):
        j = nb - lo
        nxt = (j + STAGES - 1) % STAGES
        _issue_kv(k_bufs.index(nxt), v_bufs.index(nxt), k_base, v_base, nb + STAGES - 1, hi, kv_len,
                  s_kt, s_vt, LOAD, BN, D)
        cp.commit_group()          # always one group per block, even an empty one, so that
        cp.wait_group(STAGES - 1)  # waiting for all but the newest STAGES-1 means block nb is in
        k_tile = k_bufs.index(j % STAGES)
        v_tile = v_bufs.index(j % STAGES)

        s = gl.zeros([BR, BN], gl.float32, MMA)
        for kk in gl.static_range(D // KC):  # S = Q K^T, KC columns of the head dim at a time
            a = q_smem.slice(kk * KC, KC, 1).load(A_OP)
            b = k_tile.slice(kk * KC, KC, 1).permute((1, 0)).load(B_OP)
            s = mma_v2(a, b, s)
        s = s * qk_scale
        if nb >= full_blocks:
            cols = nb * BN + gl.arange(0, BN, layout=COL)
            ok = (cols < kv_len)[None, :]
            if CAUSAL:
                ok = ok & (cols[None, :] <= diag[:, None])
            s = gl.where(ok, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, 1))
        # a row may see no key in this block: keep exp2 away from (-inf) - (-inf)
        m_new = gl.where(m_new == float("-inf"), 0.0, m_new)
        p = gl.exp2(s - m_new[:, None])
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.sum(p, 1)
        acc = acc * alpha[:, None]
        p_op = gl.convert_layout(p.to(dtype), A_OP)
        acc = mma_v2(p_op, v_tile.load(B_OP), acc)
        m_i = m_new
    cp.wait_group(0)  # the trailing (empty) groups: nothing may still write our buffers
    return acc, m_i, l_i


@gluon.jit
def _store_out(acc, m_i, l_i, o_base, o_row_stride, po_ptr, plse_ptr, rows, part_rows, row_ok, is_split,
               MMA: gl.constexpr, D: gl.constexpr):
    """Normalise and store: into the output (rows ``rows``, stride ``o_row_stride`` from
    ``o_base``) when not split, else fp32 partials and base-2 LSE at partial rows ``part_rows``."""
    COL: gl.constexpr = gl.SliceLayout(0, MMA)
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


# ----------------------------------------------------------------------------------------------
# the two partitions
# ----------------------------------------------------------------------------------------------
@gluon.jit
def _prefill_partition(qp_ptr, kp_ptr, vp_ptr, op_ptr, pop_ptr, plsep_ptr,
                       Lq, Lk, H, GROUP, n_mblocks, n_splits, n_ctas,
                       s_qt, s_qh, s_kt, s_kh, s_vt, s_vh, s_ot, s_oh, qk_scale,
                       D: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr, KC: gl.constexpr,
                       STAGES: gl.constexpr, CAUSAL: gl.constexpr):
    """Warps 0-3: prefill tile ``program_id`` (BM query rows of one head over one KV split), as
    kernels/pod/kernel.py ``_prefill_tile``; idle when program_id >= n_ctas."""
    NW: gl.constexpr = gl.num_warps()
    dtype: gl.constexpr = qp_ptr.dtype.element_ty
    LOAD: gl.constexpr = load_layout(D, NW)
    MMA: gl.constexpr = mma_layout(BM, NW)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    q_smem = gl.allocate_shared_memory(dtype, [BM, D], smem_layout(BM, D, dtype))
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BN, D], smem_layout(BN, D, dtype))
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BN, D], smem_layout(BN, D, dtype))

    tile = gl.program_id(0)
    if tile < n_ctas:
        split = tile % n_splits
        t = tile // n_splits
        h = t % H
        mb = n_mblocks - 1 - t // H  # longest causal rows first, as POD
        kvh = h // GROUP
        # Q rows of this tile -> shared memory (read again for every key block, as FA2 does)
        q_rows = mb * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, LOAD))
        _copy_rows(q_smem, qp_ptr + h * s_qh, q_rows, s_qt, q_rows < Lq, LOAD, D)
        cp.commit_group()
        if CAUSAL:
            kv_end = gl.minimum(Lk, Lk - Lq + (mb + 1) * BM)
            full_end = gl.minimum(Lk - Lq + mb * BM + 1, Lk)
        else:
            kv_end = Lk
            full_end = Lk
        n_blocks = gl.cdiv(kv_end, BN)
        per_split = gl.cdiv(n_blocks, n_splits)
        lo = split * per_split
        hi = gl.minimum(lo + per_split, n_blocks)
        full_blocks = full_end // BN
        rows = mb * BM + gl.arange(0, BM, layout=ROW)
        diag = Lk - Lq + rows  # causal bottom-right: row i sees keys <= Lk - Lq + i
        acc, m_i, l_i = _attend(q_smem, k_bufs, v_bufs, kp_ptr + kvh * s_kh, vp_ptr + kvh * s_vh, s_kt, s_vt,
                                lo, hi, Lk, full_blocks, diag, qk_scale,
                                MMA, LOAD, BM, BN, D, KC, STAGES, CAUSAL)
        part_rows = (split * Lq + rows) * H + h
        _store_out(acc, m_i, l_i, op_ptr + h * s_oh, s_ot, pop_ptr, plsep_ptr, rows, part_rows, rows < Lq,
                   n_splits > 1, MMA, D)


@gluon.jit
def _decode_partition(qd_ptr, kd_ptr, vd_ptr, od_ptr, pod_ptr, plsed_ptr, seqlens_ptr,
                      B, H, GROUP, HKV, n_hblocks, n_splits, n_ctas,
                      s_qb, s_qh, s_kb, s_kt, s_kh, s_vb, s_vt, s_vh, s_ob, s_oh, qk_scale,
                      D: gl.constexpr, BH: gl.constexpr, BN: gl.constexpr, KC: gl.constexpr,
                      STAGES: gl.constexpr):
    """Warps 4-7: decode work item ``program_id``: query heads [hb*BH, hb*BH+BH) of one KV group
    of one request (the rows of the tile), over one KV split, as kernels/pod/kernel.py
    ``_decode_item``; idle when program_id >= n_ctas."""
    NW: gl.constexpr = gl.num_warps()
    dtype: gl.constexpr = qd_ptr.dtype.element_ty
    LOAD: gl.constexpr = load_layout(D, NW)
    MMA: gl.constexpr = mma_layout(BH, NW)
    ROW: gl.constexpr = gl.SliceLayout(1, MMA)
    q_smem = gl.allocate_shared_memory(dtype, [BH, D], smem_layout(BH, D, dtype))
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BN, D], smem_layout(BN, D, dtype))
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BN, D], smem_layout(BN, D, dtype))

    item = gl.program_id(0)
    if item < n_ctas:
        split = item % n_splits
        t = item // n_splits
        hb = t % n_hblocks
        t = t // n_hblocks
        kvh = t % HKV
        b = t // HKV
        L = gl.load(seqlens_ptr + b)
        n_blocks = gl.cdiv(L, BN)
        per_split = gl.cdiv(n_blocks, n_splits)
        lo = split * per_split
        hi = gl.minimum(lo + per_split, n_blocks)
        b64 = b.to(gl.int64)
        # the group's query heads hb*BH .. as the rows of the tile
        hg = hb * BH + gl.arange(0, BH, layout=gl.SliceLayout(1, LOAD))
        _copy_rows(q_smem, qd_ptr + b64 * s_qb + kvh * GROUP * s_qh, hg, s_qh, hg < GROUP, LOAD, D)
        cp.commit_group()
        hr = hb * BH + gl.arange(0, BH, layout=ROW)
        acc, m_i, l_i = _attend(q_smem, k_bufs, v_bufs, kd_ptr + b64 * s_kb + kvh * s_kh,
                                vd_ptr + b64 * s_vb + kvh * s_vh, s_kt, s_vt,
                                lo, hi, L, L // BN, hr, qk_scale,
                                MMA, LOAD, BH, BN, D, KC, STAGES, False)
        h = kvh * GROUP + hr
        part_rows = (split * B + b) * H + h
        _store_out(acc, m_i, l_i, od_ptr + b64 * s_ob + kvh * GROUP * s_oh, s_oh, pod_ptr, plsed_ptr, hr,
                   part_rows, hr < GROUP, n_splits > 1, MMA, D)


# ----------------------------------------------------------------------------------------------
# the fused kernel
# ----------------------------------------------------------------------------------------------
@gluon.jit(do_not_specialize=["Lq", "Lk", "n_mblocks", "n_splits_p", "n_prefill_ctas",
                              "B", "n_hblocks", "n_splits_d", "n_decode_ctas"])
def hfuse_kernel(
    # prefill (q rows of one chunk, dense KV of its request)
    qp_ptr, kp_ptr, vp_ptr, op_ptr, pop_ptr, plsep_ptr,
    Lq, Lk, H, GROUP, n_mblocks, n_splits_p, n_prefill_ctas,
    s_qpt, s_qph, s_kpt, s_kph, s_vpt, s_vph, s_opt, s_oph,
    # decode (one query token per request, dense KV per request)
    qd_ptr, kd_ptr, vd_ptr, od_ptr, pod_ptr, plsed_ptr, seqlens_ptr,
    B, HKV, n_hblocks, n_splits_d, n_decode_ctas,
    s_qdb, s_qdh, s_kdb, s_kdt, s_kdh, s_vdb, s_vdt, s_vdh, s_odb, s_odh,
    qk_scale,
    D: gl.constexpr, CAUSAL: gl.constexpr,
    BM: gl.constexpr, BN: gl.constexpr, KC_P: gl.constexpr, STAGES_P: gl.constexpr,
    BH: gl.constexpr, BN_D: gl.constexpr, KC_D: gl.constexpr, STAGES_D: gl.constexpr,
    DECODE_WARPS: gl.constexpr, DECODE_REGS: gl.constexpr,
):
    """HFuse: every CTA runs prefill tile ``pid`` in its default warps (``num_warps`` of them) and
    decode item ``pid`` in DECODE_WARPS worker warps. Launch with grid = max(n_prefill_ctas,
    n_decode_ctas)."""
    gl.warp_specialize(
        [(_prefill_partition, (qp_ptr, kp_ptr, vp_ptr, op_ptr, pop_ptr, plsep_ptr,
                               Lq, Lk, H, GROUP, n_mblocks, n_splits_p, n_prefill_ctas,
                               s_qpt, s_qph, s_kpt, s_kph, s_vpt, s_vph, s_opt, s_oph, qk_scale,
                               D, BM, BN, KC_P, STAGES_P, CAUSAL)),
         (_decode_partition, (qd_ptr, kd_ptr, vd_ptr, od_ptr, pod_ptr, plsed_ptr, seqlens_ptr,
                              B, H, GROUP, HKV, n_hblocks, n_splits_d, n_decode_ctas,
                              s_qdb, s_qdh, s_kdb, s_kdt, s_kdh, s_vdb, s_vdt, s_vdh, s_odb, s_odh, qk_scale,
                              D, BH, BN_D, KC_D, STAGES_D))],
        [DECODE_WARPS], [DECODE_REGS])
