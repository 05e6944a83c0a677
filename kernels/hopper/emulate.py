"""A torch model of what kernels/hopper/kernel.py computes, block by block, for CPU tests.

Gluon has no CPU interpreter, so this replays the kernel's *algorithm* on the CPU with the same
index arithmetic: the scheduler (ranks, items per CTA), item coordinates, TMA boxes (rows past a
descriptor's extent read as zeros, decode query boxes of 16 rows from the group's first head),
key blocks per split, the full/masked block rule, the base-2 online softmax with P rounded to the
input dtype, the decode V tail zeroing, masked stores, split partials and their LSE merge. A
mismatch with kernels/reference.py here is a bug in the plan or the index math (the Gluon code
mirrors these lines; the sm_90a compile checks its instructions).
"""
from __future__ import annotations

import torch

from kernels.workload import HybridBatch

from .launch import decode_kv_starts
from .plan import BLOCK_M, DECODE_ROWS, WG_ROWS, HopperPlan, cta_items, decode_item, prefill_item

LOG2E = 1.4426950408889634


def _box(t2d: torch.Tensor, row: int, col: int, rows: int, cols: int) -> torch.Tensor:
    """TMA load of a [rows, cols] box at (row, col): out-of-range rows come back as zeros."""
    out = torch.zeros((rows, cols), dtype=t2d.dtype)
    r0, r1 = max(row, 0), min(row + rows, t2d.shape[0])
    if r1 > r0:
        out[r0 - row: r1 - row] = t2d[r0:r1, col: col + cols]
    return out


def _attend(q, kv_blocks, qk_scale, mask_fn, dtype):
    """Online softmax over blocks [(j, K, V)]; mask_fn(j) -> bool [rows, BN] or None (full block)."""
    rows, d = q.shape
    m = torch.full((rows,), float("-inf"))
    l = torch.zeros(rows)
    acc = torch.zeros(rows, d)
    for j, k, v in kv_blocks:
        s = (q.float() @ k.float().T) * qk_scale
        ok = mask_fn(j)
        if ok is not None:
            s = s.masked_fill(~ok, float("-inf"))
        m_new = torch.maximum(m, s.max(1).values)
        m_use = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
        p = torch.exp2(s - m_use[:, None])
        alpha = torch.exp2(m - m_use)
        l = l * alpha + p.sum(1)
        acc = acc * alpha[:, None] + p.to(dtype).float() @ v.float()
        m = m_new
    return acc, m, l


def _finish(acc, m, l):
    l_safe = torch.where(l == 0, torch.ones_like(l), l)
    lse = torch.where(l == 0, torch.full_like(l, float("-inf")), m + torch.log2(l_safe))
    return acc / l_safe[:, None], lse


def _merge(po, plse):
    """kernels.common.merge.merge_kernel: (S, R, D) partials + (S, R) base-2 LSE -> (R, D)."""
    m = plse.max(0).values
    m = torch.where(m == float("-inf"), torch.zeros_like(m), m)
    w = torch.exp2(plse - m)
    den = w.sum(0)
    den = torch.where(den == 0, torch.ones_like(den), den)
    return (w[..., None] * po).sum(0) / den[:, None]


