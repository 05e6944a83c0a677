"""Tensor parallelism for the serving engine: one process per rank, rank 0 schedules.

Layout (Megatron-style, as vLLM's tensor-parallel layers do it; serving/model.py slices the weights):
rank r owns q/kv heads [r*H/tp, (r+1)*H/tp) of every layer (column-parallel fused QKV), the
matching input columns of o_proj (row-parallel, output all-reduced), 1/tp of gate/up
(column-parallel) and the matching input columns of down (row-parallel, output all-reduced).
Embeddings, norms and lm_head are replicated; only rank 0 computes logits and samples. Every rank
has its own KV cache holding only its kv heads, with the same block count and block ids.

Processes: the calling process is rank 0 (it keeps the scheduler, the metrics and the timing); ranks
1..tp-1 are worker processes (``python -m serving.tensor_parallel``, started with torchrun's
variables RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT and the shard's spec as JSON; a
fresh interpreter, so the caller's main module is never re-imported as multiprocessing's spawn
would) that build their shard and then loop: receive a command from rank 0 by broadcast, act.
Commands: an iteration (its ``Engine.batch_arrays`` packed into one int64 tensor), a backend change
(name and options), a KV gather (tests), stop. Communication: NCCL on CUDA (rank r on cuda:base+r), gloo on the CPU (tests).

Every process sets COMM_ENV before creating a communicator: NVLink multicast/NVLS is unavailable on
the lent machines (the device README), and NCCL would otherwise try it on NVSwitch hosts.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import traceback
from dataclasses import asdict, dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from .backends import BackendUnavailable, create
from .engine import meta_from_arrays
from .kv_cache import KVCache
from .model import LlamaConfig, LlamaModel, shard_config

COMM_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

_ITER, _BACKEND, _GATHER_KV, _STOP = 1, 2, 3, 4
_HEADER = 8          # cmd, T, S, P, B, block_size, spare, spare


def set_comm_env() -> None:
    """Force COMM_ENV in this process (before any NCCL/CUDA communicator exists)."""
    os.environ.update(COMM_ENV)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(device, rank: int) -> torch.device:
    """Rank ``rank``'s device: cuda:(rank 0's index + rank), or the CPU for every rank."""
    d = torch.device(device)
    if d.type != "cuda":
        return d
    base = d.index if d.index is not None else torch.cuda.current_device()
    return torch.device("cuda", base + rank)


@dataclass
class TPSpec:
    """What every rank needs to build its shard (plain data: it crosses the spawn)."""

    cfg: dict
    tp: int
    device: str
    dtype: str
    seed: int
    init_range: float
    ops: str
    block_size: int
    num_blocks: int | None
    kv_fraction: float
    kv_headroom_gb: float
    port: int
    timeout_s: float


def _init(spec: TPSpec, rank: int) -> torch.device:
    set_comm_env()
    dev = rank_device(spec.device, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{spec.port}",
                            rank=rank, world_size=spec.tp, timeout=timedelta(seconds=spec.timeout_s))
    return dev


def _worker_env(spec: TPSpec, rank: int) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, **COMM_ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(spec.tp),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(spec.port), "SERVING_TP_SPEC": json.dumps(asdict(spec)),
            "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _build_shard(spec: TPSpec, rank: int, dev: torch.device):
    cfg = LlamaConfig(**spec.cfg)
    dtype = getattr(torch, spec.dtype)
    model = LlamaModel(cfg, dev, dtype, seed=spec.seed, init_range=spec.init_range, ops=spec.ops,
                       tp=spec.tp, rank=rank)
    model.all_reduce = dist.all_reduce
    if spec.num_blocks:
        n = int(spec.num_blocks)
    else:
        n = KVCache.blocks_for_gpu(model.local, spec.block_size, dtype, dev, spec.kv_fraction, spec.kv_headroom_gb)
    # the pools must agree (rank 0 schedules for all): the least free memory decides
    t = torch.tensor([n], dtype=torch.int64, device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    n = int(t.item())
    if n < 1:
        raise MemoryError("no room for a KV cache on some tensor-parallel rank")
    return model, KVCache(model.local, n, spec.block_size, dtype, dev)


def _pack(a: dict) -> tuple[np.ndarray, np.ndarray]:
    pre = np.asarray(a["prefills"], dtype=np.int64).reshape(-1)
    hdr = np.array([_ITER, len(a["input_ids"]), len(a["sample_rows"]), len(a["prefills"]), len(a["decode_kv"]),
                    a["block_size"], 0, 0], dtype=np.int64)
    payload = np.concatenate([np.asarray(a[k], dtype=np.int64).reshape(-1) for k in
                              ("input_ids", "positions", "slots", "sample_rows")]
                             + [pre, np.asarray(a["decode_base"], dtype=np.int64),
                                np.asarray(a["decode_kv"], dtype=np.int64)])
    return hdr, payload


def _payload_len(hdr) -> int:
    _, T, S, P, B = (int(x) for x in hdr[:5])
    return 3 * T + S + 4 * P + 2 * B


def _unpack(hdr, payload: np.ndarray) -> dict:
    _, T, S, P, B, bsz = (int(x) for x in hdr[:6])
    cuts = np.cumsum([T, T, T, S, 4 * P, B])
    ids, pos, slots, sample, pre, dbase, dkv = np.split(payload, cuts)
    return {"input_ids": ids, "positions": pos, "slots": slots, "sample_rows": sample,
            "prefills": pre.reshape(P, 4).tolist(), "decode_base": dbase.tolist(), "decode_kv": dkv.tolist(),
            "block_size": bsz}


def _bcast(arr: np.ndarray | None, n: int, dev: torch.device) -> np.ndarray:
    """Broadcast ``n`` int64 from rank 0 (``arr``) to all; every rank gets them on the host."""
    t = torch.from_numpy(arr).to(dev) if arr is not None else torch.empty(n, dtype=torch.int64, device=dev)
    dist.broadcast(t, src=0)
    return arr if arr is not None else t.cpu().numpy()


def _worker(rank: int, spec: TPSpec) -> None:
    """Ranks 1..tp-1: build the shard, then follow rank 0's commands until told to stop."""
    try:
        dev = _init(spec, rank)
        model, cache = _build_shard(spec, rank, dev)
        backend = None
        while True:
            hdr = _bcast(None, _HEADER, dev)
            cmd = int(hdr[0])
            if cmd == _STOP:
                break
            if cmd == _ITER:
                n = _payload_len(hdr)
                meta = meta_from_arrays(_unpack(hdr, _bcast(None, n, dev)), dev)
                if backend is None:
                    raise RuntimeError("an iteration before any backend was set")
                with torch.inference_mode():
                    backend.begin(meta)
                    model.forward(meta, cache, backend, logits=False)
            elif cmd == _BACKEND:
                obj = [None]
                dist.broadcast_object_list(obj, src=0)
                name, options = obj[0]
                err = None
                try:
                    backend = create(name, model.local, cache, **options)
                except Exception as e:      # reported to rank 0, which raises it
                    backend, err = None, (type(e).__name__, str(e))
                dist.gather_object(err, None, dst=0)
            elif cmd == _GATHER_KV:
                for t in (cache.k, cache.v):
                    dist.gather(t, None, dst=0)
            else:
                raise RuntimeError(f"unknown tensor-parallel command {cmd}")
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)     # no clean shutdown: rank 0 sees the peer gone
    dist.destroy_process_group()


