"""Method adapters: one small module per method family; each registers itself (see kernels/registry.py)."""
