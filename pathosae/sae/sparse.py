"""Sparse kernels for SAE training: work and gradients only for the latents that fire.

A batch of sparse codes is kept as flat COO triples ``(rows, cols, values)`` sorted by row, the
layout ``torch.nn.functional.embedding_bag`` reads with ``offsets``. The dense encoder matmul is
done once without autograd; the custom Function below attaches the gradient of the pre-activations
that were selected, so the encoder's backward costs O(active·d) instead of O(batch·d·d_sae).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional


@dataclass
class SparseCodes:
    """Active latents of a batch: entry ``i`` is latent ``cols[i]`` of sample ``rows[i]``.

    Entries are sorted by row; ``offsets[b]`` is the first entry of sample ``b``.
    """

    values: Tensor
    rows: Tensor
    cols: Tensor
    offsets: Tensor
    batch_size: int
    d_sae: int

    def to_dense(self) -> Tensor:
        dense = self.values.new_zeros(self.batch_size, self.d_sae)
        return dense.index_put((self.rows, self.cols), self.values, accumulate=True)

    def decode(self, w_dec: Tensor, values: Tensor | None = None) -> Tensor:
        """``sum_i values[i] * w_dec[cols[i]]`` per sample, without the decoder bias.

        The values take the decoder's dtype: under bfloat16 autocast the encoder's codes are
        bfloat16 while the (cheap, k rows a sample) sparse decode stays in the weights' float32.
        """
        weights = self.values if values is None else values
        return functional.embedding_bag(
            self.cols, w_dec, self.offsets, mode="sum", per_sample_weights=weights.to(w_dec.dtype),
        )

    def fired(self) -> Tensor:
        """Boolean mask of the latents with a positive value in this batch."""
        mask = torch.zeros(self.d_sae, dtype=torch.bool, device=self.values.device)
        mask[self.cols[self.values > 0]] = True
        return mask


def offsets_from_rows(rows: Tensor, batch_size: int) -> Tensor:
    """``offsets`` for ``embedding_bag`` from sorted row ids (samples may have no entry)."""
    counts = torch.bincount(rows, minlength=batch_size)
    return torch.cumsum(counts, 0) - counts


def fixed_k_codes(values: Tensor, indices: Tensor, d_sae: int) -> SparseCodes:
    """Codes with exactly ``k`` entries per sample from ``(B, k)`` values and indices."""
    batch, k = indices.shape
    rows = torch.arange(batch, device=indices.device).repeat_interleave(k)
    offsets = torch.arange(0, batch * k, k, device=indices.device)
    return SparseCodes(values.reshape(-1), rows, indices.reshape(-1), offsets, batch, d_sae)


def mask_codes(pre: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Row-sorted ``(values, rows, cols)`` of the entries of ``pre`` where ``mask`` is true."""
    rows, cols = mask.nonzero(as_tuple=True)
    return pre[rows, cols], rows, cols


def transpose_matmul(rows: Tensor, cols: Tensor, values: Tensor, dense: Tensor, n_out: int) -> Tensor:
    """``G.T @ dense`` for the sparse ``G[rows, cols] = values`` (shape ``batch x n_out``).

    Used for the weight gradients: ``dW[c] = sum_i values[i] * dense[rows[i]]`` over entries with
    ``cols[i] == c``. A CSR product sums each output row in one pass with no atomics, so it is
    deterministic and touches only the latents that fired.
    """
    if values.numel() == 0:
        return dense.new_zeros(n_out, dense.shape[1])
    order = torch.argsort(cols, stable=True)
    counts = torch.bincount(cols, minlength=n_out)
    crow = torch.zeros(n_out + 1, dtype=torch.int64, device=dense.device)
    torch.cumsum(counts, 0, out=crow[1:])
    if dense.device.type == "cpu":
        with warnings.catch_warnings():  # "CSR support is in beta": tests check it against dense
            warnings.simplefilter("ignore")
            # The CPU CSR product has no bfloat16 kernel: under autocast it runs in float32
            # (float32 and float64 inputs keep their precision).
            work = torch.promote_types(torch.promote_types(values.dtype, dense.dtype), torch.float32)
            g_t = torch.sparse_csr_tensor(
                crow, rows[order], values[order].to(work), (n_out, dense.shape[0]),
                check_invariants=False,
            )
        return g_t @ dense.to(work)
    out = dense.new_zeros(n_out, dense.shape[1])
    return out.index_add_(0, cols, values[:, None] * dense[rows])


class _ActivePreacts(torch.autograd.Function):
    """Pre-activations ``x_centred @ W_enc[c] + b_enc[c]`` at the selected entries.

    ``x_centred = x - b_dec`` is passed detached; the b_dec gradient is ``-(sum of g per latent)
    @ W_enc``, so the ``(batch, d)`` input gradient is never formed.

    Forward returns the values already computed by the dense no-grad matmul; backward gives the
    exact gradients for W_enc (selected rows only), b_enc and b_dec.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        pre_values: Tensor,
        x_centred: Tensor,
        w_enc: Tensor,
        b_enc: Tensor,
        b_dec: Tensor,
        rows: Tensor,
        cols: Tensor,
    ) -> Tensor:
        del b_enc, b_dec  # inputs only so that backward can return their gradients
        ctx.save_for_backward(x_centred, w_enc, rows, cols)
        return pre_values.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        # ctx is the autograd node (torch types it Any): FunctionCtx lacks saved_tensors.
        x_centred, w_enc, rows, cols = ctx.saved_tensors
        grad = grad.to(w_enc.dtype)  # bfloat16 autocast: the weights' gradients stay float32
        n_latents = w_enc.shape[0]
        grad_w = grad_b_enc = grad_b_dec = None
        per_latent = torch.zeros(n_latents, dtype=grad.dtype, device=grad.device)
        per_latent.index_add_(0, cols, grad)
        if ctx.needs_input_grad[2]:
            grad_w = transpose_matmul(rows, cols, grad, x_centred, n_latents)
        if ctx.needs_input_grad[3]:
            grad_b_enc = per_latent
        if ctx.needs_input_grad[4]:
            grad_b_dec = -(per_latent @ w_enc)
        return None, None, grad_w, grad_b_enc, grad_b_dec, None, None


def active_preacts(
    pre_values: Tensor, x_centred: Tensor, w_enc: Tensor, b_enc: Tensor, b_dec: Tensor,
    rows: Tensor, cols: Tensor,
) -> Tensor:
    """Selected pre-activations with gradients to the encoder weights and both biases."""
    return _ActivePreacts.apply(pre_values, x_centred.detach(), w_enc, b_enc, b_dec, rows, cols)
