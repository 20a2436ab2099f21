"""Matryoshka SAE: nested prefixes of the dictionary must each reconstruct the input alone.

The first m_1 atoms are trained to reconstruct x by themselves, the first m_2 > m_1 likewise, and
so on up to the full dictionary, so general concepts settle in the early latents and specific
ones later (less feature absorption; concept hierarchies). Selection is per-sample TopK; the loss
has one ``mse_prefix_<m>`` term per prefix besides the full ``mse``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pathosae.sae.registry import register
from pathosae.sae.sparse import SparseCodes
from pathosae.sae.topk import TopKSAE


def default_prefixes(d_sae: int, n_levels: int = 5) -> list[int]:
    """Doubling prefixes ending at d_sae: d_sae/16, d_sae/8, ..., d_sae."""
    sizes = {max(1, d_sae >> level) for level in range(n_levels)}
    return sorted(sizes)


@register("matryoshka")
class MatryoshkaSAE(TopKSAE):
    def __init__(
        self, d_in: int, d_sae: int, k: int = 32, prefixes: list[int] | None = None
    ) -> None:
        super().__init__(d_in, d_sae, k)
        sizes = sorted(set(prefixes or default_prefixes(d_sae)) | {d_sae})
        if sizes[0] < 1 or sizes[-1] > d_sae:
            raise ValueError(f"matryoshka prefixes must lie in [1, d_sae={d_sae}], got {prefixes}")
        self.prefixes = sizes

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "prefixes": list(self.prefixes)}

    def extra_losses_sparse(self, codes: SparseCodes, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for size in self.prefixes[:-1]:
            values = codes.values * (codes.cols < size)
            recon = codes.decode(self.W_dec, values) + self.b_dec
            out[f"mse_prefix_{size}"] = self.mse(recon, x)
        return out

    def extra_losses_dense(self, z: Tensor, x: Tensor) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for size in self.prefixes[:-1]:
            recon = self.decode_prefix(z, size)
            out[f"mse_prefix_{size}"] = self.mse(recon, x)
        return out

    def decode_prefix(self, z: Tensor, size: int) -> Tensor:
        """Reconstruction from the first ``size`` latents only."""
        return torch.addmm(self.b_dec, z[:, :size], self.W_dec[:size])
