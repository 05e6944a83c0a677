"""Attention backends of the serving engine, one registered class each (as kernels/registry.py does
for the kernel benchmarks). A backend computes one layer's attention for the whole iteration,
reading the KV cache (serving/kv_cache.py) in place; the iteration's new K/V are already written.

  REF        float32 reference, one sequence at a time (any device): the correctness oracle
  FA_Serial  FlashAttention-2 prefill then FlashAttention-2 decode (the paper's Sarathi baseline)
  FI_Serial  FlashInfer batch prefill (paged) then batch decode (tensor cores)
  FI_Batched FlashInfer one batch-prefill call (fa2) over prefill chunks and decodes
  FI_POD     FlashInfer's POD-Attention (dense prefill + paged decode in one kernel)
  POD        our POD method as the kernel benchmarks run it (kernels/adapters/pod_triton.py)

``begin(meta)`` plans once per iteration (shared by all layers, as FlashInfer's wrappers intend);
``forward(layer, q, meta, timer)`` launches. ``timer(label)`` marks "<part>:begin"/"<part>:end"
around the attention kernels ("prefill"/"decode" for serial backends, "attention" for fused).
"""
from __future__ import annotations

import functools
import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .kv_cache import KVCache
from .model import LlamaConfig


class BackendUnavailable(Exception):
    """This backend cannot run here (missing library, wrong device) or on this batch."""


@dataclass
class IterationMeta:
    """Everything the model and the backends need about one iteration's batch.
    Rows: prefill chunks first (in order), then one row per decode."""

    num_tokens: int
    input_ids: torch.Tensor        # (T,) int64
    positions: torch.Tensor        # (T,) int32
    slots: torch.Tensor            # (T,) int64 token rows of the flat KV cache
    sample_rows: torch.Tensor      # (S,) int64 rows whose logits are sampled
    prefills: list                 # [(q_off, q_len, token_base, kv_len)]
    decode_base: list              # per decode: token row of its first key
    decode_kv: list                # per decode: keys attended (its new one included)
    block_size: int
    device: torch.device
    decode_base_t: torch.Tensor | None = None   # (B,) int32 on device
    decode_kv_t: torch.Tensor | None = None     # (B,) int32 on device
    # a decode graph's batch (serving/graphs.py): decode_base/decode_kv hold no real values (the
    # lengths are the graph's bound); the device tensors are the truth
    static: bool = False

    @property
    def prefill_tokens(self) -> int:
        return sum(p[1] for p in self.prefills)

    @property
    def num_decodes(self) -> int:
        return len(self.decode_kv)


_BACKENDS: dict[str, type] = {}


def register(cls):
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _BACKENDS and _BACKENDS[cls.name] is not cls:
        raise ValueError(f"backend {cls.name!r} registered twice")
    _BACKENDS[cls.name] = cls
    return cls


def registered() -> dict:
    return dict(_BACKENDS)


def create(name: str, cfg: LlamaConfig, cache: KVCache, **options):
    if name not in _BACKENDS:
        raise KeyError(f"unknown attention backend {name!r}; registered: {', '.join(sorted(_BACKENDS))}")
    cls = _BACKENDS[name]
    why = cls.unavailable_reason(cache.device)
    if why:
        raise BackendUnavailable(f"{name}: {why}")
    return cls(cfg, cache, **options)


class AttentionBackend:
    name: ClassVar[str] = ""
    devices: ClassVar[tuple] = ("cuda",)
    description: ClassVar[str] = ""
    # the kernel-registry methods (kernels/registry.py) whose kernels this backend calls: the build
    # step warms (JIT-compiles) them before any timed run (serving.run --stage build)
    kernel_methods: ClassVar[tuple] = ()
    # True if begin + forward of a decode-only batch can be captured in a CUDA graph: device-side
    # metadata computed from the meta's device tensors only, host lengths read as bounds
    # (serving/graphs.py)
    supports_decode_graphs: ClassVar[bool] = False
    # seconds of engine work that are not the iteration's (a plan's candidates timed on first
    # sight of a shape, as an autotuner does at start-up); the engine leaves them out of the
    # iteration's duration, as it does JIT compiles
    untimed_seconds: float = 0.0

    def __init__(self, cfg: LlamaConfig, cache: KVCache, **options):
        self.cfg, self.cache, self.options = cfg, cache, options
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self._impl = self.name

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str | None:
        if torch.device(device).type not in cls.devices:
            return f"runs on {'/'.join(cls.devices)} only, not {torch.device(device).type}"
        return None

    def begin(self, meta: IterationMeta) -> None:
        pass

    def forward(self, li: int, q: torch.Tensor, meta: IterationMeta, timer=None) -> torch.Tensor:
        raise NotImplementedError

    def info(self) -> dict:
        return {"impl": self._impl}

    def counters(self) -> dict:
        """Counters of this backend for a run's summary (since ``reset_counters``)."""
        return {}

    def reset_counters(self) -> None:
        """Start the run's counters (the engine calls it after its warm-up)."""


