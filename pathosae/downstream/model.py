"""Adapter MLP + gated-attention MIL head (Ilse et al. 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class AdapterMIL(nn.Module):
    """``x -> standardise -> Linear -> GELU = h`` per tile (the adapter layer), then gated
    attention pools ``h`` over a slide's tiles and a linear layer gives the slide logits.

    The input mean/std are buffers fitted on the training tiles, so the model applied to edited
    embeddings standardises them exactly as it did its training data.
    """

    x_mean: Tensor  # buffers registered in __init__
    x_std: Tensor

    def __init__(
        self, d_in: int, n_classes: int, hidden_dim: int = 64, attention_dim: int = 32,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.register_buffer("x_mean", torch.zeros(d_in))
        self.register_buffer("x_std", torch.ones(d_in))
        self.adapter = nn.Linear(d_in, hidden_dim)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.attn_v = nn.Linear(hidden_dim, attention_dim)
        self.attn_u = nn.Linear(hidden_dim, attention_dim)
        self.attn_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    @torch.no_grad()
    def fit_scaler(self, x: Tensor) -> None:
        self.x_mean.copy_(x.mean(0))
        self.x_std.copy_(x.std(0).clamp_min(1e-6))

    def hidden(self, x: Tensor) -> Tensor:
        """The adapter layer's activations (any leading shape, last dim = d_in)."""
        return self.activation(self.adapter((x - self.x_mean) / self.x_std))

    def attention_scores(self, h: Tensor) -> Tensor:
        """Gated-attention logits of tiles ``(..., H) -> (...)``, before the softmax over a slide."""
        return self.attn_w(torch.tanh(self.attn_v(h)) * torch.sigmoid(self.attn_u(h))).squeeze(-1)

    def pool(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Gated-attention pooling of ``(S, T, H)`` with a ``(S, T)`` mask: slide vectors, weights."""
        scores = self.attention_scores(h)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        return torch.einsum("st,sth->sh", weights, h), weights

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Slide logits ``(S, C)`` and tile activations ``(S, T, H)`` from padded bags."""
        h = self.hidden(x)
        pooled, _ = self.pool(self.dropout(h), mask)
        return self.classifier(pooled), h
