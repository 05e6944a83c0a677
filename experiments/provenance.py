"""Columns describing the machine and software of a run (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import socket
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["gpu_name", "sm_count", "gpu_mem_gb", "driver", "cuda", "sm_clock_mhz", "mem_clock_mhz",
           "sm_clock_max_mhz", "torch", "triton", "flash_attn", "flashinfer", "python", "git_commit", "hostname",
           "timestamp"]
# Distribution names each package has been published under.
_DISTS = {"torch": ["torch"], "triton": ["triton", "pytorch-triton"], "flash_attn": ["flash-attn", "flash_attn"],
          "flashinfer": ["flashinfer-python", "flashinfer"]}


def _version(dists) -> str:
    for d in dists:
        try:
            return importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            continue
    return ""


def _run(cmd, cwd=None) -> str | None:
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def git_commit() -> str:
    """POD_GIT_COMMIT if set, else HEAD of this checkout (+dirty if tracked files changed), else ''."""
    env = os.environ.get("POD_GIT_COMMIT")
    if env:
        return env
    head = _run(["git", "rev-parse", "HEAD"], cwd=REPO)
    if not head:
        return ""
    # Untracked files (e.g. results written into the tree) do not make the code dirty.
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO)
    return head + ("+dirty" if status else "")


def _nvml_info(device) -> dict:
    """Driver and clocks via pynvml if importable, else nvidia-smi; empty strings if neither works."""
    props = torch.cuda.get_device_properties(device)
    uuid = str(getattr(props, "uuid", "") or "")
    if uuid and not uuid.startswith("GPU-"):
        uuid = "GPU-" + uuid
    out = {"driver": "", "sm_clock_mhz": "", "mem_clock_mhz": "", "sm_clock_max_mhz": ""}
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            if not uuid and os.environ.get("CUDA_VISIBLE_DEVICES"):
                # NVML numbers GPUs ignoring CUDA_VISIBLE_DEVICES (a pinned job sees its GPU as 0):
                # without a UUID the index would name another GPU, so read no clocks
                raise LookupError("no GPU UUID under CUDA_VISIBLE_DEVICES")
            h = (pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid else
                 pynvml.nvmlDeviceGetHandleByIndex(device.index or 0))
            drv = pynvml.nvmlSystemGetDriverVersion()
            out["driver"] = drv.decode() if isinstance(drv, bytes) else str(drv)
            out["sm_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)
            out["mem_clock_mhz"] = pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)
            out["sm_clock_max_mhz"] = pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM)
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    # nvidia-smi numbers GPUs ignoring CUDA_VISIBLE_DEVICES, so select by UUID when we know it.
    sel = ["-i", uuid] if uuid else (["-i", str(device.index or 0)] if not os.environ.get("CUDA_VISIBLE_DEVICES")
                                     else None)
    if sel is None:
        return out
    text = _run(["nvidia-smi", *sel, "--query-gpu=driver_version,clocks.sm,clocks.mem,clocks.max.sm",
                 "--format=csv,noheader,nounits"])
    if text:
        vals = [v.strip() for v in text.splitlines()[0].split(",")]
        if len(vals) == 4:
            for k, v in zip(["driver", "sm_clock_mhz", "mem_clock_mhz", "sm_clock_max_mhz"], vals):
                out[k] = "" if v.startswith("[") or v == "N/A" else v
    return out


def provenance(device) -> dict:
    """Provenance columns (all but 'timestamp', which ``stamp`` adds per row)."""
    device = torch.device(device)
    info = {c: "" for c in COLUMNS}
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        p = torch.cuda.get_device_properties(device)
        info.update(gpu_name=p.name, sm_count=p.multi_processor_count, gpu_mem_gb=round(p.total_memory / 1e9, 2))
        try:
            info.update(_nvml_info(device))
        except Exception:  # provenance must never stop a run
            pass
    else:
        info["gpu_name"] = f"cpu ({platform.processor() or platform.machine()})"
    info["cuda"] = torch.version.cuda or ""
    for k, dists in _DISTS.items():
        info[k] = _version(dists)
    info.update(python=platform.python_version(), git_commit=git_commit(), hostname=socket.gethostname())
    info.pop("timestamp")
    return info


def stamp(info: dict) -> dict:
    """``info`` plus the current UTC timestamp."""
    return {**info, "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
