"""FlashInfer baselines (CUDA only): FI_prefill_auto/_fa2, FI_decode, FI_Batched_fa2/_auto, FI_POD.

They read the paged view of a hybrid batch (``k_pool``/``v_pool``, NHD, page size
``spec.page_size``, int32 CSR page tables), except the single-request prefills, which take the
dense ``k_p``/``v_p`` (the same memory). Wrappers are planned in ``prepare`` (untimed); the callable
only calls ``run``. FlashInfer JIT-compiles each kernel family with nvcc on first use, which is why
``python -m experiments.build`` warms them before timing.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from ..registry import Method, MethodUnavailable, Outputs, register
from ..workload import HybridBatch

_INSTALL_HINT = "flashinfer is not installed: pip install flashinfer-python (JIT-compiles with nvcc on first use)"
_WORKSPACE_BYTES = 128 * 1024 * 1024  # the size FlashInfer's examples and docs recommend

_workspaces: dict = {}
_workspace_lock = threading.Lock()


@functools.cache
def _import():
    """(flashinfer module, None) or (None, why it cannot be imported)."""
    try:
        import flashinfer
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "flashinfer":
            return None, _INSTALL_HINT
        return None, f"{_INSTALL_HINT} (import failed: {e})"
    except Exception as e:  # a broken install (missing dependency, ABI mismatch) must not kill load_all
        return None, f"{_INSTALL_HINT} (import failed: {type(e).__name__}: {e})"
    return flashinfer, None


def _workspace(device: torch.device) -> torch.Tensor:
    """One zeroed float workspace per device, shared by every wrapper (runs are serialized on a stream)."""
    key = (device.type, device.index if device.index is not None else torch.cuda.current_device())
    with _workspace_lock:
        if key not in _workspaces:
            # Zeroed: FlashInfer asks for a zero-initialized workspace on first use.
            _workspaces[key] = torch.zeros(_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        return _workspaces[key]


@dataclass(frozen=True)
class FlashInferModule:
    """One kernel module that a FlashInfer wrapper JIT-compiles on first use, as plain data: its
    family (single_prefill, batch_prefill, pod; norm, rope, silu_and_mul for the serving engine's
    fused kernels), the backend asked for (fa2, fa3, or auto: what FlashInfer picks on the target
    GPU), dtype and head dim. Every other argument is the one our adapters and the serving backends
    call FlashInfer with: no RoPE, sliding window, soft cap or fp16 QK reduction, int32 page
    indices. ``experiments.flashinfer_modules`` compiles these ahead of time."""

    family: str
    backend: str
    dtype: str
    head_dim: int

    def resolved_backend(self, arch: tuple) -> str:
        """The backend FlashInfer runs on a GPU of compute capability ``arch``: 'auto' is fa3 on
        sm_90 where FlashInfer's fa3 supports the dtype and head dim (its own checks), else fa2."""
        if self.backend != "auto":
            return self.backend
        from flashinfer.utils import is_fa3_backend_supported, is_fa3_prefill_head_dim_supported

        dt = getattr(torch, self.dtype)
        fa3 = (arch[0] == 9 and is_fa3_backend_supported(0, False, False, dt, dt)
               and is_fa3_prefill_head_dim_supported(self.head_dim, self.head_dim))
        return "fa3" if fa3 else "fa2"

    def jit_spec(self, arch: tuple):
        """FlashInfer's JitSpec of this module for compute capability ``arch`` (needs flashinfer;
        FLASHINFER_CUDA_ARCH_LIST must be set before flashinfer is first imported)."""
        from flashinfer.jit.attention import modules as fim

        dt, hd, idx = getattr(torch, self.dtype), self.head_dim, torch.int32
        if self.family == "single_prefill":
            return fim.gen_single_prefill_module(self.resolved_backend(arch), dt, dt, dt, hd, hd, 0, False, False, False)
        if self.family == "batch_prefill":
            return fim.gen_batch_prefill_module(self.resolved_backend(arch), dt, dt, dt, idx, hd, hd, 0, False, False,
                                                False)
        if self.family == "pod":
            return fim.gen_pod_module(dt, dt, dt, hd, 0, False, False, False, idx, 0, False, False)
        # the serving engine's fused non-attention kernels: one module each, whatever the shape
        if self.family == "norm":
            from flashinfer.jit.norm import gen_norm_module
            return gen_norm_module()
        if self.family == "rope":
            from flashinfer.jit.rope import gen_rope_module
            return gen_rope_module()
        if self.family == "silu_and_mul":
            from flashinfer.jit.activation import gen_act_and_mul_module
            return gen_act_and_mul_module("silu")
        raise ValueError(f"unknown FlashInfer module family {self.family!r}")


