"""Planning of the Hopper-native POD kernel (kernels/hopper/kernel.py): tiles, shared-memory and
register budgets, work items, and a pure-Python model of the kernel's scheduler.

Pure Python (no GPU, no Triton), so that every choice is unit-tested on the CPU.

Work items (both decoded the same way here and in the kernel):
  * prefill item ``t`` in [0, n_prefill_items): one 128-row query tile (two 64-row halves, one per
    consumer warpgroup) of one query head over one KV split. Items are numbered longest first
    (the last query block of a causal chunk sees the most keys), split fastest, then head:
    ``split = t % S; h = (t // S) % H; mb = n_mblocks - 1 - t // (S * H)``.
  * decode item ``i`` in [0, n_decode_items): query heads ``hb*16 ..`` of one KV head's GQA group
    of one request over one KV split: ``split = i % S; hb = (i // S) % n_hblocks;
    kvh = (i // (S * n_hblocks)) % Hkv; b = i // (S * n_hblocks * Hkv)``.

Scheduling: ``grid = min(SMs * ctas_per_sm, items)`` persistent CTAs: one per SM for prefill and
POD (the CTA's shared memory, > 114 KB, keeps a second one off the SM), two for decode alone.
Every CTA holds the prefill pipeline (producer warp + 2 consumer warpgroups) *and* the decode
pipeline (producer warp + 1 consumer warpgroup), so the co-location the paper's per-SM tickets
arrange for separate CTAs is structural here. A CTA's
*rank* comes from the launch order (``atomic_add`` on a counter: the first CTA to start gets
rank 0 and with it the longest prefill tiles; %smid is recorded per rank for the timeline); each
pipeline then walks the items ``rank, rank + grid, rank + 2 grid, ...`` of its queue. The last
CTA to finish resets the counter for the next launch. ``simulate`` below replays that.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field, replace

from kernels.common.splitkv import kv_split_range  # noqa: F401  (as the kernel splits; tests)
from kernels.workload import BatchSpec

MODE_PREFILL, MODE_DECODE, MODE_POD = "prefill", "decode", "pod"
MODES = (MODE_PREFILL, MODE_DECODE, MODE_POD)

BLOCK_M = 128           # prefill query rows per item: 2 consumer warpgroups x 64 rows (wgmma M = 64)
WG_ROWS = 64
DECODE_ROWS = 16        # decode tile rows (query heads of one GQA group, padded; one mma.sync row block)

# sm_90: 227 KB of shared memory per CTA (opt-in), 228 KB per SM, 1 KB reserved per CTA; keep a
# margin for the compiler's own scratch (layout conversions, reductions) and the mbarriers.
SMEM_PER_BLOCK = 227 * 1024
SMEM_PER_SM = 228 * 1024
SMEM_MARGIN = 3 * 1024
REGS_PER_SM = 65536


def _pow2(x: int) -> bool:
    return x >= 1 and not x & (x - 1)


@dataclass(frozen=True)
class HopperTiles:
    """Tiles and resources of one compiled variant of the kernel."""

    mode: str
    block_n: int = 128          # prefill keys per K/V stage
    stages: int = 2             # prefill K/V ring depth
    decode_n: int = 64          # decode keys per K/V stage
    decode_stages: int = 3      # decode K/V ring depth
    consumer_regs: int = 240    # per thread, prefill consumer warpgroups (setmaxnreg)
    decode_regs: int = 96       # per thread, decode consumer warpgroup
    producer_regs: int = 24     # per thread, the producer warps (TMA issue only)
    ctas_per_sm: int = 1
    # the two prefill warpgroups take turns issuing wgmma (FA3's scheduler barrier); off: on the H200
    # it changed the prefill's rate by < 1% (study hopper_prefill_rate), each turn costing warpgroup barriers
    pingpong: bool = False

    @property
    def has_prefill(self) -> bool:
        return self.mode in (MODE_PREFILL, MODE_POD)

    @property
    def has_decode(self) -> bool:
        return self.mode in (MODE_DECODE, MODE_POD)

    def warps(self) -> int:
        """Warps of one CTA as Gluon lays them out: partitions rounded up to whole warpgroups."""
        w = 0
        if self.has_prefill:
            w += 8 + 1        # 2 consumer warpgroups + producer warp
        if self.has_decode:
            w += 4 + 1        # decode consumer warpgroup + producer warp
        return -(-w // 4) * 4

    def launch_regs(self) -> int:
        """Registers per thread at launch (the kernel's maxnreg): the register file over the warps
        of all CTAs on an SM, rounded down to a multiple of 8."""
        return min(256, (REGS_PER_SM // (self.warps() * 32 * self.ctas_per_sm)) // 8 * 8)

    def smem_bytes(self, head_dim: int, elem: int = 2) -> int:
        """Operand shared memory of one CTA (Q tiles and the K/V rings), without barriers/scratch."""
        b = 0
        if self.has_prefill:
            b += (BLOCK_M + 2 * self.stages * self.block_n) * head_dim * elem
        if self.has_decode:
            b += (DECODE_ROWS + 2 * self.decode_stages * self.decode_n) * head_dim * elem
        return b

    def smem_budget(self) -> int:
        if self.ctas_per_sm == 1:
            return SMEM_PER_BLOCK - SMEM_MARGIN
        return SMEM_PER_SM // self.ctas_per_sm - 1024 - SMEM_MARGIN

    def register_split(self) -> dict:
        """setmaxnreg per partition and the check that they fit the register file."""
        parts = {}
        if self.has_prefill:
            parts["prefill_consumer_x2"] = self.consumer_regs
        if self.has_decode:
            parts["decode_consumer"] = self.decode_regs
        parts["producers"] = self.producer_regs
        return parts

    def validate(self, head_dim: int) -> None:
        """Raise ValueError when this variant cannot be compiled/launched at ``head_dim``."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("block_n", "decode_n"):
            v = getattr(self, name)
            if not _pow2(v) or not 16 <= v <= 256:
                raise ValueError(f"{name} must be a power of two in [16, 256] (Gluon tiles), got {v}")
        if self.decode_n < 32:
            raise ValueError("decode_n must be >= 32 (4 warps x 8 columns of mma.sync)")
        for name in ("stages", "decode_stages"):
            if not 1 <= getattr(self, name) <= 6:
                raise ValueError(f"{name} must be 1..6")
        for name in ("consumer_regs", "decode_regs", "producer_regs"):
            v = getattr(self, name)
            if v % 8 or not 24 <= v <= 256:
                raise ValueError(f"{name} must be a multiple of 8 in [24, 256], got {v}")
        if self.smem_bytes(head_dim) > self.smem_budget():
            raise ValueError(f"{self} needs {self.smem_bytes(head_dim)} B of shared memory at head dim {head_dim}, "
                             f"over the {self.smem_budget()} B budget")
        # registers: warpgroups of the CTA(s) on one SM after setmaxnreg
        wg = 0
        if self.has_prefill:
            wg += 2 * self.consumer_regs
        if self.has_decode:
            wg += self.decode_regs
        wg += self.producer_regs * (self.warps() // 4 - (2 if self.has_prefill else 0) - (1 if self.has_decode else 0))
        if wg * 128 * self.ctas_per_sm > REGS_PER_SM:
            raise ValueError(f"{self}: setmaxnreg budgets need {wg * 128 * self.ctas_per_sm} registers per SM, "
                             f"more than {REGS_PER_SM}")


def default_tiles(mode: str, head_dim: int) -> HopperTiles:
    """Tiles per variant and head dimension (checked by tests/test_hopper_compile.py: sm_90a compile,
    no local-memory spills, shared memory within 227 KB).

    prefill alone (FA3's shape): 2 x 64-row consumer warpgroups at 240 registers, producer warp at
    24; 128 keys a stage, 2 stages (Q 32 KB + K/V 128 KB at head dim 128); head dim 64: 3 stages;
    head dim 256: 64 keys a stage (Q 64 KB + K/V 128 KB).
    decode alone: a decode consumer warpgroup (mma.sync, 16 rows) + producer warp, 2 CTAs per SM
    (~100 KB each), 64 keys a stage, 3 stages (32 at head dim 256).
    pod: both pipelines in one CTA (16 warps, 128 registers each at launch): prefill 64 keys a
    stage (the consumer's S, P and O fit 184-192 registers), decode 64 keys; 3 stages each at head
    dim 64, 2 prefill and 3 decode stages at 128; not at head dim 256 (ValueError: the methods
    report it unavailable and POD serves)."""
    if head_dim not in (64, 128, 256):
        raise ValueError(f"head_dim must be 64, 128 or 256, got {head_dim}")
    big = head_dim == 256
    if mode == MODE_PREFILL:
        t = HopperTiles(mode, block_n=64 if big else 128, stages=3 if head_dim == 64 else 2,
                        consumer_regs=240, producer_regs=24)
    elif mode == MODE_DECODE:
        t = HopperTiles(mode, decode_n=32 if big else 64, decode_stages=3, decode_regs=232, producer_regs=24,
                        ctas_per_sm=2)
    elif mode == MODE_POD:
        if big:
            # 16 warps leave 128 registers a thread at launch (the cap the whole kernel is compiled
            # under); the 64x256 fp32 accumulator of wgmma m64n256 alone takes 128: ptxas refuses
            raise ValueError("the fused Hopper kernel does not take head dim 256 (a 64x256 fp32 wgmma accumulator "
                             "does not fit the 128 registers a thread of a 16-warp CTA has at launch)")
        # 64-key decode blocks: with 32 the decode side held 48 KB of K/V in flight per SM and the
        # fused kernel ran 1.50 ms on a llama-3-8b batch (1024-token chunk at 12K, 80 decodes of 12K)
        # where 64 keys with 2 prefill stages ran 1.14 (results/h200/raw/hopper_rate); registers move
        # from the prefill consumers (192 -> 184, spill-free) to the decode side's larger tiles
        if head_dim == 128:
            t = HopperTiles(mode, block_n=64, stages=2, decode_n=64, decode_stages=3, consumer_regs=184,
                            decode_regs=120, producer_regs=24)
        else:
            t = HopperTiles(mode, block_n=64, stages=3, decode_n=64, decode_stages=3, consumer_regs=192,
                            decode_regs=104, producer_regs=24)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    # fewer stages until the CTA fits (keeps the defaults valid if the margins change)
    while t.smem_bytes(head_dim) > t.smem_budget() and (t.stages > 1 or t.decode_stages > 1):
        if t.has_decode and t.decode_stages >= max(2, t.stages if t.has_prefill else 0):
            t = replace(t, decode_stages=t.decode_stages - 1)
        else:
            t = replace(t, stages=t.stages - 1)
    t.validate(head_dim)
    return t


@dataclass(frozen=True)
class HopperConfig:
    """YAML options of the Hopper methods (None / 'auto' keep the defaults)."""

    prefill_split: str | int = "auto"
    decode_split: str | int = "auto"
    block_n: int | None = None
    stages: int | None = None
    decode_n: int | None = None
    decode_stages: int | None = None
    grid: int | None = None          # persistent CTAs (default: SMs x ctas_per_sm)
    pingpong: bool | None = None     # prefill warpgroups alternate on the tensor cores (default: the tiles')

    def __post_init__(self):
        for name in ("prefill_split", "decode_split"):
            v = getattr(self, name)
            if not (v == "auto" or (isinstance(v, int) and v >= 1)):
                raise ValueError(f"{name} must be 'auto' or a positive int, got {v!r}")
        if self.grid is not None and self.grid < 1:
            raise ValueError("grid must be >= 1")
        if self.pingpong not in (None, True, False):
            raise ValueError(f"pingpong must be true or false, got {self.pingpong!r}")


def resolve_tiles(mode: str, head_dim: int, config: HopperConfig | None = None) -> HopperTiles:
    cfg = config or HopperConfig()
    t = default_tiles(mode, head_dim)
    t = replace(t, block_n=cfg.block_n or t.block_n, stages=cfg.stages or t.stages,
                decode_n=cfg.decode_n or t.decode_n, decode_stages=cfg.decode_stages or t.decode_stages,
                pingpong=t.pingpong if cfg.pingpong is None else cfg.pingpong)
    t.validate(head_dim)
    return t


def split_heuristic(items: int, slots: int, n_blocks: int, max_splits: int = 64) -> int:
    """KV splits so that ``items * splits`` fills the persistent slots: none when the items
    already give every slot ~2 items (persistent CTAs balance over several), else the smallest
    count within 90% of the best wave efficiency, each split keeping >= 2 key blocks."""
    if items <= 0 or n_blocks <= 1 or items >= 2 * slots:
        return 1
    max_splits = max(1, min(max_splits, n_blocks // 2 or 1, -(-4 * slots // items)))

    def eff(s):
        waves = items * s / slots
        return waves / math.ceil(waves)

    best = max(eff(s) for s in range(1, max_splits + 1))
    return next(s for s in range(1, max_splits + 1) if eff(s) >= 0.9 * best)


@dataclass(frozen=True)
class HopperPlan:
    tiles: HopperTiles
    num_sms: int
    grid: int
    causal: bool = True
    n_mblocks: int = 0
    n_splits_p: int = 1
    n_prefill_items: int = 0
    n_hblocks: int = 0
    n_splits_d: int = 1
    n_decode_items: int = 0
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tiles"] = asdict(self.tiles)
        return d


def mode_for(spec: BatchSpec, requested: str) -> str:
    """The variant that computes ``requested`` parts of ``spec``: POD on a batch with one part runs
    that part's variant (the same device code, without the other pipeline)."""
    if requested == MODE_POD:
        if not spec.has_decode:
            return MODE_PREFILL
        if not spec.has_prefill:
            return MODE_DECODE
    return requested


def make_plan(spec: BatchSpec, num_sms: int, mode: str, config: HopperConfig | None = None) -> HopperPlan:
    if num_sms < 1:
        raise ValueError("num_sms must be >= 1")
    cfg = config or HopperConfig()
    m = spec.model
    t = resolve_tiles(mode, m.head_dim, cfg)
    slots = num_sms * t.ctas_per_sm
    plan = dict(tiles=t, num_sms=num_sms, causal=bool(spec.causal))
    total = 0
    if t.has_prefill and spec.has_prefill:
        n_mblocks = -(-spec.prefill_len // BLOCK_M)
        tiles_p = m.q_heads * n_mblocks
        n_blocks = -(-spec.prefill_kv_len // t.block_n)
        sp = (split_heuristic(tiles_p, slots, n_blocks) if cfg.prefill_split == "auto"
              else min(cfg.prefill_split, n_blocks))
        plan.update(n_mblocks=n_mblocks, n_splits_p=sp, n_prefill_items=tiles_p * sp)
        total = max(total, tiles_p * sp)
    if t.has_decode and spec.has_decode:
        n_hblocks = -(-m.group_size // DECODE_ROWS)
        items = spec.decode_batch * m.kv_heads * n_hblocks
        n_blocks = -(-spec.decode_ctx // t.decode_n)
        sd = (split_heuristic(items, slots, n_blocks) if cfg.decode_split == "auto"
              else min(cfg.decode_split, n_blocks))
        plan.update(n_hblocks=n_hblocks, n_splits_d=sd, n_decode_items=items * sd)
        total = max(total, items * sd)
    grid = min(cfg.grid or slots, max(1, total))
    return HopperPlan(grid=grid, **plan)


# ----------------------------------------------------------------------------------------------
# work items, as the kernel decodes them
# ----------------------------------------------------------------------------------------------
def prefill_item(t: int, plan: HopperPlan, spec: BatchSpec) -> dict:
    """(head, query block, split, key blocks [lo, hi)) of prefill item ``t`` (kernel: _prefill_coords)."""
    S, H = plan.n_splits_p, spec.model.q_heads
    split = t % S
    r = t // S
    h = r % H
    mb = plan.n_mblocks - 1 - r // H
    lq, lk = spec.prefill_len, spec.prefill_kv_len
    kv_end = min(lk, lk - lq + (mb + 1) * BLOCK_M) if plan.causal else lk
    n_blocks = -(-kv_end // plan.tiles.block_n)
    lo, hi = kv_split_range(n_blocks, S, split)
    return {"h": h, "mb": mb, "split": split, "lo": lo, "hi": hi}


def decode_item(i: int, plan: HopperPlan, spec: BatchSpec, seqlen: int | None = None) -> dict:
    """(request, kv head, head block, split, key blocks [lo, hi)) of decode item ``i`` (kernel: _decode_coords)."""
    S, nh, hkv = plan.n_splits_d, plan.n_hblocks, spec.model.kv_heads
    split = i % S
    r = i // S
    hb = r % nh
    r //= nh
    kvh = r % hkv
    b = r // hkv
    L = spec.decode_ctx if seqlen is None else seqlen
    lo, hi = kv_split_range(-(-L // plan.tiles.decode_n), S, split)
    return {"b": b, "kvh": kvh, "hb": hb, "split": split, "lo": lo, "hi": hi}


def cta_items(rank: int, grid: int, n_items: int) -> range:
    """Items one pipeline of the CTA of ``rank`` walks (kernel: ``range(rank, n_items, grid)``)."""
    return range(rank, n_items, grid)


def ring_sequence(blocks_per_item: list, stages: int) -> list:
    """(stage, phase) of every K/V block a pipeline's producer fills and its consumers read, in
    order: the producer and consumers each keep one running block counter across items."""
    seq, it = [], 0
    for n in blocks_per_item:
        for _ in range(n):
            seq.append((it % stages, (it // stages) & 1))
            it += 1
    return seq


def simulate(plan: HopperPlan, spec: BatchSpec, seed: int = 0, sm_of_cta=None) -> dict:
    """Replay the kernel's scheduler for ``plan``: CTAs start in a random order on random SMs
    (``sm_of_cta`` to pin), take their rank from the launch counter, and each pipeline walks its
    items. Returns {"prefill": [(rank, item), ...], "decode": [...], "ranks": {cta: rank},
    "sm": {rank: sm}, "counter_after": value}; raises AssertionError on any scheduling fault."""
    rng = random.Random(seed)
    order = list(range(plan.grid))
    rng.shuffle(order)
    counter = 0
    done = 0
    ranks, sm = {}, {}
    out = {"prefill": [], "decode": []}
    for cta in order:                       # each CTA: rank = atomic_add(counter, 1)
        rank = counter
        counter += 1
        ranks[cta] = rank
        sm[rank] = sm_of_cta(cta) if sm_of_cta else rng.randrange(plan.num_sms)
        if plan.tiles.has_prefill:
            for t in cta_items(rank, plan.grid, plan.n_prefill_items):
                out["prefill"].append((rank, t))
        if plan.tiles.has_decode:
            for i in cta_items(rank, plan.grid, plan.n_decode_items):
                out["decode"].append((rank, i))
        prev = done                          # done = atomic_add(done_ctr, 1)
        done += 1
        if prev == plan.grid - 1:            # the last CTA resets both counters for the next launch
            counter, done = 0, 0
    for part, n in (("prefill", plan.n_prefill_items), ("decode", plan.n_decode_items)):
        got = sorted(i for _, i in out[part])
        assert got == list(range(n)), f"{part}: items not covered exactly once"
    assert sorted(ranks.values()) == list(range(plan.grid)), "ranks are not a permutation"
    out.update(ranks=ranks, sm=sm, counter_after=counter, done_after=done)
    return out
