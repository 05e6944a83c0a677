"""A real single-node SLURM on localhost, private to one test session.

``SlurmCluster(state_dir)`` is a context manager that starts a private munged, slurmctld and slurmd
(Debian's slurm-wlm 22.05, run as root) on a configuration generated under ``state_dir`` with free
ports, waits until the node is idle, and on exit cancels every job and stops everything it started,
whatever happened in between. Nothing else under /etc, /run or /var is read or written: the daemons and
the client commands (sbatch, squeue, sacct, scancel, srun) find it through ``SLURM_CONF``, which
``cluster.env`` carries; sbatch passes it on to the jobs.

Almost: the job's own ``srun`` (the executor's jobstep plugin 0.6 runs each job's command through
it) gets an environment without SLURM_CONF, so it reads the compiled-in /etc/slurm/slurm.conf, as
on any cluster. That path is made a symbolic link to the generated file for the cluster's
lifetime, and only where no slurm.conf exists there (a machine with its own SLURM is left alone).

One node, named after this host, with the machine's cores and memory (``slurmd -C``), in one
partition. A ``gpu`` gres is configured only where NVIDIA GPUs exist. Accounting is a cluster's:
slurmdbd on a private MariaDB (``sacct`` is what the executor plugin polls by default, and 22.05's
sacct answers nothing without slurmdbd), with associations enforced and one account, ``ACCOUNT``,
for the user running the test.
"""
from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("munge", "mariadb", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "sacct", "sacctmgr", "srun")
PARTITION = "pod"
ACCOUNT = "podlab"
CLUSTER_NAME = "podtest"
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")  # Debian's compiled-in default
DB_USER, DB_PASS = "slurm", "slurm-test-only"


class SlurmUnavailable(RuntimeError):
    """This machine cannot run the private cluster (not root, or the Debian packages are missing)."""


