"""Code shared by the kernel families (kernels/pod, kernels/hfuse, kernels/hopper): split-KV
planning (splitkv.py, pure Python), the split merge kernel and its host side (merge.py),
ahead-of-time Gluon compiles (aot.py) and the non-negative least squares of the cost models
(nnls.py, numpy only; also used by the serving simulator)."""