def _mark(timer, label):
    if timer is not None:
        timer(label)


# ---------------------------------------------------------------- reference
@register
class Reference(AttentionBackend):
    name = "REF"
    devices = ("cuda", "cpu")
    description = "float32 reference (kernels/reference.py), one sequence at a time"

    def __init__(self, cfg, cache, **options):
        super().__init__(cfg, cache, **options)
        self._impl = "kernels.reference.reference_attention (float32)"

    def forward(self, li, q, meta, timer=None, out_dtype=None):
        """``out_dtype`` (default q's): float32 keeps the reference unrounded (the backend check)."""
        from kernels.reference import reference_attention

        fk, fv = self.cache.flat(li)
        out = torch.empty_like(q, dtype=out_dtype or q.dtype)
        seqs = [(off, n, base, kv) for off, n, base, kv in meta.prefills]
        off = meta.prefill_tokens
        seqs += [(off + i, 1, b, kv) for i, (b, kv) in enumerate(zip(meta.decode_base, meta.decode_kv))]
        _mark(timer, "attention:begin")
        for o, n, base, kv in seqs:
            r = reference_attention(q[None, o:o + n], fk[None, base:base + kv], fv[None, base:base + kv], [kv],
                                    causal=True, sm_scale=self.scale)
            out[o:o + n] = r[0].to(out.dtype)
        _mark(timer, "attention:end")
        return out


# ---------------------------------------------------------------- FlashAttention-2
def _fa_forward(*args, **kwargs):
    """PyTorch's FlashAttention-2 entry point (one name, so tests can stand in for it on the CPU)."""
    return torch.ops.aten._flash_attention_forward(*args, **kwargs)


def _flash_schema_has(arg: str) -> bool:
    try:
        return arg in str(torch.ops.aten._flash_attention_forward.default._schema)
    except Exception:
        return False


