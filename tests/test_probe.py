"""The shared linear probe: the same model as StandardScaler + LogisticRegression, fitted in the
training rows' span when the columns outnumber the rows."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from pathosae.probe import StandardisedLogistic


def _reference() -> Pipeline:
    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=10_000, tol=1e-10))


@pytest.mark.parametrize(("n_rows", "n_cols", "n_classes"), [(60, 500, 2), (90, 400, 3), (200, 20, 3)])
def test_same_probabilities_as_the_full_probe(n_rows: int, n_cols: int, n_classes: int) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, n_classes, n_rows)
    x = rng.standard_normal((n_rows, n_cols)) + 0.4 * y[:, None] * (np.arange(n_cols) < 5)
    x[:, 7] = 3.0  # a constant column (a dead unit)
    test = rng.standard_normal((30, n_cols))
    ours = StandardisedLogistic(max_iter=10_000, tol=1e-10).fit(x, y)
    full = _reference().fit(x, y)
    assert (ours.basis_ is not None) == (n_cols > 2 * n_rows)
    assert np.allclose(ours.predict_proba(test), full.predict_proba(test), atol=1e-5)
    coef = full[-1].coef_
    assert np.allclose(ours.coef_in_inputs(), coef, atol=1e-4 * np.abs(coef).max())


def test_works_inside_cross_validation() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(["a", "b"], 40)
    x = rng.standard_normal((80, 300)) + 2.0 * (y == "b")[:, None] * (np.arange(300) < 3)
    pred = cross_val_predict(StandardisedLogistic(), x, y, cv=StratifiedKFold(4, shuffle=True,
                                                                              random_state=0))
    assert (pred == y).mean() > 0.8
