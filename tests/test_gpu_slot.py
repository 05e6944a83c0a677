"""experiments/gpu_slot.py (one GPU per job through lock files) and the workflow's use of it, on the
CPU: GPUs are named by CUDA_VISIBLE_DEVICES or by a fake nvidia-smi; the pinned command records
what it was given. Every wait has a deadline, so a broken lock fails a test instead of hanging it."""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments import gpu_slot
from workflow_helpers import REPO, copy_checkout, snakemake

# The pinned command: writes "<pid> <CUDA_VISIBLE_DEVICES> <CUDA_DEVICE_ORDER>" to argv[1], then holds
# until argv[2] exists (at most 60 s) or, when argv[2] is a number, for that many seconds.
HOLD = textwrap.dedent("""\
    import os, sys, time
    from pathlib import Path
    out, release = Path(sys.argv[1]), sys.argv[2]
    start = time.time()
    text = " ".join([str(os.getpid()), os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"),
                     os.environ.get("CUDA_DEVICE_ORDER", "<unset>")])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.rename(out)
    if release.replace(".", "").isdigit():
        time.sleep(float(release))
        Path(str(out) + ".span").write_text(f"{start} {time.time()}")
    else:
        deadline = time.monotonic() + 60
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
""")
FAKE_SMI = textwrap.dedent("""\
    #!/bin/sh
    echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-aaaa)"
    echo "GPU 1: NVIDIA H200 (UUID: GPU-11111111-bbbb)"
    echo "GPU 2: NVIDIA H200 (UUID: GPU-22222222-cccc)"
    """)
MIG_SMI = textwrap.dedent("""\
    #!/bin/sh
    echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-aaaa)"
    echo "  MIG 3g.71gb     Device  0: (UUID: MIG-aaaa-0001)"
    echo "  MIG 3g.71gb     Device  1: (UUID: MIG-aaaa-0002)"
    echo "GPU 1: NVIDIA H200 (UUID: GPU-11111111-bbbb)"
    """)


@pytest.fixture
def box(tmp_path):
    """A scratch folder with the holder script, a lock folder, and every started process killed at
    the end (a failed assertion must not leave a holder behind)."""
    (tmp_path / "hold.py").write_text(HOLD)
    procs = []
    yield tmp_path, procs
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)


# An nvidia-smi that finds no GPU, first on PATH where a test wants none (also on a GPU machine).
NO_SMI = "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n"


@pytest.fixture(scope="module")
def no_smi(tmp_path_factory):
    return _fake_smi(tmp_path_factory.mktemp("nosmi"), NO_SMI)