@register
class FASerial(AttentionBackend):
    """CUDA: PyTorch's FlashAttention-2 (``aten._flash_attention_forward``): each prefill chunk on its
    dense key slice (bottom-right causal), then all decodes in one varlen call whose ``cum_seq_k``
    holds each request's first key row and ``seqused_k`` its length (no copy). CPU: SDPA computing
    the same (impl ``torch_sdpa_cpu``)."""

    name = "FA_Serial"
    kernel_methods = ("FA_prefill", "FA_decode")
    devices = ("cuda", "cpu")
    supports_decode_graphs = True
    description = "FlashAttention-2 prefill, then FlashAttention-2 decode"

    @classmethod
    def unavailable_reason(cls, device):
        why = super().unavailable_reason(device)
        if why or torch.device(device).type == "cpu":
            return why
        if not torch.backends.cuda.is_flash_attention_available():
            return "this PyTorch build has no FlashAttention-2 (torch.backends.cuda.is_flash_attention_available())"
        if not _flash_schema_has("seqused_k"):
            return "this PyTorch's _flash_attention_forward has no seqused_k (needs torch >= 2.5)"
        return None

    def __init__(self, cfg, cache, **options):
        super().__init__(cfg, cache, **options)
        self.cuda = cache.device.type == "cuda"
        self._impl = (f"aten._flash_attention_forward dense prefill + varlen/seqused_k decode (torch {torch.__version__})"
                      if self.cuda else "torch_sdpa_cpu")

    def begin(self, meta):
        if self.cuda and meta.num_decodes:
            # computed on the device from the meta's tensors, so a decode graph recomputes them
            base = meta.decode_base_t
            self._cu_k = torch.cat([base, base[-1:] + meta.decode_kv_t[-1:]])
            self._cu_q = torch.arange(meta.num_decodes + 1, dtype=torch.int32, device=meta.device)
            self._max_k = max(meta.decode_kv)

    def _prefill(self, q, fk, fv, off, n, base, kv):
        if self.cuda:
            return _fa_forward(
                q[None, off:off + n], fk[None, base:base + kv], fv[None, base:base + kv], None, None, n, kv, 0.0,
                True, False, scale=self.scale)[0][0]
        qh = q[off:off + n].transpose(0, 1)[None]
        kh, vh = (t[base:base + kv].transpose(0, 1)[None] for t in (fk, fv))
        mask = torch.ones(n, kv, dtype=torch.bool, device=q.device).tril(kv - n)
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale,
                                              enable_gqa=True)[0].transpose(0, 1)

    def _decode(self, qd, fk, fv, meta):
        if self.cuda:
            return _fa_forward(
                qd, fk, fv, self._cu_q, self._cu_k, 1, self._max_k, 0.0, False, False, scale=self.scale,
                seqused_k=meta.decode_kv_t)[0]
        # CPU: gather the decodes' keys into a padded batch (a copy; the CPU path is for tests)
        L = max(meta.decode_kv)
        idx = meta.decode_base_t.long()[:, None] + torch.arange(L, device=qd.device)[None]
        valid = torch.arange(L, device=qd.device)[None] < meta.decode_kv_t[:, None]
        idx = torch.where(valid, idx, 0)
        kh, vh = fk[idx].transpose(1, 2), fv[idx].transpose(1, 2)          # (B, Hkv, L, d)
        out = F.scaled_dot_product_attention(qd[:, :, None], kh, vh, attn_mask=valid[:, None, None, :],
                                             scale=self.scale, enable_gqa=True)
        return out[:, :, 0]

    def forward(self, li, q, meta, timer=None):
        fk, fv = self.cache.flat(li)
        parts = []
        if meta.prefills:
            _mark(timer, "prefill:begin")
            parts += [self._prefill(q, fk, fv, *p) for p in meta.prefills]
            _mark(timer, "prefill:end")
        if meta.num_decodes:
            _mark(timer, "decode:begin")
            parts.append(self._decode(q[meta.prefill_tokens:], fk, fv, meta))
            _mark(timer, "decode:end")
        return parts[0] if len(parts) == 1 else torch.cat(parts)


# ---------------------------------------------------------------- FlashInfer
# FlashInfer's split-KV scratch grows with the batch: 128 MB overflowed on Yi-6B's Sarathi batches
# (batch_prefill_tmp_v asked for 138 MB on the H200); 512 MB leaves room for every figure-12 batch.
_WORKSPACE_BYTES = 512 * 1024 * 1024


@functools.cache
def _flashinfer():
    try:
        import flashinfer
    except Exception as e:
        return None, (f"flashinfer is not importable ({type(e).__name__}: {e}); "
                      "pip install flashinfer-python (it JIT-compiles its kernels with nvcc on first use)")
    return flashinfer, None


