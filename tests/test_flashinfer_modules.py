"""FlashInfer's modules compiled ahead of time (experiments/flashinfer_modules.py): what each method
declares it loads, what an experiment needs, the resumable build, the install the GPU build step
does, and the build marker's list of modules still compiled on the GPU machine. FlashInfer itself is
not needed except by the last tests (they skip without it)."""
import json
import os
import shutil
import subprocess
import sys
import time
import types

import pytest

from experiments import build as kernel_build
from experiments import flashinfer_modules as fim
from kernels.adapters.flashinfer import FlashInferModule, flashinfer_modules
from kernels.registry import load_all


def _m(family, backend, dtype="float16", hd=128):
    return FlashInferModule(family, backend, dtype, hd)


def test_each_flashinfer_method_declares_the_modules_its_wrappers_load():
    reg = load_all()
    assert flashinfer_modules(reg["FI_prefill_auto"], "float16", 128) == [_m("single_prefill", "auto")]
    assert flashinfer_modules(reg["FI_prefill_fa2"], "bfloat16", 64) == [_m("single_prefill", "fa2", "bfloat16", 64)]
    assert flashinfer_modules(reg["FI_decode"], "float16", 128) == [_m("batch_prefill", "fa2")]
    assert flashinfer_modules(reg["FI_Batched_auto"], "float16", 128) == [_m("batch_prefill", "auto")]
    assert flashinfer_modules(reg["FI_POD"], "float16", 256) == [_m("batch_prefill", "fa2", hd=256),
                                                                  _m("pod", "fa2", hd=256)]
    # our kernels and FlashAttention load nothing from FlashInfer
    assert flashinfer_modules(reg["POD"], "float16", 128) == []
    assert flashinfer_modules(reg["FA_prefill"], "float16", 128) == []


def test_an_experiment_needs_each_methods_modules_at_each_of_its_dtypes_and_head_dims():
    mods = fim.kernel_modules(["experiments/studies/baselines_check.yaml"])
    shapes = {("float16", 128), ("float16", 64), ("bfloat16", 256)}
    expected = set()
    for dt, hd in shapes:
        expected |= {_m("single_prefill", "auto", dt, hd), _m("single_prefill", "fa2", dt, hd),
                     _m("batch_prefill", "fa2", dt, hd), _m("batch_prefill", "auto", dt, hd), _m("pod", "fa2", dt, hd)}
    assert set(mods) == expected
    assert mods[_m("pod", "fa2", "bfloat16", 256)] == ["baselines_check:FI_POD"]
    assert sorted(mods[_m("batch_prefill", "fa2")]) == ["baselines_check:FI_Batched_fa2", "baselines_check:FI_POD",
                                                        "baselines_check:FI_decode"]
    # --methods narrows it as it narrows the runner
    only = fim.kernel_modules(["experiments/studies/baselines_check.yaml"], methods="FI_decode, POD")
    assert set(only) == {_m("batch_prefill", "fa2", dt, hd) for dt, hd in shapes}


def test_serving_runs_need_their_backends_modules_and_the_fused_ops():
    mods = fim.serving_modules(["experiments/serving/figure12.yaml"])
    assert set(mods[_m("pod", "fa2")]) == {"FI_POD"}
    assert set(mods[_m("batch_prefill", "fa2")]) == {"FI_Serial", "FI_Batched", "FI_POD"}
    for family in ("norm", "rope", "silu_and_mul"):
        assert mods[_m(family, "")] == ["ops"]


def test_arch_list_adds_hoppers_a_target_and_rejects_nonsense():
    assert fim.arch_list("9.0") == "9.0a"
    assert fim.arch_list("8.0") == "8.0"
    assert fim.arch_list("10.0") == "10.0"
    with pytest.raises(ValueError, match="compute capability"):
        fim.arch_list("sm90")