def emulate(batch: HybridBatch, plan: HopperPlan, rank_order=None) -> dict:
    """Outputs {"prefill": (Lq, H, d), "decode": (bs, H, d)} (float32) as the kernel would write them."""
    s, t = batch.spec, plan.tiles
    m = s.model
    H, Hkv, d, G = m.q_heads, m.kv_heads, m.head_dim, m.group_size
    dt = batch.q.dtype
    qk_scale = s.sm_scale * LOG2E
    ranks = list(rank_order) if rank_order is not None else list(range(plan.grid))
    out = {}
    if t.has_prefill and s.has_prefill:
        lq, lk, bn, S = s.prefill_len, s.prefill_kv_len, t.block_n, plan.n_splits_p
        q2 = batch.q_p.reshape(lq, H * d).cpu()
        k2 = batch.k_p.reshape(lk, Hkv * d).cpu()
        v2 = batch.v_p.reshape(lk, Hkv * d).cpu()
        o = torch.full((lq, H, d), float("nan"))
        po = torch.full((S, lq, H, d), float("nan"))
        plse = torch.full((S, lq, H), float("nan"))
        for rank in ranks:
            for item in cta_items(rank, plan.grid, plan.n_prefill_items):
                c = prefill_item(item, plan, s)
                h, mb, split, lo, hi = c["h"], c["mb"], c["split"], c["lo"], c["hi"]
                kvc = (h // G) * d
                blocks = [(j, _box(k2, j * bn, kvc, bn, d), _box(v2, j * bn, kvc, bn, d)) for j in range(lo, hi)]
                for wg in range(2):
                    row0 = mb * BLOCK_M + wg * WG_ROWS
                    q = _box(q2, row0, h * d, WG_ROWS, d)
                    diag = lk - lq + row0 + torch.arange(WG_ROWS)
                    full = (min(lk - lq + row0 + 1, lk) if plan.causal else lk) // bn

                    def mask(j, diag=diag, full=full):
                        if j < full:
                            return None
                        cols = j * bn + torch.arange(bn)
                        ok = (cols < lk)[None, :].expand(WG_ROWS, bn)
                        if plan.causal:
                            ok = ok & (cols[None, :] <= diag[:, None])
                        return ok

                    acc, mm, ll = _attend(q, blocks, qk_scale, mask, dt)
                    on, lse = _finish(acc, mm, ll)
                    rows = row0 + torch.arange(WG_ROWS)
                    ok = rows < lq
                    if S > 1:
                        po[split, rows[ok], h] = on[ok]
                        plse[split, rows[ok], h] = lse[ok]
                    else:
                        o[rows[ok], h] = on[ok].to(dt).float()
        if S > 1:
            o = _merge(po.reshape(S, lq * H, d), plse.reshape(S, lq * H)).reshape(lq, H, d).to(dt).float()
        out["prefill"] = o
    if t.has_decode and s.has_decode:
        bs, bn, S = s.decode_batch, t.decode_n, plan.n_splits_d
        q2 = batch.q_d.reshape(bs * H, d).cpu()
        # the launch's descriptors (kernels/hopper/launch.py): the dense view with request b at row
        # b * cap, or the whole pool with each request's first row in kv_starts
        starts = decode_kv_starts(batch)
        if starts is None:
            cap = batch.k_d.shape[1]
            k2 = batch.k_d.reshape(bs * cap, Hkv * d).cpu()
            v2 = batch.v_d.reshape(bs * cap, Hkv * d).cpu()
            starts = [b * cap for b in range(bs)]
        else:
            k2 = batch.k_pool.reshape(-1, Hkv * d).cpu()
            v2 = batch.v_pool.reshape(-1, Hkv * d).cpu()
            starts = starts.cpu().tolist()
        seqlens = batch.decode_seqlens.cpu().tolist()
        o = torch.full((bs, H, d), float("nan"))
        po = torch.full((S, bs, H, d), float("nan"))
        plse = torch.full((S, bs, H), float("nan"))
        for rank in ranks:
            for item in cta_items(rank, plan.grid, plan.n_decode_items):
                c = decode_item(item, plan, s)
                b, kvh, hb, split, lo, hi = c["b"], c["kvh"], c["hb"], c["split"], c["lo"], c["hi"]
                L = seqlens[b]
                q = _box(q2, b * H + kvh * G + hb * DECODE_ROWS, 0, DECODE_ROWS, d)
                blocks = []
                for j in range(lo, hi):
                    k = _box(k2, starts[b] + j * bn, kvh * d, bn, d)
                    v = _box(v2, starts[b] + j * bn, kvh * d, bn, d)
                    if (j + 1) * bn > L:
                        v = torch.where((j * bn + torch.arange(bn) < L)[:, None], v, torch.zeros_like(v))
                    blocks.append((j, k, v))

                def mask(j, L=L):
                    if (j + 1) * bn <= L:
                        return None
                    return (j * bn + torch.arange(bn) < L)[None, :].expand(DECODE_ROWS, bn)

                acc, mm, ll = _attend(q, blocks, qk_scale, mask, dt)
                on, lse = _finish(acc, mm, ll)
                hr = hb * DECODE_ROWS + torch.arange(DECODE_ROWS)
                ok = hr < G
                hq = kvh * G + hr[ok]
                if S > 1:
                    po[split, b, hq] = on[ok]
                    plse[split, b, hq] = lse[ok]
                else:
                    o[b, hq] = on[ok].to(dt).float()
        if S > 1:
            o = _merge(po.reshape(S, bs * H, d), plse.reshape(S, bs * H)).reshape(bs, H, d).to(dt).float()
        out["decode"] = o
    return out
