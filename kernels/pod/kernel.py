"""Triton device code of our POD-Attention kernel family.

One prefill tile function and one decode tile function; ``pod_kernel`` runs them in four ways
(MODE): prefill only, decode only, CTA-parallel (block index decides), and SM-aware POD (each CTA
reads its SM id and binds itself to prefill or decode at run time: by a ticket from that SM's
counter, as in the paper's Figure 9, or by how many CTAs of each part run on that SM right now).
Split-KV partials are merged by ``kernels.common.merge.merge_kernel``. MODE and BINDING take the
named values of plan.py (MODE_*, BINDING_*), seen here as constexpr globals.

Softmax runs in base 2 (scores pre-multiplied by log2(e)); partial LSEs are kept in base 2.
"""
import triton
import triton.language as tl

from .plan import (BINDING_PROGRESS, BINDING_RESIDENT, BINDING_TICKET, MODE_CTA, MODE_DECODE, MODE_POD,  # noqa: F401
                   MODE_PREFILL)

# the host's named modes and bindings as compile-time constants of the kernel
_PREFILL_ONLY = tl.constexpr(MODE_PREFILL)
_DECODE_ONLY = tl.constexpr(MODE_DECODE)
_CTA_PARALLEL = tl.constexpr(MODE_CTA)
_SM_AWARE = tl.constexpr(MODE_POD)
_BY_TICKET = tl.constexpr(BINDING_TICKET)
_BY_RESIDENT = tl.constexpr(BINDING_RESIDENT)
_BY_PROGRESS = tl.constexpr(BINDING_PROGRESS)


@triton.jit
def _dot(a, b, F32_DOT: tl.constexpr):
    # the CPU interpreter multiplies bfloat16 operands wrongly (raw bits): upcast there
    if F32_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        return tl.dot(a, b)


@triton.jit
def _kv_rows(pos, page_row_ptr, page_size, s_page, s_tok, PAGED: tl.constexpr):
    """Element offsets of KV rows at token positions ``pos`` (any shape). Paged: ``page_row_ptr``
    points at the request's block-table row; dense: it is unused and ``s_page`` is the request
    offset already folded into the base pointer."""
    if PAGED:
        page = tl.load(page_row_ptr + pos // page_size)
        return page.to(tl.int64) * s_page + (pos % page_size).to(tl.int64) * s_tok
    else:
        # one request's KV stays below 2**31 elements; the request base is 64-bit in the caller
        return pos * s_tok


@triton.jit
def _prefill_block(acc, m_i, l_i, q, nb, offs_m, k_base, v_base, kv_col, bt_row, page_size, Lq, Lk,
                   s_kp, s_kt, s_vp, s_vt, qk_scale,
                   D: tl.constexpr, BN: tl.constexpr, PAGED: tl.constexpr, MASK: tl.constexpr,
                   CAUSAL: tl.constexpr, F32_DOT: tl.constexpr, TMA: tl.constexpr, SOFTMAX: tl.constexpr):
    offs_n = nb * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    n_ok = offs_n < Lk
    if TMA:
        # k_base/v_base are (Lk, Hkv*D) tensor descriptors: the copy engine fills rows past Lk with zeros
        kT = k_base.load([nb * BN, kv_col]).T
    else:
        if MASK:
            pos = tl.where(n_ok, offs_n, 0)
        else:
            pos = offs_n
        rows_k = _kv_rows(pos, bt_row, page_size, s_kp, s_kt, PAGED)
        rows_v = _kv_rows(pos, bt_row, page_size, s_vp, s_vt, PAGED)
        if MASK:
            kT = tl.load(k_base + rows_k[None, :] + offs_d[:, None], mask=n_ok[None, :], other=0.0)
        else:
            kT = tl.load(k_base + rows_k[None, :] + offs_d[:, None])
    if SOFTMAX == 1:
        s = _dot(q, kT, F32_DOT)
    else:
        s = _dot(q, kT, F32_DOT) * qk_scale
    if MASK:
        ok = n_ok[None, :]
        if CAUSAL:
            ok = ok & (offs_n[None, :] <= (Lk - Lq + offs_m)[:, None])
        s = tl.where(ok, s, float("-inf"))
    if SOFTMAX == 1:
        # scale inside the exponent: one FMA per score instead of a multiply and a subtract
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1))
    if MASK:
        # a row may see no key in this block: keep exp2 away from (-inf) - (-inf)
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    if SOFTMAX == 1:
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
    else:
        p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if TMA:
        v = v_base.load([nb * BN, kv_col])
    elif MASK:
        v = tl.load(v_base + rows_v[:, None] + offs_d[None, :], mask=n_ok[:, None], other=0.0)
    else:
        v = tl.load(v_base + rows_v[:, None] + offs_d[None, :])
    if SOFTMAX == 1 and not F32_DOT:
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    else:
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, F32_DOT)
    return acc, m_new, l_i