class _FakeSpec:
    def __init__(self, name, workdir):
        self.name, self.built = name, 0
        self.jit_library_path = workdir / name / f"{name}.so"

    def build(self, verbose=False, need_lock=False):
        self.built += 1
        self.jit_library_path.parent.mkdir(parents=True, exist_ok=True)
        self.jit_library_path.write_bytes(f"module {self.name}".encode())


class _FakeModule:
    def __init__(self, spec):
        self.spec = spec

    def jit_spec(self, arch):
        assert arch == (9, 0)
        return self.spec


@pytest.fixture
def fake_flashinfer(monkeypatch):
    """A flashinfer whose compilation context targets what FLASHINFER_CUDA_ARCH_LIST said at import."""
    class Context:
        def __init__(self):
            archs = os.environ.get("FLASHINFER_CUDA_ARCH_LIST", "")
            self.TARGET_CUDA_ARCHS = {(int(a.split(".")[0]), a.split(".")[1]) for a in archs.split()}

    context = Context()
    core = types.SimpleNamespace(current_compilation_context=context)
    jit = types.SimpleNamespace(core=core)
    monkeypatch.setitem(sys.modules, "flashinfer", types.SimpleNamespace(__version__="9.9.9", jit=jit))
    monkeypatch.setitem(sys.modules, "flashinfer.jit", jit)
    monkeypatch.setitem(sys.modules, "flashinfer.jit.core", core)

    def toolchain(arch, workdir):   # as if set before flashinfer's import
        os.environ["FLASHINFER_CUDA_ARCH_LIST"] = fim.arch_list(arch)
        context.__init__()
        return {"arch_list": fim.arch_list(arch), "cuda_home": "/cuda", "libcuda": "toolkit"}

    monkeypatch.setattr(fim, "prepare_toolchain", toolchain)
    monkeypatch.setattr(fim, "_nvcc_version", lambda: "Build cuda_test")
    monkeypatch.delenv("FLASHINFER_CUDA_ARCH_LIST", raising=False)
    return context


def test_build_writes_each_module_and_its_manifest_and_resumes(tmp_path, fake_flashinfer):
    a, b = _FakeSpec("mod_a", tmp_path / "jit"), _FakeSpec("mod_b", tmp_path / "jit")
    out = tmp_path / "modules"
    doc = fim.build({_FakeModule(a): ["x:FI_POD"], _FakeModule(b): ["x:FI_decode"]}, "9.0", out, log=lambda s: None)
    assert os.environ["FLASHINFER_CUDA_ARCH_LIST"] == "9.0a"
    assert (doc["flashinfer"], doc["arch"], doc["nvcc"]) == ("9.9.9", "9.0", "Build cuda_test")
    assert (out / "mod_a" / "mod_a.so").read_bytes() == b"module mod_a"
    assert doc["modules"]["mod_b"]["users"] == ["x:FI_decode"]
    assert json.loads((out / fim.MANIFEST).read_text())["modules"].keys() == {"mod_a", "mod_b"}
    # a second build compiles nothing it already has
    a2 = _FakeSpec("mod_a", tmp_path / "jit")
    fim.build({_FakeModule(a2): ["x:FI_POD"]}, "9.0", out, log=lambda s: None)
    assert a2.built == 0
    # and will not mix two architectures in one directory
    with pytest.raises(SystemExit, match="sm 9.0"):
        fim.build({_FakeModule(a2): ["x"]}, "8.0", out, log=lambda s: None)


def test_a_module_that_fails_to_compile_is_named_and_costs_no_other(tmp_path, fake_flashinfer):
    class Broken(_FakeSpec):
        def build(self, verbose=False, need_lock=False):
            raise RuntimeError("Ninja build failed.\nfatal error: curand_kernel.h: No such file or directory")

    good, bad, out = _FakeSpec("good", tmp_path / "jit"), Broken("bad", tmp_path / "jit"), tmp_path / "modules"
    lines = []
    with pytest.raises(SystemExit, match=r"1 of 2 module\(s\) failed to compile \(bad\)"):
        fim.build({_FakeModule(bad): ["x"], _FakeModule(good): ["y"]}, "9.0", out, log=lines.append)
    assert fim.read_manifest(out)["modules"].keys() == {"good"}
    assert any("curand_kernel.h" in line for line in lines)


