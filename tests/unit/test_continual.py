"""Continual-learning metrics against a hand-computed example."""

import numpy as np
import pytest

from nrnlib.continual import backward_transfer, continual_metrics, forgetting, forward_transfer

# three tasks; row 0 before training, row i+1 after training task i
R = np.array([
    [0.1, 0.2, 0.3],
    [0.9, 0.25, 0.35],
    [0.6, 0.8, 0.4],
    [0.5, 0.7, 0.95],
])


def test_metrics_by_hand():
    m = continual_metrics(R)
    assert m["AP"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m["BWT"] == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert m["FWT"] == pytest.approx(((0.25 - 0.2) + (0.4 - 0.3)) / 2)
    np.testing.assert_allclose(forgetting(R), [max(0.9, 0.6) - 0.5, 0.8 - 0.7])
    assert m["forgetting"] == pytest.approx((0.4 + 0.1) / 2)


def test_no_forgetting_and_transfer_identities():
    r = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]])
    assert backward_transfer(r) == 0.0 and forward_transfer(r) == 0.0 and forgetting(r).tolist() == [0.0]


@pytest.mark.parametrize("bad", [np.zeros((3, 3)), np.zeros((2, 1)), np.array([[0, 0], [1, np.nan], [1, 1]])])
def test_bad_matrices_are_refused(bad):
    with pytest.raises(ValueError, match="R"):
        continual_metrics(bad)
