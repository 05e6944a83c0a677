"""experiments.build on the CPU: which methods it warms, and bad input."""
import json

from experiments import build as kernel_build


def test_build_warms_only_the_named_methods(tmp_path, capsys):
    out = tmp_path / "figure11.json"
    rc = kernel_build.main(["experiments/figure11.yaml", "--smoke", "--device", "cpu", "--out", str(out),
                            "--methods", "FA_prefill, OURS_decode"])
    assert rc == 0
    marker = json.loads(out.read_text())
    assert list(marker["methods"]) == ["FA_prefill", "OURS_decode"]
    assert all(m["status"] == "ok" for m in marker["methods"].values()), marker["methods"]


def test_build_names_an_unknown_method(tmp_path, capsys):
    out = tmp_path / "figure11.json"
    rc = kernel_build.main(["experiments/figure11.yaml", "--smoke", "--device", "cpu", "--out", str(out),
                            "--methods", "FA_prefill,NoSuchMethod"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--methods: NoSuchMethod not in experiments/figure11.yaml" in err
    assert not out.exists()