@triton.jit
def _prefill_tile(tile, q_ptr, k_ptr, v_ptr, o_ptr, po_ptr, plse_ptr, bt_ptr,
                  Lq, Lk, H, GROUP, n_mblocks, n_splits, page_size,
                  s_qt, s_qh, s_kp, s_kt, s_kh, s_vp, s_vt, s_vh, s_ot, s_oh, qk_scale,
                  D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, PAGED: tl.constexpr,
                  CAUSAL: tl.constexpr, F32_DOT: tl.constexpr, TMA: tl.constexpr,
                  SOFTMAX: tl.constexpr = 0, WS: tl.constexpr = False):
    """One prefill logical CTA: BM query rows of one head over one KV split. With TMA, ``k_ptr`` and
    ``v_ptr`` are tensor descriptors of the dense (Lk, Hkv*D) KV."""
    split = tile % n_splits
    t = tile // n_splits
    h = t % H
    mb = n_mblocks - 1 - t // H  # longest causal rows first: better tail behaviour
    kvh = h // GROUP
    offs_m = mb * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    m_ok = offs_m < Lq
    q = tl.load(q_ptr + offs_m[:, None].to(tl.int64) * s_qt + h * s_qh + offs_d[None, :],
                mask=m_ok[:, None], other=0.0)
    if CAUSAL:
        kv_end = tl.minimum(Lk, Lk - Lq + (mb + 1) * BM)
        full_end = tl.minimum(Lk - Lq + mb * BM + 1, Lk)
    else:
        kv_end = Lk
        full_end = Lk
    n_blocks = tl.cdiv(kv_end, BN)
    per_split = tl.cdiv(n_blocks, n_splits)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, n_blocks)
    full_blocks = full_end // BN
    if TMA:
        k_base = k_ptr
        v_base = v_ptr
        kv_col = kvh * D
    else:
        k_base = k_ptr + kvh * s_kh
        v_base = v_ptr + kvh * s_vh
        kv_col = 0
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    for nb in tl.range(lo, tl.minimum(hi, full_blocks), warp_specialize=WS):
        acc, m_i, l_i = _prefill_block(acc, m_i, l_i, q, nb, offs_m, k_base, v_base, kv_col, bt_ptr, page_size,
                                       Lq, Lk, s_kp, s_kt, s_vp, s_vt, qk_scale, D, BN, PAGED, False, CAUSAL,
                                       F32_DOT, TMA, SOFTMAX)
    for nb in tl.range(tl.maximum(lo, full_blocks), hi):
        acc, m_i, l_i = _prefill_block(acc, m_i, l_i, q, nb, offs_m, k_base, v_base, kv_col, bt_ptr, page_size,
                                       Lq, Lk, s_kp, s_kt, s_vp, s_vt, qk_scale, D, BN, PAGED, True, CAUSAL,
                                       F32_DOT, TMA, SOFTMAX)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if n_splits == 1:
        tl.store(o_ptr + offs_m[:, None].to(tl.int64) * s_ot + h * s_oh + offs_d[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=m_ok[:, None])
    else:
        row = (split * Lq + offs_m).to(tl.int64) * H + h
        tl.store(po_ptr + row[:, None] * D + offs_d[None, :], o, mask=m_ok[:, None])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(plse_ptr + row, lse, mask=m_ok)


@triton.jit
def _decode_item(item, q_ptr, k_ptr, v_ptr, o_ptr, po_ptr, plse_ptr, bt_ptr, seqlens_ptr,
                 B, H, GROUP, HKV, n_hblocks, n_splits, page_size, bt_stride,
                 s_qb, s_qh, s_kp, s_kt, s_kh, s_vp, s_vt, s_vh, s_ob, s_oh, qk_scale,
                 D: tl.constexpr, BH: tl.constexpr, BN: tl.constexpr, PAGED: tl.constexpr,
                 F32_DOT: tl.constexpr, DS: tl.constexpr):
    """One decode work item: query heads [hb*BH, hb*BH+BH) of one KV group of one request, over
    one KV split. The group's heads are the rows of the tile, so K/V are read once per group."""
    split = item % n_splits
    t = item // n_splits
    hb = t % n_hblocks
    t = t // n_hblocks
    kvh = t % HKV
    b = t // HKV
    L = tl.load(seqlens_ptr + b)
    n_blocks = tl.cdiv(L, BN)
    per_split = tl.cdiv(n_blocks, n_splits)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, n_blocks)
    end = tl.minimum(hi * BN, L)

    offs_d = tl.arange(0, D)
    hg = hb * BH + tl.arange(0, BH)
    h_ok = hg < GROUP
    h = kvh * GROUP + tl.where(h_ok, hg, 0)
    q = tl.load(q_ptr + b.to(tl.int64) * s_qb + h[:, None] * s_qh + offs_d[None, :], mask=h_ok[:, None], other=0.0)
    if PAGED:
        bt_row = bt_ptr + b.to(tl.int64) * bt_stride
        k_base = k_ptr + kvh * s_kh
        v_base = v_ptr + kvh * s_vh
    else:
        k_base = k_ptr + b.to(tl.int64) * s_kp + kvh * s_kh
        v_base = v_ptr + b.to(tl.int64) * s_vp + kvh * s_vh
    m_i = tl.full([BH], float("-inf"), tl.float32)
    l_i = tl.zeros([BH], tl.float32)
    acc = tl.zeros([BH, D], tl.float32)
    for nb in tl.range(lo, hi, num_stages=DS):
        offs_n = nb * BN + tl.arange(0, BN)
        n_ok = offs_n < end
        pos = tl.where(n_ok, offs_n, 0)
        if PAGED:
            page = tl.load(bt_row + pos // page_size).to(tl.int64)
            slot = (pos % page_size).to(tl.int64)
            rows_k = page * s_kp + slot * s_kt
            rows_v = page * s_vp + slot * s_vt
        else:
            rows_k = pos * s_kt
            rows_v = pos * s_vt
        kT = tl.load(k_base + rows_k[None, :] + offs_d[:, None], mask=n_ok[None, :], other=0.0)
        s = _dot(q, kT, F32_DOT) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + rows_v[:, None] + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, F32_DOT)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if n_splits == 1:
        tl.store(o_ptr + b.to(tl.int64) * s_ob + h[:, None] * s_oh + offs_d[None, :],
                 o.to(o_ptr.dtype.element_ty), mask=h_ok[:, None])
    else:
        row = (split * B + b).to(tl.int64) * H + h
        tl.store(po_ptr + row[:, None] * D + offs_d[None, :], o, mask=h_ok[:, None])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(l_safe))
        tl.store(plse_ptr + row, lse, mask=h_ok)