def _page_table(bases_tok, kv_lens, block_size, device):
    """CSR page table (indptr, indices, last_page_len) of requests whose keys start at token rows
    ``bases_tok`` (block aligned) and span ``kv_lens`` keys."""
    pages = [-(-kv // block_size) for kv in kv_lens]
    indptr = np.zeros(len(pages) + 1, dtype=np.int32)
    np.cumsum(pages, out=indptr[1:])
    if pages:
        starts = np.repeat(np.asarray(bases_tok, dtype=np.int64) // block_size, pages)
        within = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1].astype(np.int64), pages)
        indices = (starts + within).astype(np.int32)
    else:
        indices = np.zeros(0, dtype=np.int32)
    last = np.asarray([kv - (p - 1) * block_size for kv, p in zip(kv_lens, pages)], dtype=np.int32)
    t = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return t(indptr), t(indices), t(last)


class _FlashInferBackend(AttentionBackend):
    devices = ("cuda",)

    def workspace(self) -> torch.Tensor:
        """A zeroed float workspace of its own for each wrapper (several are planned per iteration)."""
        return torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=self.cache.device)

    @classmethod
    def unavailable_reason(cls, device):
        return super().unavailable_reason(device) or _flashinfer()[1]

    def __init__(self, cfg, cache, **options):
        super().__init__(cfg, cache, **options)
        self.fi = _flashinfer()[0]
        self.types = dict(q_data_type=cache.dtype, kv_data_type=cache.dtype)

    def _plan_prefill(self, wrapper, meta, seqs):
        """Plan a batch-prefill wrapper over ``seqs`` = [(q_len, token_base, kv_len)]."""
        c = self.cfg
        qo = np.zeros(len(seqs) + 1, dtype=np.int32)
        np.cumsum([s[0] for s in seqs], out=qo[1:])
        indptr, indices, last = _page_table([s[1] for s in seqs], [s[2] for s in seqs], meta.block_size, meta.device)
        wrapper.plan(torch.from_numpy(qo).to(meta.device), indptr, indices, last, c.q_heads, c.kv_heads, c.head_dim,
                     meta.block_size, causal=True, sm_scale=self.scale, **self.types)

    def _plan_decode(self, wrapper, meta, pos_encoding: bool = True):
        c = self.cfg
        indptr, indices, last = _page_table(meta.decode_base, meta.decode_kv, meta.block_size, meta.device)
        extra = {"pos_encoding_mode": "NONE"} if pos_encoding else {}
        wrapper.plan(indptr, indices, last, c.q_heads, c.kv_heads, c.head_dim, meta.block_size,
                     sm_scale=self.scale, **extra, **self.types)


@register
class FISerial(_FlashInferBackend):
    name = "FI_Serial"
    kernel_methods = ("FI_prefill_fa2", "FI_decode")
    # FlashInfer modules loaded (experiments/flashinfer_modules.py) with the default prefill_backend:
    # the paged batch prefill (fa2) serves the prefill and, as the tensor-core decode of 16-bit KV,
    # the decode
    jit_modules = (("batch_prefill", "fa2"),)
    description = "FlashInfer batch prefill over the paged cache, then batch decode (tensor cores)"

    def __init__(self, cfg, cache, prefill_backend: str = "fa2", **options):
        super().__init__(cfg, cache, **options)
        fi = self.fi
        self.pre = fi.BatchPrefillWithPagedKVCacheWrapper(self.workspace(), "NHD", backend=prefill_backend)
        self.dec = fi.BatchDecodeWithPagedKVCacheWrapper(self.workspace(), "NHD", use_tensor_cores=True)
        self._impl = f"flashinfer {fi.__version__} BatchPrefill({prefill_backend}) + BatchDecode(tensor_cores)"

    def begin(self, meta):
        if meta.prefills:
            self._plan_prefill(self.pre, meta, [(n, b, kv) for _, n, b, kv in meta.prefills])
        if meta.num_decodes:
            self._plan_decode(self.dec, meta)

    def forward(self, li, q, meta, timer=None):
        cache, parts, lp = self.cache.layer(li), [], meta.prefill_tokens
        if meta.prefills:
            _mark(timer, "prefill:begin")
            parts.append(self.pre.run(q[:lp], cache))
            _mark(timer, "prefill:end")
        if meta.num_decodes:
            _mark(timer, "decode:begin")
            parts.append(self.dec.run(q[lp:], cache))
            _mark(timer, "decode:end")
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@register
class FIBatched(_FlashInferBackend):
    name = "FI_Batched"
    kernel_methods = ("FI_Batched_fa2",)
    jit_modules = (("batch_prefill", "fa2"),)
    description = "FlashInfer one batch-prefill call (fa2) over the prefill chunks and the one-token decodes"

    def __init__(self, cfg, cache, prefill_backend: str = "fa2", **options):
        super().__init__(cfg, cache, **options)
        self.pre = self.fi.BatchPrefillWithPagedKVCacheWrapper(self.workspace(), "NHD", backend=prefill_backend)
        self._impl = f"flashinfer {self.fi.__version__} BatchPrefill({prefill_backend}) over prefills + decodes"

    def begin(self, meta):
        seqs = [(n, b, kv) for _, n, b, kv in meta.prefills] + [(1, b, kv) for b, kv in zip(meta.decode_base, meta.decode_kv)]
        self._plan_prefill(self.pre, meta, seqs)

    def forward(self, li, q, meta, timer=None):
        _mark(timer, "attention:begin")
        out = self.pre.run(q, self.cache.layer(li))
        _mark(timer, "attention:end")
        return out


