import numpy as np
import pytest
from moe_training.rebalance import rebalance

Y = np.array([True] * 10 + [False] * 90)


def test_none_keeps_everything():
    idx, w = rebalance(Y, "none")
    assert len(idx) == 100 and np.all(w == 1)


def test_undersample_to_ratio_keeps_all_positives():
    idx, w = rebalance(Y, "undersample", ratio=3)
    assert Y[idx].sum() == 10
    assert (~Y[idx]).sum() == 30
    assert len(set(idx.tolist())) == len(idx), "no row twice"


def test_oversample_repeats_positives():
    idx, _ = rebalance(Y, "oversample", ratio=2)
    assert (~Y[idx]).sum() == 90
    assert Y[idx].sum() == 45
    assert set(np.flatnonzero(Y)) <= set(idx.tolist())


def test_class_weight_balances_total_weight():
    idx, w = rebalance(Y, "class_weight")
    assert len(idx) == 100
    assert w[Y].sum() == pytest.approx(w[~Y].sum())


def test_seeded_and_checked():
    a, _ = rebalance(Y, "undersample", 2, seed=1)
    b, _ = rebalance(Y, "undersample", 2, seed=1)
    assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        rebalance(Y, "smote")
    with pytest.raises(ValueError):
        rebalance(np.zeros(5, dtype=bool), "none")