def test_library_headers_come_from_nvidias_wheels_when_the_toolkit_lacks_them(tmp_path, monkeypatch):
    wheel = tmp_path / "site" / "nvidia"
    (wheel / "cu13" / "include").mkdir(parents=True)
    (wheel / "cu13" / "include" / "curand_kernel.h").write_text("")
    monkeypatch.setitem(sys.modules, "nvidia", types.SimpleNamespace(__path__=[str(wheel)]))
    toolkit = tmp_path / "cuda"
    (toolkit / "include").mkdir(parents=True)
    assert fim.wheel_includes(str(toolkit)) == ([str(wheel / "cu13" / "include")], ["cublasLt.h"])
    (toolkit / "include" / "curand_kernel.h").write_text("")
    (toolkit / "include" / "cublasLt.h").write_text("")
    assert fim.wheel_includes(str(toolkit)) == ([], [])


def test_build_refuses_a_flashinfer_imported_for_another_arch(tmp_path, fake_flashinfer, monkeypatch):
    monkeypatch.setattr(fim, "prepare_toolchain", lambda arch, workdir: {})
    fake_flashinfer.TARGET_CUDA_ARCHS = {(8, "0")}          # imported while the list said 8.0
    monkeypatch.setenv("FLASHINFER_CUDA_ARCH_LIST", "9.0a")
    with pytest.raises(SystemExit, match="imported before its arch list was set"):
        fim.build({_FakeModule(_FakeSpec("m", tmp_path)): ["x"]}, "9.0", tmp_path / "out", log=lambda s: None)


def test_a_toolkit_without_the_driver_stub_links_against_a_stand_in(tmp_path, monkeypatch):
    if shutil.which("cc") is None or shutil.which("readelf") is None:
        pytest.skip("needs a C compiler and readelf")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))          # a toolkit with no lib64/stubs
    monkeypatch.setenv("FLASHINFER_EXTRA_LDFLAGS", "-Wl,-O1")
    monkeypatch.delenv("FLASHINFER_CUDA_ARCH_LIST", raising=False)
    info = fim.prepare_toolchain("9.0", tmp_path / "out")
    stub = tmp_path / "out" / ".libcuda-stand-in" / "libcuda.so"
    assert info["libcuda"].startswith("empty stand-in") and info["cuda_home"] == str(tmp_path / "cuda")
    assert os.environ["FLASHINFER_CUDA_ARCH_LIST"] == "9.0a"
    assert os.environ["FLASHINFER_EXTRA_LDFLAGS"] == f"-Wl,-O1 -L{stub.parent}"
    soname = subprocess.run(["readelf", "-d", str(stub)], capture_output=True, text=True, check=True).stdout
    assert "Library soname: [libcuda.so.1]" in soname
    fim.prepare_toolchain("9.0", tmp_path / "out")                    # idempotent
    assert os.environ["FLASHINFER_EXTRA_LDFLAGS"].count("-L") == 1
    (tmp_path / "cuda" / "lib64" / "stubs").mkdir(parents=True)
    (tmp_path / "cuda" / "lib64" / "stubs" / "libcuda.so").write_bytes(b"")
    assert fim.prepare_toolchain("9.0", tmp_path / "other")["libcuda"] == "toolkit"


def _module_dir(tmp_path, version="9.9.9"):
    src = tmp_path / "modules"
    (src / "mod_a").mkdir(parents=True)
    (src / "mod_a" / "mod_a.so").write_bytes(b"module a")
    sha = fim._sha256(src / "mod_a" / "mod_a.so")
    (src / fim.MANIFEST).write_text(json.dumps({"flashinfer": version, "arch": "9.0",
                                                "modules": {"mod_a": {"sha256": sha, "bytes": 8}}}))
    return src


