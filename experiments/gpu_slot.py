"""Pin a command to free GPUs of this machine, one exclusive lock file per GPU.

    python -m experiments.gpu_slot [--gpus K] [--timeout S] [--lock-dir DIR] -- CMD [ARG ...]

Takes K GPUs nobody else holds (a non-blocking ``flock`` on ``<lock dir>/gpu-<id>.lock``), sets
CUDA_VISIBLE_DEVICES to them and *execs* CMD: CMD keeps this process's pid and parent (so the
runners' ``--stop-with-parent`` still watches Snakemake) and inherits the locked descriptors, so
the slots are held exactly as long as CMD (or a forked child of it) lives, and the kernel frees
them however it dies, SIGKILL included.

* ``--gpus 0`` (the workflow's CPU smoke jobs): exec CMD unchanged.
* CUDA_VISIBLE_DEVICES already naming at most K devices (a scheduler's per-job allocation, e.g.
  SLURM's ``--gpus=1``): kept as it is, nothing is locked.
* CUDA_VISIBLE_DEVICES naming more than K devices (``CUDA_VISIBLE_DEVICES=2,3 snakemake ...``, or
  a whole-node allocation): the K are taken among those.
* Otherwise the GPUs of ``nvidia-smi -L`` (MIG instances by UUID); none found: exec unchanged.

When all slots are held it polls until ``--timeout`` seconds (POD_GPU_SLOT_TIMEOUT, default 3600;
0 fails at once) and then exits 75 naming the holders. Only the standard library is imported:
the Snakefile imports ``gpu_count`` while it is parsed.
"""
from __future__ import annotations

import argparse
import errno
import fcntl
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

TIMEOUT_ENV = "POD_GPU_SLOT_TIMEOUT"
DIR_ENV = "POD_GPU_SLOT_DIR"
DEFAULT_TIMEOUT_S = 3600.0
EXIT_NO_SLOT = 75  # EX_TEMPFAIL: all slots held for the whole timeout
_GPU_LINE = re.compile(r"^GPU (\d+):")
_MIG_LINE = re.compile(r"^\s+MIG .*\(UUID: (MIG-[^)\s]+)\)")


def _visible_env(env) -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES, or None when it is unset."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [t.strip() for t in value.split(",") if t.strip()]


def nvidia_smi_devices() -> list[str]:
    """CUDA_VISIBLE_DEVICES values of this machine's devices from ``nvidia-smi -L`` (never CUDA
    itself, so no CUDA context): the index of a GPU, or the UUIDs of its MIG instances."""
    try:
        r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if r.returncode != 0:
        return []
    gpus: list[tuple[str, list[str]]] = []  # (index, UUIDs of its MIG instances)
    for line in r.stdout.splitlines():
        if m := _GPU_LINE.match(line):
            gpus.append((m.group(1), []))
        elif gpus and (m := _MIG_LINE.match(line)):
            gpus[-1][1].append(m.group(1))
    return [dev for index, migs in gpus for dev in (migs or [index])]


def visible_gpus(env=None) -> list[str]:
    """Devices jobs of this machine may be pinned to (CUDA_VISIBLE_DEVICES if set, else nvidia-smi)."""
    env = os.environ if env is None else env
    listed = _visible_env(env)
    return listed if listed is not None else nvidia_smi_devices()


def gpu_count(env=None) -> int:
    """How many GPU jobs may run at once here: the visible GPUs, at least 1 (so that CPU smoke runs
    work and GPU jobs still queue for one slot)."""
    return max(1, len(visible_gpus(env)))


def lock_dir() -> Path:
    """POD_GPU_SLOT_DIR, else .snakemake/gpu-slots/<host> of the working directory (the host in the
    path: a checkout on a shared file system must not lock one node's GPUs for another)."""
    return Path(os.environ.get(DIR_ENV) or Path(".snakemake") / "gpu-slots" / socket.gethostname())


def _lock_path(directory: Path, device: str) -> Path:
    return directory / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _holder(path: Path) -> str:
    try:
        return path.read_text().strip() or "?"
    except OSError:
        return "?"


def acquire(devices: list[str], k: int, directory: Path, timeout_s: float, poll_s: float = 0.2,
            what: str = "") -> list[tuple[str, int]]:
    """K (device, locked fd) pairs, polling until ``timeout_s``; TimeoutError when never K were free.

    All K or none: a job that got fewer frees them and retries, so two multi-GPU jobs never each
    hold part of what the other waits for."""
    if k > len(devices):
        raise TimeoutError(f"{k} GPUs asked for but this machine has {len(devices)} ({','.join(devices)})")
    directory.mkdir(parents=True, exist_ok=True)
    parent = os.getppid()
    deadline = time.monotonic() + timeout_s
    while True:
        taken = []
        for dev in devices:
            fd = _try_lock(_lock_path(directory, dev))
            if fd is not None:
                taken.append((dev, fd))
                if len(taken) == k:
                    for d, f in taken:  # who holds it, for the message of a job that times out
                        os.ftruncate(f, 0)
                        os.pwrite(f, f"pid {os.getpid()} on {socket.gethostname()}: {what}\n".encode(), 0)
                    return taken
        for _, fd in taken:
            os.close(fd)
        if time.monotonic() >= deadline:
            held = "; ".join(f"{d}: {_holder(_lock_path(directory, d))}" for d in devices)
            raise TimeoutError(f"no {k} free GPU slot(s) among {len(devices)} after {timeout_s:g} s "
                               f"(lock files in {directory}; held: {held})")
        if os.getppid() != parent:  # the workflow was killed while this job queued: do not start
            raise SystemExit(3)
        time.sleep(poll_s)


def pinned_env(devices: list[str], env=None) -> dict:
    """``env`` with CUDA_VISIBLE_DEVICES = ``devices``; plain indices read in nvidia-smi's (PCI)
    order, the order they were listed in, unless the caller chose an order."""
    env = dict(os.environ if env is None else env)
    if "CUDA_VISIBLE_DEVICES" not in env:
        env.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return env


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_slot", description=__doc__.split("\n\n")[0])
    p.add_argument("--gpus", type=int, default=1, help="GPUs the command needs (0: run it unpinned)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)),
                   help=f"seconds to wait for free slots (env {TIMEOUT_ENV}; default %(default)s)")
    p.add_argument("--lock-dir", type=Path, default=None, help=f"lock files (env {DIR_ENV})")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG ...]")
    args = p.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        p.error("no command given (… -- CMD ARG ...)")
    env = dict(os.environ)
    listed = _visible_env(env)
    if args.gpus > 0 and not (listed is not None and len(listed) <= args.gpus):
        devices = listed if listed is not None else nvidia_smi_devices()
        if devices:
            directory = args.lock_dir or lock_dir()
            try:
                slots = acquire(devices, args.gpus, directory, args.timeout, what=" ".join(cmd)[:200])
            except TimeoutError as e:
                print(f"gpu_slot: {e}", file=sys.stderr, flush=True)
                raise SystemExit(EXIT_NO_SLOT)
            for _, fd in slots:
                os.set_inheritable(fd, True)  # the lock must survive exec: CMD holds it from here on
            env = pinned_env([d for d, _ in slots], env)
            print(f"gpu_slot: CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']} (pid {os.getpid()}, "
                  f"locks in {directory})", file=sys.stderr, flush=True)
    sys.stdout.flush()
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as e:
        print(f"gpu_slot: cannot run {cmd[0]}: {e}", file=sys.stderr, flush=True)
        raise SystemExit(127)


if __name__ == "__main__":
    main()
