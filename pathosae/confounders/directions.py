"""Where a confounder lives: directions in embedding space and in SAE-code space, saved for edits.

- LEACE (``concept-erasure``): the least-change affine map after which no linear probe beats
  chance on the (one-hot) confounder. Stored as ``proj_left``/``proj_right``/``bias`` so that
  x' = x − ((x − bias) @ proj_right.T) @ proj_left.T.
- Class-conditional mean differences: for each confounder level, its mean minus the mean of
  the other levels, computed within each label class and averaged, so the biology the label
  carries does not leak into the direction.
- In SAE-code space: the weights of a logistic probe on the codes, and the set of units the
  association scan flagged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from concept_erasure import LeaceEraser, LeaceFitter
from safetensors.numpy import load_file, save_file

from pathosae.confounders.leakage import make_probe
from pathosae.errors import PathosaeError
from pathosae.io import atomic_path, write_json_atomic


def one_hot(labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """One column per level (LEACE erases every level at once)."""
    labels = np.asarray(labels).astype(str)
    levels = sorted(np.unique(labels))
    return (labels[:, None] == np.array(levels)[None, :]).astype(np.float64), levels


LEACE_CHUNK_ROWS = 4096
"""Rows converted to float64 at once by the LEACE fit and transform: 4,096 × 768 is 25 MB, and
the eraser makes a few such temporaries (16,384 rows put the 600-slide edit stage's peak there)."""


def fit_leace(x: np.ndarray, labels: np.ndarray, chunk: int = LEACE_CHUNK_ROWS) -> LeaceEraser:
    """Fit a LEACE eraser of a categorical concept on ``x`` (samples × dims, any float dtype).

    The statistics are float64 and updated ``chunk`` rows at a time (concept-erasure's running
    means and covariances), so no float64 copy of all of ``x`` is made."""
    z, levels = one_hot(labels)
    if len(levels) < 2:
        raise PathosaeError("LEACE needs at least two levels of the confounder to erase it.")
    fitter = LeaceFitter(x.shape[1], z.shape[1], dtype=torch.float64)
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        fitter.update(torch.as_tensor(np.asarray(x[rows], dtype=np.float64)), torch.as_tensor(z[rows]))
    return fitter.eraser


def apply_eraser(eraser: LeaceEraser, x: np.ndarray, chunk: int = LEACE_CHUNK_ROWS) -> np.ndarray:
    """``x`` erased, in ``x``'s float dtype (computed in float64, ``chunk`` rows at a time)."""
    x = np.asarray(x)
    out = np.empty(x.shape, dtype=x.dtype if x.dtype.kind == "f" else np.float64)
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        out[rows] = eraser(torch.as_tensor(np.asarray(x[rows], dtype=np.float64))).numpy()
    return out


def eraser_arrays(eraser: LeaceEraser) -> dict[str, np.ndarray]:
    arrays = {
        "proj_left": eraser.proj_left.numpy().astype(np.float32),
        "proj_right": eraser.proj_right.numpy().astype(np.float32),
    }
    if eraser.bias is not None:
        arrays["bias"] = eraser.bias.numpy().astype(np.float32)
    return arrays


def mean_difference_directions(
    x: np.ndarray, confounder: np.ndarray, condition: np.ndarray | None = None
) -> tuple[np.ndarray, list[str]]:
    """Unit-norm direction per confounder level: its mean minus the other levels' mean.

    With ``condition`` (e.g. the task label) the difference is taken inside each condition
    class that holds the level and the other levels, then averaged weighted by that class's
    size. Returns (levels × dims, levels). Means are taken in float64 whatever ``x``'s float
    dtype (float32 input is not copied to float64 whole).
    """
    x = np.asarray(x)
    confounder = np.asarray(confounder).astype(str)
    strata = np.zeros(len(x), dtype=int) if condition is None else np.unique(
        np.asarray(condition).astype(str), return_inverse=True
    )[1]
    levels = sorted(np.unique(confounder))
    directions = np.zeros((len(levels), x.shape[1]))
    for i, level in enumerate(levels):
        total = 0.0
        for s in np.unique(strata):
            inside, other = (strata == s) & (confounder == level), (strata == s) & (confounder != level)
            if inside.any() and other.any():
                weight = float((strata == s).sum())
                directions[i] += weight * (x[inside].mean(axis=0, dtype=np.float64)
                                           - x[other].mean(axis=0, dtype=np.float64))
                total += weight
        if total:
            directions[i] /= total
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    return np.divide(directions, norms, out=np.zeros_like(directions), where=norms > 0), levels


def probe_weights(codes: np.ndarray, confounder: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Logistic-probe weights on the codes, in code units (levels × units; one row if binary)."""
    codes = np.asarray(codes, dtype=np.float64)
    probe = make_probe(seed).fit(codes, np.asarray(confounder).astype(str))
    weights = probe.coef_in_inputs() / probe.scale_[None, :]
    return weights, [str(c) for c in probe.classes_]


def save_directions(
    path: str | Path, tensors: dict[str, np.ndarray], description: dict[str, object]
) -> None:
    """Write ``directions.safetensors`` and its json sidecar (same stem, ``.json``) atomically."""
    path = Path(path)
    clean = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp))
    shapes = {k: list(v.shape) for k, v in clean.items()}
    write_json_atomic(path.with_suffix(".json"), {"tensors": shapes, **description})


def load_directions(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise PathosaeError(
            f"{path} does not exist. Fix: run `pathosae confounders --run RUN` first."
        )
    return load_file(str(path))
