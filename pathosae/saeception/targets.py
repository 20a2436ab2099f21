"""Feature sharpening: the SAE-ception target, with confounder injection.

Plain SAE-ception: per class the top-N SAE units by mean activation over the class; each example
keeps its own activations on its class's top-N units, everything else is zeroed, and the SAE
decodes (with bias) the sharpened code into the target for the adapter layer.

Confounder injection changes three things:
- units flagged by the confounder scan are never kept (``exclude``);
- class means are site-balanced (mean over sites of the class-and-site means), so a unit that is
  "top" for a class only because the class came mostly from one site ranks lower;
- the confounder directions are projected out of the target around a centre.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

Decoder = Callable[[Tensor], Tensor]
Eraser = Callable[[Tensor], Tensor]


def class_means(
    codes: Tensor, labels: Tensor, n_classes: int, sites: np.ndarray | None = None,
    min_count: int = 1,
) -> Tensor:
    """``(n_classes, d_sae)`` mean codes per class; site-balanced when ``sites`` is given.

    Site-balanced: the unweighted mean over sites of the class-and-site means, using only the
    sites with at least ``min_count`` examples of that class.
    """
    means = codes.new_zeros(n_classes, codes.shape[1])
    for c in range(n_classes):
        in_class = labels == c
        if not bool(in_class.any()):
            continue
        if sites is None:
            means[c] = codes[in_class].mean(0)
            continue
        cell_means = []
        for s in np.unique(sites):
            cell = in_class & torch.from_numpy(sites == s)
            if int(cell.sum()) >= min_count:
                cell_means.append(codes[cell].mean(0))
        means[c] = torch.stack(cell_means).mean(0) if cell_means else codes[in_class].mean(0)
    return means


def top_units(means: Tensor, n_top: int, exclude: Tensor | None = None) -> Tensor:
    """Boolean ``(n_classes, d_sae)``: each class's ``n_top`` units by mean, never ``exclude``d."""
    scores = means.clone()
    if exclude is not None:
        scores[:, exclude] = float("-inf")
    n_top = min(n_top, int(torch.isfinite(scores[0]).sum()))
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if n_top <= 0:
        return keep
    idx = scores.topk(n_top, dim=1).indices
    keep.scatter_(1, idx, True)
    # A unit that never fires for the class is not worth keeping even if it made the cut.
    return keep & (means > 0)


def orthonormal_basis(directions: Tensor, rel_tol: float = 1e-6) -> Tensor:
    """Orthonormal ``(dim, r)`` basis of the span of the rows of ``directions``."""
    if directions.numel() == 0:
        return directions.new_zeros(directions.shape[-1], 0)
    u, s, _ = torch.linalg.svd(directions.T.double(), full_matrices=False)
    rank = int((s > rel_tol * s.max().clamp_min(1e-30)).sum())
    return u[:, :rank].to(directions.dtype)


def project_out(x: Tensor, basis: Tensor, centre: Tensor | None = None) -> Tensor:
    """Remove the components of ``x - centre`` along an orthonormal ``basis`` (dim × r)."""
    if basis.shape[1] == 0:
        return x
    offset = x if centre is None else x - centre
    return x - (offset @ basis) @ basis.T


def sharpened_targets(
    codes: Tensor, labels: Tensor, keep: Tensor, decode: Decoder, erase: Eraser | None = None
) -> Tensor:
    """Targets for the adapter layer: ``decode(codes * keep[label])``, then ``erase`` (the
    confounder directions projected out) when given."""
    with torch.no_grad():
        target = decode(codes * keep[labels].to(codes.dtype))
        if erase is not None:
            target = erase(target)
    return target


def random_unit_targets(n: int, dim: int, seed: int) -> Tensor:
    """The random-target control: one fixed random unit vector per example."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, dim, generator=g)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