def _env(cvd=None, path_first=None):
    """This environment without CUDA settings; CUDA_VISIBLE_DEVICES=``cvd`` if given, ``path_first``
    (a folder with a fake nvidia-smi) first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER",
                                                            gpu_slot.TIMEOUT_ENV, gpu_slot.DIR_ENV)}
    if cvd is not None:
        env["CUDA_VISIBLE_DEVICES"] = cvd
    path = [str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")]
    env["PATH"] = os.pathsep.join(([str(path_first)] if path_first else []) + path)
    env["PYTHONPATH"] = str(REPO)
    return env


def _fake_smi(tmp_path, text=FAKE_SMI):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    (d / "nvidia-smi").write_text(text)
    (d / "nvidia-smi").chmod(0o755)
    return d


def _slot_cmd(tmp, name, release, *opts):
    return [sys.executable, "-m", "experiments.gpu_slot", "--lock-dir", str(tmp / "locks"), *opts, "--",
            sys.executable, str(tmp / "hold.py"), str(tmp / name), str(release)]


def start(box, name, *opts, env):
    """A holder started through gpu_slot; its record appears at <tmp>/<name>, it holds until
    <tmp>/<name>.release exists."""
    tmp, procs = box
    p = subprocess.Popen(_slot_cmd(tmp, name, tmp / f"{name}.release", *opts), env=env, cwd=tmp,
                         stderr=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def record(box, name, timeout=30):
    """(pid, CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER) the holder ``name`` saw, waiting for it."""
    path = box[0] / name
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{name} never started"
        time.sleep(0.02)
    pid, cvd, order = path.read_text().split()
    return int(pid), cvd, order


def release(box, name, proc):
    (box[0] / f"{name}.release").touch()
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_two_jobs_get_distinct_gpus_and_keep_their_pid(box):
    env = _env("0,1")
    a, b = start(box, "a", env=env), start(box, "b", env=env)
    (pa, ca, _), (pb, cb, _) = record(box, "a"), record(box, "b")
    assert {ca, cb} == {"0", "1"}
    # exec: the command is the very process Snakemake started (--stop-with-parent watches Snakemake)
    assert (pa, pb) == (a.pid, b.pid)
    release(box, "a", a)
    release(box, "b", b)


def test_third_job_waits_until_its_timeout_then_fails_naming_the_holders(box):
    tmp, _ = box
    env = _env("0,1")
    a, b = start(box, "a", env=env), start(box, "b", env=env)
    record(box, "a"), record(box, "b")
    t = time.monotonic()
    r = subprocess.run(_slot_cmd(tmp, "c", tmp / "c.release", "--timeout", "1"), env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=30)
    waited = time.monotonic() - t
    assert r.returncode == gpu_slot.EXIT_NO_SLOT, r.stderr
    assert not (tmp / "c").exists(), "the command ran without a free GPU"
    assert "no 1 free GPU slot(s) among 2 after 1 s" in r.stderr
    assert f"pid {a.pid}" in r.stderr and f"pid {b.pid}" in r.stderr
    assert 1 <= waited < 20
    # with time to wait, it gets the GPU the moment one is released
    c = start(box, "c", "--timeout", "30", env=env)
    time.sleep(0.5)
    assert not (tmp / "c").exists() and c.poll() is None
    _, cvd_b, _ = record(box, "b")
    release(box, "b", b)
    assert record(box, "c")[1] == cvd_b
    release(box, "c", c)
    release(box, "a", a)


def test_killed_holder_frees_its_gpu(box):
    tmp, _ = box
    env = _env("0,1")
    a, b = start(box, "a", env=env), start(box, "b", env=env)
    _, cvd_a, _ = record(box, "a")
    record(box, "b")
    a.send_signal(signal.SIGKILL)
    a.wait(timeout=10)
    c = start(box, "c", "--timeout", "0", env=env)  # no waiting: the slot must be free at once
    assert record(box, "c")[1] == cvd_a
    release(box, "c", c)
    release(box, "b", b)


def test_a_scheduler_allocation_is_kept(box):
    tmp, _ = box
    for cvd in ("3", "GPU-12345678-abcd"):
        name = f"kept-{cvd}"
        p = start(box, name, env=_env(cvd))
        assert record(box, name)[1:] == (cvd, "<unset>")
        release(box, name, p)
    assert not (tmp / "locks").exists(), "a job with its own allocation must lock nothing"


def test_multi_gpu_job_takes_distinct_gpus_among_those_listed(box):
    env = _env("4,5,6")
    a = start(box, "a", "--gpus", "2", env=env)
    b = start(box, "b", "--gpus", "1", env=env)
    ga, gb = record(box, "a")[1].split(","), record(box, "b")[1].split(",")
    assert len(ga) == 2 and len(set(ga + gb)) == 3 and set(ga + gb) == {"4", "5", "6"}
    release(box, "a", a)
    release(box, "b", b)


def test_cpu_jobs_and_gpu_less_machines_run_unpinned(box, no_smi):
    tmp, _ = box
    smi = _fake_smi(tmp)
    p = start(box, "cpu", "--gpus", "0", env=_env(path_first=smi))  # a smoke job on a GPU machine
    assert record(box, "cpu")[1:] == ("<unset>", "<unset>")
    release(box, "cpu", p)
    p = start(box, "none", env=_env(path_first=no_smi))  # no GPU found, nothing set: nothing to pin to
    assert record(box, "none")[1] == "<unset>"
    release(box, "none", p)
    assert not (tmp / "locks").exists()


def test_gpus_from_nvidia_smi(box, monkeypatch, no_smi):
    tmp, _ = box
    smi = _fake_smi(tmp)
    a = start(box, "a", env=_env(path_first=smi))
    b = start(box, "b", env=_env(path_first=smi))
    (_, ca, oa), (_, cb, ob) = record(box, "a"), record(box, "b")
    # nvidia-smi's indices, read by CUDA in nvidia-smi's (PCI) order
    assert {ca, cb} <= {"0", "1", "2"} and ca != cb and oa == ob == "PCI_BUS_ID"
    locks = {p.name for p in (tmp / "locks").iterdir()}
    assert {f"gpu-{ca}.lock", f"gpu-{cb}.lock"} <= locks <= {"gpu-0.lock", "gpu-1.lock", "gpu-2.lock"}
    release(box, "a", a)
    release(box, "b", b)
    r = subprocess.run(_slot_cmd(tmp, "big", 1, "--gpus", "4", "--timeout", "0"), env=_env(path_first=smi),
                       cwd=tmp, capture_output=True, text=True, timeout=30)
    assert r.returncode == gpu_slot.EXIT_NO_SLOT and "4 GPUs asked for but this machine has 3" in r.stderr
    # the count the Snakefile registers, without CUDA
    monkeypatch.setenv("PATH", f"{smi}{os.pathsep}/usr/bin{os.pathsep}/bin")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpu_slot.gpu_count() == 3
    _fake_smi(tmp, MIG_SMI)
    assert gpu_slot.visible_gpus() == ["MIG-aaaa-0001", "MIG-aaaa-0002", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_slot.gpu_count() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slot.gpu_count() == 1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(no_smi))
    assert gpu_slot.gpu_count() == 1
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpu_slot.gpu_count() == 1


def test_gpu_slot_imports_no_torch():
    r = subprocess.run([sys.executable, "-c", "import sys, experiments.gpu_slot; print('torch' in sys.modules)"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_snakemake_runs_one_job_per_gpu_at_once(tmp_path):
    """Four one-second GPU jobs under Snakemake with gpu=2: two at a time, never two on one GPU."""
    (tmp_path / "hold.py").write_text(HOLD)
    py = sys.executable
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""\
        rule all:
            input: expand("out/{{i}}", i=range(4))

        rule job:
            output: "out/{{i}}"
            resources: gpu=1
            shell: "exec {py} -m experiments.gpu_slot --gpus {{resources.gpu}} --lock-dir locks -- "
                   "{py} hold.py {{output}} 1.0"
        """))
    r = subprocess.run([py, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2"], cwd=tmp_path,
                       env=_env("0,1"), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    jobs = []
    for i in range(4):
        cvd = (tmp_path / "out" / str(i)).read_text().split()[1]
        start_t, end_t = map(float, (tmp_path / "out" / f"{i}.span").read_text().split())
        jobs.append((cvd, start_t, end_t))
    assert {c for c, _, _ in jobs} == {"0", "1"}
    overlapping = [(x, y) for n, x in enumerate(jobs) for y in jobs[n + 1:] if x[1] < y[2] and y[1] < x[2]]
    assert overlapping, "with two GPUs two jobs must run at once"
    assert all(x[0] != y[0] for x, y in overlapping), f"two jobs at once on one GPU: {jobs}"


# ---- the workflow -------------------------------------------------------------------------------
GPU_LINES = {  # module -> how its rule starts it
    "experiments.build": "python -m experiments.gpu_slot --gpus {g} -- python -u -m experiments.build ",
    "experiments.run": "exec python -m experiments.gpu_slot --gpus {g} -- python -m experiments.run ",
    "experiments.timeline": "exec python -m experiments.gpu_slot --gpus {g} -- python -m experiments.timeline ",
    "experiments.profile": "exec python -m experiments.gpu_slot --gpus {g} -- python -m experiments.profile ",
    "experiments.microbench_run":
        "exec python -m experiments.gpu_slot --gpus {g} -- python -m experiments.microbench_run ",
    "serving.run --stage build": "exec python -m experiments.gpu_slot --gpus {g} -- python -m serving.run ",
    "serving.run --stage gpu": "exec python -m experiments.gpu_slot --gpus {g} -- python -m serving.run ",
}


def _shell_lines(stdout):
    return [line.removeprefix("Shell command: ") for line in stdout.splitlines() if line.startswith("Shell command: ")]


def _line_of(lines, module):
    script, _, stage = module.partition(" ")
    found = [line for line in lines if re.search(rf"-m {re.escape(script)} ", line) and stage in line]
    assert found, f"no planned command runs {module}"
    return found


def test_dry_run_starts_every_gpu_job_through_the_slot_taker():
    result = snakemake(["-n", "-p", "--forceall", "figure11", "pod_timeline", "figure10", "figure7", "figure12",
                        "--config", "shards=2"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    lines = _shell_lines(result.stdout)
    for module, prefix in GPU_LINES.items():
        for line in _line_of(lines, module):
            assert line.startswith(prefix.format(g=1)), line
    shards = [line for line in lines if "-m experiments.run " in line]
    assert len(shards) == 3 * 2 and all("--stop-with-parent" in line for line in shards)  # 3 experiments
    # CPU jobs are not pinned
    assert not [line for line in lines if "gpu_slot" in line and ("-m analysis." in line or "-m figures." in line)]


def test_dry_run_smoke_jobs_ask_for_no_gpu():
    result = snakemake(["-n", "-p", "--forceall", "figure11", "pod_timeline", "--config", "smoke=true"])
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    lines = _shell_lines(result.stdout)
    for module in ("experiments.build", "experiments.run", "experiments.timeline"):
        for line in _line_of(lines, module):
            assert line.startswith(GPU_LINES[module].format(g=0)), line


def _provided_gpus(work, env, *args):
    """The `gpu` slots a real local run registers (it stops at once: every rule's `python` fails)."""
    fake = work / "fakebin"
    fake.mkdir(exist_ok=True)
    (fake / "python").write_text("#!/bin/sh\nexit 1\n")  # no job may really run, on any machine
    (fake / "python").chmod(0o755)
    env = {**env, "PATH": f"{fake}{os.pathsep}{env['PATH']}"}
    r = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", "figure11", "--config", "shards=1",
                        *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    m = re.search(r"Provided resources: .*gpu=(?:Resource\(\"gpu\", )?(\d+)", r.stdout + r.stderr)
    assert m, (r.stdout + r.stderr)[-4000:]
    return int(m.group(1))


def test_local_runs_register_one_gpu_slot_per_gpu(tmp_path, no_smi):
    work = copy_checkout(tmp_path / "checkout")
    smi = _fake_smi(tmp_path)
    assert _provided_gpus(work, _env(path_first=smi)) == 3
    assert _provided_gpus(work, _env(path_first=smi), "--resources", "gpu=1") == 1
    assert _provided_gpus(work, _env("5,7")) == 2
    assert _provided_gpus(work, _env(path_first=no_smi)) == 1  # no GPU found: one slot, GPU jobs still queue
    # the local profile leaves the count to the Snakefile
    assert _provided_gpus(work, _env(path_first=smi), "--profile", "profiles/local") == 3
