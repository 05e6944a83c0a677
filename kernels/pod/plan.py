"""Launch planning for our POD kernel family: every knob of the paper, each with an automatic default.

Pure Python (no GPU needed), so the choices are unit-tested on the CPU.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from kernels.common.splitkv import flash_split_heuristic, split_candidates  # noqa: F401  (heuristic re-exported: tests, scripts)
from kernels.shapes import dtype_bytes
from kernels.workload import BatchSpec

# The former automatic 2-vs-4 CTA rule, kept only as ``plan: thresholds`` so that it can be timed
# beside the calibrated plan on one machine (experiments/select.py documents the study that fit it).
# Machine balance (FLOP per byte): H100 SXM dense fp16 989 TFLOP/s over 3.35 TB/s.
DEFAULT_MACHINE_BALANCE = 295.0
# 2 CTAs per SM when the prefill's compute time at peak is at least this fraction of the decodes'
# memory time at peak. Fit on H100 figure-11 batches (results/raw/pod_ctas_ds3, pod_ctas_rule); on
# the H200 the rule left POD slower than OURS_Serial on 508 of 4410 batches (issue 17).
PREFILL_DOMINANCE = 0.25
# How ``ctas_per_sm: auto`` decides (PodConfig.plan): "model" = the device's calibrated cost model
# (kernels/pod/calibration.py) picks serial, fused 2 or fused 4 CTAs/SM; "thresholds" = the rule above;
# "measured" = the three are timed on the GPU at hand the first time a batch shape (its key, see
# ``plan_key``) is seen, as Triton's autotuner does, and the fastest runs from then on
PLAN_RULES = ("model", "thresholds", "measured")
# What "measured" keys its decisions on: "exact" shapes, or each length rounded up to a power of two
# ("pow2": a serving engine whose every iteration differs measures once per bucket)
PLAN_KEYS = ("exact", "pow2")
PREFILL_KERNELS = ("auto", "triton", "hopper")
# A fused launch must be predicted this much faster than serial to be chosen: the timing noise of
# the bar "never slower than our own serial" (issue 17), so a near tie runs the two launches
DEFAULT_FUSE_MARGIN = 0.02
# How the CTAs of one launch of ``pod_kernel`` find their work (its MODE constexpr).
MODE_PREFILL = 0   # prefill tiles only
MODE_DECODE = 1    # decode tiles only
MODE_CTA = 2       # both parts, CTA-parallel: the block index decides (prefill CTAs first)
MODE_POD = 3       # both parts, SM-aware: each CTA binds itself to a part at run time (BINDING)
MODES = (MODE_PREFILL, MODE_DECODE, MODE_CTA, MODE_POD)
FUSED_MODES = (MODE_CTA, MODE_POD)

# How a POD CTA picks its part (the kernel's BINDING constexpr = index in BINDINGS).
BINDING_TICKET = 0     # the paper's per-SM ticket modulo the policy's P+D
BINDING_RESIDENT = 1   # the part furthest below its P:D share of the CTAs running on this SM now
BINDING_PROGRESS = 2   # the part that has handed out the smaller fraction of its CTAs
BINDINGS = ("ticket", "resident", "progress")


@dataclass(frozen=True)
class Tiles:
    """Tile shapes and launch resources of one kernel configuration."""

    block_m: int      # prefill query rows per CTA
    block_n: int      # prefill keys per step
    decode_rows: int  # decode query-row tile (query heads of one KV group, padded)
    decode_n: int     # decode keys per step
    virtual: int      # virtual decode CTAs (work items) per physical decode CTA
    num_warps: int
    num_stages: int
    maxnreg: int = 0  # register cap per thread (0: compiler's choice)
    decode_stages: int | None = None  # pipeline depth of the decode loop alone (None: num_stages)


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def default_tiles(kind: str, head_dim: int, ctas_per_sm: int = 2) -> Tiles:
    """Tiles for ``kind`` in {"prefill", "decode", "fused"}. Prefill-alone and decode-alone use the
    shapes best for that part alone; "fused" uses shapes that let ``ctas_per_sm`` CTAs share an SM.

    Residency on Hopper (65536 registers, 227 KB shared memory per SM), from the sm_90 compile of
    the fused kernel at head dim 128: 2 CTAs/SM = 128x64 prefill tiles, 8 warps, 2 stages, capped
    at 128 registers (96 KB shared each); 4 CTAs/SM = 64x32 tiles, 4 warps, 2 stages, 128
    registers, 48 KB each at 2 stages. The default is 3 stages, faster on the sampled figure-11
    batches (results/raw/pod_knobs), although its 70 KB admit only 3 such CTAs per SM: "4 CTAs/SM"
    names the tile set, not the residency. Without the cap the compiler takes ~200 registers and only one
    8-warp CTA fits, which would leave nothing to co-locate."""
    big, small = head_dim >= 256, head_dim <= 64
    if kind == "prefill":
        if big:
            return Tiles(64, 32, 16, 32, 1, 4, 2)
        return Tiles(128, 64, 16, 64, 1, 4 if small else 8, 3)
    if kind == "decode":
        # 4 stages: 3.8% faster than 3 on average over 20 figure-11 batches, never slower (pod_decode_tiles)
        return Tiles(64, 64, 16, 32 if big else 64, 1, 4, 4)
    if kind != "fused":
        raise ValueError(f"unknown tile kind {kind!r}")
    if ctas_per_sm == 2:
        if big:
            return Tiles(64, 32, 16, 32, 2, 4, 2, 168)
        # the decode loop 3 deep (one more K/V block in flight) still fits the prefill's 96 KB; at head
        # dim 128 POD got 6% faster on the 180 figure-11 batches with 2 CTAs/SM, faster on 173 of them
        # (results/raw/pod_decode_pipeline)
        return Tiles(128, 64, 16, 64, 2, 8, 2, 128, decode_stages=3)
    if ctas_per_sm == 4:
        if big:
            return Tiles(32, 32, 16, 16, 1, 4, 1, 128)
        return Tiles(64, 32, 16, 64, 1, 4, 3, 128)
    raise ValueError(f"ctas_per_sm must be 2 or 4, got {ctas_per_sm}")


def decode_smem_bytes(rows: int, keys: int, head_dim: int, stages: int, elem_bytes: int = 2) -> int:
    """Shared memory of a decode-alone launch: ``stages`` K and V blocks of ``keys`` keys plus the
    query tile. Matches what Triton 3.6 asked on sm_90 for 64 rows, 128-key blocks 4 deep at head
    dim 128 (278,528 B, the H200's OutOfResources in results/h200/raw/figure10, commit 7fb5d7f)."""
    return (2 * stages * keys + rows) * head_dim * elem_bytes


def deepest_decode_ring(rows: int, keys: int, head_dim: int, most: int, smem_limit: int, elem_bytes: int = 2) -> int:
    """The most stages (at most ``most``, at least 1) whose decode_smem_bytes fit ``smem_limit``."""
    fits = [s for s in range(1, most + 1) if decode_smem_bytes(rows, keys, head_dim, s, elem_bytes) <= smem_limit]
    return max(fits, default=1)


@dataclass(frozen=True)
class PodConfig:
    """Knobs of the POD kernel (paper section 4). 'auto' picks per batch."""

    ctas_per_sm: int | str = "auto"          # 2 | 4 | "auto"
    policy: str = "proportional"             # "proportional" | "50:50" | fixed tickets "P:D", e.g. "3:1"
    # how a POD CTA picks its part: "ticket" = the paper's per-SM ticket modulo the policy's P+D;
    # "resident" = the part whose CTAs running on this SM now are furthest below their P:D share;
    # "progress" = the part that has handed out the smaller fraction of its CTAs (no policy used)
    binding: str = "ticket"                  # "ticket" | "resident" | "progress"
    decode_q_tile: int | str = "auto"        # 16, 32, 64, 128 query rows per decode tile
    virtual_decode_ctas: int | str = "auto"  # work items per decode CTA
    # "two_waves": the paper's limit, at most two full waves of prefill CTAs; "limited": that, and no
    # split at all once the decodes alone fill two waves; "vanilla": FlashDecoding's; a fixed int; or
    # "auto": "limited" with 2 CTAs/SM (prefill-heavy batches), "two_waves" with 4. "limited" left a
    # few prefill CTAs with chains of up to 640 key blocks beside the decodes: on 401 decode-dominated
    # figure-11 batches "two_waves" was never more than 3% slower than OURS_Serial (with "limited":
    # 20-26 slower, up to 7.8%), 0.8% faster where the plans differ (results/raw/pod_decode_dominant);
    # on the 261 kept batches it changes it was 0.2% faster with 4 CTAs/SM and 4% slower with 2
    # (results/raw/pod_split_kept), two passes each
    prefill_split: str | int = "auto"
    # "measured": the decode-alone launch (OURS_decode and the serial path's decode) times the
    # heuristic's split, no split and 2-8 splits the first time a decode shape is prepared on the GPU
    # at hand, and keeps the fastest (kernels/adapters/pod_triton.py); a launch planned without
    # timing (fused, the serving engine) takes the heuristic's. "auto": FlashDecoding's heuristic,
    # which counts 4 decode CTAs per SM where the sm_90 compile fits 2 at head dim 128
    # (kernels/pod/aot.py); on the H200 its unsplit decode ran at 3.9-4.3 TB/s or 4.5-4.6 depending
    # on the size of the last wave (docs/pod-kernel-notes.md, figure11_queue_ahead's OURS_decode)
    decode_split: str | int = "measured"     # "measured" | "auto" | fixed int
    kv_layout: str = "dense"                 # "dense" | "paged" (block table into the page pool)
    # "tma": prefill K/V through tensor descriptors (Hopper's copy engine, dense KV, sm_90+); measured
    # 9% slower than pointer loads for the prefill alone on H100 (results/raw/pod_tiles)
    prefill_loads: str = "pointer"           # "pointer" | "tma"
    num_warps: int | None = None
    num_stages: int | None = None
    decode_stages: int | None = None         # decode loop's own pipeline depth (None: num_stages)
    maxnreg: int | None = None
    block_m: int | None = None
    block_n: int | None = None
    decode_n: int | None = None
    # how ``ctas_per_sm: auto`` decides: "measured" (the default: serial, fused 2 and fused 4 timed
    # once per batch key on the GPU at hand, the fastest runs), "thresholds" (the H100-fit rule:
    # always fused, 2 or 4 by PREFILL_DOMINANCE x machine_balance) or "model" (the calibrated cost
    # model predicts the three). On all 4410 figure-11 batches of the H200, one lease, "measured" was
    # slower than OURS_Serial by more than 2% on 81 (48 of them ran serial: timing noise),
    # "thresholds" on 541; mean time over OURS_Serial 0.915 against 0.928
    # (results/raw/pod_plan_measured). "model" was slower by more than 2% on 685 of 2464, the rule on
    # 244 (mean 0.989 against 0.919; results/raw/pod_plan_model). Rows measured before this default
    # say "plan thresholds" in their impl.
    plan: str = "measured"
    fuse_margin: float = DEFAULT_FUSE_MARGIN  # "model"/"measured": fused must be this fraction faster
    plan_key: str = "exact"                  # "measured": "exact" | "pow2" (see PLAN_KEYS)
    machine_balance: float | None = None     # FLOP/byte for the "thresholds" rule
    # the prefill launch of the serial path (OURS_prefill, OURS_Serial, OURS_Streams and POD's serial
    # candidate): "auto" runs the Gluon Hopper prefill (kernels/hopper) where it runs (sm_90, Gluon,
    # the batch's layout) unless an option of the Triton launches is set (``tuned_options``: a YAML
    # that tunes them gets them), else this family's Triton prefill; "triton" always
    # the Triton one (the portable path, and the one every fused launch of this family runs);
    # "hopper" only the Gluon one (unavailable elsewhere). On the H200 the Gluon prefill ran at
    # 0.96x FlashInfer fa3's median rate, the Triton one at 0.76x (results/h200/raw/hopper_prefill_rate)
    prefill_kernel: str = "auto"
    # plan "measured": where the Gluon Hopper kernel runs (sm_90) and no option of the Triton launches
    # is set (``tuned_options``), its fused launch (both pipelines in every CTA: POD_hopper) is a
    # fourth candidate beside serial and fused 2 / 4 CTAs per SM
    hopper_fused: bool = True

    def __post_init__(self):
        if self.binding not in BINDINGS:
            raise ValueError(f"binding must be one of {', '.join(map(repr, BINDINGS))}, got {self.binding!r}")
        if self.plan not in PLAN_RULES:
            raise ValueError(f"plan must be one of {', '.join(map(repr, PLAN_RULES))}, got {self.plan!r}")
        if self.plan_key not in PLAN_KEYS:
            raise ValueError(f"plan_key must be one of {', '.join(map(repr, PLAN_KEYS))}, got {self.plan_key!r}")
        if not isinstance(self.fuse_margin, (int, float)) or not 0 <= self.fuse_margin < 1:
            raise ValueError(f"fuse_margin must be a fraction in [0, 1), got {self.fuse_margin!r}")
        if self.ctas_per_sm not in (2, 4, "auto"):
            raise ValueError(f"ctas_per_sm must be 2, 4 or 'auto', got {self.ctas_per_sm!r}")
        if self.policy != "proportional" and _fixed_ratio(self.policy) is None:
            raise ValueError(f"policy must be 'proportional', '50:50' or 'P:D' tickets like '3:1', got {self.policy!r}")
        if self.decode_q_tile != "auto" and self.decode_q_tile not in (16, 32, 64, 128):
            raise ValueError(f"decode_q_tile must be 16, 32, 64, 128 or 'auto', got {self.decode_q_tile!r}")
        if self.virtual_decode_ctas != "auto" and self.virtual_decode_ctas not in (1, 2, 4, 8):
            raise ValueError("virtual_decode_ctas must be 1, 2, 4, 8 or 'auto'")
        if not (self.prefill_split in ("auto", "limited", "two_waves", "vanilla") or
                (isinstance(self.prefill_split, int) and self.prefill_split >= 1)):
            raise ValueError("prefill_split must be 'auto', 'limited', 'two_waves', 'vanilla' or a positive int")
        if not (self.decode_split in ("auto", "measured") or
                (isinstance(self.decode_split, int) and self.decode_split >= 1)):
            raise ValueError(f"decode_split must be 'measured', 'auto' or a positive int, got {self.decode_split!r}")
        if self.kv_layout not in ("dense", "paged"):
            raise ValueError("kv_layout must be 'dense' or 'paged'")
        if self.decode_stages is not None and (not isinstance(self.decode_stages, int) or self.decode_stages < 1):
            raise ValueError(f"decode_stages must be a positive int or None, got {self.decode_stages!r}")
        if not isinstance(self.hopper_fused, bool):
            raise ValueError(f"hopper_fused must be true or false, got {self.hopper_fused!r}")
        if self.prefill_kernel not in PREFILL_KERNELS:
            raise ValueError(f"prefill_kernel must be one of {', '.join(map(repr, PREFILL_KERNELS))}, "
                             f"got {self.prefill_kernel!r}")
        if self.prefill_kernel == "hopper" and self.triton_prefill_options():
            raise ValueError(f"prefill_kernel 'hopper' takes none of the Triton prefill's options; set: "
                             f"{', '.join(self.triton_prefill_options())}")
        if self.prefill_loads not in ("tma", "pointer"):
            raise ValueError(f"prefill_loads must be 'pointer' or 'tma', got {self.prefill_loads!r}")
        if self.prefill_loads == "tma" and self.kv_layout == "paged":
            raise ValueError("prefill_loads 'tma' needs kv_layout 'dense': a KV block spans several pages")

    def tuned_options(self) -> list[str]:
        """The options set away from their defaults that tune this family's Triton launches (all but
        the plan's own). Where any is set, ``prefill_kernel: auto`` and ``hopper_fused`` keep to the
        Triton kernels, so a YAML comparing Triton knobs (table 7's splits, figure 14's policies)
        compares them and not the Hopper kernel."""
        plan_own = {"plan", "fuse_margin", "plan_key", "machine_balance", "prefill_kernel", "hopper_fused", "ctas_per_sm"}
        chosen = [f.name for f in fields(self) if f.name not in plan_own and getattr(self, f.name) != f.default]
        # how the split count is chosen is the plan's; a fixed count tunes the launch
        return [n for n in chosen if not (n == "decode_split" and self.decode_split in ("auto", "measured"))]

    def triton_prefill_options(self) -> list[str]:
        """The options set that only the Triton prefill takes (tiles, loads, a paged KV layout)."""
        names = [n for n in ("block_m", "block_n", "num_warps", "num_stages", "maxnreg") if getattr(self, n) is not None]
        if self.prefill_loads != "pointer":
            names.append("prefill_loads")
        if self.kv_layout != "dense":
            names.append("kv_layout")
        return names


@dataclass(frozen=True)
class LaunchPlan:
    """Everything a launch needs besides the tensors."""

    mode: int                  # MODE_PREFILL, MODE_DECODE, MODE_CTA or MODE_POD
    tiles: Tiles
    ctas_per_sm: int
    n_mblocks: int = 0
    n_splits_p: int = 1
    n_prefill_ctas: int = 0
    n_hblocks: int = 0
    n_splits_d: int = 1
    n_items: int = 0
    n_decode_ctas: int = 0
    prefill_ratio: int = 1
    decode_ratio: int = 1
    num_sms: int = 1
    prefill_tma: bool = False  # prefill K/V through tensor descriptors (Hopper's copy engine)
    binding: int = 0           # index into BINDINGS (PodConfig.binding)
    notes: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["tiles"] = asdict(self.tiles)
        return d


def decode_split_candidates(spec: BatchSpec, plan: LaunchPlan) -> list[int]:
    """The decode split counts ``decode_split: measured`` times for ``plan``'s decode-alone launch:
    its own (the heuristic's), none, and 2-8 (kernels/common/splitkv.split_candidates)."""
    if not plan.n_items:
        return [plan.n_splits_d]
    return split_candidates(math.ceil(spec.decode_ctx / plan.tiles.decode_n), plan.n_splits_d)


def choose_ctas_per_sm(spec: BatchSpec, balance: float) -> int:
    """The former rule (``plan: thresholds``): 2 CTAs per SM (larger prefill tiles) when the
    prefill's compute time dominates the decodes' memory time, else 4, as the paper's section 4.2.2
    describes, with a threshold fit on H100 batches."""
    if not spec.has_prefill:
        return 4
    if not spec.has_decode:
        return 2
    return 2 if spec.flops()["prefill"] >= PREFILL_DOMINANCE * balance * spec.bytes_moved()["decode"] else 4


@dataclass(frozen=True)
class ExecutionChoice:
    """How the POD method runs a batch: "serial" (our prefill launch, then our decode launch: what
    OURS_Serial runs), "fused" (one launch with ``ctas_per_sm`` tiles) or "hopper" (one launch of
    the fused Gluon Hopper kernel), and why."""

    kind: str                  # "serial" | "fused" | "hopper" (the fused Gluon kernel of kernels/hopper)
    ctas_per_sm: int           # fused: 2 or 4; serial, hopper: 0
    rule: str                  # "model", "measured", "thresholds" or "fixed" (ctas_per_sm given)
    # {"serial": ms, "fused2": ms, "fused4": ms}: the cost model's predictions, or with rule
    # "measured" the times measured on this GPU
    predicted_ms: dict = field(default_factory=dict)
    calibration: str = ""      # "model": Calibration.ident; "measured": the key the times were measured for
    # "measured": candidates left out because their outputs disagreed with the serial path's
    # ({name: relative difference}; see measured_choice)
    rejected: dict = field(default_factory=dict)

    def describe(self) -> str:
        """'plan model: predicted serial 1.23 vs fused2 1.31 ms, cal X' and the like (impl column)."""
        p = self.predicted_ms
        out = "".join(f"; {k} rejected (differs from serial by {v:.3g})" for k, v in sorted(self.rejected.items()))
        if not any(k != "serial" for k in p):
            return f"plan {self.rule}{out}"
        how = "measured" if self.rule == "measured" else "predicted"
        fused = min((v, k) for k, v in p.items() if k != "serial")
        if self.kind == "serial":
            text = f"{how} serial {p['serial']:.4g} vs {fused[1]} {fused[0]:.4g} ms"
        else:
            won = "hopper" if self.kind == "hopper" else f"fused{self.ctas_per_sm}"
            text = f"{how} {won} {p[won]:.4g} < serial {p['serial']:.4g} ms"
        source = f"key {self.calibration}" if self.rule == "measured" else f"cal {self.calibration}"
        return f"plan {self.rule}: {text}, {source}{out}"


def _nominal_calibration():
    from .calibration import nominal
    return nominal()


def model_ctas_per_sm(spec: BatchSpec, calibration=None) -> int:
    """The fused tile set (2 or 4 CTAs/SM) the cost model predicts faster for ``spec``."""
    fused = (calibration or _nominal_calibration()).predict(spec).fused
    return 2 if fused[2] <= fused[4] else 4


def choose_execution(spec: BatchSpec, config: PodConfig | None = None, calibration=None) -> ExecutionChoice:
    """Serial or fused (and with how many CTAs per SM) for the POD method on ``spec``.

    ``ctas_per_sm`` 2 or 4: fused with it. ``auto`` with ``plan: thresholds``: fused, the former
    rule's tile set. ``auto`` with ``plan: model``: ``calibration`` (a Calibration; None: the
    nominal one) predicts serial and fused with 2 and 4 CTAs/SM; the fastest fused set runs if it is
    predicted at least ``fuse_margin`` faster than serial, else serial."""
    cfg = config or PodConfig()
    if cfg.ctas_per_sm != "auto":
        return ExecutionChoice("fused", cfg.ctas_per_sm, "fixed")
    if cfg.plan == "measured":
        raise ValueError("plan 'measured' is decided by timing the candidates on the GPU (the POD method "
                         "does it, see measured_choice); choose_execution answers 'thresholds' and 'model'")
    if cfg.plan == "thresholds":
        return ExecutionChoice("fused", choose_ctas_per_sm(spec, cfg.machine_balance or DEFAULT_MACHINE_BALANCE),
                               "thresholds")
    cal = calibration or _nominal_calibration()
    pred = cal.predict(spec)
    predicted = {"serial": pred.serial, **{f"fused{c}": t for c, t in pred.fused.items()}}
    best_t, best_c = min((t, c) for c, t in pred.fused.items())
    if best_t < (1.0 - cfg.fuse_margin) * pred.serial:
        return ExecutionChoice("fused", best_c, "model", predicted, cal.ident)
    return ExecutionChoice("serial", 0, "model", predicted, cal.ident)


def plan_key(spec: BatchSpec, how: str = "exact") -> tuple:
    """What a measured decision is reused for: the model's shape and dtype with the batch's four
    lengths, exact or each rounded up to a power of two ("pow2")."""
    m = spec.model
    lengths = (spec.prefill_len, spec.prefill_kv_len, spec.decode_batch, spec.decode_ctx)
    if how == "pow2":
        lengths = tuple(_pow2_at_least(x) if x else 0 for x in lengths)
    elif how != "exact":
        raise ValueError(f"plan_key must be one of {PLAN_KEYS}, got {how!r}")
    return (m.q_heads, m.kv_heads, m.head_dim, str(spec.dtype), spec.page_size, spec.causal, *lengths)


def measured_choice(times_ms: dict, margin: float = DEFAULT_FUSE_MARGIN, key: str = "",
                    rejected: dict | None = None) -> ExecutionChoice:
    """The execution ``times_ms`` ({"serial": ms, "fused2": ms, "fused4": ms[, "hopper": ms]},
    measured on the GPU) says is fastest: the fastest fused launch if it beats serial by at least
    ``margin``, else serial. ``rejected`` ({name: relative difference}) names fused candidates
    whose outputs disagreed with serial's: never chosen, recorded in the choice."""
    rejected = dict(rejected or {})
    if "serial" not in times_ms or not any(k.startswith("fused") or k == "hopper" for k in list(times_ms) + list(rejected)):
        raise ValueError(f"need a serial and at least one fused time, got {sorted(times_ms)}")
    times_ms = {k: t for k, t in times_ms.items() if k not in rejected}
    fused = [(t, k) for k, t in times_ms.items() if k != "serial"]
    best_t, best_k = min(fused) if fused else (float("inf"), "")
    if best_t < (1.0 - margin) * times_ms["serial"]:
        if best_k == "hopper":
            return ExecutionChoice("hopper", 0, "measured", dict(times_ms), key, rejected)
        return ExecutionChoice("fused", int(best_k.removeprefix("fused")), "measured", dict(times_ms), key, rejected)
    return ExecutionChoice("serial", 0, "measured", dict(times_ms), key, rejected)


def _fixed_ratio(policy) -> tuple[int, int] | None:
    """(P, D) of a 'P:D' policy ('50:50' is 1:1), None if the text is not one."""
    try:
        p, d = (int(x) for x in str(policy).split(":"))
    except ValueError:
        return None
    if p < 1 or d < 1:
        return None
    g = math.gcd(p, d)
    return p // g, d // g


def policy_ratio(policy: str, n_prefill: int, n_decode: int, ctas_per_sm: int) -> tuple[int, int]:
    """Tickets per SM given to prefill vs decode: a fixed 'P:D' ('50:50' is 1:1), or proportional
    to their CTA counts within the CTAs that share an SM (1:3 or 2:2 with 4 CTAs per SM)."""
    if n_prefill == 0 or n_decode == 0:
        return 1, 1
    if policy != "proportional":
        return _fixed_ratio(policy)
    share = n_prefill / (n_prefill + n_decode)
    # At most half of an SM's CTAs for prefill: on the 14 kept figure-11 batches where the CTA counts
    # gave 3:1, 2:2 was 6.4-6.8% faster in two passes, while 1:3 and 2:2 were within noise of the best
    # fixed share elsewhere (results/raw/pod_policy_cps4, 1040 batches with 4 CTAs per SM).
    p = min(max(round(share * ctas_per_sm), 1), max(1, ctas_per_sm // 2))
    return p, ctas_per_sm - p


def make_plan(spec: BatchSpec, mode: int, num_sms: int, config: PodConfig | None = None,
              kind: str | None = None, calibration=None, smem_limit: int | None = None) -> LaunchPlan:
    """Plan one launch of ``pod_kernel`` in ``mode`` (MODE_PREFILL, MODE_DECODE, MODE_CTA or MODE_POD).
    A fused launch with ``ctas_per_sm: auto`` takes the tile set ``calibration``'s cost model predicts
    faster (None: the nominal calibration), or the former rule's with ``plan: thresholds``; whether
    to fuse at all is ``choose_execution``'s question, asked by the POD method. ``smem_limit``: the
    device's shared memory per CTA (opt-in), which sizes a decode-alone launch's K/V ring for key
    blocks longer than the default (None: the default ring's keys are kept)."""
    cfg = config or PodConfig()
    m = spec.model
    if kind is None:
        kind = {MODE_PREFILL: "prefill", MODE_DECODE: "decode"}.get(mode, "fused")
    if kind == "fused":
        if cfg.ctas_per_sm != "auto":
            cps = cfg.ctas_per_sm
        elif cfg.plan in ("thresholds", "measured"):
            # "measured" times its candidates in the POD method; a caller planning one fused launch
            # by itself (the serving backend, a CTA trace) gets the rule's tile set
            cps = choose_ctas_per_sm(spec, cfg.machine_balance or DEFAULT_MACHINE_BALANCE)
        else:
            cps = model_ctas_per_sm(spec, calibration)
    else:
        cps = 2 if kind == "prefill" else 4
    t = default_tiles(kind, m.head_dim, cps)
    decode_rows = t.decode_rows if cfg.decode_q_tile == "auto" else cfg.decode_q_tile
    if cfg.decode_q_tile == "auto":
        # the KV group's query heads in one tile when they fit: KV is read once per group
        decode_rows = max(16, min(_pow2_at_least(m.group_size), 64))
    virtual = t.virtual if cfg.virtual_decode_ctas == "auto" else cfg.virtual_decode_ctas
    num_stages, decode_stages = cfg.num_stages or t.num_stages, cfg.decode_stages or t.decode_stages
    if cfg.decode_n and cfg.decode_n > t.decode_n:
        # a longer key block at the default depth outgrows the shared memory the default K/V ring
        # is sized for (figure 10's 128-key blocks 4 deep: 272 KB, over Hopper's 227 KB): keep the
        # ring's keys, or decode alone the deepest ring the device holds, unless the depth is given
        default_depth = t.decode_stages or t.num_stages
        depth = max(1, default_depth * t.decode_n // cfg.decode_n)
        if kind == "decode" and smem_limit:
            # 3 deep on Hopper's 227 KB where the kept keys give 2; a fused launch shares the SM
            # with the prefill's tiles, so it keeps the ring's keys
            depth = deepest_decode_ring(decode_rows, cfg.decode_n, m.head_dim, default_depth, smem_limit,
                                        dtype_bytes(spec.dtype))
        if cfg.decode_stages is None:
            decode_stages = depth
        if kind == "decode" and cfg.num_stages is None:
            num_stages = depth
    t = Tiles(cfg.block_m or t.block_m, cfg.block_n or t.block_n, decode_rows, cfg.decode_n or t.decode_n,
              virtual, cfg.num_warps or t.num_warps, num_stages,
              t.maxnreg if cfg.maxnreg is None else cfg.maxnreg, decode_stages)
    notes = {}
    plan = dict(mode=mode, tiles=t, ctas_per_sm=cps, num_sms=num_sms, prefill_tma=cfg.prefill_loads == "tma",
                binding=BINDINGS.index(cfg.binding))
    slots = num_sms * cps

    n_decode_items = n_decode_ctas = n_hblocks = 0
    if spec.has_decode and mode != MODE_PREFILL:
        n_hblocks = math.ceil(m.group_size / t.decode_rows)
        base_items = spec.decode_batch * m.kv_heads * n_hblocks
        if cfg.decode_split in ("auto", "measured"):
            # parallelism is in CTAs of ``virtual`` items each: unsplit, 2 virtual items of a whole
            # context per CTA made a tail of long decode CTAs with 2 CTAs/SM (pod_binding)
            s_d = flash_split_heuristic(math.ceil(base_items / t.virtual), slots,
                                        math.ceil(spec.decode_ctx / t.decode_n))
        else:
            s_d = cfg.decode_split
        n_decode_items = base_items * s_d
        n_decode_ctas = math.ceil(n_decode_items / t.virtual)
        plan.update(n_hblocks=n_hblocks, n_splits_d=s_d, n_items=n_decode_items, n_decode_ctas=n_decode_ctas)

    if spec.has_prefill and mode != MODE_DECODE:
        n_mblocks = math.ceil(spec.prefill_len / t.block_m)
        work = m.q_heads * n_mblocks
        n_blocks = math.ceil(spec.prefill_kv_len / t.block_n)
        if isinstance(cfg.prefill_split, int):
            s_p = cfg.prefill_split
        else:
            s_p = flash_split_heuristic(work, slots, n_blocks)
            limit = cfg.prefill_split
            if limit == "auto":
                limit = "limited" if cps == 2 else "two_waves"
            if limit in ("limited", "two_waves") and mode in FUSED_MODES:
                # paper 4.2.4: at most two full waves of prefill CTAs
                s_p = min(s_p, max(1, (2 * num_sms) // work))
                if limit == "limited" and n_decode_ctas >= 2 * num_sms:
                    s_p = 1
                notes["prefill_split_vanilla"] = flash_split_heuristic(work, slots, n_blocks)
        plan.update(n_mblocks=n_mblocks, n_splits_p=s_p, n_prefill_ctas=work * s_p)

    if mode in FUSED_MODES:
        p, d = policy_ratio(cfg.policy, plan.get("n_prefill_ctas", 0), n_decode_ctas, cps)
        plan.update(prefill_ratio=p, decode_ratio=d)
    plan["notes"] = notes
    return LaunchPlan(**plan)