def flashinfer_modules(cls, dtype: str, head_dim: int) -> list:
    """The FlashInfer modules a registered method (or serving backend) loads on a batch of
    ``dtype`` and ``head_dim``: its ``jit_modules`` (family, backend) pairs; none for others."""
    return [FlashInferModule(family, backend, dtype, head_dim) for family, backend in getattr(cls, "jit_modules", ())]


class _FlashInfer(Method):
    """Shared availability checks and impl bookkeeping of the FI_* methods."""

    devices = ("cuda",)

    def __init__(self, **options):
        super().__init__(**options)
        self._impl = None

    def unavailable_reason(self, device: torch.device) -> str | None:
        reason = super().unavailable_reason(device)
        if reason:
            return reason
        return _import()[1]

    def _start(self, batch: HybridBatch):
        """Check that this method can run on ``batch``; return the flashinfer module."""
        reason = self.unavailable_reason(batch.device)
        if reason:
            raise MethodUnavailable(reason)
        self.require_parts(batch)
        s = batch.spec
        if batch.q.dtype not in (torch.float16, torch.bfloat16):
            raise MethodUnavailable(f"{self.name} is benchmarked in float16/bfloat16 only, not {s.dtype}")
        return _import()[0]

    def _set_impl(self, fi, what: str, backend: str) -> None:
        self._impl = f"flashinfer {fi.__version__} {what} {backend}"

    def info(self) -> dict:
        return {"impl": self._impl or self.name}


def _resolve_single_prefill_backend(batch: HybridBatch, backend: str) -> str:
    """The backend single_prefill_with_kv_cache will pick for ``backend='auto'`` (same rule as it)."""
    if backend != "auto":
        return backend
    from flashinfer.utils import PosEncodingMode, determine_attention_backend

    d = batch.spec.model.head_dim
    return determine_attention_backend(batch.device, PosEncodingMode.NONE.value, False, False,
                                       batch.q.dtype, batch.k_pool.dtype, head_dim_qk=d, head_dim_vo=d)


class _FIPrefill(_FlashInfer):
    parts = ("prefill",)
    backend = "auto"
    jit_modules = (("single_prefill", "auto"),)

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        fi = self._start(batch)
        s = batch.spec
        q, k, v = batch.q_p, batch.k_p, batch.v_p
        self._set_impl(fi, "single_prefill", _resolve_single_prefill_backend(batch, self.backend))
        run, backend, scale, causal = fi.single_prefill_with_kv_cache, self.backend, s.sm_scale, s.causal
        return lambda: {"prefill": run(q, k, v, causal=causal, kv_layout="NHD", sm_scale=scale, backend=backend)}


@register
class FIPrefillAuto(_FIPrefill):
    name = "FI_prefill_auto"
    backend = "auto"
    description = "FlashInfer single-request causal prefill, backend chosen by FlashInfer (fa3 on Hopper)"


@register
class FIPrefillFa2(_FIPrefill):
    name = "FI_prefill_fa2"
    backend = "fa2"
    jit_modules = (("single_prefill", "fa2"),)
    description = "FlashInfer single-request causal prefill, FA2 backend"


def _plan_types(batch: HybridBatch) -> dict:
    s = batch.spec
    return {"q_data_type": batch.q.dtype, "kv_data_type": batch.k_pool.dtype, "sm_scale": s.sm_scale}


