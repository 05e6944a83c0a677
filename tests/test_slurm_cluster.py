"""The README's cluster path, `snakemake --profile profiles/slurm ...`, against a real SLURM.

A private single-node SLURM 22.05 (munge, MariaDB + slurmdbd, slurmctld, slurmd; tests/slurm/)
runs the CPU smoke run of figure11 and table7 with shards=2 through profiles/slurm, after the one
edit the README asks for (partition and account). Every build and sweep shard is a real SLURM
job, among them table7's empty shard 1 of 2 (one smoke group, two shards). One figure11 shard is
cancelled with `scancel` while it writes rows; the rerun must finish it from the rows it journaled.
The tables must equal those of the same smoke run through profiles/local up to timing, and every
job must leave its logs where the README says.

Needs root and Debian's packages (.ci/slurm-setup.sh) and takes minutes: marked `slurm`, which
pyproject's addopts deselect; run it with `make test-slurm` (`pytest -m slurm -rA ...`). It skips
with the reason where it cannot run, and fails instead when POD_REQUIRE_SLURM=1 (CI).

The first tests (the two profiles' resources; a cluster left behind by a killed session) are
quick and run with the unit tests.
"""
import importlib.util
import io
import os
import re
import threading
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
import yaml

from slurm.cluster import (ACCOUNT, CLUSTER_NAME, OWNER_PIDFILE, PARTITION, SlurmCluster, reclaim_left_behind,
                           private_cluster_owner, unavailable_reason)
from workflow_helpers import REPO, copy_checkout, snakemake

EXPERIMENTS = ("figure11", "table7")
# figure11's 16 smoke groups give 8 per shard; table7's single group leaves shard 1 of 2 empty.
SHARDS = 2
# The shard cancelled in the middle of its rows (of 20), once it has written MIN_ROWS of them.
KILLED_EXP, KILLED_SHARD, MIN_ROWS = "figure11", 0, 2
# Only to keep the test short: the plugin's first status check after a submission (default 40 s).
FAST_POLL = ["--slurm-init-seconds-before-status-checks", "3"]
SLURM_RULES = {"build", "sweep_shard"}  # the rules of a smoke run that are SLURM jobs
# Table columns that come from the timings (and the filter and counts that follow from them).
TIMING = re.compile(r"^(ms_|speedup_|limit_fraction_|achieved_|best_peer_ms$|limit_ms$|kept$|n$|mean_|median_"
                    r"|min_|max_|frac_)")
REQUIRED = os.environ.get("POD_REQUIRE_SLURM") == "1"


# ---- both profiles ask for the same resources (quick, with the unit tests) ----------------------
def profile_resources(name):
    """(profile, default-resources, set-resources) of profiles/<name>, SLURM placement
    (slurm_partition, slurm_account) left out."""
    doc = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())

    def strip(res):
        return {k: v for k, v in (res or {}).items() if not k.startswith("slurm_")}

    return doc, strip(doc.get("default-resources")), {
        rule: strip(res) for rule, res in (doc.get("set-resources") or {}).items()}


def test_slurm_and_local_profiles_agree_on_resources():
    local, local_default, local_rules = profile_resources("local")
    slurm, slurm_default, slurm_rules = profile_resources("slurm")
    assert slurm_default == local_default and slurm_rules == local_rules, \
        "profiles/slurm and profiles/local must ask for the same memory and runtime"
    assert {"mem_mb", "runtime"} <= set(slurm_default)
    # GPUs come from the rules alone: gpu=1 per GPU job (the plugin's --gpus=1); locally the
    # Snakefile registers one slot per GPU, so profiles/local sets no gpu limit.
    assert "gpu" not in str(local.get("resources", ""))
    for res in (slurm_default, *slurm_rules.values()):
        assert not {"gpu", "gpus", "gres"} & set(res), "profiles/slurm must not override the rules' gpu"
    assert slurm["executor"] == "slurm"
    # The README's edit: the partition placeholder (and the account, commented out).
    assert slurm["default-resources"]["slurm_partition"] == "<PARTITION>"


