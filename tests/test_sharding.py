"""Sharding deals whole groups round-robin: disjoint, complete, deterministic."""
import pytest

from experiments import grid as G


@pytest.fixture(scope="module")
def rows():
    return G.expand(G.load_experiment("experiments/figure11.yaml"), gpu_memory_bytes=80e9)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 16, 315, 400])
def test_disjoint_complete_whole_groups(rows, n):
    parts = [G.shard(rows, i, n) for i in range(n)]
    keys = [[r.row_key for r in p] for p in parts]
    flat = [k for p in keys for k in p]
    assert len(flat) == len(set(flat)) == len(rows)
    assert set(flat) == {r.row_key for r in rows}
    owner = {}
    for i, p in enumerate(parts):
        for r in p:
            assert owner.setdefault(r.group_key, i) == i  # a group never spans two shards
        # order inside a shard follows the experiment order
        pos = [rows.index(r) for r in p[:50]]
        assert pos == sorted(pos)
    ngroups = [len(G.groups(p)) for p in parts]
    assert max(ngroups) - min(ngroups) <= 1
    assert parts == [G.shard(rows, i, n) for i in range(n)]  # deterministic


def test_round_robin_order(rows):
    gks = [gk for gk, _ in G.groups(rows)]
    assert [gk for gk, _ in G.groups(G.shard(rows, 1, 3))] == gks[1::3]


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "0/0", ""])
def test_bad_shard_spec(text):
    with pytest.raises(G.ExperimentError, match="shard"):
        G.parse_shard(text)


def test_parse_shard():
    assert G.parse_shard("2/5") == (2, 5)
    with pytest.raises(G.ExperimentError):
        G.shard([], 2, 2)
