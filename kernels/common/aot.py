"""Ahead-of-time compilation of a Gluon kernel launch for a CUDA target without a GPU, specialised
exactly as the JIT specialises it at launch (ints equal to 1 become constants, multiples of 16 get
divisibility hints; ptxas runs when present). Used by kernels/hfuse and kernels/hopper; tests read
the PTX/SASS. Never call with TRITON_INTERPRET=1 set (Gluon does not run in the interpreter)."""
from __future__ import annotations


def compile_gluon(kernel, kwargs: dict, arch: int):
    """Compile ``kernel`` called with ``kwargs`` (its arguments and launch options by name) for
    ``sm_<arch>``; returns triton's CompiledKernel (``.asm['ttgir'|'ptx'|'cubin']``,
    ``.metadata.shared``)."""
    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(kernel.signature, kernel.params, BaseBackend)
    bound, specialization, options = binder(**kwargs)
    names = [p.name for p in kernel.params]
    signature = {n: sp[0] for n, sp in zip(names, specialization)}
    constexprs = {(i,): bound[n] for i, n in enumerate(names) if signature[n] == "constexpr"}
    attrs = {(i,): BaseBackend.parse_attr(sp[1]) for i, sp in enumerate(specialization)
             if signature[names[i]] != "constexpr" and isinstance(sp[1], str)}
    src = GluonASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options))


__all__ = ["compile_gluon"]
