"""experiments.prefill_variants on the CPU (Triton interpreter, tiny shapes): the kernel switches
reach the launches, every line is checked before it is timed, and a rerun resumes."""
import pandas as pd

from experiments import prefill_variants as PV


def test_switches_reach_every_launch():
    class State:
        def __init__(self):
            self.meta = {}

    one, two = (lambda: None), (lambda: None)
    one.launch_state = State()
    two.launch_states = (State(), State())
    PV.with_kernel_switches(one, {"PF_SOFTMAX": 1})
    PV.with_kernel_switches(two, {"PF_WS": True})
    assert one.launch_state.meta == {"PF_SOFTMAX": 1}
    assert [s.meta for s in two.launch_states] == [{"PF_WS": True}] * 2


def test_variants_checked_timed_and_resumed(tmp_path):
    out = tmp_path / "variants.csv"
    counts = PV.time_variants(str(out), shapes=1, variants=["OURS_prefill_fma", "POD_fma"], device="cpu",
                              progress=False)
    assert counts == {"ok": 2}
    df = pd.read_csv(out)
    assert df["method"].tolist() == ["OURS_prefill_fma", "POD_fma"] and (df["max_abs_err"] < 1e-2).all()
    assert df["tflop_s"].notna().tolist() == [True, False]    # a rate for the prefill alone only
    assert PV.time_variants(str(out), shapes=1, variants=["OURS_prefill_fma", "POD_fma", "OURS_Serial"],
                            device="cpu", progress=False) == {"ok": 1}
