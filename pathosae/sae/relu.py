"""ReLU SAE with an L1 penalty scaled by each atom's decoder norm (the classic SAE).

Scaling the penalty by ||W_dec[i]|| stops the model from shrinking codes and growing atoms to
dodge the L1 term, whether or not the decoder is held at unit norm. Activations are dense early
in training, so this architecture trains on the dense autograd path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pathosae.sae.base import SAE
from pathosae.sae.registry import register


@register("relu")
class ReLUSAE(SAE):
    def __init__(self, d_in: int, d_sae: int, l1_coefficient: float = 2e-3) -> None:
        self.l1_coefficient = l1_coefficient
        super().__init__(d_in, d_sae)

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "l1_coefficient": self.l1_coefficient}

    def activate(self, pre: Tensor) -> Tensor:
        return torch.relu(pre)

    def losses(self, x: Tensor, reference: bool = False) -> dict[str, Tensor]:
        del reference  # dense already: the reference path is the only one
        pre = self.pre_acts(x)
        z = self.activate(pre)
        recon = self.decode(z)
        sparsity = (z * self.W_dec.norm(dim=1)).sum(dim=1).mean()
        fired = (z > 0).any(dim=0)
        self._track_firing(fired, x.shape[0])
        out = {"mse": self.mse(recon, x), "l1": self.l1_coefficient * sparsity}
        redundancy = self.redundancy_loss(fired)
        if redundancy is not None:
            out["redundancy"] = redundancy
        return out
