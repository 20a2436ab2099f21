"""BatchTopK SAE: the batch's k·B largest activations fire (a per-sample budget on average).

At inference there is no batch, so the model is saved with a fixed threshold: the running mean
over training batches of the smallest activation that was kept. ``encode`` in eval mode is then a
JumpReLU with one shared threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pathosae.sae.registry import register
from pathosae.sae.sparse import SparseCodes, mask_codes, offsets_from_rows
from pathosae.sae.topk import TopKSAE


@register("batchtopk")
class BatchTopKSAE(TopKSAE):
    threshold: Tensor  # buffers registered in __init__
    threshold_updates: Tensor

    def __init__(
        self, d_in: int, d_sae: int, k: int = 32, threshold_momentum: float = 0.99
    ) -> None:
        super().__init__(d_in, d_sae, k)
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.int64))

    def hparams(self) -> dict[str, Any]:
        return {**super().hparams(), "threshold_momentum": self.threshold_momentum}

    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.threshold.div_(scale)

    def select(self, pre: Tensor) -> SparseCodes:
        if not self.training:
            values, rows, cols = mask_codes(pre, pre > self.threshold)
            offsets = offsets_from_rows(rows, pre.shape[0])
            return SparseCodes(values, rows, cols, offsets, pre.shape[0], self.d_sae)
        codes = self._batch_topk(pre)
        self._update_threshold(codes.values)
        return codes

    def _batch_topk(self, pre: Tensor) -> SparseCodes:
        batch, d_sae = pre.shape
        budget = min(self.k * batch, batch * d_sae)
        # Exact and cheap: the global top-(k·B) lies inside each row's top-c candidates unless
        # some row fills all c of its slots, in which case the full flat top-k decides.
        per_row = min(d_sae, 4 * self.k)
        cand_values, cand_cols = pre.topk(per_row, dim=1)
        flat_values, flat_pos = cand_values.reshape(-1).topk(budget)
        rows = torch.div(flat_pos, per_row, rounding_mode="floor")
        if per_row < d_sae and int(torch.bincount(rows, minlength=batch).max()) >= per_row:
            flat_values, flat_pos = pre.reshape(-1).topk(budget)
            rows = torch.div(flat_pos, d_sae, rounding_mode="floor")
            cols = flat_pos % d_sae
        else:
            cols = cand_cols.reshape(-1)[flat_pos]
        keep = flat_values > 0  # entries that ReLU would zero do not fire
        rows, cols, flat_values = rows[keep], cols[keep], flat_values[keep]
        order = torch.argsort(rows * d_sae + cols)
        rows, cols, flat_values = rows[order], cols[order], flat_values[order]
        offsets = offsets_from_rows(rows, batch)
        return SparseCodes(flat_values, rows, cols, offsets, batch, d_sae)

    @torch.no_grad()
    def _update_threshold(self, kept_values: Tensor) -> None:
        if kept_values.numel() == 0:
            return
        smallest = kept_values.min()
        if int(self.threshold_updates) == 0:
            self.threshold.copy_(smallest)
        else:
            m = self.threshold_momentum
            self.threshold.mul_(m).add_((1 - m) * smallest)
        self.threshold_updates.add_(1)
