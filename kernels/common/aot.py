"""Ahead-of-time compilation of a Gluon or Triton kernel launch for a CUDA target without a GPU,
specialised exactly as the JIT specialises it at launch (ints equal to 1 become constants, multiples
of 16 get divisibility hints; ptxas runs when present). Used by kernels/hfuse, kernels/hopper and
kernels/pod; tests read the PTX/SASS and the resources. Never call with TRITON_INTERPRET=1 set (Gluon
does not run in the interpreter, and an interpreted Triton kernel does not compile)."""
from __future__ import annotations


def compile_gluon(kernel, kwargs: dict, arch: int):
    """Compile ``kernel`` called with ``kwargs`` (its arguments and launch options by name) for
    ``sm_<arch>``; returns triton's CompiledKernel (``.asm['ttgir'|'ptx'|'cubin']``,
    ``.metadata.shared``)."""
    from triton.experimental.gluon._runtime import GluonASTSource

    return _compile(GluonASTSource, kernel, kwargs, arch)


def compile_triton(kernel, kwargs: dict, arch: int):
    """``compile_gluon`` for a ``triton.jit`` kernel."""
    from triton.compiler import ASTSource

    return _compile(ASTSource, kernel, kwargs, arch)


def _compile(source_type, kernel, kwargs: dict, arch: int):
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(kernel.signature, kernel.params, BaseBackend)
    bound, specialization, options = binder(**kwargs)
    names = [p.name for p in kernel.params]
    signature = {n: sp[0] for n, sp in zip(names, specialization)}
    constexprs = {(i,): bound[n] for i, n in enumerate(names) if signature[n] == "constexpr"}
    attrs = {(i,): BaseBackend.parse_attr(sp[1]) for i, sp in enumerate(specialization)
             if signature[names[i]] != "constexpr" and isinstance(sp[1], str)}
    src = source_type(kernel, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))


def cuobjdump() -> str | None:
    """The cuobjdump that ships with Triton (or one on PATH), None without either."""
    import os
    import shutil

    try:
        import triton
        p = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(p):
            return p
    except Exception:  # noqa: BLE001
        pass
    return shutil.which("cuobjdump")


def cubin_resources(cubin: bytes, sass: bool = False) -> dict:
    """A compiled kernel's registers per thread, stack and local memory bytes (``regs``, ``stack``,
    ``local``) and with ``sass`` its disassembly (``sass``), from cuobjdump; {} without cuobjdump."""
    import os
    import re
    import subprocess
    import tempfile

    tool = cuobjdump()
    if not tool:
        return {}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        if sass:
            out["sass"] = subprocess.run([tool, "-sass", path], capture_output=True, text=True).stdout
        res = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", res)
    if m:
        out["regs"], out["stack"], out["local"] = map(int, m.groups())
    return out


__all__ = ["compile_gluon", "compile_triton", "cubin_resources", "cuobjdump"]
