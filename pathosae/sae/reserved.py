"""*Reserved latents* (registry name ``topk_reserved``): a block of latents per confounder is
trained to carry it, and the confounder is kept out of the other (free) latents.

Layout: latents ``[0, R)`` are reserved, confounder ``j`` owning ``reserved_per_level × n_levels_j``
of them in vocabulary order; latents ``[R, d_sae)`` are free. The reserved block is always
computed (ReLU, outside the TopK budget), so it can carry a dense per-site shift as well as sparse
site atoms; the free latents are the usual per-sample TopK with budget ``k``.

Losses besides TopK's ``mse`` and ``aux`` (see the README for the literature):

- ``supervised``: per confounder, cross-entropy of a linear read-out of its block predicting the
  row's level (rows with code -1 skipped), the joint concept-bottleneck objective;
- ``independence``: per confounder, the linear-kernel HSIC between the free codes and the
  confounder's one-hot indicator, i.e. the squared Frobenius norm of their cross-covariance,
  with the indicator centred *within label* when labels are given. Centring one factor within
  label groups is enough: ``Z^T S_c`` equals the cross-covariance of both centred within label,
  so a latent that follows the label is not penalised for a label–site imbalance in the cohort.
  Zero cross-covariance means every free latent has the same mean in every level (within label),
  which is what a linear probe of the confounder reads.

The edit ablates the block: ``edit(x)`` returns the codes with the block zeroed and their
reconstruction. Encoding needs no conditions (they only enter the losses).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from pathosae.sae.conditional import ConditionedTopKSAE, ConditionsLike
from pathosae.sae.levels import LevelsLike, normalise_levels
from pathosae.sae.registry import register
from pathosae.sae.sparse import SparseCodes, fixed_k_codes


@register("topk_reserved")
class TopKReservedSAE(ConditionedTopKSAE):
    """TopK SAE with a supervised latent block per confounder and an independence penalty."""

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        k: int = 32,
        levels: LevelsLike | None = None,
        reserved_per_level: int = 2,
        supervised_coefficient: float = 1.0,
        independence_coefficient: float = 10.0,
    ) -> None:
        vocab = normalise_levels(levels)
        if reserved_per_level < 1:
            raise ValueError(f"reserved_per_level must be at least 1, got {reserved_per_level}")
        n_reserved = reserved_per_level * sum(len(v) for v in vocab.values())
        if not 1 <= k <= d_sae - n_reserved:
            raise ValueError(
                f"k={k} must lie in [1, d_sae - reserved = {d_sae - n_reserved}] ({n_reserved} "
                "reserved latents). Fix: widen the SAE, lower k or reserved_per_level."
            )
        self.reserved_per_level = reserved_per_level
        self.n_reserved = n_reserved
        self.supervised_coefficient = supervised_coefficient
        self.independence_coefficient = independence_coefficient
        super().__init__(d_in, d_sae, k, vocab)
        self.heads = nn.ModuleList(
            nn.Linear(reserved_per_level * len(names), len(names)) for names in vocab.values()
        )
        self._reset_heads(None)

    def hparams(self) -> dict[str, Any]:
        return {
            **super().hparams(),
            "reserved_per_level": self.reserved_per_level,
            "supervised_coefficient": self.supervised_coefficient,
            "independence_coefficient": self.independence_coefficient,
        }

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        super().reset_parameters(generator)
        if isinstance(getattr(self, "heads", None), nn.ModuleList):  # absent inside SAE.__init__
            self._reset_heads(generator)

    def _heads(self) -> list[nn.Linear]:
        return [head for head in self.heads if isinstance(head, nn.Linear)]

    @torch.no_grad()
    def _reset_heads(self, generator: torch.Generator | None) -> None:
        for head in self._heads():
            bound = 1 / head.in_features**0.5
            weight = torch.rand(head.weight.shape, generator=generator) * 2 - 1
            head.weight.copy_(weight * bound)
            head.bias.zero_()

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        for head in self._heads():  # codes shrink by `scale`: the read-out grows to keep its logits
            head.weight.mul_(scale)

    # ---- layout ------------------------------------------------------------------------------
    def reserved_slices(self) -> dict[str, slice]:
        """Each confounder's block of latent ids."""
        out: dict[str, slice] = {}
        for j, start, size in self.level_blocks():
            per = self.reserved_per_level
            out[self.confounders[j]] = slice(start * per, (start + size) * per)
        return out

    def reserved_units(self) -> dict[str, list[int]]:
        return {name: list(range(s.start, s.stop)) for name, s in self.reserved_slices().items()}

    def select(self, pre: Tensor) -> SparseCodes:
        """The whole reserved block, then the top-k of the free latents."""
        batch, reserved = pre.shape[0], self.n_reserved
        values, indices = pre[:, reserved:].topk(self.k, dim=1)
        block_ids = torch.arange(reserved, device=pre.device).expand(batch, reserved)
        return fixed_k_codes(
            torch.cat([pre[:, :reserved], values], dim=1),
            torch.cat([block_ids, indices + reserved], dim=1),
            self.d_sae,
        )

    # ---- losses ------------------------------------------------------------------------------
    def condition_losses(
        self, codes: SparseCodes, conditions: Tensor, labels: Tensor | None
    ) -> dict[str, Tensor]:
        in_block = codes.cols < self.n_reserved
        block = codes.values.new_zeros(codes.batch_size, self.n_reserved).index_put(
            (codes.rows[in_block], codes.cols[in_block]), codes.values[in_block], accumulate=True
        )
        free = ~in_block
        free_codes = SparseCodes(
            codes.values[free], codes.rows[free], codes.cols[free] - self.n_reserved,
            codes.offsets, codes.batch_size, self.d_sae - self.n_reserved,
        )
        supervised = independence = codes.values.new_zeros(())
        for j, block_slice in enumerate(self.reserved_slices().values()):
            column = conditions[:, j]
            known = column >= 0
            if int(known.sum()) < 2:
                continue
            logits = self._heads()[j](block[:, block_slice])
            supervised = supervised + functional.cross_entropy(logits[known], column[known])
            n_levels = len(self.levels[self.confounders[j]])
            independence = independence + cross_covariance_penalty(
                free_codes, column, n_levels, labels
            )
        return {
            "supervised": self.supervised_coefficient * supervised,
            "independence": self.independence_coefficient * independence,
        }

    # ---- edits -------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_levels(self, x: Tensor) -> Tensor:
        """(rows × confounders) level codes the blocks' read-outs predict."""
        block = self.encode(x)[:, : self.n_reserved]
        slices = self.reserved_slices().values()
        pairs = zip(self._heads(), slices, strict=True)
        return torch.stack([head(block[:, s]).argmax(1) for head, s in pairs], dim=1)

    def ablate(self, z: Tensor, confounders: list[str] | None = None) -> Tensor:
        """Codes with the blocks of ``confounders`` (default: all) set to zero."""
        out = z.clone()
        for name, block_slice in self.reserved_slices().items():
            if confounders is None or name in confounders:
                out[:, block_slice] = 0
        return out

    def edit(self, x: Tensor, conditions: ConditionsLike | None = None) -> tuple[Tensor, Tensor]:
        """Codes with every reserved block zeroed, and their reconstruction."""
        del conditions  # the block is read from x itself
        z = self.ablate(self.encode(x))
        return z, self.decode(z)