@triton.jit
def _decode_tile(cta, q_ptr, k_ptr, v_ptr, o_ptr, po_ptr, plse_ptr, bt_ptr, seqlens_ptr,
                 B, H, GROUP, HKV, n_hblocks, n_splits, n_items, page_size, bt_stride,
                 s_qb, s_qh, s_kp, s_kt, s_kh, s_vp, s_vt, s_vh, s_ob, s_oh, qk_scale,
                 D: tl.constexpr, BH: tl.constexpr, BN: tl.constexpr, V: tl.constexpr,
                 PAGED: tl.constexpr, F32_DOT: tl.constexpr, DS: tl.constexpr):
    """One decode CTA holding V virtual CTAs (work items). A Triton CTA cannot hand its warps
    different items, so the items run back to back; a 3-D batched tile would run them side by
    side but doubles the registers (measured: 188 vs 72 at 16x32x128), which costs co-residence."""
    for j in tl.static_range(V):
        item = cta * V + j
        if item < n_items:
            _decode_item(item, q_ptr, k_ptr, v_ptr, o_ptr, po_ptr, plse_ptr, bt_ptr, seqlens_ptr,
                         B, H, GROUP, HKV, n_hblocks, n_splits, page_size, bt_stride,
                         s_qb, s_qh, s_kp, s_kt, s_kh, s_vp, s_vt, s_vh, s_ob, s_oh, qk_scale,
                         D, BH, BN, PAGED, F32_DOT, DS)


