"""A real single-node SLURM on this machine for tests (see cluster.py)."""