def label_groups(column: Tensor, labels: Tensor | None) -> tuple[Tensor, int]:
    """Group id per row (one group per label value; one group without labels) and the count."""
    if labels is None:
        return torch.zeros_like(column), 1
    groups = torch.unique(labels.to(column.device), return_inverse=True)[1]
    return groups, int(groups.max()) + 1 if groups.numel() else 1


def centred_indicator(column: Tensor, n_levels: int, groups: Tensor, n_groups: int) -> Tensor:
    """One-hot levels less their mean over the known rows of each group (rows with -1: zero)."""
    known = column >= 0
    onehot = functional.one_hot(column.clamp_min(0), n_levels).double() * known[:, None]
    sums = onehot.new_zeros(n_groups, n_levels).index_add_(0, groups, onehot)
    counts = torch.bincount(groups[known], minlength=n_groups).double().clamp_min(1)
    return (onehot - (sums / counts[:, None])[groups]) * known[:, None]


def cross_covariance_penalty(
    codes: SparseCodes, column: Tensor, n_levels: int, labels: Tensor | None
) -> Tensor:
    """Unbiased squared Frobenius norm of the within-label cross-covariance of codes and levels.

    With ``Z`` the codes and ``S`` the level one-hots of the ``n`` known rows, both centred within
    label groups, ``||Z^T S||^2 = sum_ij <z_i, z_j><s_i, s_j>``. Its ``i = j`` terms are a noise
    floor that grows with the codes' energy whatever the dependence (at a batch of 256 it
    outweighs the reconstruction loss), so they are dropped and the rest divided by ``n(n-1)``:
    the linear-kernel HSIC estimated without the diagonal, as in Song et al.'s unbiased HSIC.
    Only ``S`` needs centring for the cross term (``Z^T S_c = Z_c^T S_c``); the diagonal uses the
    centred code norms, computed from the active entries without a dense (batch × latents) matrix.
    """
    known = column >= 0
    n = int(known.sum())
    groups, n_groups = label_groups(column, labels)
    indicator = centred_indicator(column, n_levels, groups, n_groups).to(codes.values.dtype)
    rows, cols, values = codes.rows, codes.cols, codes.values * known[codes.rows]
    cross = values.new_zeros(codes.d_sae, n_levels).index_add(
        0, cols, values[:, None] * indicator[rows]
    )
    # Group means of the codes over known rows, then each row's centred squared norm.
    group_of = groups[rows]
    group_counts = torch.bincount(groups[known], minlength=n_groups).to(values.dtype).clamp_min(1)
    means = values.new_zeros(n_groups, codes.d_sae).index_put(
        (group_of, cols), values, accumulate=True
    ) / group_counts[:, None]
    per_row = values.new_zeros(codes.batch_size)
    square = per_row.index_add(0, rows, values.pow(2))
    along_mean = per_row.index_add(0, rows, values * means[group_of, cols])
    centred_sq = (square - 2 * along_mean + means.pow(2).sum(1)[groups]) * known
    diagonal = (centred_sq * indicator.pow(2).sum(1)).sum()
    return (cross.pow(2).sum() - diagonal) / (n * (n - 1))
