"""Edit operations as plain tensor functions.

Code-space operations change an SAE code ``z`` into ``z'``; :func:`apply_code_edit` maps that
back to the embedding keeping the SAE's reconstruction error: ``x' = x − D·z + D·z'`` (the
decoder bias cancels), so whatever the SAE does not explain is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
from torch import Tensor


class SAELike(Protocol):
    def encode(self, x: Tensor) -> Tensor: ...
    def decode(self, z: Tensor) -> Tensor: ...


CodeOp = Callable[[Tensor], Tensor]


def _unit_index(units: Sequence[int], d_sae: int) -> Tensor:
    idx = torch.as_tensor(list(units), dtype=torch.long)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d_sae):
        raise ValueError(f"unit ids must lie in [0, {d_sae}); got {sorted(set(idx.tolist()))[:10]}")
    return idx


def ablate_units(z: Tensor, units: Sequence[int]) -> Tensor:
    """Set the chosen units to zero."""
    out = z.clone()
    out[:, _unit_index(units, z.shape[1])] = 0
    return out


def scale_units(z: Tensor, units: Sequence[int], factor: float) -> Tensor:
    """Multiply the chosen units by ``factor`` (0 ablates, >1 amplifies)."""
    out = z.clone()
    idx = _unit_index(units, z.shape[1])
    out[:, idx] = out[:, idx] * factor
    return out


def clamp_units(z: Tensor, units: Sequence[int], value: float) -> Tensor:
    """Set the chosen units to ``value`` on every example (steering to a fixed level)."""
    out = z.clone()
    out[:, _unit_index(units, z.shape[1])] = value
    return out


def project_code(z: Tensor, direction: Tensor) -> Tensor:
    """Project each code onto the orthogonal complement of ``direction`` (rows span it)."""
    basis = _basis(direction.to(z.dtype), z.shape[1])
    return z - (z @ basis) @ basis.T


def project_out(x: Tensor, direction: Tensor) -> Tensor:
    """Embedding space: remove the component of ``x`` along ``direction`` (one or more rows)."""
    basis = _basis(direction.to(x.dtype), x.shape[1])
    # One full-size temporary (the projection, negated and added to in place), not two.
    return ((x @ basis) @ basis.T).neg_().add_(x)


def _basis(direction: Tensor, dim: int) -> Tensor:
    d = direction.reshape(-1, dim)
    if d.shape[0] == 0:
        return d.new_zeros(dim, 0)
    q, r = torch.linalg.qr(d.T.double())
    keep = r.diagonal().abs() > 1e-10 * r.diagonal().abs().max().clamp_min(1e-30)
    return q[:, keep].to(direction.dtype)


EDIT_CHUNK_ROWS = 2048
"""Rows encoded at once by a code edit: its pre-activations, codes, edited copy and change are
each 2,048 × d_sae floats (25 MB at 3,072 units), about 0.1 GB together beside the edited
output; 8,192 rows made that 0.4 GB, a quarter of the edit stage's peak at 600 slides."""


@torch.no_grad()
def apply_code_edit(x: Tensor, sae: SAELike, ops: Sequence[CodeOp],
                    chunk: int = EDIT_CHUNK_ROWS) -> Tensor:
    """``x − decode(z) + decode(z')`` with ``z = encode(x)`` and ``z'`` the ops applied in order.

    The result is written chunk by chunk into one output: no list of parts to concatenate."""
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk]
        z = sae.encode(xb)
        edited = z
        for op in ops:
            edited = op(edited)
        out[start : start + chunk] = xb + _decoded_change(sae, z, edited)
    return out


def _decoded_change(sae: SAELike, z: Tensor, edited: Tensor) -> Tensor:
    """``decode(edited) − decode(z)``. The project's decoders are affine in the codes (the bias
    and any per-level offsets cancel), so only the edited units' decoder rows are multiplied:
    an ablation of a few units costs a few rows, not two full decodes."""
    w_dec = getattr(sae, "W_dec", None)
    if not isinstance(w_dec, Tensor):
        return sae.decode(edited) - sae.decode(z)
    delta = edited - z
    changed = delta.ne(0).any(dim=0).nonzero().squeeze(1)
    return delta[:, changed] @ w_dec[changed]
