"""experiments/select.py reproduces the committed configs of the studies it selects, row for row."""
import pytest

from experiments import select


@pytest.mark.parametrize("name", sorted(select.SELECTIONS))
def test_selector_reproduces_committed_configs(name):
    configs = select.select(name)
    assert configs == select.committed_configs(name)          # same batches, same order
    text = select.yaml_path(name).read_text()
    assert select.configs_block(configs) in text               # and the same text `--write` gives


def test_write_is_idempotent(tmp_path, monkeypatch):
    name = "pod_policy_cps4"
    copy = tmp_path / f"{name}.yaml"
    copy.write_text(select.yaml_path(name).read_text())
    monkeypatch.setattr(select, "yaml_path", lambda n: copy)
    select.write(name, select.select(name))
    assert copy.read_text() == (select.ROOT / "experiments" / "studies" / f"{name}.yaml").read_text()


def test_rule_is_what_the_yaml_says(tmp_path):
    """Changing the table changes the selection: the rule reads the table, it does not store rows."""
    import pandas as pd

    t = pd.read_csv(select.TABLE)
    kept_before = len(select.select("pod_policy_cps4", t))
    first = t.index[t["kept"]][0]
    t.loc[first, "kept"] = False
    assert len(select.select("pod_policy_cps4", t)) in (kept_before, kept_before - 1)
    t["kept"] = False
    assert select.select("pod_policy_cps4", t) == []
