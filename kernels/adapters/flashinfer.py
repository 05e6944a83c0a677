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
    description = "FlashInfer single-request causal prefill, FA2 backend"


def _plan_types(batch: HybridBatch) -> dict:
    s = batch.spec
    return {"q_data_type": batch.q.dtype, "kv_data_type": batch.k_pool.dtype, "sm_scale": s.sm_scale}


@register
class FIDecode(_FlashInfer):
    name = "FI_decode"
    parts = ("decode",)
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
    description = "FlashInfer one batch-prefill call over the chunk and the decodes, backend chosen by FlashInfer"


@register
class FIPOD(_FlashInfer):
    name = "FI_POD"
    parts = ("prefill", "decode")
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