# ---- a cluster left behind by a killed session (quick, with the unit tests) --------------------
def fake_cluster(tmp_path, owner_pid):
    """A test cluster's state directory with a running stand-in slurmd (a copy of sleep, so that
    its comm is slurmd) and the default-path link to its slurm.conf."""
    import shutil
    import subprocess
    root = tmp_path / "state"
    root.mkdir()
    (root / "slurm.conf").write_text(f"ClusterName={CLUSTER_NAME}\nSlurmdPidFile={root}/slurmd.pid\n")
    (root / OWNER_PIDFILE).write_text(f"{owner_pid}\n")
    slurmd = tmp_path / "slurmd"
    shutil.copy(shutil.which("sleep"), slurmd)
    proc = subprocess.Popen([str(slurmd), "300"])
    (root / "slurmd.pid").write_text(f"{proc.pid}\n")
    link = tmp_path / "etc" / "slurm.conf"
    link.parent.mkdir()
    link.symlink_to(root / "slurm.conf")
    return root, link, proc


def dead_pid():
    import subprocess
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_cluster_of_a_killed_session_is_reclaimed(tmp_path):
    root, link, proc = fake_cluster(tmp_path, owner_pid=dead_pid())
    try:
        assert private_cluster_owner(link) == (root, None)
        events = reclaim_left_behind(link)
        assert proc.wait(timeout=30) is not None, "the left-behind daemon must be stopped"
        assert not link.is_symlink() and not link.exists()
        assert any("killed test session" in e for e in events) and any("slurmd" in e for e in events)
    finally:
        proc.kill()


def test_cluster_of_a_running_session_is_left_alone(tmp_path):
    root, link, proc = fake_cluster(tmp_path, owner_pid=os.getpid())  # this pytest: a live python
    try:
        assert private_cluster_owner(link) == (root, os.getpid())
        assert reclaim_left_behind(link) == []
        assert link.is_symlink() and proc.poll() is None
    finally:
        proc.kill()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """owner.pid records the owner's start time: a live process that got the dead owner's pid (any
    program, pytest run directly or through python) does not keep the cluster alive."""
    root, link, proc = fake_cluster(tmp_path, owner_pid=os.getpid())
    try:
        (root / OWNER_PIDFILE).write_text(f"{os.getpid()} 1\n")     # started at tick 1: not this process
        assert private_cluster_owner(link) == (root, None)
        start = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()[19]
        (root / OWNER_PIDFILE).write_text(f"{os.getpid()} {start}\n")
        assert private_cluster_owner(link) == (root, os.getpid())
    finally:
        proc.kill()


def test_a_machines_own_slurm_is_not_a_test_cluster(tmp_path):
    conf = tmp_path / "site.conf"
    conf.write_text("ClusterName=production\n")
    link = tmp_path / "slurm.conf"
    link.symlink_to(conf)
    assert private_cluster_owner(link) is None and reclaim_left_behind(link) == []
    assert private_cluster_owner(conf) is None  # a plain file: never ours
    assert link.exists()


