"""JumpReLU SAE: z = pre · H(pre − θ) with a learned threshold θ per latent and an L0 penalty.

The step function has no useful gradient, so θ learns through straight-through estimators with a
rectangle kernel of width ``bandwidth`` (Rajamanoharan et al. 2024).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pathosae.sae.base import SAE
from pathosae.sae.registry import register


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        grad_threshold = (-(threshold / eps) * _rectangle((pre - threshold) / eps) * grad).sum(0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_threshold = (-(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad).sum(0)
        return None, grad_threshold, None


@register("jumprelu")
class JumpReLUSAE(SAE):
    def __init__(
        self,
        d_in: int,
        d_sae: int,
        l0_coefficient: float = 5e-3,
        bandwidth: float = 0.05,
        threshold_init: float = 0.5,
    ) -> None:
        self.l0_coefficient = l0_coefficient
        self.bandwidth = bandwidth
        self.threshold_init = threshold_init
        super().__init__(d_in, d_sae)
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(threshold_init)))

    def hparams(self) -> dict[str, Any]:
        return {
            **super().hparams(),
            "l0_coefficient": self.l0_coefficient,
            "bandwidth": self.bandwidth,
            "threshold_init": self.threshold_init,
        }

    @property
    def threshold(self) -> Tensor:
        return self.log_threshold.exp()

    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        with torch.no_grad():
            self.log_threshold.sub_(math.log(scale))

    def activate(self, pre: Tensor) -> Tensor:
        return _JumpReLU.apply(pre, self.threshold, self.bandwidth)

    def losses(self, x: Tensor, reference: bool = False) -> dict[str, Tensor]:
        del reference  # dense already: the reference path is the only one
        pre = self.pre_acts(x)
        z = self.activate(pre)
        recon = self.decode(z)
        l0 = _Step.apply(pre, self.threshold, self.bandwidth).sum(dim=1).mean()
        fired = (z > 0).any(dim=0)
        self._track_firing(fired, x.shape[0])
        out = {"mse": self.mse(recon, x), "l0": self.l0_coefficient * l0}
        redundancy = self.redundancy_loss(fired)
        if redundancy is not None:
            out["redundancy"] = redundancy
        return out