@register
class FIDecode(_FlashInfer):
    name = "FI_decode"
    parts = ("decode",)
    # the tensor-core decode of 16-bit KV runs FlashInfer's fa2 batch-prefill kernel
    jit_modules = (("batch_prefill", "fa2"),)
    description = "FlashInfer batch decode over the paged cache (tensor-core kernel, as the artifact)"

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        fi = self._start(batch)
        s, m = batch.spec, batch.spec.model
        wrapper = fi.BatchDecodeWithPagedKVCacheWrapper(_workspace(batch.device), "NHD", use_tensor_cores=True)
        pt = batch.decode_page_table()
        wrapper.plan(pt["indptr"], pt["indices"], pt["last_page_len"], m.q_heads, m.kv_heads, m.head_dim,
                     s.page_size, pos_encoding_mode="NONE", **_plan_types(batch))
        # plan() resolves backend "auto" (fa2 for 16-bit tensor-core decode) into this attribute.
        self._set_impl(fi, "BatchDecode(tensor_cores)", getattr(wrapper, "_backend", "auto"))
        q, cache = batch.q_d, (batch.k_pool, batch.v_pool)
        return lambda: {"decode": wrapper.run(q, cache)}


class _FIBatched(_FlashInfer):
    parts = ("prefill", "decode")
    backend = "fa2"
    jit_modules = (("batch_prefill", "fa2"),)

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        fi = self._start(batch)
        s, m = batch.spec, batch.spec.model
        wrapper = fi.BatchPrefillWithPagedKVCacheWrapper(_workspace(batch.device), "NHD", backend=self.backend)
        pt = batch.batched_page_table()
        wrapper.plan(pt["qo_indptr"], pt["indptr"], pt["indices"], pt["last_page_len"], m.q_heads, m.kv_heads,
                     m.head_dim, s.page_size, causal=s.causal, **_plan_types(batch))
        self._set_impl(fi, "BatchPrefill(paged)", getattr(wrapper, "_backend", self.backend))
        q, cache, lq = batch.q, (batch.k_pool, batch.v_pool), s.prefill_len

        def run() -> Outputs:
            out = wrapper.run(q, cache)
            return {"prefill": out[:lq], "decode": out[lq:]}

        return run


@register
class FIBatchedFa2(_FIBatched):
    name = "FI_Batched_fa2"
    backend = "fa2"
    description = "FlashInfer one batch-prefill call over the chunk and the one-token decodes, FA2 backend"


@register
class FIBatchedAuto(_FIBatched):
    name = "FI_Batched_auto"
    backend = "auto"
    jit_modules = (("batch_prefill", "auto"),)
    description = "FlashInfer one batch-prefill call over the chunk and the decodes, backend chosen by FlashInfer"


@register
class FIPOD(_FlashInfer):
    name = "FI_POD"
    parts = ("prefill", "decode")
    # plan() schedules the decode with the fa2 batch-prefill module's planner; run() loads POD's
    jit_modules = (("batch_prefill", "fa2"), ("pod", "fa2"))
    description = "FlashInfer's POD-Attention: dense causal prefill fused with paged batch decode"

    def prepare(self, batch: HybridBatch) -> Callable[[], Outputs]:
        fi = self._start(batch)
        s, m = batch.spec, batch.spec.model
        wrapper = fi.PODWithPagedKVCacheWrapper(_workspace(batch.device), "NHD")
        pt = batch.decode_page_table()
        wrapper.plan(pt["indptr"], pt["indices"], pt["last_page_len"], m.q_heads, m.kv_heads, m.head_dim,
                     s.page_size, **_plan_types(batch))
        # POD's prefill half is FlashInfer's FA2 single-prefill kernel, whatever the GPU.
        self._set_impl(fi, "PODWithPagedKVCache", "fa2")
        q_p, k_p, v_p, q_d = batch.q_p, batch.k_p, batch.v_p, batch.q_d
        cache, scale, causal = (batch.k_pool, batch.v_pool), s.sm_scale, s.causal

        def run() -> Outputs:
            out_p, out_d = wrapper.run(q_p, k_p, v_p, q_d, cache, causal_p=causal, kv_layout_p="NHD",
                                       sm_scale_p=scale)
            return {"prefill": out_p, "decode": out_d}

        return run
