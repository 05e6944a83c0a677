"""FlashInfer's kernel modules for an experiment, compiled ahead of time on a machine without a GPU.

    python -m experiments.flashinfer_modules build EXPERIMENT_YAML... --arch 9.0 --out DIR [--serving CONFIG]
    python -m experiments.flashinfer_modules list EXPERIMENT_YAML... --arch 9.0 [--serving CONFIG]
    python -m experiments.flashinfer_modules install DIR        (into the installed FlashInfer)
    python -m experiments.build EXPERIMENT_YAML --out MARKER.json --flashinfer-modules DIR   (the same, then warm)

FlashInfer JIT-compiles each kernel family with nvcc the first time a wrapper plans or runs it
(its POD module takes ~6 min per dtype and head dim on a 16-core GPU machine, fa3 minutes). nvcc
needs no GPU, so these modules can be compiled where CPU time is cheap (a login node, a CI runner,
a Docker build) for the GPU's compute capability, and installed on the GPU machine as FlashInfer's
ahead-of-time modules (``<flashinfer>/data/aot/NAME/NAME.so``), which FlashInfer loads before it
would compile anything. What each method loads is declared beside its adapter
(``jit_modules`` in kernels/adapters/flashinfer.py and serving/); the build step's marker lists
every module that still compiled on the GPU machine, so a missing declaration shows there.

A module that fails to load falls back to FlashInfer's own JIT (FlashInfer's behaviour), and
``install`` refuses a directory built for another FlashInfer version or GPU architecture.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

MANIFEST = "manifest.json"


def arch_list(arch: str) -> str:
    """FLASHINFER_CUDA_ARCH_LIST for a compute capability 'major.minor': sm_90 needs the 'a'
    target (FlashInfer's Hopper kernels use wgmma and TMA); others are FlashInfer's to normalize."""
    major, _, minor = arch.partition(".")
    if not (major.isdigit() and minor.isdigit()):
        raise ValueError(f"--arch must be a compute capability such as 9.0 or 8.0, not {arch!r}")
    return f"{major}.{minor}a" if major == "9" else f"{major}.{minor}"


def _capability(arch: str) -> tuple:
    major, _, minor = arch.partition(".")
    return int(major), int(minor)


def kernel_modules(experiments: list, smoke: bool = False, methods=None) -> dict:
    """{FlashInferModule: [method labels]} of kernel experiment YAMLs: each (dtype, head dim) of
    their rows times each method's declared modules."""
    from experiments.grid import expand, load_experiment, select_methods
    from kernels.adapters.flashinfer import flashinfer_modules
    from kernels.registry import load_all

    registry = load_all()
    out: dict = {}
    for path in experiments:
        exp = load_experiment(path, smoke=smoke)
        labels = select_methods(exp, methods)
        # the decode batch sizes do not matter here, only the shapes: any memory and SM count do
        shapes = {(r.spec.dtype, r.spec.model.head_dim) for r in expand(exp, gpu_memory_bytes=80e9, sm_count=108)}
        for ms in exp.methods:
            if labels is not None and ms.label not in labels:
                continue
            for dtype, head_dim in sorted(shapes):
                for m in flashinfer_modules(registry[ms.method], dtype, head_dim):
                    out.setdefault(m, []).append(f"{Path(path).stem}:{ms.label}")
    return out


def serving_modules(configs: list, smoke: bool = False) -> dict:
    """{FlashInferModule: [backend names]} of serving configs' GPU runs: each run's attention
    backends on its model's (dtype, head dim), and FlashInfer's fused norm, RoPE and SiLU-mul
    (serving/ops.py), which every GPU run loads when FlashInfer is installed."""
    from kernels.adapters.flashinfer import flashinfer_modules
    from serving.backends import registered
    from serving.ops import FlashInferOps
    from serving.run import gpu_runs

    backends = registered()
    out: dict = {}
    for _, cfg, dtype, names in gpu_runs(configs, smoke):
        for name, cls in [(b, backends.get(b)) for b in names] + [("ops", FlashInferOps)]:
            for m in flashinfer_modules(cls, dtype, cfg.head_dim) if cls is not None else ():
                out.setdefault(m, [])
                if name not in out[m]:
                    out[m].append(name)
    return out


def cuda_home() -> str:
    """The CUDA toolkit of the ``nvcc`` on PATH ($CUDA_HOME if set). FlashInfer guesses it as two
    directories above ``which nvcc``, which is wrong where nvcc is a wrapper script
    (/usr/local/bin/nvcc), so ask nvcc where it lives."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    try:
        dry = subprocess.run(["nvcc", "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True).stderr
    except OSError:
        return ""
    for line in dry.splitlines():
        if line.startswith("#$ TOP="):   # the toolkit's root, as <toolkit>/bin/..
            return str(Path(line.split("=", 1)[1].strip().strip('"')).resolve())
    return ""


# Headers of CUDA libraries that FlashInfer's sources include (fa3 through CUTLASS's utilities: cuRAND;
# the norm module through TensorRT-LLM's utilities: cuBLASLt), with the PyPI wheel that ships each
# for a toolkit installed without them.
LIBRARY_HEADERS = {"curand_kernel.h": "nvidia-curand", "cublasLt.h": "nvidia-cublas"}


def wheel_includes(home: str) -> tuple:
    """(include dirs, missing headers) for the LIBRARY_HEADERS the toolkit at ``home`` lacks: dirs
    of NVIDIA's PyPI wheels (site-packages/nvidia/*/include) that hold them, and those found nowhere."""
    dirs, missing = [], []
    try:
        import nvidia
        roots = [Path(r) for r in getattr(nvidia, "__path__", [])]
    except ImportError:
        roots = []
    for header in LIBRARY_HEADERS:
        if home and (Path(home) / "include" / header).exists():
            continue
        found = [h.parent for r in roots for h in sorted(r.glob(f"*/include/{header}"))]
        if found:
            if str(found[0]) not in dirs:
                dirs.append(str(found[0]))
        else:
            missing.append(header)
    return dirs, missing


def prepare_toolchain(arch: str, workdir: Path) -> dict:
    """Environment of FlashInfer's compiles for compute capability ``arch``, set before flashinfer
    is imported (it reads the arch list then): FLASHINFER_CUDA_ARCH_LIST, MAX_JOBS, CUDA_HOME. Where
    the toolkit has no driver stub (libcuda.so: CUDA installed without a driver, as on CPU build
    machines), FlashInfer's ``-lcuda`` links against an empty stand-in with the driver's soname
    (libcuda.so.1) in ``workdir``: the modules call the runtime API only, so the link merely
    records the driver as a dependency, which the GPU machine's driver satisfies. Library headers
    the toolkit lacks are taken from NVIDIA's wheels where installed (``wheel_includes``)."""
    os.environ["FLASHINFER_CUDA_ARCH_LIST"] = arch_list(arch)
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    home = cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
    stub = "toolkit"
    if not any((Path(home) / d / "libcuda.so").exists() for d in ("lib64/stubs", "lib64", "lib/stubs")):
        stub_dir = Path(workdir).resolve() / ".libcuda-stand-in"
        stub_dir.mkdir(parents=True, exist_ok=True)
        lib = stub_dir / "libcuda.so"
        if not lib.exists():
            subprocess.run(["cc", "-shared", "-Wl,-soname,libcuda.so.1", "-x", "c", os.devnull, "-o", str(lib)],
                           check=True)
        flags = os.environ.get("FLASHINFER_EXTRA_LDFLAGS", "")
        if f"-L{stub_dir}" not in flags.split():
            os.environ["FLASHINFER_EXTRA_LDFLAGS"] = f"{flags} -L{stub_dir}".strip()
        stub = "empty stand-in (soname libcuda.so.1): the toolkit has no driver stub"
    includes, missing = wheel_includes(home)
    for d in includes:
        flags = os.environ.get("FLASHINFER_EXTRA_CUDAFLAGS", "")
        if d not in flags.split():
            os.environ["FLASHINFER_EXTRA_CUDAFLAGS"] = f"{flags} -isystem {d}".strip()
    return {"arch_list": arch_list(arch), "cuda_home": home, "libcuda": stub, "wheel_includes": includes,
            "missing_headers": missing}


def _nvcc_version() -> str:
    try:
        text = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"experiments.flashinfer_modules: nvcc is needed to compile FlashInfer's modules and "
                         f"was not found or failed ({e}); install the CUDA toolkit (nvcc) or use a machine "
                         "that has it") from None
    return text.strip().splitlines()[-1]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(directory: Path) -> dict:
    """The manifest of a module directory (empty modules when there is none yet)."""
    p = Path(directory) / MANIFEST
    return json.loads(p.read_text()) if p.exists() else {"modules": {}}


