"""Code shared by the kernel families (kernels/pod, kernels/hfuse, kernels/hopper): split-KV
planning (splitkv.py, pure Python), the split merge kernel and its host side (merge.py), keyword
launch arguments (args.py) and ahead-of-time Gluon compiles (aot.py)."""
