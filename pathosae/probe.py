"""The linear probe every stage uses: standardised, L2-regularised logistic regression.

Probes here are mostly wide and short: thousands of SAE units (or 1,024+ embedding dims) over
tens to a few thousand slides. For an L2 penalty the fitted weights lie in the span of the
standardised training rows (the representer theorem), so the probe is fitted on the rows'
coordinates in that span (at most ``n_train`` columns, from one eigendecomposition of the
n × n Gram matrix) instead of on all ``d``
columns: the same model, up to the solver's tolerance, at a fraction of the cost. The intercept
is unpenalised and the standardised training rows are centred, so it is unaffected.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression

NEWTON_MAX_FEATURES = 256
"""Newton-Cholesky is several times faster on narrow inputs; L-BFGS beyond (a d × d Hessian)
and in the row span, where each of its steps costs n × n instead of n × d."""

ROW_SPACE_MAX_ROWS = 512
"""Above this many training rows the n × n eigendecomposition costs more than it saves."""

_RANK_TOLERANCE = 1e-10


class StandardisedLogistic(ClassifierMixin, BaseEstimator):
    """``StandardScaler`` then ``LogisticRegression(C)``, fitted in the training rows' span.

    scikit-learn's estimator API (``fit``, ``predict_proba``, ``predict``, ``classes_``), so it
    works with ``cross_val_predict`` and the other model-selection helpers.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000,  # noqa: N803 - sklearn's name
                 random_state: int | None = None, tol: float = 1e-4) -> None:
        self.C = C
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, x: ArrayLike, y: ArrayLike) -> StandardisedLogistic:
        x = np.asarray(x, dtype=np.float64)
        self.mean_ = x.mean(axis=0)
        scale = x.std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)  # as StandardScaler: constant columns stay 0
        standardised = (x - self.mean_) / self.scale_
        wide = x.shape[1] > 2 * x.shape[0] and x.shape[0] <= ROW_SPACE_MAX_ROWS
        self.basis_ = _row_space(standardised) if wide else None
        coords = standardised if self.basis_ is None else standardised @ self.basis_
        narrow = self.basis_ is None and coords.shape[1] <= NEWTON_MAX_FEATURES
        solver = "newton-cholesky" if narrow else "lbfgs"
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter,
                                         random_state=self.random_state, solver=solver,
                                         tol=self.tol)
        self.model_.fit(coords, np.asarray(y))
        self.classes_ = self.model_.classes_
        return self

    def _coords(self, x: ArrayLike) -> np.ndarray:
        standardised = (np.asarray(x, dtype=np.float64) - self.mean_) / self.scale_
        return standardised if self.basis_ is None else standardised @ self.basis_

    def predict_proba(self, x: ArrayLike) -> np.ndarray:
        return np.asarray(self.model_.predict_proba(self._coords(x)))

    def predict(self, x: ArrayLike) -> np.ndarray:
        return np.asarray(self.model_.predict(self._coords(x)))

    def decision_function(self, x: ArrayLike) -> np.ndarray:
        return np.asarray(self.model_.decision_function(self._coords(x)))

    def coef_in_inputs(self) -> np.ndarray:
        """Weights ``(n_classes or 1, d)`` on the standardised input columns."""
        coef = np.asarray(self.model_.coef_)
        return coef if self.basis_ is None else coef @ self.basis_.T


def _row_space(standardised: np.ndarray) -> np.ndarray:
    """Orthonormal basis ``(d, r)`` of the rows' span (r <= n rows), from the n × n Gram matrix
    (much cheaper than an SVD of the wide matrix)."""
    eigenvalues, vectors = np.linalg.eigh(standardised @ standardised.T)
    top = eigenvalues.max(initial=0.0)
    keep = eigenvalues > top * _RANK_TOLERANCE if top > 0 else np.zeros(len(eigenvalues), bool)
    if not keep.any():
        basis = np.zeros((standardised.shape[1], 1))
        basis[0, 0] = 1.0
        return basis
    basis = standardised.T @ (vectors[:, keep] / np.sqrt(eigenvalues[keep]))
    return np.ascontiguousarray(basis)