@triton.jit
def _sm_id(pid, smid_table, USE_SMID_TABLE: tl.constexpr, INTERPRET: tl.constexpr, SM_SLOTS: tl.constexpr):
    if USE_SMID_TABLE:
        sm = tl.load(smid_table + pid)
    elif INTERPRET:
        # the interpreter has no inline asm; CTAs run one after another on "SM" pid % SM_SLOTS
        sm = pid % SM_SLOTS
    else:
        sm = tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=True, pack=1)
    # %smid may exceed the SM count on some parts; folding ids only coarsens the policy
    return sm % SM_SLOTS


@triton.jit
def _now_ns(INTERPRET: tl.constexpr):
    """GPU global timer in ns (0 in the interpreter, which has no inline asm)."""
    if INTERPRET:
        t = tl.zeros([], tl.int64)
    else:
        t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False,
                                      pack=1)
    return t


@triton.jit(do_not_specialize=["Lq", "Lk", "n_mblocks", "B", "n_hblocks", "n_items", "btd_stride",
                             "n_prefill_ctas", "n_decode_ctas", "prefill_ratio", "decode_ratio"])
def pod_kernel(
    # prefill
    qp_ptr, kp_ptr, vp_ptr, op_ptr, pop_ptr, plsep_ptr, btp_ptr,
    Lq, Lk, H, GROUP, n_mblocks, n_splits_p, page_size_p,
    s_qpt, s_qph, s_kpp, s_kpt, s_kph, s_vpp, s_vpt, s_vph, s_opt, s_oph,
    # decode
    qd_ptr, kd_ptr, vd_ptr, od_ptr, pod_ptr, plsed_ptr, btd_ptr, seqlens_ptr,
    B, HKV, n_hblocks, n_splits_d, n_items, page_size_d, btd_stride,
    s_qdb, s_qdh, s_kdp, s_kdt, s_kdh, s_vdp, s_vdt, s_vdh, s_odb, s_odh,
    # scheduling
    qk_scale, n_prefill_ctas, n_decode_ctas, prefill_ratio, decode_ratio,
    sched_ptr, smid_table, trace_ptr,
    MODE: tl.constexpr, D: tl.constexpr, CAUSAL: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, PAGED_P: tl.constexpr, TMA_P: tl.constexpr,
    BH: tl.constexpr, BN_D: tl.constexpr, V: tl.constexpr, PAGED_D: tl.constexpr, DS: tl.constexpr,
    SM_SLOTS: tl.constexpr, USE_SMID_TABLE: tl.constexpr, INTERPRET: tl.constexpr, TRACE: tl.constexpr,
    BINDING: tl.constexpr, PF_SOFTMAX: tl.constexpr = 0, PF_WS: tl.constexpr = False,
):
    """Prefill and/or decode attention of a hybrid batch; MODE picks how CTAs find their work.

    ``sched_ptr`` (int32, 3 * SM_SLOTS + 4): per-SM tickets; the prefill CTA, decode CTA and done
    counters (+1 unused); per-SM running prefill CTAs; per-SM running decode CTAs. The last CTA to
    finish zeroes the first two groups (the running counts return to zero by themselves), so the
    next launch needs no memset. BINDING (MODE_POD only): BINDING_TICKET = ticket modulo
    prefill_ratio + decode_ratio (paper); BINDING_RESIDENT = the part whose running CTAs on this SM
    are furthest below their prefill_ratio:decode_ratio share, which follows the real residency and
    CTA lengths; BINDING_PROGRESS = the part that has handed out the smaller fraction of its CTAs,
    so both parts run until the end.
    ``trace_ptr`` (int64, grid x 5) records op, logical CTA, SM, start and end time in ns.
    PF_SOFTMAX = 1 folds the softmax scale into the exponent and accumulates P.V in place; PF_WS asks
    Triton to warp-specialise the unmasked prefill loop. Both are off: neither was faster on H100
    (experiments/prefill_variants.py)."""
    pid = tl.program_id(0)
    if TRACE:
        t_start = _now_ns(INTERPRET)
    sm = 0
    if MODE == _PREFILL_ONLY:
        op = 0
        cta = pid
    elif MODE == _DECODE_ONLY:
        op = 1
        cta = pid
    elif MODE == _CTA_PARALLEL:
        op = (pid >= n_prefill_ctas).to(tl.int32)
        cta = tl.where(op == 0, pid, pid - n_prefill_ctas)
    else:
        sm = _sm_id(pid, smid_table, USE_SMID_TABLE, INTERPRET, SM_SLOTS)
        if BINDING == _BY_TICKET:
            ticket = tl.atomic_add(sched_ptr + sm, 1) % (prefill_ratio + decode_ratio)
            op = (ticket >= prefill_ratio).to(tl.int32)
        elif BINDING == _BY_PROGRESS:
            handed_p = tl.atomic_add(sched_ptr + SM_SLOTS, 0)
            handed_d = tl.atomic_add(sched_ptr + SM_SLOTS + 1, 0)
            # the part whose share of its CTAs handed out so far is smaller: both parts run to the end
            op = (handed_p * n_decode_ctas > handed_d * n_prefill_ctas).to(tl.int32)
        else:
            running_p = tl.atomic_add(sched_ptr + SM_SLOTS + 4 + sm, 0)
            running_d = tl.atomic_add(sched_ptr + 2 * SM_SLOTS + 4 + sm, 0)
            # prefill unless it already holds at least its share of this SM's running CTAs
            op = (running_p * decode_ratio > running_d * prefill_ratio).to(tl.int32)
        cta = tl.atomic_add(sched_ptr + SM_SLOTS + op, 1)
        if cta >= tl.where(op == 0, n_prefill_ctas, n_decode_ctas):
            # this operation has no work left: take the other one (always has some, see plan.py)
            op = 1 - op
            cta = tl.atomic_add(sched_ptr + SM_SLOTS + op, 1)
        if BINDING == _BY_RESIDENT:
            tl.atomic_add(sched_ptr + SM_SLOTS + 4 + op * SM_SLOTS + sm, 1)
    if TRACE and MODE != _SM_AWARE:
        sm = _sm_id(pid, smid_table, USE_SMID_TABLE, INTERPRET, SM_SLOTS)
    if op == 0:
        _prefill_tile(cta, qp_ptr, kp_ptr, vp_ptr, op_ptr, pop_ptr, plsep_ptr, btp_ptr,
                      Lq, Lk, H, GROUP, n_mblocks, n_splits_p, page_size_p,
                      s_qpt, s_qph, s_kpp, s_kpt, s_kph, s_vpp, s_vpt, s_vph, s_opt, s_oph, qk_scale,
                      D, BM, BN, PAGED_P, CAUSAL, INTERPRET, TMA_P, PF_SOFTMAX, PF_WS)
    else:
        _decode_tile(cta, qd_ptr, kd_ptr, vd_ptr, od_ptr, pod_ptr, plsed_ptr, btd_ptr, seqlens_ptr,
                     B, H, GROUP, HKV, n_hblocks, n_splits_d, n_items, page_size_d, btd_stride,
                     s_qdb, s_qdh, s_kdp, s_kdt, s_kdh, s_vdp, s_vdt, s_vdh, s_odb, s_odh, qk_scale,
                     D, BH, BN_D, V, PAGED_D, INTERPRET, DS)
    if TRACE:
        zero = tl.zeros([], tl.int64)  # op and sm are plain ints in some modes
        tl.store(trace_ptr + pid * 5 + 0, zero + op)
        tl.store(trace_ptr + pid * 5 + 1, zero + cta)
        tl.store(trace_ptr + pid * 5 + 2, zero + sm)
        tl.store(trace_ptr + pid * 5 + 3, t_start)
        tl.store(trace_ptr + pid * 5 + 4, _now_ns(INTERPRET))
    if MODE == _SM_AWARE:
        if BINDING == _BY_RESIDENT:
            tl.atomic_add(sched_ptr + SM_SLOTS + 4 + op * SM_SLOTS + sm, -1)
        done = tl.atomic_add(sched_ptr + SM_SLOTS + 2, 1)
        if done == n_prefill_ctas + n_decode_ctas - 1:
            # every CTA has taken its ticket: reset the counters for the next launch
            offs = tl.arange(0, SM_SLOTS)
            tl.store(sched_ptr + offs, tl.zeros([SM_SLOTS], tl.int32))
            tl.store(sched_ptr + SM_SLOTS + tl.arange(0, 4), tl.zeros([4], tl.int32),
                     mask=tl.arange(0, 4) < 3)
