#!/usr/bin/env bash
# What tests/test_slurm_cluster.py needs on a Debian machine, as root: a real single-node SLURM
# (Debian bookworm's slurm-wlm 22.05: slurmctld, slurmd, slurmdbd on MariaDB for sacct, munge and
# the client commands) and the executor plugin the README names, in the Python environment that
# runs the tests (the active venv).
# The test starts and stops its own munged, MariaDB, slurmdbd, slurmctld and slurmd on a generated
# configuration (tests/slurm/cluster.py); this script starts no daemon and writes no configuration.
set -euo pipefail

# The version the test was verified with. 2.8.0 declares numpy>=2.4.5 for its optional efficiency
# report (it only uses np.inf), while Triton 3.6's CPU interpreter, which the smoke run uses, needs
# numpy<2.4 (requirements/base.txt pins 2.3.5): --no-deps keeps that numpy. Its only other
# requirements (pandas, pyyaml, throttler, snakemake's interface packages) come with
# requirements/base.txt. 2.7.0 and older need pandas<3, where base.txt pins pandas 3.1.1.
SLURM_PLUGIN=snakemake-executor-plugin-slurm==2.8.0
SLURM_JOBSTEP_PLUGIN=snakemake-executor-plugin-slurm-jobstep==0.6.1

if [ "$(id -u)" -ne 0 ]; then
  echo "slurm-setup: run as root (apt-get install, and slurmd must run as root)" >&2
  exit 1
fi

missing=0
for bin in munged slurmctld slurmd slurmdbd sbatch sacct sacctmgr mariadbd mariadb-install-db; do
  command -v "$bin" >/dev/null || missing=1
done
if [ "$missing" -eq 1 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends slurm-wlm slurm-client slurmdbd munge mariadb-server
fi
slurmctld -V

PYTHON=${PYTHON:-python}
"$PYTHON" -m pip install -q --no-deps "$SLURM_PLUGIN"
# (pip then warns that 2.8.0 wants numpy>=2.4.5: expected, see above.)
"$PYTHON" -m pip install -q "$SLURM_JOBSTEP_PLUGIN"
"$PYTHON" -c 'import importlib.metadata as m; print("snakemake-executor-plugin-slurm", m.version("snakemake-executor-plugin-slurm"), "/ jobstep", m.version("snakemake-executor-plugin-slurm-jobstep"))'