@register
class FIPOD(FISerial):
    """FlashInfer's PODWithPagedKVCacheWrapper on hybrid batches of one prefill chunk (its dense
    keys are the request's contiguous slice) and decodes; other batches go through FI_Serial's
    kernels and are counted in ``info()['fallback_iterations']``."""

    name = "FI_POD"
    kernel_methods = ("FI_POD", "FI_prefill_fa2", "FI_decode")
    jit_modules = (("batch_prefill", "fa2"), ("pod", "fa2"))
    description = "FlashInfer POD-Attention: dense causal prefill fused with paged batch decode"

    def __init__(self, cfg, cache, **options):
        super().__init__(cfg, cache, **options)
        self.pod = self.fi.PODWithPagedKVCacheWrapper(self.workspace(), "NHD")
        self._impl = f"flashinfer {self.fi.__version__} PODWithPagedKVCache (+ FI_Serial kernels off hybrid batches)"
        self.fused = self.fallback = 0

    def begin(self, meta):
        self._use_pod = len(meta.prefills) == 1 and meta.num_decodes > 0
        if self._use_pod:
            self.fused += 1
            self._plan_decode(self.pod, meta, pos_encoding=False)   # called as kernels/adapters/flashinfer.py does
        else:
            self.fallback += 1
            super().begin(meta)

    def forward(self, li, q, meta, timer=None):
        if not self._use_pod:
            return super().forward(li, q, meta, timer)
        (_, n, base, kv), = meta.prefills
        fk, fv = self.cache.flat(li)
        _mark(timer, "attention:begin")
        out_p, out_d = self.pod.run(q[:n], fk[base:base + kv], fv[base:base + kv], q[n:], self.cache.layer(li),
                                    causal_p=True, kv_layout_p="NHD", sm_scale_p=self.scale)
        _mark(timer, "attention:end")
        return torch.cat([out_p, out_d])

    def info(self):
        return {"impl": self._impl, "fused_iterations": self.fused, "fallback_iterations": self.fallback}


# ---------------------------------------------------------------- our POD
class _PodView:
    """The attributes of kernels.workload.HybridBatch that our kernel families read, for one
    iteration of the engine on one layer's tensors: variable decode lengths (``decode_seqlens``),
    block tables into the layer's pages, and the contiguous views the Gluon Hopper kernel loads
    with TMA: the prefill's keys (the engine reserves a request's blocks contiguously at
    admission) and the decodes' dense view, which the kernel reads only where request b starts at
    row b * capacity (elsewhere it reads the pool from each request's first row,
    kernels.hopper.launch.decode_kv_starts)."""

    def __init__(self, spec, device, q, k_pool, v_pool, seqlens, bt_d, bt_p, prefill_base: int):
        self.spec, self.device, self.q = spec, device, q
        self.k_pool, self.v_pool = k_pool, v_pool
        self.decode_seqlens, self._bt_d, self._bt_p = seqlens, bt_d, bt_p
        self.decode_pages_per_req = bt_d.shape[1] if spec.decode_batch else 0
        self._prefill_base = prefill_base
        self.extras: dict = {}

    @property
    def q_p(self):
        return self.q[: self.spec.prefill_len]

    @property
    def q_d(self):
        return self.q[self.spec.prefill_len:]

    def _flat(self, pool):
        m = self.spec.model
        return pool.view(-1, m.kv_heads, m.head_dim)

    @property
    def k_p(self):
        return self._flat(self.k_pool)[self._prefill_base: self._prefill_base + self.spec.prefill_kv_len]

    @property
    def v_p(self):
        return self._flat(self.v_pool)[self._prefill_base: self._prefill_base + self.spec.prefill_kv_len]

    def _dense_decode(self, pool):
        s, m = self.spec, self.spec.model
        cap = self.decode_pages_per_req * s.page_size
        return self._flat(pool)[: s.decode_batch * cap].view(s.decode_batch, cap, m.kv_heads, m.head_dim)

    @property
    def k_d(self):
        return self._dense_decode(self.k_pool)

    @property
    def v_d(self):
        return self._dense_decode(self.v_pool)

    def decode_block_table(self):
        return self._bt_d

    def prefill_block_table(self):
        return self._bt_p


