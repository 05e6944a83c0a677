"""Planning of HFuse (kernels/hfuse/kernel.py): tiles per head dimension and CTA residency, the
knobs of the method, and split-KV counts from the SM count. Pure Python (tested on the CPU)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from kernels.common.splitkv import flash_split_heuristic, kv_split_range  # noqa: F401  (kv_split_range: as the kernel splits)
from kernels.workload import BatchSpec

PARTITION_WARPS = 4   # prefill warps (default partition) = decode warps (worker partition)


@dataclass(frozen=True)
class HFuseTiles:
    """Tiles and resources of one HFuse configuration (both sides of the fused CTA)."""

    block_m: int          # prefill query rows per tile
    block_n: int          # prefill keys per step
    prefill_stages: int   # K/V ring depth of the prefill side
    decode_rows: int      # decode tile rows (the GQA group's query heads, padded to >= 16)
    decode_n: int         # decode keys per step
    decode_stages: int    # K/V ring depth of the decode side
    head_chunk: int = 64  # head-dim columns per mma pass of S = Q K^T (one 128-byte swizzle row)
    ctas_per_sm: int = 1  # fused CTAs (of 8 warps) meant to share an SM
    decode_regs: int = 0  # registers per decode thread (setmaxnreg); the prefill side gets the rest
    maxnreg: int = 0      # registers per thread at launch (0: 256, the whole register file)

    def smem_bytes(self, head_dim: int, elem: int = 2) -> int:
        """Operand shared memory of one fused CTA (both sides), without the compiler's scratch."""
        p = (self.block_m + 2 * self.prefill_stages * self.block_n) * head_dim * elem
        d = (self.decode_rows + 2 * self.decode_stages * self.decode_n) * head_dim * elem
        return p + d


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def decode_rows_for(group_size: int) -> int:
    """Rows of a decode tile: the GQA group's query heads padded to a power of two, 16 (one mma
    row block) to 64 (4 warps x 16 rows); larger groups take several tiles."""
    return max(16, min(_pow2_at_least(group_size), 64))


# Shared memory of one CTA on sm_90 (227 KB opt-in per block, 228 KB per SM, 1 KB reserved per
# CTA), less a margin for the compiler's scratch (layout conversions, reductions; <= 2 KB measured).
SMEM_PER_BLOCK = 227 * 1024
SMEM_PER_SM = 228 * 1024
SMEM_MARGIN = 4 * 1024


def smem_budget(ctas_per_sm: int) -> int:
    """Operand shared memory one fused CTA may use so that ``ctas_per_sm`` of them fit an SM."""
    if ctas_per_sm == 1:
        return SMEM_PER_BLOCK - SMEM_MARGIN
    return SMEM_PER_SM // ctas_per_sm - 1024 - SMEM_MARGIN


def fit_smem(t: HFuseTiles, head_dim: int) -> HFuseTiles:
    """Fewer decode, then prefill, stages until the CTA fits its shared-memory budget."""
    budget = smem_budget(t.ctas_per_sm)
    while t.smem_bytes(head_dim) > budget and (t.decode_stages > 1 or t.prefill_stages > 1):
        if t.decode_stages >= max(2, t.prefill_stages):
            t = replace(t, decode_stages=t.decode_stages - 1)
        else:
            t = replace(t, prefill_stages=t.prefill_stages - 1)
    if t.smem_bytes(head_dim) > budget:
        raise ValueError(f"HFuse tiles {t} need {t.smem_bytes(head_dim)} B of shared memory at head dim "
                         f"{head_dim}, more than {budget} B for {t.ctas_per_sm} CTA(s) per SM")
    return t


def default_tiles(head_dim: int, group_size: int, ctas_per_sm: int = 1) -> HFuseTiles:
    """Tiles of one fused CTA (4 prefill + 4 decode warps), from sm_90 compiles (ptxas -v):

    ctas_per_sm=1 (default; as the original FA_HFuse: FA2's 128x64 prefill tile on 4 warps, 64x32
    at head dim 256 as FA2; one 8-warp CTA per SM, which then owns the whole register file, so
    both sides may use 255 registers): decode 64 keys a step (32 at 256), 2 prefill and 3 decode
    stages; 100-225 KB of shared memory. ptxas spills ~124 B of the prefill's loop-invariant
    addresses at 128-row tiles (head dim 128) and at head dim 256 (outside the inner loop).
    ctas_per_sm=2: two fused CTAs per SM: 128 registers a thread at launch, redistributed by
    setmaxnreg (prefill 176 / decode 80 for 16-row decode tiles, no spills; 128/128 for larger
    groups), 64x32 prefill tiles (64x16 at 256), decode 32 keys a step (16 at 256), <= 110 KB
    of shared memory each (fewer stages where needed)."""
    if head_dim not in (64, 128, 256):
        raise ValueError(f"head_dim must be 64, 128 or 256, got {head_dim}")
    rows = decode_rows_for(group_size)
    big = head_dim >= 256
    if ctas_per_sm == 1:
        t = HFuseTiles(64 if big else 128, 32 if big else 64, 2, rows, 32 if big else 64, 3,
                       ctas_per_sm=1, decode_regs=256, maxnreg=0)
    elif ctas_per_sm == 2:
        t = HFuseTiles(64, 16 if big else 32, 2, rows, 16 if big else 32, 3, ctas_per_sm=2,
                       decode_regs=80 if rows <= 16 else 128, maxnreg=128)
    else:
        raise ValueError(f"ctas_per_sm must be 1 or 2, got {ctas_per_sm}")
    return fit_smem(t, head_dim)


