"""Reconstruction and sparsity metrics, computed in one streaming pass in float64.

FVU (fraction of variance unexplained) is the residual sum of squares over the total sum of
squares around the per-dimension mean: ``sum ||x - x̂||² / sum_d sum_n (x_nd - mean_d)²``.
Measuring variance around zero, or around one scalar mean, overstates explained variance when the
features are not centred (a known pitfall of some public libraries).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from pathosae.errors import PathosaeError
from pathosae.sae.base import SAE
from pathosae.sae.conditional import ConditionedTopKSAE

if TYPE_CHECKING:
    from pathosae.sae.training import ArrayLike


def fvu(x: Tensor, recon: Tensor) -> Tensor:
    """Residual variance over per-dimension variance around the mean (one batch, in memory)."""
    x64, recon64 = x.double(), recon.double()
    residual = (x64 - recon64).pow(2).sum()
    total = (x64 - x64.mean(dim=0)).pow(2).sum()
    return residual / total


class StreamingMetrics:
    """Accumulates FVU, MSE, cosine, L0 and firing counts over batches."""

    def __init__(self, d_in: int, d_sae: int) -> None:
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_x_sq = torch.zeros(d_in, dtype=torch.float64)
        self.sum_residual_sq = 0.0
        self.sum_cosine = 0.0
        self.sum_l0 = 0.0
        self.fire_counts = torch.zeros(d_sae, dtype=torch.int64)

    def update(self, x: Tensor, recon: Tensor, active_cols: Tensor) -> None:
        x64, recon64 = x.double().cpu(), recon.double().cpu()
        self.n += x.shape[0]
        self.sum_x += x64.sum(0)
        self.sum_x_sq += x64.pow(2).sum(0)
        self.sum_residual_sq += float((x64 - recon64).pow(2).sum())
        cos = torch.nn.functional.cosine_similarity(x64, recon64, dim=1, eps=1e-12)
        self.sum_cosine += float(cos.sum())
        self.sum_l0 += active_cols.numel()
        self.fire_counts += torch.bincount(active_cols.cpu(), minlength=self.fire_counts.numel())

    def result(self, dense_threshold: float = 0.1) -> dict[str, float]:
        n = max(self.n, 1)
        mean = self.sum_x / n
        total = float((self.sum_x_sq - n * mean.pow(2)).sum())
        frequency = self.fire_counts.double() / n
        return {
            "n_rows": self.n,
            "fvu": self.sum_residual_sq / total if total > 0 else float("nan"),
            "explained_variance": 1 - self.sum_residual_sq / total if total > 0 else float("nan"),
            "mse": self.sum_residual_sq / (n * self.sum_x.numel()),
            "cosine": self.sum_cosine / n,
            "l0": self.sum_l0 / n,
            "dead_fraction": float((self.fire_counts == 0).double().mean()),
            "dense_fraction": float((frequency > dense_threshold).double().mean()),
        }


def iter_row_batches(x: ArrayLike, max_rows: int | None, batch_size: int) -> Iterator[Tensor]:
    """Float32 CPU tensors of consecutive rows (evaluation order does not matter)."""
    n = x.shape[0] if max_rows is None else min(max_rows, x.shape[0])
    for start in range(0, n, batch_size):
        chunk = x[start : min(n, start + batch_size)]
        if isinstance(chunk, Tensor):
            yield chunk.float()
        else:
            yield torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))


def _condition_batches(
    conditions: np.ndarray | Tensor | None, n_rows: int, max_rows: int | None, batch_size: int
) -> Iterator[np.ndarray | Tensor | None]:
    """The level codes of each batch of ``iter_row_batches`` (None forever without codes)."""
    if conditions is not None and len(conditions) != n_rows:
        raise PathosaeError(
            f"conditions have {len(conditions)} rows for {n_rows} feature rows. Fix: pass the "
            "level codes of exactly these rows (model.level_codes(rows_frame))."
        )
    n = n_rows if max_rows is None else min(max_rows, n_rows)
    for start in range(0, n, batch_size):
        yield None if conditions is None else conditions[start : min(n, start + batch_size)]


@torch.no_grad()
def evaluate_sae(
    sae: SAE,
    x: ArrayLike,
    max_rows: int | None = None,
    batch_size: int = 4096,
    dense_threshold: float = 0.1,
    conditions: np.ndarray | Tensor | None = None,
) -> dict[str, Any]:
    """Held-out metrics of a trained SAE on the rows of ``x`` (tensor, array or memmap).

    ``conditions``: the rows' confounder level codes for a confounder-aware SAE (for the offsets
    model, reconstruction with each row's own offsets). Without them such a model treats every
    row as unknown, i.e. the offsets model reconstructs with the mean offset (the harmonised
    view, so its FVU then includes the removed confounder shift). Plain SAEs ignore them.
    """
    was_training = sae.training
    sae.eval()
    device = next(sae.parameters()).device
    stats = StreamingMetrics(sae.d_in, sae.d_sae)
    per_batch = _condition_batches(conditions, x.shape[0], max_rows, batch_size)
    for batch, batch_conditions in zip(iter_row_batches(x, max_rows, batch_size), per_batch, strict=True):
        on_device = batch.to(device)
        if isinstance(sae, ConditionedTopKSAE):
            codes = sae.encode_sparse(on_device, batch_conditions)
            recon = sae.decode_sparse(codes, batch_conditions)
        else:
            codes = sae.encode_sparse(on_device)
            recon = sae.decode_sparse(codes)
        stats.update(batch, recon, codes.cols[codes.values != 0])
    sae.train(was_training)
    return stats.result(dense_threshold)


@torch.no_grad()
def encode_rows(
    sae: SAE, x: ArrayLike, batch_size: int = 4096, conditions: np.ndarray | Tensor | None = None
) -> Tensor:
    """Dense codes of every row (for association tests on modest row counts).

    ``conditions`` as in ``evaluate_sae`` (the offsets model encodes ``x`` less each row's own
    offsets; without them, less the mean offset).
    """
    sae.eval()
    device = next(sae.parameters()).device
    # Filled batch by batch: a list of parts and its concatenation would be two copies.
    out = torch.empty((x.shape[0], sae.d_sae), dtype=torch.float32)
    start = 0
    per_batch = _condition_batches(conditions, x.shape[0], None, batch_size)
    for batch, batch_conditions in zip(iter_row_batches(x, None, batch_size), per_batch, strict=True):
        if isinstance(sae, ConditionedTopKSAE):
            codes = sae.encode(batch.to(device), batch_conditions)
        else:
            codes = sae.encode(batch.to(device))
        out[start : start + len(codes)] = codes
        start += len(codes)
    return out