# plan "measured": the decisions of our POD method per (options, device), shared by the engines of
# one process (a run's engine is new, the GPU is not), as Triton's autotuner keeps its choices
_POD_DECISIONS: dict = {}


@register
class POD(AttentionBackend):
    """Our POD method exactly as the kernel benchmarks run it (kernels/adapters/pod_triton.py
    ``POD``, YAML options: PodConfig fields). Per iteration it prepares what that method runs for
    the iteration's batch, on layer 0's tensors: under its default measured plan our serial path
    (the Gluon Hopper prefill where it runs, then our Triton decode), a fused Triton launch, or
    the fused Gluon Hopper kernel. It then re-points the prepared launches at each layer's queries
    and K/V (kernels/common/repoint.py), so planning stays out of the per-layer path. Serving's
    default ``plan_key`` is ``pow2``: every iteration's exact lengths are new, so a decision is
    kept per power-of-two bucket of them. Timing the plan's candidates (a bucket's first
    iteration) is untimed engine work, as a JIT compile is (``untimed_seconds``).
    On the CPU it needs TRITON_INTERPRET=1 (slow: tests use the tiny model)."""

    name = "POD"
    kernel_methods = ("OURS_prefill", "OURS_decode", "POD")
    devices = ("cuda", "cpu")
    supports_decode_graphs = True
    description = "our POD-Attention method (its measured plan: serial with our Hopper prefill, Triton or Hopper fused)"

    @classmethod
    def unavailable_reason(cls, device):
        why = super().unavailable_reason(device)
        if why:
            return why
        from kernels.pod.launch import interpreting

        if torch.device(device).type == "cpu" and not interpreting():
            return "on the CPU our Triton kernel needs TRITON_INTERPRET=1 set before triton is imported"
        return None

    def __init__(self, cfg, cache, **options):
        super().__init__(cfg, cache, **options)
        from kernels.registry import create as create_method

        options = {"kv_layout": "paged", "plan_key": "pow2", **options}
        if options["kv_layout"] != "paged":
            raise ValueError("the serving engine's POD reads the paged cache: kv_layout must be 'paged'")
        self.method = create_method("POD", **options)
        self.pod_config = self.method.config
        self._options_key = repr(sorted(options.items()))
        self.last_plan = None
        self.untimed_seconds = 0.0
        self.reset_counters()

    def reset_counters(self) -> None:
        """Start the run's counters (the engine calls it after its warm-up)."""
        self.plan_measurements, self.plan_measure_s = 0, 0.0
        self.choices: Counter = Counter()
        self.candidates: Counter = Counter()
        self.rejected: Counter = Counter()
        self._buckets: set = set()

    def counters(self) -> dict:
        """What POD ran on the hybrid iterations since the warm-up, which candidates the plans of
        their buckets timed and which of those were dropped for disagreeing outputs (counted once
        per bucket), and the plan's timing work."""
        def text(counts):
            return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))
        return {"pod_choices": text(self.choices), "pod_candidates": text(self.candidates),
                "pod_rejected": text(self.rejected),
                "plan_measurements": self.plan_measurements, "plan_measure_s": self.plan_measure_s}

    def _untimed(self, measure):
        """``measure`` ({name: fn}, device) -> {name: ms}, its seconds (less the JIT compiles in
        it, which the engine's compile clock already leaves out) added to ``untimed_seconds``."""
        from .engine import CompileClock

        def timed(fns, device):
            t0 = time.perf_counter()
            with CompileClock().measuring() as clock:
                out = measure(fns, device)
            spent = time.perf_counter() - t0
            self.untimed_seconds += max(0.0, spent - clock.seconds)
            self.plan_measurements += 1
            self.plan_measure_s += spent
            return out
        return timed

    def _bind_device(self, device) -> None:
        from kernels.adapters import pod_triton

        key = (self._options_key, str(device))
        if self.method.measured is _POD_DECISIONS.get(key):
            return
        self.method.measured = _POD_DECISIONS.setdefault(key, {})
        self.method.measure = self._untimed(pod_triton._median_ms_each)
        if torch.device(device).type == "cuda":    # off a GPU the heuristic's split count runs
            self.method.measure_split = self._untimed(pod_triton._median_ms_each)

    def begin(self, meta):
        from kernels.common.repoint import Repointer, place_outputs, prepared_launches
        from kernels.registry import MethodUnavailable
        from kernels.workload import BatchSpec, ModelShape

        if len(meta.prefills) > 1:
            raise BackendUnavailable("POD takes at most one prefill chunk per batch (Sarathi's batches)")
        c, dev, bs = self.cfg, meta.device, meta.block_size
        self._bind_device(dev)
        lp = meta.prefill_tokens
        kv_p = meta.prefills[0][3] if meta.prefills else 0
        B = meta.num_decodes
        shape = ModelShape(c.name, c.q_heads, c.kv_heads, c.head_dim, c.layers)
        dtype = str(self.cache.dtype).removeprefix("torch.")
        spec = BatchSpec(shape, dtype, prefill_len=lp, prefill_kv_len=kv_p, decode_batch=B,
                         decode_ctx=max(meta.decode_kv, default=0), page_size=bs)
        dummy = torch.zeros((1, 1), dtype=torch.int32, device=dev)
        bt_p, base_p = dummy, 0
        if lp:
            base_p = meta.prefills[0][2]
            bt_p = (base_p // bs + torch.arange(-(-kv_p // bs), device=dev, dtype=torch.int32))[None]
        bt_d, seqlens = dummy, torch.zeros(1, dtype=torch.int32, device=dev)
        if B:
            width = -(-max(meta.decode_kv) // bs)
            bt_d = (meta.decode_base_t[:, None] // bs + torch.arange(width, device=dev, dtype=torch.int32)[None]).int()
            seqlens = meta.decode_kv_t
        k0, v0 = self.cache.layer(0)
        # zeros, not garbage: a shape's first sight times the plan's candidates on these queries
        q0 = torch.zeros((meta.num_tokens, c.q_heads, c.head_dim), dtype=self.cache.dtype, device=dev)
        view = _PodView(spec, dev, q0, k0, v0, seqlens, bt_d, bt_p, base_p)
        try:
            run = self.method.prepare(view)
        except MethodUnavailable as e:
            raise BackendUnavailable(f"POD: {e}") from e
        launches = prepared_launches(run)
        # one output buffer (T, H, d) whose halves are the prefill and decode outputs of every launch
        self._out = torch.empty_like(q0)
        place_outputs(launches, self._out[:lp] if lp else None, self._out[lp:] if B else None)
        self._repoint = Repointer(launches, {"q": q0, "k": k0, "v": v0})
        self._run = run
        self.last_plan = self.method.last_plan
        if lp and B:
            choice = (self.last_plan or {}).get("choice") or {}
            kind = choice.get("kind", "fused")
            name = f"fused{choice.get('ctas_per_sm')}" if kind == "fused" else kind
            self.choices[name] += 1
            bucket = choice.get("calibration")
            if choice.get("rule") == "measured" and bucket not in self._buckets:
                # a candidate absent here was never timed (e.g. the Hopper kernel refusing the layout)
                self._buckets.add(bucket)
                rejected = choice.get("rejected") or {}
                self.candidates.update(set(choice.get("predicted_ms") or {}) | set(rejected))
                self.rejected.update(rejected.keys())

    def forward(self, li, q, meta, timer=None):
        k, v = self.cache.layer(li)
        self._repoint.point({"q": q, "k": k, "v": v})
        _mark(timer, "attention:begin")
        self._run()
        _mark(timer, "attention:end")
        return self._out

    def info(self):
        impl = self.method.info().get("impl", "") if self.last_plan else ""
        return {"impl": f"our POD (kernels/adapters/pod_triton.py): {impl} (last plan)" if impl else "our POD"}