def test_install_copies_new_modules_once_and_refuses_another_version(tmp_path):
    src, aot = _module_dir(tmp_path), tmp_path / "aot"
    first = fim.install(src, aot_dir=aot, version="9.9.9")
    assert first["status"] == "ok" and first["installed"] == ["mod_a"] and first["present"] == []
    assert (aot / "mod_a" / "mod_a.so").read_bytes() == b"module a"
    again = fim.install(src, aot_dir=aot, version="9.9.9")
    assert again["installed"] == [] and again["present"] == ["mod_a"]
    other = fim.install(src, aot_dir=tmp_path / "aot2", version="1.0.0")
    assert other["status"] == "refused" and "built for flashinfer 9.9.9, this is 1.0.0" in other["reason"]
    assert not (tmp_path / "aot2").exists()
    empty = fim.install(tmp_path / "nothing", aot_dir=aot, version="9.9.9")
    assert empty["status"] == "refused"


def test_modules_compiled_since_a_time_are_named(tmp_path):
    old, new = tmp_path / "old" / "old.so", tmp_path / "new" / "new.so"
    for p in (old, new):
        p.parent.mkdir()
        p.write_bytes(b"")
    t0 = time.time() - 5
    os.utime(old, (t0 - 100, t0 - 100))
    assert fim.jit_compiled_since(t0, tmp_path) == ["new"]
    assert fim.jit_compiled_since(t0, tmp_path / "absent") == []


def test_the_build_step_records_a_refused_install(tmp_path, capsys):
    src = _module_dir(tmp_path, version="0.0.0-not-this")
    out = tmp_path / "m.json"
    rc = kernel_build.main(["experiments/figure11.yaml", "--smoke", "--device", "cpu", "--out", str(out),
                            "--methods", "FA_prefill", "--flashinfer-modules", str(src)])
    assert rc == 0
    marker = json.loads(out.read_text())
    assert marker["flashinfer_prebuilt"]["status"] == "refused"
    assert marker["flashinfer_jit_compiled"] == []
    assert "FlashInfer compiles them" in capsys.readouterr().out


def test_install_names_a_directory_without_modules(tmp_path, capsys):
    assert fim.main(["install", str(tmp_path)]) == 1
    assert f"not installed: no manifest.json with modules in {tmp_path}" in capsys.readouterr().err


def test_the_cli_lists_without_flashinfer_and_says_what_is_wrong(capsys):
    assert fim.main(["list", "experiments/studies/decode_split_measured.yaml", "--arch", "9.0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("pod fa2 float16 hd128: decode_split_measured:FI_POD") for line in lines)
    with pytest.raises(SystemExit):
        fim.main(["list", "experiments/figure11.yaml", "--arch", "hopper"])
    assert "compute capability" in capsys.readouterr().err


# ------------------------------------------------------------ with FlashInfer installed
def test_module_names_and_backends_are_flashinfers_own():
    pytest.importorskip("flashinfer")
    import torch
    from flashinfer.jit.attention.modules import get_batch_prefill_uri, get_pod_uri, get_single_prefill_uri

    f16 = torch.float16
    assert _m("single_prefill", "auto").resolved_backend((9, 0)) == "fa3"
    assert _m("single_prefill", "auto").resolved_backend((8, 0)) == "fa2"
    assert _m("batch_prefill", "auto", hd=96).resolved_backend((9, 0)) == "fa2"   # fa3 has no head dim 96
    assert _m("single_prefill", "auto").jit_spec((9, 0)).name == get_single_prefill_uri(
        "fa3", f16, f16, f16, 128, 128, 0, False, False, False)
    assert _m("batch_prefill", "fa2", "bfloat16", 64).jit_spec((9, 0)).name == get_batch_prefill_uri(
        "fa2", torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.int32, 64, 64, 0, False, False, False)
    assert _m("pod", "fa2").jit_spec((9, 0)).name == get_pod_uri(
        f16, f16, f16, 128, 0, False, False, False, torch.int32, 0, False, False)
