"""experiments.power's pure parts: nvidia-smi sample parsing, the settled-window summary, the
sustained call count (the probe itself needs a GPU and nvidia-smi)."""
import pytest

from experiments.power import parse_samples, summarize_samples, sustained_calls


def test_parse_skips_unreadable_lines():
    lines = ["1980, 450.5, 55, 0x0000000000000000", "[N/A], 300, 50, 0x0", "1410, 700.0", "1755, 699.9, 61, 0x4"]
    assert parse_samples(lines) == [(1980.0, 450.5, 55.0, "0x0000000000000000"), (1755.0, 699.9, 61.0, "0x4")]


def test_summary_drops_the_ramp():
    # the first quarter (the clock ramping) is left out of every statistic
    samples = [(1000.0, 100.0, 40.0, "0x1")] + [(1980.0, 500.0, 50.0, "0x0"), (1800.0, 600.0, 52.0, "0x4"),
                                                 (1900.0, 550.0, 51.0, "0x0")]
    s = summarize_samples(samples)
    assert s["samples"] == 3 and s["sm_clock_mhz_median"] == 1900.0 and s["sm_clock_mhz_min"] == 1800.0
    assert s["power_w_median"] == 550.0 and s["temperature_c_max"] == 52.0 and s["throttle_reasons"] == "0x0 0x4"
    assert summarize_samples([]) == {"samples": 0}


@pytest.mark.parametrize("median_ms,seconds,want", [(0.5, 1.5, 300), (1000.0, 1.5, 1), (0.01, 0.1, 1000)])
def test_sustained_calls_fill_the_window(median_ms, seconds, want):
    assert sustained_calls(median_ms, seconds) == want
