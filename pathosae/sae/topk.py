"""TopK SAE (the default): each sample keeps its k largest pre-activations (then ReLU).

Training runs on the sparse path: one dense no-grad encoder matmul, ``topk``, then gradients only
for the k selected latents per sample (see ``pathosae.sae.sparse``), and the decoder through
``embedding_bag``. ``losses(x, reference=True)`` runs the plain dense autograd path that tests use
to check the sparse gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pathosae.sae.base import SAE
from pathosae.sae.registry import register
from pathosae.sae.sparse import SparseCodes, active_preacts, fixed_k_codes


@register("topk")
class TopKSAE(SAE):
    sparse_training = True

    def __init__(self, d_in: int, d_sae: int, k: int = 32) -> None:
        if not 1 <= k <= d_sae:
            raise ValueError(f"k must lie in [1, d_sae={d_sae}], got {k}")
        self.k = k
        super().__init__(d_in, d_sae)

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "k": self.k}

    # ---- selection (overridden by BatchTopK) -------------------------------------------------
    def select(self, pre: Tensor) -> SparseCodes:
        """Which latents fire, with their pre-activation values (no gradient)."""
        values, indices = pre.topk(self.k, dim=1)
        return fixed_k_codes(values, indices, self.d_sae)

    def activate(self, pre: Tensor) -> Tensor:
        codes = self.select(pre.detach())
        dense = torch.zeros_like(pre)
        gathered = pre[codes.rows, codes.cols]  # keeps the gradient on the dense path
        return dense.index_put((codes.rows, codes.cols), torch.relu(gathered))

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        with torch.no_grad():
            codes = self.select(self.pre_acts(x))
        codes.values = torch.relu(codes.values)
        return codes

    # ---- training ----------------------------------------------------------------------------
    def sparse_codes_with_grad(self, x: Tensor) -> tuple[SparseCodes, Tensor, Tensor]:
        """Codes whose values carry gradients to the encoder, the no-grad pre-activations and
        the detached centred input."""
        x_centred = (x - self.b_dec).detach()
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_centred, self.W_enc.t())
        codes = self.select(pre)
        codes.values = torch.relu(
            active_preacts(
                codes.values, x_centred, self.W_enc, self.b_enc, self.b_dec, codes.rows, codes.cols
            )
        )
        return codes, pre, x_centred

    def losses(self, x: Tensor, reference: bool = False) -> dict[str, Tensor]:
        if reference:
            pre = self.pre_acts(x)
            z = self.activate(pre)
            recon = self.decode(z)
            fired = (z > 0).any(dim=0)
            x_centred = x - self.b_dec
            terms = self.extra_losses_dense(z, x)
        else:
            codes, pre, x_centred = self.sparse_codes_with_grad(x)
            recon = self.decode_sparse(codes)
            fired = codes.fired()
            terms = self.extra_losses_sparse(codes, x)
        out = {"mse": self.mse(recon, x), **terms}
        self._track_firing(fired, x.shape[0])
        out["aux"] = self.aux_loss(x, pre, recon, x_centred)
        redundancy = self.redundancy_loss(fired)
        if redundancy is not None:
            out["redundancy"] = redundancy
        return out

    def extra_losses_sparse(self, codes: SparseCodes, x: Tensor) -> dict[str, Tensor]:
        """Hook for subclasses that add reconstruction terms (Matryoshka prefixes)."""
        del codes, x  # plain TopK adds none
        return {}

    def extra_losses_dense(self, z: Tensor, x: Tensor) -> dict[str, Tensor]:
        del z, x  # plain TopK adds none
        return {}