def _write_manifest(directory: Path, doc: dict) -> None:
    tmp = Path(directory) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(Path(directory) / MANIFEST)


def build(modules: dict, arch: str, out: Path, log=print) -> dict:
    """Compile ``modules`` ({FlashInferModule: users}) for compute capability ``arch`` into
    ``out/NAME/NAME.so`` with a manifest (FlashInfer version, arch, nvcc, each module's users,
    bytes, sha256 and compile seconds). Modules already in ``out`` for the same FlashInfer and
    arch are kept, so an interrupted build resumes. One module at a time, each over every core
    (ninja's MAX_JOBS): FlashInfer's big modules are many translation units."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    toolchain = prepare_toolchain(arch, out)
    import flashinfer
    from flashinfer.jit import core as fi_core

    # a context made now reads the arch list just set, normalized as FlashInfer does (10.0 -> 10.0a)
    context = fi_core.current_compilation_context
    want, have = type(context)().TARGET_CUDA_ARCHS, context.TARGET_CUDA_ARCHS
    if have != want:
        raise SystemExit(f"experiments.flashinfer_modules: flashinfer was imported before its arch list was set "
                         f"(it targets {sorted(have)}, not sm {arch}); build in a fresh process")
    nvcc = _nvcc_version()
    doc = read_manifest(out)
    if doc.get("flashinfer") not in (None, flashinfer.__version__) or doc.get("arch") not in (None, arch):
        raise SystemExit(f"experiments.flashinfer_modules: {out} holds modules of flashinfer {doc.get('flashinfer')} "
                         f"for sm {doc.get('arch')}; use another --out for flashinfer {flashinfer.__version__}, "
                         f"sm {arch}")
    doc.update(flashinfer=flashinfer.__version__, arch=arch, nvcc=nvcc, host=platform.node(), **toolchain)
    capability = _capability(arch)
    specs = {}
    for m, users in modules.items():
        spec = m.jit_spec(capability)
        entry = specs.setdefault(spec.name, (spec, []))
        entry[1].extend(u for u in users if u not in entry[1])
    log(f"flashinfer {flashinfer.__version__} for sm {arch} ({arch_list(arch)}), {nvcc}, MAX_JOBS="
        f"{os.environ.get('MAX_JOBS')}: {len(specs)} module(s) into {out}")
    for header in toolchain.get("missing_headers", []):
        log(f"the CUDA toolkit ({toolchain.get('cuda_home') or 'not found'}) has no {header}, which some FlashInfer "
            f"modules include: pip install {LIBRARY_HEADERS[header]}, or they fail to compile")
    failed: dict = {}
    for i, (name, (spec, users)) in enumerate(specs.items(), 1):
        target = out / name / f"{name}.so"
        if name in doc["modules"] and target.exists():
            log(f"[{i}/{len(specs)}] {name}: already built")
            continue
        log(f"[{i}/{len(specs)}] {name} (for {', '.join(users)}): compiling")
        t0 = time.perf_counter()
        try:
            spec.build(verbose=False, need_lock=True)   # FlashInfer's own lock: other builds may share its cache
        except Exception as e:  # noqa: BLE001 - one module's failure must not cost the others
            failed[name] = str(e).strip().splitlines()[-12:]
            log(f"[{i}/{len(specs)}] {name}: FAILED after {time.perf_counter() - t0:.0f} s:\n    "
                + "\n    ".join(line[-300:] for line in failed[name]))
            continue
        seconds = time.perf_counter() - t0
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(spec.jit_library_path, target)
        doc["modules"][name] = {"users": users, "bytes": target.stat().st_size, "sha256": _sha256(target),
                                "seconds": round(seconds, 1)}
        _write_manifest(out, doc)   # after each module: a stopped build keeps what it finished
        log(f"[{i}/{len(specs)}] {name}: {seconds:.0f} s, {target.stat().st_size / 1e6:.1f} MB")
    _write_manifest(out, doc)
    if failed:
        raise SystemExit(f"experiments.flashinfer_modules: {len(failed)} of {len(specs)} module(s) failed to "
                         f"compile ({', '.join(failed)}); the others are in {out}")
    return doc


def install(source: Path, device=None, aot_dir: Path | None = None, version: str | None = None) -> dict:
    """Install the modules of ``source`` (made by ``build``) as FlashInfer's AOT modules: copied into
    ``aot_dir`` (default: the installed FlashInfer's) unless present with the same content. Refused,
    with the reason, when ``source`` was built for another FlashInfer version or, on a CUDA
    ``device``, another compute capability: FlashInfer then JIT-compiles as usual. Returns what the
    build marker records."""
    source = Path(source)
    doc = read_manifest(source)
    if not doc["modules"]:
        return {"source": str(source), "status": "refused", "reason": f"no {MANIFEST} with modules in {source}"}
    if version is None or aot_dir is None:
        import flashinfer
        from flashinfer.jit import env as fi_env

        version = version or flashinfer.__version__
        aot_dir = aot_dir or fi_env.FLASHINFER_AOT_DIR
    reason = ""
    if doc.get("flashinfer") != version:
        reason = f"built for flashinfer {doc.get('flashinfer')}, this is {version}"
    elif device is not None and getattr(device, "type", "") == "cuda":
        import torch

        here = "{}.{}".format(*torch.cuda.get_device_capability(device))
        if here != doc.get("arch"):
            reason = f"built for sm {doc.get('arch')}, this GPU is sm {here}"
    if reason:
        return {"source": str(source), "status": "refused", "reason": reason}
    installed, present = [], []
    for name, meta in sorted(doc["modules"].items()):
        src, dst = source / name / f"{name}.so", Path(aot_dir) / name / f"{name}.so"
        if not src.exists():
            return {"source": str(source), "status": "refused", "reason": f"{src} is missing"}
        if dst.exists() and _sha256(dst) == meta["sha256"]:
            present.append(name)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)   # FlashInfer never sees half a module
        installed.append(name)
    return {"source": str(source), "status": "ok", "arch": doc.get("arch"), "nvcc": doc.get("nvcc"),
            "installed": installed, "present": present}


def jit_compiled_since(t0: float, jit_dir: Path | None = None) -> list:
    """Names of the FlashInfer modules JIT-compiled on this machine since ``t0`` (time.time()):
    what the GPU machine still had to compile."""
    if jit_dir is None:
        try:
            from flashinfer.jit import env as fi_env
        except Exception:  # noqa: BLE001 - no FlashInfer, nothing compiled by it
            return []
        jit_dir = fi_env.FLASHINFER_JIT_DIR
    jit_dir = Path(jit_dir)
    if not jit_dir.is_dir():
        return []
    return sorted(p.parent.name for p in jit_dir.glob("*/*.so") if p.stat().st_mtime >= t0)


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["install"]:
        return _install_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("build", "list"),
                    help="build the modules, or list what build would compile (install DIR: see install --help)")
    ap.add_argument("experiments", nargs="*", help="kernel experiment YAMLs (experiments/*.yaml, studies)")
    ap.add_argument("--serving", action="append", default=[], metavar="CONFIG",
                    help="serving configs (experiments/serving/*.yaml) whose GPU runs' modules to add")
    ap.add_argument("--arch", required=True, help="the GPU's compute capability, e.g. 9.0 (H100/H200) or 8.0 (A100)")
    ap.add_argument("--out", help="directory of the built modules (build)")
    ap.add_argument("--methods", help="comma-separated method labels (default: every method of the YAMLs)")
    ap.add_argument("--smoke", action="store_true", help="use the experiments' smoke overrides")
    args = ap.parse_args(argv)
    if not args.experiments and not args.serving:
        ap.error("name at least one experiment YAML or --serving config")
    try:
        arch_list(args.arch)
    except ValueError as e:
        ap.error(str(e))
    from experiments.grid import ExperimentError

    try:
        modules = kernel_modules(args.experiments, args.smoke, args.methods)
        for m, users in serving_modules(args.serving, args.smoke).items():
            modules.setdefault(m, []).extend(u for u in users if u not in modules.get(m, []))
    except ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.command == "list":
        for m, users in modules.items():
            print(f"{m.family} {m.backend or '-'} {m.dtype} hd{m.head_dim}: {', '.join(users)}")
        return 0
    if not args.out:
        ap.error("build needs --out DIR")
    prepare_toolchain(args.arch, Path(args.out))   # before flashinfer's first import
    try:
        import flashinfer  # noqa: F401
    except ImportError as e:
        print(f"experiments.flashinfer_modules: flashinfer is not importable ({e}); pip install flashinfer-python "
              "(no GPU needed to compile its modules)", file=sys.stderr)
        return 1
    build(modules, args.arch, Path(args.out), log=lambda line: print(f"[flashinfer-modules] {line}", flush=True))
    return 0


def _install_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.flashinfer_modules install",
                                 description="Install modules built by `build` into the installed FlashInfer "
                                             "(the GPU's architecture is checked when a GPU is visible).")
    ap.add_argument("directory", type=Path)
    args = ap.parse_args(argv)
    try:
        import torch

        device = torch.device("cuda") if torch.cuda.is_available() else None
        result = install(args.directory, device)
    except ImportError as e:
        print(f"experiments.flashinfer_modules: flashinfer is not importable ({e}); pip install flashinfer-python",
              file=sys.stderr)
        return 1
    if result["status"] != "ok":
        print(f"experiments.flashinfer_modules: not installed: {result['reason']}", file=sys.stderr)
        return 1
    print(f"installed {len(result['installed'])} module(s), {len(result['present'])} already there "
          f"(built for sm {result['arch']}, {result['nvcc']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
