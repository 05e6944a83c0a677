"""The split-KV merge shared by every kernel family: ``merge_kernel`` (Triton) combines split
partials (normalised outputs + base-2 LSE) of prefill rows, then decode rows, in one launch;
``SplitMerge`` allocates the partials of one launch and runs that merge."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MERGE_ROWS = 16   # (token, head) rows per merge CTA


@triton.jit(do_not_specialize=["rows_p", "splits_p", "rows_d", "splits_d", "n_blocks_p"])
def merge_kernel(po_p, plse_p, o_p, rows_p, splits_p, po_d, plse_d, o_d, rows_d, splits_d, n_blocks_p,
                 D: tl.constexpr, BR: tl.constexpr):
    """Merge split-KV partials (normalised outputs + base-2 LSE) of prefill rows, then decode rows.
    Rows are (token, head) of the contiguous outputs."""
    pid = tl.program_id(0)
    if pid < n_blocks_p:
        po, plse, o, R, S, blk = po_p, plse_p, o_p, rows_p, splits_p, pid
    else:
        po, plse, o, R, S, blk = po_d, plse_d, o_d, rows_d, splits_d, pid - n_blocks_p
    rows = blk * BR + tl.arange(0, BR)
    r_ok = rows < R
    rows64 = rows.to(tl.int64)
    offs_d = tl.arange(0, D)
    m = tl.full([BR], float("-inf"), tl.float32)
    for s in range(0, S):
        m = tl.maximum(m, tl.load(plse + s * R + rows64, mask=r_ok, other=float("-inf")))
    m = tl.where(m == float("-inf"), 0.0, m)
    acc = tl.zeros([BR, D], tl.float32)
    den = tl.zeros([BR], tl.float32)
    for s in range(0, S):
        w = tl.math.exp2(tl.load(plse + s * R + rows64, mask=r_ok, other=float("-inf")) - m)
        part = tl.load(po + (s * R + rows64)[:, None] * D + offs_d[None, :], mask=r_ok[:, None], other=0.0)
        acc += w[:, None] * part
        den += w
    den = tl.where(den == 0.0, 1.0, den)
    tl.store(o + rows64[:, None] * D + offs_d[None, :], (acc / den[:, None]).to(o.dtype.element_ty),
             mask=r_ok[:, None])


class SplitMerge:
    """Split-KV partials of one launch and the merge launch that combines them.

    ``prefill`` and ``decode`` are ``(n_splits, tokens, out)`` of each part: ``out`` is the part's
    (tokens, heads, head_dim) output, None when the launch does not compute that part. A part with
    one split writes ``out`` directly and gets 1-element stand-ins; ``unsplit_out`` is the output
    pointer the merge receives for it (never read or written)."""

    def __init__(self, device, heads: int, head_dim: int, prefill=(1, 0, None), decode=(1, 0, None),
                 unsplit_out: dict | None = None):
        self.head_dim = head_dim
        dummy = torch.empty(1, device=device, dtype=torch.float32)
        unsplit_out = unsplit_out or {}
        self.kwargs: dict = {}
        blocks = []
        for part, (n_splits, tokens, out) in (("p", prefill), ("d", decode)):
            split = out is not None and n_splits > 1
            rows = tokens * heads if split else 0
            self.kwargs.update({
                f"po_{part}": torch.empty((n_splits, tokens, heads, head_dim), device=device) if split else dummy,
                f"plse_{part}": torch.empty((n_splits, tokens, heads), device=device) if split else dummy,
                f"o_{part}": out if split else unsplit_out[part],
                f"rows_{part}": rows,
                f"splits_{part}": n_splits,
            })
            blocks.append(triton.cdiv(rows, MERGE_ROWS))
        self.kwargs["n_blocks_p"] = blocks[0]
        self.grid = blocks[0] + blocks[1]
        self.split_p, self.split_d = self.kwargs["rows_p"] > 0, self.kwargs["rows_d"] > 0

    def partials(self, part: str) -> tuple:
        """(partial outputs, partial LSEs) of part 'p' or 'd', as the fused kernel writes them."""
        return self.kwargs[f"po_{part}"], self.kwargs[f"plse_{part}"]

    def __call__(self) -> None:
        if self.grid:
            merge_kernel[(self.grid,)](**self.kwargs, D=self.head_dim, BR=MERGE_ROWS, num_warps=4)


class MergedLaunch:
    """Base of a prepared launch of a fused kernel whose split partials ``self.merger`` (a
    ``SplitMerge``) combines. Subclasses set ``merger``, ``do_p``/``do_d`` (the parts it computes),
    ``out_p``/``out_d`` and define ``launch()``; calling the launch runs the kernel, then the merge,
    and returns the outputs."""

    def merge(self) -> None:
        self.merger()

    def outputs(self) -> dict:
        out = {}
        if self.do_p:
            out["prefill"] = self.out_p
        if self.do_d:
            out["decode"] = self.out_d
        return out

    def __call__(self) -> dict:
        self.launch()
        self.merge()
        return self.outputs()


__all__ = ["MERGE_ROWS", "MergedLaunch", "SplitMerge", "merge_kernel"]