# ---- the cluster run ---------------------------------------------------------------------------
def unavailable(why):
    if REQUIRED:
        pytest.fail(f"POD_REQUIRE_SLURM=1 but {why} (.ci/slurm-setup.sh installs what it needs, as root)",
                    pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    expr = request.config.getoption("markexpr") or ""
    if not REQUIRED and ("slurm" not in expr or "not slurm" in expr):
        pytest.skip("the SLURM cluster test runs only when selected: `make test-slurm` (pytest -m slurm)")
    # CI waits for another session's cluster (one SLURM per machine) rather than failing at once.
    why = unavailable_reason(wait_s=1800 if REQUIRED else 0)
    if why:
        unavailable(f"no private SLURM here: {why}")
    for module in ("snakemake_executor_plugin_slurm", "snakemake_executor_plugin_slurm_jobstep"):
        if importlib.util.find_spec(module) is None:
            unavailable(f"no {module} in this Python (.ci/slurm-setup.sh pins the verified version)")
    t0 = time.monotonic()
    with SlurmCluster(tmp_path_factory.mktemp("slurm-state")) as c:
        c.start_s = time.monotonic() - t0
        yield c
    print("\n".join(["", "cluster:", *c.events]))


def fill_in_profile(work: Path) -> None:
    """What the README tells a user to edit in profiles/slurm/config.yaml: partition and account."""
    path = work / "profiles" / "slurm" / "config.yaml"
    text = path.read_text()
    assert 'slurm_partition: "<PARTITION>"' in text and '# slurm_account: "<ACCOUNT>"' in text
    text = text.replace('slurm_partition: "<PARTITION>"', f'slurm_partition: "{PARTITION}"')
    path.write_text(text.replace('# slurm_account: "<ACCOUNT>"', f'slurm_account: "{ACCOUNT}"'))


def smoke_args(profile, results):
    return ["--profile", f"profiles/{profile}", *EXPERIMENTS,
            "--config", "smoke=true", f"shards={SHARDS}", f"smoke_results_dir={results}"]


def rows_in_progress(results: Path, exp: str, shard: int) -> Path:
    """Where a running shard appends its rows: the journal the rerun resumes from (the older
    workflow wrote them to <shard CSV>.partial instead)."""
    journal = results / "journal" / exp / f"shard-{shard}-of-{SHARDS}.csv"
    partial = results / "raw" / exp / f"shard-{shard}-of-{SHARDS}.csv.partial"
    return partial if partial.exists() and not journal.exists() else journal


def complete_rows(path: Path) -> pd.DataFrame:
    """The rows of a CSV that is being appended to, without a last line still being written."""
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False) if text else pd.DataFrame(
        columns=["row_key"])


def cancel_when_rows(cluster, results: Path, comment: str, stop: threading.Event, found: dict) -> None:
    """Wait until the killed shard's rows file holds MIN_ROWS rows, then scancel the job whose
    comment is ``comment`` and record its id and the rows it had written once it is gone (into
    ``found``)."""
    try:
        while not stop.is_set():
            rows = 0
            partial = rows_in_progress(results, KILLED_EXP, KILLED_SHARD)
            if partial.exists():
                rows = complete_rows(partial)["row_key"].nunique()
            if rows >= MIN_ROWS:
                queue = cluster.run("squeue", "-h", "-t", "RUNNING", "-o", "%i|%k").stdout.split("\n")
                ids = [line.split("|")[0] for line in queue if line.endswith("|" + comment)]
                if ids:
                    cluster.run("scancel", ids[0])
                    while cluster.run("squeue", "-h", "-j", ids[0], "-o", "%T", check=False).stdout.strip() \
                            in ("RUNNING", "COMPLETING"):
                        time.sleep(0.2)
                    found.update(job=ids[0], rows=complete_rows(partial))
                    return
            time.sleep(0.3)
        found["error"] = f"{partial} had fewer than {MIN_ROWS} rows when the run ended"
    except Exception as e:  # noqa: BLE001 - reported by the test
        found["error"] = repr(e)


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """The smoke run through profiles/local, then through profiles/slurm with one shard cancelled
    mid-way, then the SLURM rerun; returns what the tests check."""
    tmp = tmp_path_factory.mktemp("slurm-runs")
    r = {"cluster": cluster, "timing": {"cluster start": cluster.start_s}}

    local = copy_checkout(tmp / "local-checkout")
    r["local_results"] = tmp / "local-results"
    t = time.monotonic()
    res = snakemake([*smoke_args("local", r["local_results"]), "--cores", "2"], cwd=local, timeout=1200)
    r["timing"]["local profile run"] = time.monotonic() - t
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]

    work = r["work"] = copy_checkout(tmp / "slurm-checkout")
    fill_in_profile(work)
    out = r["results"] = tmp / "slurm-results"
    args = [*smoke_args("slurm", out), *FAST_POLL]
    slurm_env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    slurm_env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    with mock.patch.dict(os.environ, slurm_env, clear=True):
        comment = f"rule_sweep_shard_wildcards_{KILLED_EXP}_{KILLED_SHARD}_{SHARDS}"
        found: dict = {}
        stop = threading.Event()
        killer = threading.Thread(target=cancel_when_rows, args=(cluster, out, comment, stop, found), daemon=True)
        t = time.monotonic()
        killer.start()
        # A run that misses the cancellation waits for the job forever: the timeout ends it.
        r["first"] = snakemake(args, cwd=work, timeout=600)
        r["timing"]["SLURM run (one shard cancelled)"] = time.monotonic() - t
        stop.set()
        killer.join(timeout=30)
        r["cancelled"] = found
        t = time.monotonic()
        r["rerun"] = snakemake(args, cwd=work, timeout=600)
        r["timing"]["SLURM rerun"] = time.monotonic() - t
    r["jobs"] = cluster.jobs()
    r["sacct"] = cluster.sacct_table()
    r["compared"] = []
    yield r
    report = ["", "timing (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timing"].items()),
              f"cancelled: job {found.get('job')} after {found['rows']['row_key'].nunique() if 'rows' in found else '?'} "
              f"rows of {KILLED_EXP} shard {KILLED_SHARD}/{SHARDS}",
              f"jobs submitted: {len(r['jobs'])} (sacct -X):", r["sacct"],
              "compared with the local profile's run:", *r["compared"]]
    print("\n".join(report))
    (tmp / "report.txt").write_text("\n".join(report) + "\n")