class TPGroup:
    """Rank 0's side of a tensor-parallel group: the worker processes, this process's shard
    (``model``, ``cache``) and the commands. Start with ``TPGroup.start``; ``close()`` stops the
    workers (also at interpreter exit)."""

    def __init__(self, spec: TPSpec, procs: list, model: LlamaModel, cache: KVCache, device: torch.device):
        self.spec, self.procs, self.model, self.cache, self.device = spec, procs, model, cache, device
        self.cfg, self.tp = model.cfg, spec.tp
        self._backend = None
        self.closed = False

    @classmethod
    def start(cls, cfg: LlamaConfig, tp: int, device="cpu", dtype=torch.float16, seed: int = 0,
              init_range: float = 1e-3, ops: str = "auto", block_size: int = 16, num_blocks: int | None = None,
              kv_fraction: float = 0.9, kv_headroom_gb: float = 8.0, timeout_s: float | None = None) -> "TPGroup":
        """Start ranks 1..tp-1, join them as rank 0 and build every rank's shard. ``timeout_s``
        (default: $SERVING_TP_TIMEOUT_S, else 600) bounds the rendezvous and every collective (a
        dead or stuck rank raises, not hangs)."""
        if timeout_s is None:
            timeout_s = float(os.environ.get("SERVING_TP_TIMEOUT_S", 600))
        shard_config(cfg, tp)               # a tp that does not divide the heads fails here, before any spawn
        if int(tp) < 2:
            raise ValueError(f"tp={tp}: a tensor-parallel group needs tp >= 2")
        if dist.is_initialized():
            raise RuntimeError("a torch.distributed process group is already running in this process "
                               "(close the other tensor-parallel group first)")
        dev0 = torch.device(device)
        if dev0.type == "cuda":
            base = dev0.index if dev0.index is not None else torch.cuda.current_device()
            if torch.cuda.device_count() < base + tp:
                raise ValueError(f"tp={tp} needs GPUs cuda:{base}..cuda:{base + tp - 1}; "
                                 f"{torch.cuda.device_count()} visible")
        set_comm_env()                      # inherited by the spawned ranks too
        spec = TPSpec(cfg=asdict(cfg), tp=int(tp), device=str(device), dtype=str(dtype).removeprefix("torch."),
                      seed=int(seed), init_range=float(init_range), ops=ops, block_size=int(block_size),
                      num_blocks=int(num_blocks) if num_blocks else None, kv_fraction=float(kv_fraction),
                      kv_headroom_gb=float(kv_headroom_gb), port=free_port(), timeout_s=float(timeout_s))
        procs = [subprocess.Popen([sys.executable, "-m", "serving.tensor_parallel"], env=_worker_env(spec, r))
                 for r in range(1, tp)]
        try:
            dev = _init(spec, 0)
            model, cache = _build_shard(spec, 0, dev)
        except BaseException:
            _stop_procs(procs, 5.0)
            if dist.is_initialized():
                dist.destroy_process_group()
            raise
        group = cls(spec, procs, model, cache, dev)
        atexit.register(group.close)
        return group

    # ------------------------------------------------------------ commands
    def _check_alive(self) -> None:
        if self.closed:
            raise RuntimeError("the tensor-parallel group is closed")
        for r, p in enumerate(self.procs, start=1):
            if p.poll() is not None:
                raise RuntimeError(f"tensor-parallel rank {r} exited (code {p.returncode}); see its stderr")

    def _command(self, cmd: int) -> None:
        self._check_alive()
        hdr = np.zeros(_HEADER, dtype=np.int64)
        hdr[0] = cmd
        _bcast(hdr, _HEADER, self.device)

    def set_backend(self, name: str, options: dict | None = None) -> None:
        """Make every other rank use attention backend ``name`` (no-op if it already does); a rank
        that cannot create it raises here (BackendUnavailable stays BackendUnavailable)."""
        key = (name, repr(sorted((options or {}).items())))
        if key == self._backend:
            return
        self._backend = None
        self._command(_BACKEND)
        dist.broadcast_object_list([(name, dict(options or {}))], src=0)
        errs = [None] * self.tp
        dist.gather_object(None, errs, dst=0)
        bad = [(r, e) for r, e in enumerate(errs) if e is not None]
        if bad:
            msg = "; ".join(f"rank {r}: {t}: {m}" for r, (t, m) in bad)
            if any(t == BackendUnavailable.__name__ for _, (t, _) in bad):
                raise BackendUnavailable(f"{name}: {msg}")
            raise RuntimeError(f"backend {name} failed on tensor-parallel ranks: {msg}")
        self._backend = key

    def broadcast_iteration(self, arrays: dict) -> None:
        """Send one iteration's ``Engine.batch_arrays`` to the other ranks (two broadcasts)."""
        self._check_alive()
        hdr, payload = _pack(arrays)
        _bcast(hdr, _HEADER, self.device)
        if payload.size:
            _bcast(payload, payload.size, self.device)

    def gather_kv(self) -> list:
        """Every rank's (K, V) cache tensors on rank 0's host, in rank order (tests, debugging:
        a whole cache per rank crosses the wire)."""
        self._command(_GATHER_KV)
        out = []
        for t in (self.cache.k, self.cache.v):
            parts = [torch.empty_like(t) for _ in range(self.tp)]
            dist.gather(t, parts, dst=0)
            out.append([x.cpu() for x in parts])
        return list(zip(*out))

    def abort(self) -> None:
        """End the group without a handshake (after a failure that may leave ranks mid-collective)."""
        if self.closed:
            return
        self.closed = True
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        _stop_procs(self.procs, 5.0)
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:
            pass
        self.model = self.cache = None

    def close(self, timeout_s: float = 30.0) -> None:
        """Tell the workers to stop, join them (terminate after ``timeout_s``) and end the group."""
        if self.closed:
            return
        try:
            if all(p.poll() is None for p in self.procs):
                self._command(_STOP)
        except Exception:
            pass
        self.closed = True
        _stop_procs(self.procs, timeout_s)
        if dist.is_initialized():
            dist.destroy_process_group()
        self.model = self.cache = None


def _stop_procs(procs: list, timeout_s: float) -> None:
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.wait(5.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5.0)


if __name__ == "__main__":
    # a worker rank (TPGroup.start launches these); torchrun's variables name the rank
    _spec = TPSpec(**json.loads(os.environ["SERVING_TP_SPEC"]))
    if int(os.environ["WORLD_SIZE"]) != _spec.tp or os.environ.get("MASTER_PORT") != str(_spec.port):
        sys.exit("SERVING_TP_SPEC disagrees with WORLD_SIZE/MASTER_PORT")
    _worker(int(os.environ["RANK"]), _spec)
