"""Turning an encoder's ``forward_features`` output into one vector per tile."""

from __future__ import annotations

import torch

from pathosae.encoders.registry import Pooling


def pool_features(features: torch.Tensor, pooling: Pooling, num_prefix_tokens: int) -> torch.Tensor:
    """Pool tokens (B, T, D) of a ViT or a feature map (B, C, H, W) of a CNN.

    ``num_prefix_tokens`` counts the class token and the register tokens that follow it; the
    mean in ``"cls+mean"`` runs over patch tokens only (registers are not part of the image).
    """
    if pooling == "avg":
        if features.ndim != 4:
            raise ValueError(f"'avg' pooling expects a (B, C, H, W) map, got {tuple(features.shape)}")
        return features.mean(dim=(2, 3))
    if features.ndim != 3:
        raise ValueError(f"{pooling!r} pooling expects (B, T, D) tokens, got {tuple(features.shape)}")
    cls = features[:, 0]
    if pooling == "cls":
        return cls
    if pooling == "cls+mean":
        patches = features[:, num_prefix_tokens:]
        return torch.cat([cls, patches.mean(dim=1)], dim=-1)
    raise ValueError(f"unknown pooling {pooling!r}")


def pooled_dim(num_features: int, pooling: Pooling) -> int:
    return 2 * num_features if pooling == "cls+mean" else num_features