def run_output(res) -> str:
    return (res.stdout + res.stderr)[-8000:]


@pytest.mark.slurm
def test_cancelled_job_fails_the_first_run(runs):
    found = runs["cancelled"]
    assert "error" not in found and "job" in found, f"{found.get('error')}\n{run_output(runs['first'])}"
    assert runs["first"].returncode != 0, "the run whose job was cancelled must fail\n" + run_output(runs["first"])
    assert f"SLURM-job '{found['job']}' failed" in runs["first"].stdout + runs["first"].stderr, \
        run_output(runs["first"])


@pytest.mark.slurm
def test_rerun_completes(runs):
    assert runs["rerun"].returncode == 0, run_output(runs["rerun"])
    for exp in EXPERIMENTS:
        png = runs["results"] / "figures" / f"{exp}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def jobs_by_rule(runs):
    """{(rule, wildcards): [sacct rows]} from the plugin's --comment rule_<rule>_wildcards_<wc>."""
    out: dict = {}
    for job in runs["jobs"]:
        m = re.fullmatch(r"rule_(\w+?)_wildcards_(.+)", job["Comment"])
        assert m, f"job {job['JobIDRaw']} has no rule comment: {job}"
        out.setdefault((m.group(1), m.group(2)), []).append(job)
    return out


@pytest.mark.slurm
def test_every_shard_was_one_slurm_job(runs):
    """Each build and sweep shard ran as a SLURM job in the profile's partition and account, with
    its memory and runtime and no GPU (smoke); the cancelled one once more; nothing else."""
    expected = {("build", exp) for exp in EXPERIMENTS} | {
        ("sweep_shard", f"{exp}_{i}_{SHARDS}") for exp in EXPERIMENTS for i in range(SHARDS)}
    by_rule = jobs_by_rule(runs)
    assert set(by_rule) == expected, f"SLURM jobs {sorted(by_rule)} != {sorted(expected)}\n{runs['sacct']}"
    killed = ("sweep_shard", f"{KILLED_EXP}_{KILLED_SHARD}_{SHARDS}")
    _, local_default, local_rules = profile_resources("local")
    for key, jobs in by_rule.items():
        states = [j["State"] for j in jobs]
        if key == killed:
            assert [s.split()[0] for s in states] == ["CANCELLED", "COMPLETED"], runs["sacct"]
            assert jobs[0]["JobIDRaw"] == runs["cancelled"]["job"]
        else:
            assert states == ["COMPLETED"], f"{key}: {states}\n{runs['sacct']}"
        res = {**local_default, **local_rules.get(key[0], {})}
        for j in jobs:
            assert j["Partition"] == PARTITION and j["Account"] == ACCOUNT, j
            assert j["ReqMem"] == f"{res['mem_mb']}M", j
            assert j["Timelimit"] == time.strftime("%H:%M:%S", time.gmtime(res["runtime"] * 60)), j
            assert "gres/gpu" not in j["ReqTRES"], f"a smoke job asked for a GPU: {j}"
            assert Path(j["WorkDir"]) == runs["work"], j
    runs["compared"].append(f"  {len(runs['jobs'])} SLURM jobs: one per build and shard, plus the rerun of "
                            f"the cancelled {killed[1]}")


