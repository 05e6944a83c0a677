"""Attention kernels of the harness: our POD kernel family (kernels/pod) and method adapters
(kernels/adapters), all registered in kernels/registry.py."""