@dataclass(frozen=True)
class HFuseConfig:
    """Knobs of HFuse (YAML options of the method); None / 'auto' keep the defaults."""

    ctas_per_sm: int = 1
    prefill_split: str | int = "auto"   # "auto" (FlashDecoding heuristic) | fixed int
    decode_split: str | int = "auto"
    block_m: int | None = None
    block_n: int | None = None
    decode_n: int | None = None
    prefill_stages: int | None = None
    decode_stages: int | None = None
    decode_regs: int | None = None
    maxnreg: int | None = None

    def __post_init__(self):
        if self.ctas_per_sm not in (1, 2):
            raise ValueError(f"ctas_per_sm must be 1 or 2, got {self.ctas_per_sm!r}")
        for name in ("prefill_split", "decode_split"):
            v = getattr(self, name)
            if not (v == "auto" or (isinstance(v, int) and v >= 1)):
                raise ValueError(f"{name} must be 'auto' or a positive int, got {v!r}")
        for name in ("prefill_stages", "decode_stages"):
            v = getattr(self, name)
            if v is not None and v not in (1, 2, 3, 4):
                raise ValueError(f"{name} must be 1..4, got {v!r}")
        for name in ("block_m", "block_n", "decode_n"):
            v = getattr(self, name)
            if v is not None and (v < 16 or v & (v - 1)):
                raise ValueError(f"{name} must be a power of two >= 16, got {v!r}")
        if self.block_m is not None and self.block_m < 16 * PARTITION_WARPS:
            raise ValueError(f"block_m must be >= {16 * PARTITION_WARPS} (16 rows per prefill warp)")
        for name in ("decode_regs", "maxnreg"):
            v = getattr(self, name)
            if v is not None and (v % 8 or not 24 <= v <= 256):
                raise ValueError(f"{name} must be a multiple of 8 in [24, 256], got {v!r}")


def resolve_tiles(head_dim: int, group_size: int, config: HFuseConfig | None = None) -> HFuseTiles:
    cfg = config or HFuseConfig()
    t = default_tiles(head_dim, group_size, cfg.ctas_per_sm)
    t = HFuseTiles(cfg.block_m or t.block_m, cfg.block_n or t.block_n, cfg.prefill_stages or t.prefill_stages,
                   t.decode_rows, cfg.decode_n or t.decode_n, cfg.decode_stages or t.decode_stages,
                   min(t.head_chunk, head_dim), t.ctas_per_sm, cfg.decode_regs or t.decode_regs,
                   t.maxnreg if cfg.maxnreg is None else cfg.maxnreg)
    if t.smem_bytes(head_dim) > smem_budget(t.ctas_per_sm):
        raise ValueError(f"HFuse tiles {t} need {t.smem_bytes(head_dim)} B of shared memory at head dim "
                         f"{head_dim}, more than {smem_budget(t.ctas_per_sm)} B")
    prefill_regs = 2 * (t.maxnreg or 256) - t.decode_regs   # the default partition gets the rest
    if not 24 <= prefill_regs <= 256:
        raise ValueError(f"decode_regs {t.decode_regs} leaves {prefill_regs} registers to the prefill warps "
                         f"(launch maxnreg {t.maxnreg or 256}); need 24..256")
    return t


@dataclass(frozen=True)
class HFusePlan:
    """One HFuse launch: CTA ``i`` < grid runs prefill tile i (if i < n_prefill_ctas) and decode
    item i (if i < n_decode_ctas)."""

    tiles: HFuseTiles
    num_sms: int
    n_mblocks: int = 0
    n_splits_p: int = 1
    n_prefill_ctas: int = 0
    n_hblocks: int = 0
    n_splits_d: int = 1
    n_decode_ctas: int = 0
    notes: dict = field(default_factory=dict)

    @property
    def grid(self) -> int:
        return max(self.n_prefill_ctas, self.n_decode_ctas)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tiles"] = asdict(self.tiles)
        d["grid"] = self.grid
        return d


def make_plan(spec: BatchSpec, num_sms: int, config: HFuseConfig | None = None) -> HFusePlan:
    """Plan both sides independently, as FA plans its prefill and decode calls: split-KV counts
    from FlashDecoding's heuristic over the fused-CTA slots of this GPU (num_sms * ctas_per_sm)."""
    if num_sms < 1:
        raise ValueError("num_sms must be >= 1")
    cfg = config or HFuseConfig()
    m = spec.model
    t = resolve_tiles(m.head_dim, m.group_size, cfg)
    slots = num_sms * t.ctas_per_sm
    plan = dict(tiles=t, num_sms=num_sms)
    if spec.has_prefill:
        n_mblocks = math.ceil(spec.prefill_len / t.block_m)
        work = m.q_heads * n_mblocks
        n_blocks = math.ceil(spec.prefill_kv_len / t.block_n)
        s_p = (flash_split_heuristic(work, slots, n_blocks) if cfg.prefill_split == "auto"
               else min(cfg.prefill_split, n_blocks))
        plan.update(n_mblocks=n_mblocks, n_splits_p=s_p, n_prefill_ctas=work * s_p)
    if spec.has_decode:
        n_hblocks = math.ceil(m.group_size / t.decode_rows)
        items = spec.decode_batch * m.kv_heads * n_hblocks
        n_blocks = math.ceil(spec.decode_ctx / t.decode_n)
        s_d = (flash_split_heuristic(items, slots, n_blocks) if cfg.decode_split == "auto"
               else min(cfg.decode_split, n_blocks))
        plan.update(n_hblocks=n_hblocks, n_splits_d=s_d, n_decode_ctas=items * s_d)
    return HFusePlan(**plan)


__all__ = ["HFuseTiles", "HFuseConfig", "HFusePlan", "default_tiles", "resolve_tiles", "make_plan", "decode_rows_for",
           "kv_split_range", "smem_budget", "PARTITION_WARPS"]