def unavailable_reason(wait_s: float = 0) -> str | None:
    """Why a private cluster cannot start here, or None. A test cluster of another running session
    is waited for up to ``wait_s`` seconds (two CI runs on one machine take turns)."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as any user; munged and slurmd run as root here)"
    if DEFAULT_CONF.is_symlink() and not DEFAULT_CONF.exists():
        DEFAULT_CONF.unlink()  # dangling: left by a test cluster that was killed before its teardown
    owner = private_cluster_owner(DEFAULT_CONF)
    deadline = time.monotonic() + wait_s
    while owner is not None and owner[1] is not None and time.monotonic() < deadline:
        time.sleep(5)
        owner = private_cluster_owner(DEFAULT_CONF)
    if owner is not None and owner[1] is not None:
        return (f"{DEFAULT_CONF} belongs to the test cluster of another running session (pid {owner[1]}); "
                "run one SLURM test session at a time")
    if owner is not None:
        reclaim_left_behind(DEFAULT_CONF)
    if DEFAULT_CONF.exists() or DEFAULT_CONF.is_symlink():
        return (f"{DEFAULT_CONF} exists: this machine has its own SLURM, which the test leaves alone "
                "(a test cluster's jobs need that path)")
    missing = [b for b in (*DAEMONS, *CLIENTS) if shutil.which(b) is None]
    if missing:
        return (f"no {', '.join(missing)} on PATH: install Debian's slurm-wlm, slurmdbd, munge and "
                "mariadb-server (.ci/slurm-setup.sh does, as root)")
    return None


DAEMON_PIDFILES = {"slurmd.pid": "slurmd", "slurmctld.pid": "slurmctld", "slurmdbd.pid": "slurmdbd",
                   "mysql/mariadbd.pid": "mariadbd", "munge/munged.pid": "munged"}
OWNER_PIDFILE = "owner.pid"  # the test process whose teardown removes the cluster


def private_cluster_owner(conf: Path) -> tuple[Path, int | None] | None:
    """(root, live owner pid or None) when ``conf`` is a symbolic link to a test cluster's
    slurm.conf, None when it is anything else (a machine's own SLURM)."""
    if not conf.is_symlink() or not conf.exists():
        return None
    target = Path(os.readlink(conf))
    try:
        if f"ClusterName={CLUSTER_NAME}\n" not in target.read_text():
            return None
    except OSError:
        return None
    root = target.parent
    try:    # "pid start-time"
        fields = (root / OWNER_PIDFILE).read_text().split()
        owner, recorded = int(fields[0]), fields[1:2]
    except (OSError, ValueError, IndexError):
        return root, None
    # the pid of another process (reused after the owner died) is not the owner: its start time differs
    if _alive(owner) and (not recorded or recorded[0] == _start_time(owner)):
        return root, owner
    return root, None


def reclaim_left_behind(conf: Path) -> list[str]:
    """Stop the daemons of a test cluster whose test process was killed before its teardown (a
    CI job cut off at its time limit) and remove its ``conf`` link, so the next session can run."""
    found = private_cluster_owner(conf)
    if found is None or found[1] is not None:
        return []
    events = [f"{conf} -> {found[0] / 'slurm.conf'} left by a killed test session"]
    events += _stop_daemons(found[0])
    conf.unlink()
    return events


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), '' if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _stop_daemons(root: Path) -> list[str]:
    """Stop each daemon named by a pid file under ``root`` that still runs that daemon."""
    events = []
    for pidfile, name in DAEMON_PIDFILES.items():
        pid = _pid(root / pidfile)
        # comm is cut to 15 characters; a reused pid runs something else.
        if pid is not None and _alive(pid) and _comm(pid) == name[:15]:
            _stop(pid)
            events.append(f"stopped {name} pid {pid}")
    return events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware() -> dict:
    """CPUs, sockets, cores, threads and memory (MB) of this machine as slurmd sees them."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=60).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0] if out else ""))
    hw = {k: int(fields[k]) for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                      "ThreadsPerCore", "RealMemory") if k in fields}
    if "CPUs" not in hw:
        hw["CPUs"] = os.cpu_count() or 1
    if "RealMemory" not in hw:
        hw["RealMemory"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return hw


def gpu_devices() -> list[str]:
    """/dev/nvidiaN of this machine (empty without NVIDIA GPUs)."""
    return sorted(p for p in glob.glob("/dev/nvidia*") if re.fullmatch(r"/dev/nvidia\d+", p))


def slurmdbd_conf(root: Path, dbd_port: int, db_port: int, munge_socket: Path) -> str:
    """slurmdbd.conf storing into the private MariaDB on ``db_port``."""
    return "\n".join([
        "AuthType=auth/munge",
        f"AuthInfo=socket={munge_socket}",
        "DbdHost=localhost",
        "DbdAddr=127.0.0.1",
        f"DbdPort={dbd_port}",
        "SlurmUser=root",
        f"PidFile={root}/slurmdbd.pid",
        f"LogFile={root}/log/slurmdbd.log",
        "DebugLevel=info",
        "StorageType=accounting_storage/mysql",
        "StorageHost=127.0.0.1",
        f"StoragePort={db_port}",
        f"StorageUser={DB_USER}",
        f"StoragePass={DB_PASS}",
        "StorageLoc=slurm_acct_db",
    ]) + "\n"


def slurm_conf(root: Path, host: str, ctld_port: int, slurmd_port: int, dbd_port: int, munge_socket: Path,
               hw: dict, gpus: list[str], memory_reserve_mb: int = 1024) -> str:
    """slurm.conf of a one-node cluster whose state, logs and pid files all lie under ``root``."""
    node = [f"NodeName={host}", "NodeAddr=127.0.0.1", f"NodeHostname={host}", f"CPUs={hw['CPUs']}"]
    for key in ("Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore"):
        if key in hw:
            node.append(f"{key}={hw[key]}")
    # Leave the OS and the test itself some memory, as a cluster's node definition does.
    node.append(f"RealMemory={max(hw['RealMemory'] - memory_reserve_mb, 512)}")
    if gpus:
        node.append(f"Gres=gpu:{len(gpus)}")
    node.append("State=UNKNOWN")
    lines = [
        f"ClusterName={CLUSTER_NAME}",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}",
        f"SlurmdPort={slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root}/ctld",
        f"SlurmdSpoolDir={root}/slurmd",
        f"SlurmctldPidFile={root}/slurmctld.pid",
        f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        # What works in a container without systemd or a delegated cgroup tree.
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/linux",
        "SelectType=select/cons_tres",
        # Cores and memory are consumable, as on a GPU cluster: --mem is checked and reserved.
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "AccountingStorageType=accounting_storage/slurmdbd",
        "AccountingStorageHost=127.0.0.1",
        f"AccountingStoragePort={dbd_port}",
        # The munge socket of the connections to slurmdbd (AuthInfo does not cover them).
        f"AccountingStoragePass={munge_socket}",
        # As on most clusters: a job needs a valid (user, account) association.
        "AccountingStorageEnforce=associations",
        "JobAcctGatherFrequency=5",
        # sacct shows each job's --comment (the plugin puts rule and wildcards there).
        "AccountingStoreFlags=job_comment",
        "JobCompType=jobcomp/none",
        "ReturnToService=2",
        "KillWait=5",
        "InactiveLimit=0",
        "SchedulerParameters=sched_interval=2",
    ]
    if gpus:
        lines.append("GresTypes=gpu")
    lines.append(" ".join(node))
    lines.append(f"PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def gres_conf(host: str, gpus: list[str]) -> str:
    return "".join(f"NodeName={host} Name=gpu File={dev}\n" for dev in gpus)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (already exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(pid: int, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns when the process is gone."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.2)


class SlurmCluster:
    """Context manager: a private munge + slurmctld + slurmd on localhost (see the module doc)."""

    def __init__(self, root: Path, start_timeout: float = 90):
        self.root = Path(root)
        self.start_timeout = start_timeout
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.gpus = gpu_devices()
        self.hw: dict = {}
        self.env: dict = {}
        self.events: list[str] = []  # what was started and stopped, for the test's report
        self._mariadb: subprocess.Popen | None = None
        self._linked_default = False
        self.db_port = 0

    # ---- client commands -------------------------------------------------------------------
    def run(self, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        r = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stdout}{r.stderr}\n{self.log_tails()}")
        return r

    def node_state(self) -> str:
        r = self.run("sinfo", "-h", "-N", "-n", self.host, "-o", "%T", check=False, timeout=20)
        return r.stdout.strip().lower() if r.returncode == 0 else f"(sinfo: {r.stderr.strip()})"

    def jobs(self) -> list[dict]:
        """Every job of this cluster from the accounting database: id, name (the plugin's run
        id), comment (rule and wildcards), state, exit code, account, partition, CPUs, memory and
        GPUs asked for, elapsed time."""
        keys = ["JobIDRaw", "JobName", "Comment", "State", "ExitCode", "Account", "Partition", "AllocCPUS",
                "ReqMem", "ReqTRES", "Elapsed", "Timelimit", "WorkDir"]
        r = self.run("sacct", "-X", "--parsable2", "--noheader", "-S", "2000-01-01", "--format", ",".join(keys))
        return [dict(zip(keys, line.split("|"))) for line in r.stdout.splitlines() if line.strip()]

    def sacct_table(self) -> str:
        """sacct's own view of all jobs, as printed in the test's report."""
        fmt = "JobID,Comment%42,State,ExitCode,Account,Partition,AllocCPUS,ReqMem,Timelimit,Elapsed"
        return self.run("sacct", "-X", "-S", "2000-01-01", "--format", fmt).stdout

    def log_tails(self, lines: int = 25) -> str:
        parts = []
        for name in ("munge/munged.log", "log/mariadb.log", "log/slurmdbd.log", "log/slurmctld.log", "log/slurmd.log"):
            p = self.root / name
            if p.exists():
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {p}\n" + "\n".join(tail))
        return "\n".join(parts)

    # ---- start / stop ----------------------------------------------------------------------
    def __enter__(self) -> "SlurmCluster":
        reason = unavailable_reason()
        if reason:
            raise SlurmUnavailable(reason)
        try:
            self._start()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._teardown()

    def _start(self) -> None:
        for d in ("munge", "mysql", "ctld", "slurmd", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / OWNER_PIDFILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        # munged refuses keys, sockets and logs that others can write or read.
        os.chmod(self.root, 0o755)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        # A job inherits the environment of its sbatch (--export=ALL): none of this host's own
        # SLURM_* variables may leak into it.
        for k in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SQUEUE_", "SACCT_"))]:
            if k != "SLURM_CONF":
                del self.env[k]

        subprocess.run(["munged", f"--key-file={key}", f"--socket={self.munge_socket}",
                        f"--pid-file={self.root}/munge/munged.pid", f"--log-file={self.root}/munge/munged.log",
                        f"--seed-file={self.root}/munge/munged.seed", "--force"],
                       check=True, capture_output=True, text=True, timeout=30)
        self.events.append(f"munged pid {_pid(self.root / 'munge' / 'munged.pid')}")
        self._wait(lambda: subprocess.run(
            f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}", shell=True,
            capture_output=True, timeout=10).returncode == 0, "munge to answer")

        self._start_mariadb()
        self.hw = node_hardware()
        ctld_port, slurmd_port, dbd_port = free_port(), free_port(), free_port()
        self.conf.write_text(slurm_conf(self.root, self.host, ctld_port, slurmd_port, dbd_port, self.munge_socket,
                                        self.hw, self.gpus))
        dbd_conf = self.root / "slurmdbd.conf"  # found next to SLURM_CONF; slurmdbd wants it 0600
        dbd_conf.write_text(slurmdbd_conf(self.root, dbd_port, self.db_port, self.munge_socket))
        os.chmod(dbd_conf, 0o600)
        (self.root / "plugstack.conf").write_text("")
        DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
        DEFAULT_CONF.symlink_to(self.conf)
        self._linked_default = True
        (self.root / "cgroup.conf").write_text("")
        if self.gpus:
            (self.root / "gres.conf").write_text(gres_conf(self.host, self.gpus))

        self._daemon(["slurmdbd"], "slurmdbd")
        self._wait(lambda: self.run("sacctmgr", "-n", "show", "cluster", check=False, timeout=10).returncode == 0,
                   "slurmdbd to answer sacctmgr")
        # The cluster, an account and the user's association, as an administrator sets them up.
        user = pwd.getpwuid(os.getuid()).pw_name
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER_NAME)
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT, f"Cluster={CLUSTER_NAME}",
                 "Description=pod-attention tests", "Organization=pod")
        self.run("sacctmgr", "-i", "add", "user", user, f"Account={ACCOUNT}", f"Cluster={CLUSTER_NAME}")
        # -c: no state from an earlier run; -i: ignore unreadable state.
        self._daemon(["slurmctld", "-f", str(self.conf), "-c", "-i"], "slurmctld")
        self._wait(lambda: self.run("scontrol", "ping", check=False, timeout=10).stdout.count("UP") > 0,
                   "slurmctld to answer scontrol ping")
        self._daemon(["slurmd", "-f", str(self.conf), "-N", self.host], "slurmd")
        self._wait(lambda: self.node_state() in ("idle", "mixed", "allocated"), f"node {self.host} to be idle")
        self.events.append(f"node {self.host} idle: CPUs={self.hw['CPUs']} RealMemory="
                           f"{self.hw['RealMemory']}MB gpus={len(self.gpus)}")

    def _start_mariadb(self) -> None:
        """A private MariaDB on a free port of 127.0.0.1, with a user for slurmdbd."""
        data, sock = self.root / "mysql" / "data", self.root / "mysql" / "mysql.sock"
        r = subprocess.run(["mariadb-install-db", "--user=root", f"--datadir={data}", "--skip-test-db",
                            "--auth-root-authentication-method=socket"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {r.stdout}{r.stderr}")
        self.db_port = free_port()
        pidfile = self.root / "mysql" / "mariadbd.pid"
        # mariadbd stays in the foreground: start it detached, in its own session.
        self._mariadb = subprocess.Popen(["mariadbd", "--no-defaults", "--user=root", f"--datadir={data}", f"--socket={sock}",
                          f"--port={self.db_port}", "--bind-address=127.0.0.1", f"--pid-file={pidfile}",
                          f"--log-error={self.root}/log/mariadb.log", "--skip-log-bin",
                          "--innodb-buffer-pool-size=64M", "--skip-name-resolve"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
        sql = ["mariadb", "--no-defaults", "-S", str(sock), "-u", "root"]
        self._wait(lambda: subprocess.run([*sql, "-e", "SELECT 1"], capture_output=True, timeout=10).returncode == 0,
                   "MariaDB to accept connections")
        self.events.append(f"mariadbd pid {_pid(pidfile)} port {self.db_port}")
        grant = "".join(f"CREATE USER '{DB_USER}'@'{h}' IDENTIFIED BY '{DB_PASS}'; "
                        f"GRANT ALL ON slurm_acct_db.* TO '{DB_USER}'@'{h}'; " for h in ("127.0.0.1", "localhost"))
        subprocess.run([*sql, "-e", grant], check=True, capture_output=True, timeout=30)

    def _daemon(self, cmd: list[str], name: str) -> None:
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stdout}{r.stderr}\n{self.log_tails()}")
        self._wait(lambda: _pid(self.root / f"{name}.pid") is not None, f"{name}'s pid file")
        self.events.append(f"{name} pid {_pid(self.root / f'{name}.pid')}")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (subprocess.SubprocessError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {self.start_timeout:.0f}s waiting for {what}\n{self.log_tails()}")

    def _own_processes(self) -> list[int]:
        """Processes started under this cluster (jobs, their steps, slurmstepd): those whose
        environment names this cluster's SLURM_CONF, which no other process can have."""
        mark = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for d in glob.glob("/proc/[0-9]*"):
            pid = int(d[6:])
            if pid == os.getpid():
                continue
            try:
                if mark in Path(d, "environ").read_bytes().split(b"\0"):
                    pids.append(pid)
            except OSError:
                continue
        return pids

    def _teardown(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged (by their pid files), then end any
        process left from this cluster's jobs. Never raises."""
        if self.conf.exists() and (self.root / "slurmctld.pid").exists():
            try:
                self.run("scancel", "--full", "--partition", PARTITION, check=False, timeout=20)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    q = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                    if q.returncode != 0 or not q.stdout.strip():
                        break
                    time.sleep(1)
            except (subprocess.SubprocessError, OSError):
                pass
        self.events += _stop_daemons(self.root)
        if self._mariadb is not None and self._mariadb.poll() is None:  # no pid file yet
            _stop(self._mariadb.pid)
            self.events.append(f"stopped mariadbd pid {self._mariadb.pid}")
        if self._mariadb is not None:
            self._mariadb.wait(timeout=5) if self._mariadb.poll() is None else None
        for pid in self._own_processes():
            _stop(pid, timeout=5)
            self.events.append(f"stopped leftover job process {pid}")
        if self._linked_default and DEFAULT_CONF.is_symlink() and Path(os.readlink(DEFAULT_CONF)) == self.conf:
            DEFAULT_CONF.unlink()
            self.events.append(f"removed {DEFAULT_CONF} -> {self.conf}")
