"""Seeded non-IID partitions: exact small cases, invariants and errors."""

from __future__ import annotations

import numpy as np
import pytest

from sfsim.errors import SfsimError
from trainer import PartitionSpec, parse_partition, partition_table
from trainer.data.partition import dirichlet_counts, missing_classes, partition

LABELS = np.array([0] * 10 + [1] * 10 + [2] * 6)  # 26 samples, 3 classes
SPECS = ["iid", "dirichlet:0.1", "dirichlet:10", "label-skew:1", "label-skew:2"]


def test_parse():
    assert parse_partition("iid") == PartitionSpec("iid")
    assert parse_partition("dirichlet:0.5") == PartitionSpec("dirichlet", alpha=0.5)
    assert parse_partition("Label-Skew:2") == PartitionSpec("label-skew", classes=2)
    assert str(parse_partition("dirichlet:0.50")) == "dirichlet:0.5"


@pytest.mark.parametrize("bad", ["", "foo", "iid:2", "dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:x",
                                 "dirichlet:inf", "label-skew", "label-skew:0", "label-skew:1.5"])
def test_bad_specs(bad):
    with pytest.raises(SfsimError, match="is not valid: use iid, dirichlet:ALPHA"):
        parse_partition(bad)


@pytest.mark.parametrize("spec", SPECS)
def test_seeded_disjoint_and_covering(spec):
    parts = partition(LABELS, 4, spec, seed=7)
    again = partition(LABELS, 4, spec, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition(LABELS, 4, spec, seed=8)
    if spec != "label-skew:1":  # label-skew:1 with these sizes has a single possible outcome
        assert any(not np.array_equal(a, b) for a, b in zip(parts, other, strict=True))
    every = np.concatenate(parts)
    assert len(every) == len(set(every.tolist())) == len(LABELS)  # disjoint and covering
    assert all(p.dtype == np.int64 and np.array_equal(p, np.sort(p)) for p in parts)


def test_iid_equal_sizes():
    assert [len(p) for p in partition(LABELS, 4, "iid", seed=0)] == [7, 7, 6, 6]


def test_label_skew_one_class_per_device_round_robin():
    parts = partition(LABELS, 4, "label-skew:1", seed=3)
    assert [sorted(set(LABELS[p].tolist())) for p in parts] == [[0], [1], [2], [0]]
    assert [len(p) for p in parts] == [5, 10, 6, 5]  # class 0 shared by devices 0 and 3


def test_label_skew_two_classes():
    parts = partition(LABELS, 3, "label-skew:2", seed=3)
    assert [sorted(set(LABELS[p].tolist())) for p in parts] == [[0, 1], [0, 2], [1, 2]]
    with pytest.raises(SfsimError, match="label-skew:4 asks for more classes per device than the 3"):
        partition(LABELS, 2, "label-skew:4", seed=0)


def test_sizes_are_honoured():
    sizes = [3, 5, 2, 4]
    for spec in SPECS:
        parts = partition(LABELS, 4, spec, seed=1, sizes=sizes)
        assert [len(p) for p in parts] == sizes, spec
        assert len(set(np.concatenate(parts).tolist())) == sum(sizes)
    skew = partition(LABELS, 4, "label-skew:1", seed=1, sizes=sizes)
    assert [set(LABELS[p].tolist()) for p in skew] == [{0}, {1}, {2}, {0}]
    with pytest.raises(SfsimError, match="needs 7 samples of class 2 but only 6 are left"):
        partition(LABELS, 4, "label-skew:1", seed=1, sizes=[1, 1, 7, 1])
    with pytest.raises(SfsimError, match="ask for 30 samples but the dataset has 26"):
        partition(LABELS, 2, "iid", seed=1, sizes=[15, 15])
    with pytest.raises(SfsimError, match="must be 4 counts"):
        partition(LABELS, 4, "iid", seed=1, sizes=[1, 2])


def _mix(parts, labels, k=3):
    return [np.bincount(labels[p], minlength=k).tolist() for p in parts]


def test_dirichlet_exact_counts_on_the_fixture():
    # budgets [3, 5, 2, 4] of 26: class totals are the mix 10:10:6 scaled to 14 (5.38, 5.38, 3.23 -> 6, 5, 3)
    parts = partition(LABELS, 4, "dirichlet:0.5", seed=5, sizes=[3, 5, 2, 4])
    assert _mix(parts, LABELS) == [[3, 0, 0], [1, 3, 1], [0, 2, 0], [2, 0, 2]]
    # no budgets: every sample, each class split by its own draw; device totals follow the draw
    parts = partition(LABELS, 4, "dirichlet:0.5", seed=5)
    assert _mix(parts, LABELS) == [[8, 0, 0], [2, 5, 3], [0, 5, 2], [0, 0, 1]]


def test_dirichlet_forced_cases():
    labels = np.repeat([0, 1], 4)
    assert _mix(partition(labels, 2, "dirichlet:0.1", seed=0, sizes=[8, 0]), labels, 2) == [[4, 4], [0, 0]]
    assert _mix(partition(labels, 2, "dirichlet:0.1", seed=0, sizes=[2, 2]), labels, 2) in ([[1, 1], [1, 1]],
                                                                                             [[2, 0], [0, 2]],
                                                                                             [[0, 2], [2, 0]])
    # an enormous alpha splits every class in proportion to the budgets, exactly
    big = np.repeat([0, 1, 2], [300, 200, 100])
    assert _mix(partition(big, 3, "dirichlet:1e9", seed=4, sizes=[300, 200, 100]), big) == [
        [150, 100, 50], [100, 67, 33], [50, 33, 17]]
    assert dirichlet_counts([6, 4], 2, 0.5, np.random.default_rng(0), sizes=[3, 2]).tolist() == [[3, 0], [0, 2]]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alpha", ["0.05", "0.1", "0.5", "100"])
def test_dirichlet_keeps_the_global_label_mix(seed, alpha):
    labels = np.repeat([0, 1], [1194, 2473])  # MRPC's training mix
    sizes = [100, 50, 50, 100]  # 300 of 3667: class totals 300 * 1194/3667 = 97.7 -> 98 and 202
    parts = partition(labels, 4, f"dirichlet:{alpha}", seed=seed, sizes=sizes)
    every = np.concatenate(parts)
    assert len(every) == len(set(every.tolist())) == 300  # each sample at most once
    assert [len(p) for p in parts] == sizes
    assert np.bincount(labels[every]).tolist() == [98, 202]
    full = partition(labels, 4, f"dirichlet:{alpha}", seed=seed)  # all samples: the mix is the whole set's
    assert np.bincount(labels[np.concatenate(full)]).tolist() == [1194, 2473]


def test_dirichlet_small_alpha_is_skewed_large_alpha_is_not():
    labels = np.repeat([0, 1], 1000)
    flat = _mix(partition(labels, 4, "dirichlet:1000", seed=0, sizes=[200] * 4), labels, 2)
    assert max(abs(c - 100) for row in flat for c in row) <= 10
    skewed = partition(labels, 4, "dirichlet:0.05", seed=0, sizes=[200] * 4)
    major = [np.bincount(labels[p], minlength=2).max() / len(p) for p in skewed]
    assert np.mean(major) >= 0.85  # mostly one class per device


def test_missing_classes():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert missing_classes([np.array([0, 2]), np.array([3])], labels, 3) == [2]
    assert missing_classes([np.array([0, 2, 4])], labels, 4) == [3]  # a class the training set lacks entirely
    assert missing_classes([], labels, 2) == [0, 1]
    assert missing_classes(partition(labels, 2, "label-skew:1", seed=0), labels, 3) == [2]


def test_partition_table():
    parts = [np.array([0, 1, 10]), np.array([20, 21])]
    assert partition_table(parts, LABELS, ["phone", "pi"]) == (
        "device  class 0  class 1  class 2  total\n"
        "phone         2        1        0      3\n"
        "pi            0        0        2      2\n"
        "total         2        1        2      5")
    with pytest.raises(SfsimError, match="2 parts"):
        partition_table(parts, LABELS, ["a"])