@pytest.mark.slurm
def test_job_logs_are_where_the_readme_says(runs):
    """SLURM's log of every job in .snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log (kept
    for successful jobs too) and the command's own log under <results>/logs/<step>/."""
    for (rule, wildcards), jobs in jobs_by_rule(runs).items():
        for j in jobs:
            log = runs["work"] / ".snakemake" / "slurm_logs" / f"rule_{rule}" / wildcards / f"{j['JobIDRaw']}.log"
            assert log.is_file() and log.stat().st_size > 0, f"no SLURM log {log} for {j}"
    for exp in EXPERIMENTS:
        logs = runs["results"] / "logs"
        assert (logs / "build" / f"{exp}.log").is_file()
        for i in range(SHARDS):
            assert (logs / "sweep" / exp / f"shard-{i}-of-{SHARDS}.log").is_file()
        assert (logs / "aggregate" / f"{exp}.log").is_file() and (logs / "plot" / f"{exp}.log").is_file()


def read_raw(results: Path, exp: str) -> pd.DataFrame:
    parts = [pd.read_csv(p, dtype=str, keep_default_na=False)
             for p in sorted((results / "raw" / exp).glob(f"shard-*-of-{SHARDS}.csv"))]
    assert len(parts) == SHARDS
    return pd.concat(parts, ignore_index=True)


@pytest.mark.slurm
@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_raw_rows_equal_the_local_run(runs, exp):
    """Every (batch, method) row once, with the same status as the local profile's run."""
    slurm, local = read_raw(runs["results"], exp), read_raw(runs["local_results"], exp)
    key = ["row_key", "method"]
    assert not slurm.duplicated(key).any(), slurm[slurm.duplicated(key, keep=False)][key]
    assert len(slurm) == len(local) > 0
    merged = local[[*key, "status"]].merge(slurm[[*key, "status"]], on=key, how="outer", indicator=True,
                                           suffixes=("_local", "_slurm"))
    assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
    assert (merged["status_local"] == merged["status_slurm"]).all()
    runs["compared"].append(f"  raw/{exp}: {len(slurm)} rows in {SHARDS} shards, same (row, method) set and status")


@pytest.mark.slurm
def test_cancelled_shard_resumed_its_rows(runs):
    """The rows the cancelled job had written survive unchanged (not measured again), once each."""
    before = runs["cancelled"]["rows"]
    final = pd.read_csv(runs["results"] / "raw" / KILLED_EXP / f"shard-{KILLED_SHARD}-of-{SHARDS}.csv",
                        dtype=str, keep_default_na=False)
    key = ["row_key", "method"]
    assert not final.duplicated(key).any()
    assert 0 < before["row_key"].nunique() < final["row_key"].nunique()
    kept = before.merge(final, on=list(before.columns), how="left", indicator=True)
    assert (kept["_merge"] == "both").all(), "rows written before scancel were lost or measured again"
    runs["compared"].append(f"  {KILLED_EXP} shard {KILLED_SHARD}: {len(before)} lines written before scancel kept "
                            f"as they were; {len(final) - len(before)} added by the rerun")


@pytest.mark.slurm
@pytest.mark.parametrize("table", [f"{e}{s}" for e in EXPERIMENTS for s in ("", "_summary")])
def test_tables_equal_the_local_run_up_to_timing(runs, table):
    slurm = pd.read_csv(runs["results"] / "tables" / f"{table}.csv")
    local = pd.read_csv(runs["local_results"] / "tables" / f"{table}.csv")
    assert list(slurm.columns) == list(local.columns) and len(slurm) == len(local) > 0
    key = "row_key" if "row_key" in local else "method"
    slurm, local = (df.sort_values(key).reset_index(drop=True) for df in (slurm, local))
    timing = [c for c in local.columns if TIMING.match(c)]
    exact = [c for c in local.columns if c not in timing]
    pd.testing.assert_frame_equal(slurm[exact], local[exact])
    # A timing may differ, but not be missing on one side only.
    pd.testing.assert_frame_equal(slurm[timing].isna(), local[timing].isna())
    runs["compared"].append(f"  tables/{table}.csv: {len(local)} rows; {len(exact)} columns equal, "
                            f"{len(timing)} timing columns present alike")
